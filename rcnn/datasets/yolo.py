"""YOLO labels (the Ultralytics / Darknet text format): reading and writing.

A YOLO root::

    ROOT/data.yaml                      names (and optional path, train / val / test)
    ROOT/images/[SPLIT/]ID.jpg          the images (any sub-folders)
    ROOT/labels/[SPLIT/]ID.txt          one line per box: ``class cx cy w h``

or ``ROOT/classes.txt`` (one class name per line) instead of ``data.yaml``. An image's label
file is found as Ultralytics finds it: the last ``images`` folder of the image's path becomes
``labels`` and the suffix ``.txt`` (an image with no ``images`` folder in its path has its
label file beside it). An image without a label file has no objects, as in Ultralytics; so
has one with an empty label file.

A label line is ``class cx cy w h``: ``class`` an integer index into the names (0-based; it
becomes label ``class + 1``), the box centre and size normalised by the image's width and
height (0..1). Here, and only here, they become continuous pixel corners:
``x1 = (cx - w / 2) * W, y1 = (cy - h / 2) * H, x2 = (cx + w / 2) * W, y2 = (cy + h / 2) * H``
(float64, then float32), with ``W x H`` the image's stored size read from its header (YOLO
files have no sizes, so image headers are always read). The box rule of
`rcnn.datasets.rules` applies as for VOC and COCO. A segmentation line
``class x1 y1 x2 y2 x3 y3 ...`` (a normalised polygon, at least 3 points) gives the object its
mask and its box (the polygon's extent); the writer writes such lines for samples with masks
(`rcnn.datasets.masks.to_polygon`, exact). A line that is neither, a class that is not an
integer or not in the names, a polygon outside the image, or a box in error is an error
naming the label file and the line.

``data.yaml`` (read with PyYAML's safe loader; aliases are refused, and so is a file over
1 MiB): ``names`` is a list or an ``{index: name}`` mapping (indices ``0..C-1``; names
taken as text, as Ultralytics does); ``nc``, when given, must equal the number of names.
``train``, ``val``, ``test`` (optional) are each a folder of images (searched recursively) or
a ``.txt`` list of image paths (one a line, relative to the list file's folder), or a list of
those, relative to ``path`` (absolute, or relative to the data.yaml's folder; the data.yaml's
own folder when absent or when that folder does not exist); an entry ``../x`` that does not
exist is tried as ``x``, as Ultralytics does for Roboflow exports. Other keys are not used.
A DATASET may be the data.yaml itself (its folder is the root).

Splits (``--split NAME``): the data.yaml's ``NAME`` entry, else the folder ``images/NAME/``,
else the list file ``ROOT/NAME.txt``. Without a split: every entry of the data.yaml together,
or, when it has none (or with ``classes.txt``), every image under ``images/``. Image paths
(``path``, folders, list lines) must stay inside the root unless ``allow_outside_images``.

A sample's id is the image's file stem (two images with one stem in what is read are an
error); classes are the names in index order.

Writing (`write_yolo`): numbers are written with the fewest significant digits (at most 17)
that read back, through the formula above, to the same float32 box; in practice every box
reads back exactly (the round-trip tests check it to 1e-4 px), and a box inside the image
reads back inside it in float64 too. ``data.yaml`` always has ``train`` and ``val`` (as
Ultralytics requires): a split not written points at the one written, or at ``images/``. ``difficult`` and COCO's
``iscrowd`` / ``area`` have no YOLO form and are dropped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import yaml

from rcnn.cache import read_text, write_text
from rcnn.datasets.core import Dataset, Sample
from rcnn.datasets.images import IMAGE_SUFFIXES
from rcnn.datasets.masks import check_masks, decode, from_polygons, to_polygon
from rcnn.datasets.rules import TOLERANCE, Problem, ProblemPolicy, check_boxes, check_image, image_path_in
from rcnn.datasets.writing import check_names, place_image
from rcnn.errors import DatasetError
from rcnn.progress import progress

__all__ = ["read_yolo", "write_yolo", "is_yolo_root", "parse_data_yaml", "DATA_FILES"]

DATA_FILES = ("data.yaml", "data.yml")
SPLIT_KEYS = ("train", "val", "test")
_KEYS = {"path", "names", "nc", *SPLIT_KEYS}  # the data.yaml keys read; others are skipped
_INT = re.compile(r"[+-]?\d+")
MAX_YAML_BYTES = 1 << 20  # a data.yaml is a few lines; a larger file is refused unread


def is_yolo_root(path) -> bool:
    """Whether `path` is a folder with a ``data.yaml`` (or ``.yml``), or with ``classes.txt``
    and ``labels/``, or is a ``.yaml`` / ``.yml`` file itself (the data.yaml of a root)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return True
    if not path.is_dir():
        return False
    return any((path / n).is_file() for n in DATA_FILES) or (
        (path / "classes.txt").is_file() and (path / "labels").is_dir()
    )


# --- data.yaml ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (``*name``): a data.yaml needs none, and a
    "billion laughs" file builds its bomb from them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted here", mark)
        return super().compose_node(parent, index)


def _plain(value, key: str, line: int, path):
    """A data.yaml value as the module docstring's plain form: scalars as strings (as
    Ultralytics takes names: ``str(v)``), None kept, lists and ``{index: name}`` mappings of
    scalars; anything deeper is an error naming the line."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        items = value.values() if isinstance(value, dict) else value
        if any(isinstance(v, (list, dict)) for v in items):
            raise DatasetError(path, f"line {line}: nested collections are not supported here ({key})")
        if isinstance(value, dict):
            return {_plain(k, key, line, path): _plain(v, key, line, path) for k, v in value.items()}
        return [_plain(v, key, line, path) for v in value]
    return str(value)


def parse_data_yaml(path) -> dict:
    """The keys ``path``, ``names``, ``nc``, ``train``, ``val``, ``test`` of a ``data.yaml``
    (those present), read with PyYAML's safe loader (no aliases; at most `MAX_YAML_BYTES`),
    scalars as strings. Other keys are parsed but not used. Raises `DatasetError` naming the
    file (and the line)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise DatasetError(path, f"is over {MAX_YAML_BYTES} bytes: not a data.yaml")
        text = read_text(path, "utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read: {e}") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise DatasetError(path, "is empty: needs 'names'")
        if not isinstance(node, yaml.MappingNode):
            raise DatasetError(path, f"line {node.start_mark.line + 1}: expected 'key: value' lines")
        lines = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value in _KEYS:
                if key_node.value in lines:
                    raise DatasetError(path, f"line {key_node.start_mark.line + 1}: '{key_node.value}' given twice")
                lines[key_node.value] = key_node.start_mark.line + 1
        document = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise DatasetError(path, f"{where}malformed YAML: {problem}") from None
    finally:
        loader.dispose()
    return {k: _plain(document[k], k, lines[k], path) for k in _KEYS if k in document and k in lines}


# --- classes and splits -----------------------------------------------------------------


def _names(root: Path, yaml_path=None) -> tuple[list[str], dict, Path | None]:
    """``(class names, data.yaml keys, the data.yaml's path or None)`` of the root `root`
    (its data.yaml is `yaml_path` when given, else ``data.yaml`` / ``data.yml``, else
    ``classes.txt``)."""
    yaml_path = yaml_path or next((root / n for n in DATA_FILES if (root / n).is_file()), None)
    if yaml_path is None:
        classes_txt = root / "classes.txt"
        if not classes_txt.is_file():
            raise DatasetError(root, "not a YOLO root: no data.yaml or classes.txt")
        try:
            text = read_text(classes_txt, "utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(classes_txt, f"cannot read: {e}") from None
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        if not names or not all(names):
            raise DatasetError(classes_txt, "needs one class name per line (no empty lines)")
        _unique(names, classes_txt)
        return names, {}, None
    data = parse_data_yaml(yaml_path)
    names = data.get("names")
    if isinstance(names, dict):
        indices = {}
        for k, v in names.items():
            if k is None or not _INT.fullmatch(k):
                raise DatasetError(yaml_path, f"names: the key {k!r} is not a class index 0, 1, ...")
            indices[int(k)] = v
        if sorted(indices) != list(range(len(indices))):
            raise DatasetError(yaml_path, f"names: the indices must be 0..{len(indices) - 1}, not {sorted(indices)}")
        names = [indices[i] for i in range(len(indices))]
    if not isinstance(names, list) or not names:
        raise DatasetError(yaml_path, "needs 'names': a list of class names or a mapping {index: name}")
    if not all(isinstance(n, str) and n for n in names):
        raise DatasetError(yaml_path, "names: every class name must be a non-empty string")
    _unique(names, yaml_path)
    nc = data.get("nc")
    if nc is not None and (not isinstance(nc, str) or not _INT.fullmatch(nc) or int(nc) != len(names)):
        raise DatasetError(yaml_path, f"nc is {nc} but there are {len(names)} names")
    return list(names), data, yaml_path


def _unique(names, where) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise DatasetError(where, f"the class '{n}' is named twice")
        seen.add(n)


def _base(root: Path, data: dict, yaml_path, allow_outside: bool) -> Path:
    """The folder the data.yaml's entries are relative to (see the module docstring); one
    outside the root is refused unless `allow_outside`."""
    given = data.get("path")
    if not given:
        return root
    if not isinstance(given, str):
        raise DatasetError(yaml_path, "'path' must be a folder name")
    base = Path(given) if os.path.isabs(given) else root / given
    if not base.is_dir():
        return root
    real, top = os.path.realpath(base), os.path.realpath(root)  # Ultralytics writes the root's own absolute path
    if not allow_outside and os.path.commonpath([real, top]) != top:
        raise DatasetError(
            yaml_path, f"'path: {given:.200}' leaves the dataset root {root} (allow it with --allow-outside-images)"
        )
    return base


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _inside(base: Path, name: str, allow_outside: bool):
    """`rcnn.datasets.rules.image_path_in` for a path in a YOLO root, whose remedy is
    ``--allow-outside-images`` (YOLO takes no ``--images``)."""
    path, outside = image_path_in(base, name, allow_outside)
    if outside and outside.startswith("leaves"):
        outside = f"leaves the dataset root {base} (allow it with --allow-outside-images)"
    return path, outside


def _entry_images(base: Path, entry: str, where, policy: ProblemPolicy, allow_outside: bool) -> list[Path]:
    """The images of one split entry (a folder or a list file relative to `base`)."""
    path, outside = _inside(base, entry, allow_outside)
    if not path.exists() and entry.startswith("../"):
        if not (base / entry[3:]).exists():
            raise DatasetError(
                where, f"the split entry {entry!r:.200} not found: neither {path} nor {base / entry[3:]} exists"
            )
        path, outside = _inside(base, entry[3:], allow_outside)  # Roboflow's data.yaml
    if outside:
        raise DatasetError(where, f"the split entry {entry!r:.200} {outside}")
    if path.is_dir():
        return _images_in(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        images = []
        try:
            text = read_text(path, "utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(path, f"cannot read: {e}") from None
        for n, line in enumerate(text.splitlines(), 1):
            name = line.strip()
            if not name:
                continue
            rel = os.path.join(os.path.relpath(path.parent, base), name) if not os.path.isabs(name) else name
            image, outside = _inside(base, rel, allow_outside)
            if outside:
                policy.accept([Problem(str(path), f"line {n}: image {name!r:.200} {outside}")])
                continue
            images.append(Path(os.path.normpath(image)))
        return images
    if not path.exists():
        raise DatasetError(
            where, f"the split entry {entry!r:.200}: {path} not found (neither a folder nor a .txt list)"
        )
    raise DatasetError(where, f"the split entry {entry!r:.200}: {path} is neither a folder nor a .txt list of images")


def _split_images(root, split, names_data, yaml_path, policy, allow_outside) -> list[Path]:
    base = _base(root, names_data, yaml_path, allow_outside)
    entries = {k: names_data[k] for k in SPLIT_KEYS if names_data.get(k)}
    for k, v in entries.items():
        if isinstance(v, str):
            entries[k] = [v]
        elif not (isinstance(v, list) and all(isinstance(x, str) and x for x in v)):
            raise DatasetError(yaml_path, f"'{k}' must be a folder or .txt file, or a list of them")
    where = yaml_path or root
    if split is None:
        if entries:
            found = [
                p for k in entries for e in entries[k] for p in _entry_images(base, e, where, policy, allow_outside)
            ]
            return list(dict.fromkeys(found))  # an image in two entries counts once
        if not (root / "images").is_dir():
            raise DatasetError(root, "no images/ folder")
        return _images_in(root / "images")
    if split in entries:
        return list(
            dict.fromkeys(p for e in entries[split] for p in _entry_images(base, e, where, policy, allow_outside))
        )
    if not split or split.startswith(".") or "/" in split or os.sep in split:
        raise DatasetError(root, f"split '{split}' is not a split name")
    if (root / "images" / split).is_dir():
        return _images_in(root / "images" / split)
    if (root / f"{split}.txt").is_file():
        return _entry_images(root, f"{split}.txt", where, policy, allow_outside)
    have = list(entries) + [p.name for p in sorted((root / "images").glob("*")) if p.is_dir() and p.name not in entries]
    have += [p.stem for p in sorted(root.glob("*.txt")) if p.name != "classes.txt" and p.stem not in have]
    raise DatasetError(root, f"split '{split}' not found; this root has: {', '.join(have) or 'none'}")


def label_path(image: Path) -> Path:
    """Where an image's label file is (Ultralytics' rule: the last ``images`` folder of the
    path becomes ``labels``, the suffix ``.txt``)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# --- reading ------------------------------------------------------------------------------


def _corners(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised ``[N, 4]`` cx, cy, w, h (float64) as pixel corners x1, y1, x2, y2 (float64).
    The one conversion, used by the reader and checked by the writer."""
    cx, cy, w, h = values.T
    with np.errstate(over="ignore", invalid="ignore"):
        return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)


def _parse_labels(path: Path, names: list[str]):
    """``(class indices, float64 [N, 4] normalised values, raw lines, problems, polygons)`` of a
    label file; `polygons` holds a segmentation line's normalised ``float64 [P, 2]`` points
    (its values are the polygon's box) and None for a box line."""
    classes, values, shown, problems, polygons = [], [], [], [], []
    try:
        text = read_text(path, "utf-8-sig")
    except FileNotFoundError:
        return classes, np.zeros((0, 4)), shown, problems, polygons  # no label file: no objects
    except (OSError, UnicodeDecodeError) as e:
        return classes, np.zeros((0, 4)), shown, [Problem(str(path), f"cannot read the label file: {e}")], polygons
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 5 and (len(fields) % 2 == 0 or len(fields) < 7):
            problems.append(
                Problem(
                    str(path),
                    f"line {n}: a segmentation polygon 'class x1 y1 x2 y2 x3 y3 ...' needs an even number of"
                    f" coordinates, at least 6; found {len(fields) - 1}",
                )
            )
            continue
        if len(fields) < 5:
            problems.append(Problem(str(path), f"line {n}: expected 5 values 'class cx cy w h', found {len(fields)}"))
            continue
        if not _INT.fullmatch(fields[0]):
            problems.append(Problem(str(path), f"line {n}: class {fields[0]!r:.40} is not an integer index"))
            continue
        index = int(fields[0])
        if not 0 <= index < len(names):
            problems.append(
                Problem(str(path), f"line {n}: unknown class index {index} (the names are 0..{len(names) - 1})")
            )
            continue
        try:
            numbers = [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(Problem(str(path), f"line {n}: cx cy w h must be numbers: {' '.join(fields[1:])!r:.80}"))
            continue
        polygon = None
        if len(numbers) > 4:
            polygon = np.array(numbers).reshape(-1, 2)
            if not np.isfinite(polygon).all():
                problems.append(Problem(str(path), f"line {n}: a polygon coordinate is not a finite number"))
                continue
            (x1, y1), (x2, y2) = polygon.min(0), polygon.max(0)
            numbers = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        classes.append(index)
        values.append(numbers)
        polygons.append(polygon)
        shown.append(
            f"line {n} (class {index} '{names[index]}': {' '.join(fields[1:6])}{' ...' * (polygon is not None)})"
        )
    return classes, np.array(values, np.float64).reshape(-1, 4), shown, problems, polygons


def read_yolo(
    root,
    split=None,
    skip_bad: bool = False,
    *,
    allow_outside_images: bool = False,
    policy=None,
    decode: bool = False,
) -> Dataset:
    """The YOLO root at `root` (see the module docstring). Bad samples raise `DatasetError` /
    `ImageError` naming the file and line, or with `skip_bad` are counted in
    `Dataset.skipped`; `decode` reads every image fully (``rcnn data check``)."""
    root, yaml_path = Path(root), None
    if root.is_file():  # the data.yaml itself, as Ultralytics users pass it
        root, yaml_path = root.parent, root
    policy = policy or ProblemPolicy(skip_bad)
    names, data, yaml_path = _names(root, yaml_path)
    images = _split_images(root, split, data, yaml_path, policy, allow_outside_images)
    first: dict[str, Path] = {}
    samples = []
    for image in progress(images, desc="reading YOLO"):
        labels = label_path(image)
        problems = []
        if image.stem in first:
            problems.append(
                Problem(
                    str(image),
                    f"another image has the stem '{image.stem}' ({first[image.stem]}): sample ids would clash",
                )
            )
        else:
            first[image.stem] = image
        size, image_problems = check_image(image, decode)
        classes, values, shown, line_problems, polygons = _parse_labels(labels, names)
        problems += image_problems + line_problems
        boxes, masks = np.zeros((0, 4), np.float32), None
        if size is not None:
            boxes, box_problems = check_boxes(_corners(values, *size), size[0], size[1], labels, shown)
            problems += box_problems
            if any(p is not None for p in polygons):
                masks, mask_problems = _polygon_masks(polygons, size, labels, shown)
                problems += mask_problems or check_masks(masks, boxes.astype(np.float64), labels, shown)
        if policy.accept(problems):
            samples.append(
                Sample(image.stem, image, size[0], size[1], boxes, np.array(classes, np.int64) + 1, masks=masks)
            )
    return Dataset(list(names), samples, policy.skipped, repairs=policy.repairs)


def _polygon_masks(polygons, size, path, shown):
    """``(masks, problems)``: the RLE of each normalised polygon (None for a box line) in a
    ``W x H`` image; a point more than `TOLERANCE` px outside the image is a problem."""
    (width, height), masks, problems = size, [], []
    for polygon, what in zip(polygons, shown):
        if polygon is None:
            masks.append(None)
            continue
        xy = polygon * (width, height)
        if (xy < -TOLERANCE).any() or (xy[:, 0] > width + TOLERANCE).any() or (xy[:, 1] > height + TOLERANCE).any():
            problems.append(Problem(str(path), f"{what}: polygon lies outside the {width}x{height} image"))
        masks.append(from_polygons([xy.ravel()], height, width))
    return masks, problems


# --- writing ------------------------------------------------------------------------------


def _numbers(box, width: int, height: int) -> list[str]:
    """``cx cy w h`` texts, as few digits as read back (through `_corners`) to `box` in
    float32, and, for a box inside the image, to corners inside it in float64 as well (so
    that no reader finds a rounding error to clip)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    exact = np.array([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height])
    target = np.asarray(box, np.float32)
    inside = bool(target[0] >= 0 and target[1] >= 0 and target[2] <= width and target[3] <= height)
    for digits in range(6, 18):
        texts = [f"{v:.{digits}g}" for v in exact]
        back = _corners(np.array([[float(t) for t in texts]]), width, height)[0]
        if np.array_equal(back.astype(np.float32), target) and (
            not inside or (back[0] >= 0 and back[1] >= 0 and back[2] <= width and back[3] <= height)
        ):
            return texts
    return [repr(float(v)) for v in exact]


def _placeholder(key: str, value) -> bool:
    """Whether the data.yaml entry ``key: value`` is one `write_yolo` filled in for a split
    that was not written (``images``, or another split's ``images/SPLIT``)."""
    return value == "images" or (isinstance(value, str) and value.startswith("images/") and value != f"images/{key}")


def _polygon_numbers(mask, box, width: int, height: int) -> list[str]:
    """Normalised ``x1 y1 x2 y2 ...`` texts of a mask's outline (`to_polygon`; the box's corners
    when there is no mask), each with as few digits as read back to the same pixel coordinate."""
    if mask is None:
        x1, y1, x2, y2 = (float(v) for v in box)
        points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    else:
        points = to_polygon(decode(mask))
    texts = []
    for v, side in zip(points.ravel(), [width, height] * len(points)):
        for digits in range(6, 18):
            text = f"{v / side:.{digits}g}"
            if float(text) * side == v:
                break
        texts.append(text)
    return texts


def write_yolo(dataset: Dataset, root, split=None, images: str = "copy") -> str | None:
    """Write `dataset` as a YOLO root at `root` (added to what is there): ``images/[SPLIT/]ID.ext``
    (a copy or a symbolic link of each image), ``labels/[SPLIT/]ID.txt`` (an empty file for an
    image without objects) and ``data.yaml`` (the names, and the split's entry
    ``SPLIT: images/SPLIT``). An existing data.yaml must have the same names; its split
    entries are kept.

    Ultralytics requires both ``train`` and ``val``: when the root has only one of them (one
    split written, or none: ``images/``), the other points at the same images, and the note
    returned says so (None when both are real). See the module docstring for the numbers
    written."""
    if images not in ("copy", "link"):
        raise ValueError(f"images must be 'copy' or 'link', not {images!r}")
    duplicate = dataset.duplicate_id()
    if duplicate:
        i, a, b = duplicate
        raise DatasetError(
            root, f"two samples have the id '{i}' ({a.image_path} and {b.image_path}); YOLO file names would clash"
        )
    root = Path(root)
    if split is not None and (not split or "/" in split or os.sep in split or split.startswith(".")):
        raise DatasetError(root, f"split '{split}' cannot be a folder name")
    check_names(dataset.classes, "yolo", root)
    yaml_path = root / "data.yaml"
    entries = {}
    if yaml_path.is_file():
        names, data, _ = _names(root)
        if data.get("path"):
            raise DatasetError(yaml_path, "has a 'path' key: write the YOLO root to a new folder")
        if names != list(dataset.classes):
            raise DatasetError(
                yaml_path, f"has the classes {', '.join(names)}; the dataset's are {', '.join(dataset.classes)}"
            )
        entries = {k: data[k] for k in SPLIT_KEYS if data.get(k) and not (k != "test" and _placeholder(k, data[k]))}
    sub = Path(split) if split is not None else Path()
    for s in progress(dataset, desc="writing YOLO", total=len(dataset)):
        if not s.id or "/" in s.id or os.sep in s.id or s.id.startswith("."):
            raise DatasetError(s.image_path, f"sample id '{s.id}' cannot be a YOLO file name")
        if s.width <= 0 or s.height <= 0:
            raise DatasetError(s.image_path, f"sample '{s.id}' has no image size (needed for YOLO's normalised boxes)")
        place_image(s.image_path, root / "images" / sub / (s.id + s.image_path.suffix), images, "a YOLO root")
        if s.masks is None:
            lines = [
                f"{label - 1} {' '.join(_numbers(box, s.width, s.height))}\n" for box, label in zip(s.boxes, s.labels)
            ]
        else:  # segmentation labels: every line a polygon (Ultralytics reads no mixture)
            lines = [
                f"{label - 1} {' '.join(_polygon_numbers(mask, box, s.width, s.height))}\n"
                for box, label, mask in zip(s.boxes, s.labels, s.masks)
            ]
        write_text(root / "labels" / sub / f"{s.id}.txt", "".join(lines))
    if split in SPLIT_KEYS:  # other split names are found as images/SPLIT/ by the reader
        entries[split] = f"images/{split}"
    note = None
    missing = [k for k in ("train", "val") if k not in entries]
    if missing:
        have = [k for k in ("train", "val") if k in entries]
        # the one split there is, or every image under images/ (no split, or a split name Ultralytics lacks)
        target = entries[have[0]] if have and isinstance(entries[have[0]], str) else "images"
        entries.update({k: target for k in missing})
        if have:
            reason = (
                f"{missing[0]} points at {target} too (only {have[0]} was written; Ultralytics needs both keys;"
                f" writing {missing[0]} to this root replaces it)"
            )
        else:
            reason = (
                f"train and val both point at {target} (no train or val split was written; Ultralytics needs both keys)"
            )
        note = f"{yaml_path}: {reason}"
    header = "# YOLO labels: one 'class cx cy w h' line per box (or 'class x1 y1 x2 y2 ...' per polygon), normalised\n"
    if note:
        header += f"# {reason}\n"
    body = {k: entries[k] for k in SPLIT_KEYS if k in entries}
    body.update(nc=dataset.num_classes, names=dict(enumerate(dataset.classes)))
    write_text(yaml_path, header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1 << 16))
    return note
