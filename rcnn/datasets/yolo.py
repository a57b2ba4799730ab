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
`rcnn.datasets.rules` applies as for VOC and COCO. A line that is not five numbers (a
segmentation polygon, say), a class that is not an integer or not in the names, or a box in
error is an error naming the label file and the line.

``data.yaml``: ``names`` is a list or an ``{index: name}`` mapping (indices ``0..C-1``);
``nc``, when given, must equal the number of names. ``train``, ``val``, ``test`` (optional)
are each a folder of images (searched recursively) or a ``.txt`` list of image paths (one a
line, relative to the list file's folder), or a list of those, relative to ``path`` (absolute,
or relative to the data.yaml's folder; the data.yaml's own folder when absent or when that
folder does not exist); an entry ``../x`` that does not exist is tried as ``x``, as
Ultralytics does for Roboflow exports. Only the subset of YAML these files use is read
(``key: value``, block or flow lists and mappings of plain or quoted scalars, comments); other
keys are skipped unread, and anything else in the keys above is an error naming the line.
No PyYAML needed.

Splits (``--split NAME``): the data.yaml's ``NAME`` entry, else the folder ``images/NAME/``,
else the list file ``ROOT/NAME.txt``. Without a split: every entry of the data.yaml together,
or, when it has none (or with ``classes.txt``), every image under ``images/``. Image paths
(folders, list lines) must stay inside the root unless ``allow_outside_images``.

A sample's id is the image's file stem (two images with one stem in what is read are an
error); classes are the names in index order.

Writing (`write_yolo`): numbers are written with the fewest significant digits (at most 17)
that read back, through the formula above, to the same float32 box; in practice every box
reads back exactly (the round-trip tests check it to 1e-4 px). ``difficult`` and COCO's
``iscrowd`` / ``area`` have no YOLO form and are dropped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from rcnn.cache import read_text, write_text
from rcnn.datasets.core import Dataset, Sample
from rcnn.datasets.images import IMAGE_SUFFIXES
from rcnn.datasets.rules import Problem, ProblemPolicy, check_boxes, check_image, image_path_in
from rcnn.datasets.writing import place_image
from rcnn.errors import DatasetError
from rcnn.progress import progress

__all__ = ["read_yolo", "write_yolo", "is_yolo_root", "parse_data_yaml", "DATA_FILES"]

DATA_FILES = ("data.yaml", "data.yml")
SPLIT_KEYS = ("train", "val", "test")
_KEYS = {"path", "names", "nc", *SPLIT_KEYS}  # the data.yaml keys read; others are skipped
_INT = re.compile(r"[+-]?\d+")


def is_yolo_root(path) -> bool:
    """Whether `path` is a folder with a ``data.yaml`` (or ``.yml``), or with ``classes.txt`` and ``labels/``."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any((path / n).is_file() for n in DATA_FILES) or (
        (path / "classes.txt").is_file() and (path / "labels").is_dir()
    )


# --- the data.yaml subset ---------------------------------------------------------------


def _strip_comment(text: str) -> str:
    """`text` without a ``#`` comment (one at the start or after a space, outside quotes)."""
    quote = None
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _split_flow(text: str, where) -> list[str]:
    """The comma-separated items of a flow collection's inside, quotes respected."""
    items, quote, current = [], None, ""
    for c in text:
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[]{}":
            raise DatasetError(*where("nested collections are not supported here"))
        elif c == ",":
            items.append(current.strip())
            current = ""
            continue
        current += c
    if current.strip():
        items.append(current.strip())
    return items


def _scalar(text: str, where):
    """A plain or quoted YAML scalar as a string (None for ``~``, ``null`` or nothing)."""
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text[0] == '"':
        if len(text) < 2 or text[-1] != '"':
            raise DatasetError(*where(f"unterminated quoted string {text!r:.60}"))
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise DatasetError(*where(f"unsupported escape in {text!r:.60}")) from None
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'":
            raise DatasetError(*where(f"unterminated quoted string {text!r:.60}"))
        return text[1:-1].replace("''", "'")
    if text[0] in "[]{}|>&*!%@`":
        raise DatasetError(*where(f"unsupported YAML {text!r:.60} (a plain or quoted value is needed)"))
    return text


def _key_value(text: str, where):
    """``key: value`` split at the first ``: `` (or a final ``:``) outside quotes."""
    quote = None
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == ":" and (i + 1 == len(text) or text[i + 1] in " \t"):
            return _scalar(text[:i], where), text[i + 1 :].strip()
    raise DatasetError(*where(f"expected 'key: value', found {text!r:.60}"))


def _value(rest: str, children, where):
    """A value: inline (`rest`: scalar, ``[...]`` or ``{...}``) or a block of indented `children`
    (``- item`` lines, or ``key: value`` lines)."""
    if rest:
        if children:
            raise DatasetError(*where(f"a value and an indented block at once ({children[0][0]})"))
        if rest[0] == "[":
            if not rest.endswith("]"):
                raise DatasetError(*where("a flow list must end on its line with ']'"))
            return [_scalar(item, where) for item in _split_flow(rest[1:-1], where)]
        if rest[0] == "{":
            if not rest.endswith("}"):
                raise DatasetError(*where("a flow mapping must end on its line with '}'"))
            return (
                dict(_key_value(item, where) for item in _split_flow(rest[1:-1], where)) if rest[1:-1].strip() else {}
            )
        return _scalar(rest, where)
    if not children:
        return None
    indent = children[0][1]
    if children[0][2].startswith("- ") or children[0][2] == "-":
        items = []
        for n, ind, text in children:
            at = _where_line(where, n)
            if ind != indent or not (text.startswith("- ") or text == "-"):
                raise DatasetError(*at(f"expected a '- item' line, found {text!r:.60}"))
            items.append(_scalar(text[1:], at))
        return items
    mapping = {}
    for n, ind, text in children:
        at = _where_line(where, n)
        if ind != indent:
            raise DatasetError(*at("nested blocks are not supported here"))
        key, value = _key_value(text, at)
        mapping[key] = _scalar(value, at)
    return mapping


def _where_line(where, n):
    path = where("")[0]
    return lambda message: (path, f"line {n}: {message}")


def parse_data_yaml(path) -> dict:
    """The keys ``path``, ``names``, ``nc``, ``train``, ``val``, ``test`` of a ``data.yaml``
    (those present), parsed from the YAML subset the module docstring describes. Other keys
    are skipped unread. Raises `DatasetError` naming the file and line."""
    path = Path(path)
    try:
        text = read_text(path, "utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read: {e}") from None
    blocks, current = [], None
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.strip() in ("---", "..."):
            continue
        line = _strip_comment(raw.replace("\t", "    "))
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0 and current is not None and (line.startswith("- ") or line == "-"):
            current[2].append((n, 0, line))  # a block list at its key's indentation
        elif indent == 0:
            current = [n, line, []]
            blocks.append(current)
        elif current is None:
            raise DatasetError(path, f"line {n}: indented line before any key")
        else:
            current[2].append((n, indent, line.strip()))
    data = {}
    for n, line, children in blocks:
        where = lambda message, n=n: (path, f"line {n}: {message}")  # noqa: E731
        key, rest = _key_value(line, where)
        if key not in _KEYS:
            continue  # not ours: skipped unread (Roboflow's roboflow:, download: scripts, ...)
        if key in data:
            raise DatasetError(path, f"line {n}: '{key}' given twice")
        data[key] = _value(rest, children, where)
    return data


# --- classes and splits -----------------------------------------------------------------


def _names(root: Path) -> tuple[list[str], dict, Path | None]:
    """``(class names, data.yaml keys, the data.yaml's path or None)``."""
    yaml_path = next((root / n for n in DATA_FILES if (root / n).is_file()), None)
    if yaml_path is None:
        classes_txt = root / "classes.txt"
        if not classes_txt.is_file():
            raise DatasetError(root, "not a YOLO root: no data.yaml or classes.txt")
        try:
            names = [line.strip() for line in read_text(classes_txt, "utf-8-sig").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(classes_txt, f"cannot read: {e}") from None
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


def _base(root: Path, data: dict, yaml_path) -> Path:
    """The folder the data.yaml's entries are relative to (see the module docstring)."""
    given = data.get("path")
    if not given:
        return root
    if not isinstance(given, str):
        raise DatasetError(yaml_path, "'path' must be a folder name")
    base = Path(given) if os.path.isabs(given) else root / given
    return base if base.is_dir() else root


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
    if not path.exists() and entry.startswith("../") and (base / entry[3:]).exists():
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
    raise DatasetError(where, f"the split entry {entry!r:.200}: {path} is neither a folder nor a .txt list of images")


def _split_images(root, split, names_data, yaml_path, policy, allow_outside) -> list[Path]:
    base = _base(root, names_data, yaml_path)
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
    """``(class indices, float64 [N, 4] normalised values, raw lines, problems)`` of a label file."""
    classes, values, shown, problems = [], [], [], []
    try:
        text = read_text(path, "utf-8-sig")
    except FileNotFoundError:
        return classes, np.zeros((0, 4)), shown, problems  # no label file: no objects
    except (OSError, UnicodeDecodeError) as e:
        return classes, np.zeros((0, 4)), shown, [Problem(str(path), f"cannot read the label file: {e}")]
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            hint = " (a segmentation polygon? only boxes are read)" if len(fields) > 5 else ""
            problems.append(
                Problem(str(path), f"line {n}: expected 5 values 'class cx cy w h', found {len(fields)}{hint}")
            )
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
        classes.append(index)
        values.append(numbers)
        shown.append(f"line {n} (class {index} '{names[index]}': {' '.join(fields[1:])})")
    return classes, np.array(values, np.float64).reshape(-1, 4), shown, problems


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
    root = Path(root)
    policy = policy or ProblemPolicy(skip_bad)
    names, data, yaml_path = _names(root)
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
        classes, values, shown, line_problems = _parse_labels(labels, names)
        problems += image_problems + line_problems
        boxes = np.zeros((0, 4), np.float32)
        if size is not None:
            boxes, box_problems = check_boxes(_corners(values, *size), size[0], size[1], labels, shown)
            problems += box_problems
        if policy.accept(problems):
            samples.append(Sample(image.stem, image, size[0], size[1], boxes, np.array(classes, np.int64) + 1))
    return Dataset(list(names), samples, policy.skipped, repairs=policy.repairs)


# --- writing ------------------------------------------------------------------------------


def _numbers(box, width: int, height: int) -> list[str]:
    """``cx cy w h`` texts, as few digits as read back (through `_corners`) to `box` in float32."""
    x1, y1, x2, y2 = (float(v) for v in box)
    exact = np.array([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height])
    target = np.asarray(box, np.float32)
    for digits in range(6, 18):
        texts = [f"{v:.{digits}g}" for v in exact]
        back = _corners(np.array([[float(t) for t in texts]]), width, height)[0].astype(np.float32)
        if np.array_equal(back, target):
            return texts
    return [repr(float(v)) for v in exact]


def _yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a YAML double-quoted scalar


def write_yolo(dataset: Dataset, root, split=None, images: str = "copy") -> None:
    """Write `dataset` as a YOLO root at `root` (added to what is there): ``images/[SPLIT/]ID.ext``
    (a copy or a symbolic link of each image), ``labels/[SPLIT/]ID.txt`` (an empty file for an
    image without objects) and ``data.yaml`` (the names, and the split's entry
    ``SPLIT: images/SPLIT``). An existing data.yaml must have the same names; its split
    entries are kept. See the module docstring for the numbers written."""
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
        entries = {k: data[k] for k in SPLIT_KEYS if data.get(k)}
    sub = Path(split) if split is not None else Path()
    for s in progress(dataset, desc="writing YOLO", total=len(dataset)):
        if not s.id or "/" in s.id or os.sep in s.id or s.id.startswith("."):
            raise DatasetError(s.image_path, f"sample id '{s.id}' cannot be a YOLO file name")
        if s.width <= 0 or s.height <= 0:
            raise DatasetError(s.image_path, f"sample '{s.id}' has no image size (needed for YOLO's normalised boxes)")
        place_image(s.image_path, root / "images" / sub / (s.id + s.image_path.suffix), images, "a YOLO root")
        lines = [f"{label - 1} {' '.join(_numbers(box, s.width, s.height))}\n" for box, label in zip(s.boxes, s.labels)]
        write_text(root / "labels" / sub / f"{s.id}.txt", "".join(lines))
    if split in SPLIT_KEYS:  # other split names are found as images/SPLIT/ by the reader
        entries[split] = f"images/{split}"
    text = ["# YOLO labels: one 'class cx cy w h' line per box, normalised by the image size\n"]
    for key in SPLIT_KEYS:
        value = entries.get(key)
        if isinstance(value, list):
            text.append(f"{key}: [{', '.join(_yaml_string(v) for v in value)}]\n")
        elif value:
            text.append(f"{key}: {_yaml_string(value)}\n")
    text.append(f"nc: {dataset.num_classes}\nnames:\n")
    text += [f"  {i}: {_yaml_string(name)}\n" for i, name in enumerate(dataset.classes)]
    write_text(yaml_path, "".join(text))
