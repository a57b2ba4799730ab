"""Pascal VOC annotations: a VOC root or a flat folder of images with same-stem ``.xml``.

VOC's ``<bndbox>`` holds 1-based inclusive pixel corners; here, and only here, they become
continuous coordinates: ``x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax`` (the writer does
the inverse, exactly: reading back what it wrote gives the same float32 boxes). A sample's
id is the annotation file's stem; class names are the sorted names found unless given.

A VOC root::

    ROOT/Annotations/ID.xml  ROOT/JPEGImages/ID.jpg  ROOT/ImageSets/Main/SPLIT.txt
    ROOT/SegmentationObject/ID.png  ROOT/SegmentationClass/ID.png  (optional: masks)

or one of its common variants (`voc_folders`): ``annotations/`` for ``Annotations/``, and
``images/`` for ``JPEGImages/`` (the layout supervision and many Kaggle sets write).

Masks come from ``SegmentationObject/ID.png`` where it exists: a palette PNG whose index
``k`` marks the pixels of the ``k``-th ``<object>`` (0 background, 255 VOC's void border).
The writer writes it and ``SegmentationClass/ID.png`` (index: the class's label ``1..C`` in
the dataset's class order) for samples with masks, and ``ImageSets/Segmentation/SPLIT.txt``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from rcnn.cache import read_bytes, read_text, write_text
from rcnn.datasets.core import Dataset, Sample
from rcnn.datasets.images import IMAGE_SUFFIXES
from rcnn.datasets.masks import VOC_VOID, check_masks, index_image, index_masks, read_index_png, write_index_png
from rcnn.datasets.rules import Problem, ProblemPolicy, check_boxes, check_image, image_path_in, size_problem
from rcnn.datasets.writing import check_names, exact_number, place_image
from rcnn.errors import DatasetError
from rcnn.progress import progress

__all__ = ["read_voc", "read_voc_folder", "write_voc", "parse_voc_xml", "voc_folders", "IMAGE_SUFFIXES"]

ANNOTATION_FOLDERS = ("Annotations", "annotations")
IMAGE_FOLDERS = ("JPEGImages", "images", "Images")

_CORNERS = ("xmin", "ymin", "xmax", "ymax")
_FLAGS = {"0": False, "1": True, "false": False, "true": True}  # <difficult> (empty or absent: 0)


def parse_voc_xml(path) -> tuple[dict | None, list[Problem]]:
    """One VOC annotation file as ``{"filename", "size": (w, h) or None, "objects": [(name,
    [xmin, ymin, xmax, ymax] as in the file, difficult)]}`` (None if unreadable) plus the
    problems found in it. ``<difficult>`` is 0, 1, false or true (empty or absent: 0); any
    other text is a problem, not silently true."""
    path = Path(path)
    record = {"filename": None, "size": None, "objects": []}
    try:
        root = ET.fromstring(read_bytes(path))
    except FileNotFoundError:
        return None, [Problem(str(path), "annotation file not found")]
    except ET.ParseError as e:
        return None, [Problem(str(path), f"malformed XML: {e}")]
    except OSError as e:
        return None, [Problem(str(path), f"cannot read the annotation file: {e}")]
    if root.tag != "annotation":
        return None, [Problem(str(path), f"not a VOC annotation (root element <{root.tag}>)")]
    problems = []
    record["filename"] = (root.findtext("filename") or "").strip() or None
    try:
        w, h = int(float(root.findtext("size/width"))), int(float(root.findtext("size/height")))
        record["size"] = (w, h) if w > 0 and h > 0 else None
    except (TypeError, ValueError, OverflowError):
        pass  # no usable <size>: taken from the image
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        try:
            corners = [float(obj.findtext(f"bndbox/{k}")) for k in _CORNERS]
        except (TypeError, ValueError):
            problems.append(
                Problem(str(path), f"object {i + 1} '{name}': <bndbox> needs numbers xmin, ymin, xmax, ymax")
            )
            continue
        if not name:
            problems.append(Problem(str(path), f"object {i + 1}: no <name>"))
            continue
        difficult = (obj.findtext("difficult") or "0").strip().lower()
        if difficult not in _FLAGS:
            problems.append(
                Problem(str(path), f"object {i + 1} '{name}': <difficult> must be 0 or 1, not {difficult!r:.40}")
            )
            continue
        record["objects"].append((name, corners, _FLAGS[difficult]))
    return record, problems


def voc_folders(root) -> tuple[Path, Path] | None:
    """``(annotation folder, image folder)`` of a VOC root or variant, or None when `root`
    is none: ``Annotations/`` (or ``annotations/`` holding ``.xml`` files: a COCO set keeps
    its JSON there), and the first of ``JPEGImages/``, ``images/``, ``Images/`` that exists
    (``JPEGImages/`` when none does)."""
    root = Path(root)
    annotations = next(
        (
            root / n
            for n in ANNOTATION_FOLDERS
            if (root / n).is_dir() and (n == "Annotations" or any((root / n).glob("*.xml")))
        ),
        None,
    )
    if annotations is None:
        return None
    images = next((root / n for n in IMAGE_FOLDERS if (root / n).is_dir()), root / "JPEGImages")
    return annotations, images


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    found = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(p.stem, []).append(p)
    return found


def _read(
    xml_paths,
    image_dir: Path,
    classes,
    check_images,
    policy: ProblemPolicy,
    decode: bool,
    allow_outside=False,
    mask_dir: Path | None = None,
) -> Dataset:
    """Samples from annotation files, images looked up in `image_dir` by stem (or <filename>,
    which must not lead outside `image_dir` unless `allow_outside`), masks from
    ``mask_dir/STEM.png`` where it exists."""
    images = _images_by_stem(image_dir)
    known = None if classes is None else set(classes)
    kept = []
    for xml_path in progress(xml_paths, desc="reading VOC"):
        record, problems = parse_voc_xml(xml_path)
        if record is None:
            policy.accept(problems)
            continue
        stem = xml_path.stem
        filename = record["filename"]
        candidates = images.get(stem) or []
        if not candidates and filename and "\x00" not in filename and (image_dir / Path(filename).name).is_file():
            candidates = [image_dir / Path(filename).name]
        outside = None
        if candidates:
            image_path = candidates[0]
        else:
            image_path, outside = image_path_in(image_dir, filename or stem + ".jpg", allow_outside)
            if not outside and filename and image_path.is_file():
                candidates = [image_path]  # <filename> as a path under the folder (or outside, when allowed)
        size = record["size"]
        if len(candidates) > 1:
            names = (
                " and ".join(str(p) for p in candidates) if len(candidates) == 2 else ", ".join(map(str, candidates))
            )
            problems.append(Problem(str(xml_path), f"more than one image for sample '{stem}': {names} (keep one)"))
        elif outside:
            problems.append(Problem(str(xml_path), f"<filename> {filename!r:.200} {outside}"))
        elif not candidates and (check_images or size is None):
            problems.append(Problem(str(xml_path), f"no image for it in {image_dir} (looked for {stem}.*)", image=True))
        elif check_images or size is None:
            actual, image_problems = check_image(image_path, decode)
            problems += image_problems + size_problem(xml_path, size, actual, image_path)
            size = size or actual
        objects = record["objects"]
        if known is not None:
            for i, (name, _, _) in enumerate(objects):
                if name not in known:
                    problems.append(Problem(str(xml_path), f"object {i + 1}: unknown class '{name}'"))
        boxes = [[x1 - 1, y1 - 1, x2, y2] for _, (x1, y1, x2, y2), _ in objects]
        if size is not None:
            what = [
                f"object {i + 1} '{n}' <bndbox> {' '.join(f'{v:g}' for v in c)}" for i, (n, c, _) in enumerate(objects)
            ]
            boxes, box_problems = check_boxes(boxes, size[0], size[1], xml_path, what)
            problems += box_problems
        masks = None
        if mask_dir is not None and size is not None and (mask_dir / f"{stem}.png").is_file():
            masks, mask_problems = _read_masks(mask_dir / f"{stem}.png", size, boxes, objects)
            problems += mask_problems
        if policy.accept(problems):
            kept.append((stem, image_path, size, boxes, objects, masks))
    if classes is None:
        classes = sorted({name for *_, objects, _ in kept for name, _, _ in objects})
    label = {name: i + 1 for i, name in enumerate(classes)}
    samples = [
        Sample(
            stem,
            image_path,
            size[0],
            size[1],
            boxes,
            [label[n] for n, _, _ in objs],
            [d for _, _, d in objs],
            masks=masks,
        )
        for stem, image_path, size, boxes, objs, masks in kept
    ]
    return Dataset(list(classes), samples, policy.skipped, repairs=policy.repairs)


def _read_masks(png: Path, size, boxes, objects):
    """``(masks, problems)`` of the objects from their ``SegmentationObject`` PNG: one RLE per
    object, None for an object without pixels."""
    indices, reason = read_index_png(png)
    if reason:
        return None, [Problem(str(png), reason)]
    if indices.shape != (size[1], size[0]):
        h, w = indices.shape
        return None, [Problem(str(png), f"mask image is {w}x{h}, the annotated image {size[0]}x{size[1]}")]
    extra = sorted(set(np.unique(indices).tolist()) - {0, VOC_VOID} - set(range(1, len(objects) + 1)))
    if extra:
        return None, [Problem(str(png), f"object index(es) {extra[:5]} but only {len(objects)} <object>(s)")]
    masks = index_masks(indices, len(objects))
    what = [f"object {i + 1} '{n}'" for i, (n, _, _) in enumerate(objects)]
    return masks, check_masks(masks, np.asarray(boxes, np.float64).reshape(-1, 4), png, what)


def read_voc(
    root,
    split=None,
    images=None,
    classes=None,
    skip_bad=False,
    check_images=True,
    *,
    allow_outside_images=False,
    policy=None,
    decode=False,
):
    """The VOC root at `root` (or a variant: `voc_folders`): ``ImageSets/Main/SPLIT.txt``'s ids,
    or every ``Annotations/*.xml`` when `split` is None. `images` overrides ``JPEGImages/``. With `check_images`, image
    headers are read to check they exist, are not over `rcnn.datasets.images.MAX_PIXELS` and
    match ``<size>`` (`decode`: read fully). An image is found by the annotation's stem, else
    by ``<filename>``; a ``<filename>`` leading outside the image folder (absolute, ``..``) is
    an error unless `allow_outside_images`."""
    root = Path(root)
    policy = policy or ProblemPolicy(skip_bad)
    folders = voc_folders(root)
    if folders is None:
        raise DatasetError(root, "not a VOC root: no Annotations/ folder")
    annotations, image_dir = folders
    if split is None:
        xml_paths = sorted(annotations.glob("*.xml"))
    else:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
            raise DatasetError(split_file, f"split '{split}' not found; this root has: {', '.join(have) or 'none'}")
        xml_paths, seen = [], set()
        try:
            text = read_text(split_file)
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(split_file, f"cannot read: {e}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            sample_id = line.split()[0]
            if sample_id in seen:
                policy.accept([Problem(str(split_file), f"line {n}: duplicate id '{sample_id}'")])
                continue
            seen.add(sample_id)
            xml_paths.append(annotations / f"{sample_id}.xml")
    image_dir = Path(images) if images is not None else image_dir
    mask_dir = root / "SegmentationObject"
    return _read(xml_paths, image_dir, classes, check_images, policy, decode, allow_outside_images, mask_dir)


def read_voc_folder(
    folder,
    images=None,
    classes=None,
    skip_bad=False,
    check_images=True,
    *,
    allow_outside_images=False,
    policy=None,
    decode=False,
):
    """A flat folder of images, each with a same-stem VOC ``.xml`` beside it (images without
    one are not samples; `check_dataset` notes them). Arguments as for `read_voc`."""
    folder = Path(folder)
    policy = policy or ProblemPolicy(skip_bad)
    xml_paths = sorted(folder.glob("*.xml"))
    if not xml_paths:
        raise DatasetError(folder, "no VOC .xml annotation files in this folder")
    image_dir = Path(images) if images is not None else folder
    return _read(xml_paths, image_dir, classes, check_images, policy, decode, allow_outside_images)


def voc_xml(sample: Sample, classes, filename: str) -> str:
    """The VOC annotation text of one sample (boxes back to 1-based inclusive corners)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for key, value in (("width", sample.width), ("height", sample.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box, label, difficult in zip(sample.boxes, sample.labels, sample.difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value, offset in zip(_CORNERS, box, (-1, -1, 0, 0)):
            ET.SubElement(bndbox, key).text = str(exact_number(value, offset))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(dataset: Dataset, root, split=None, images: str = "copy") -> None:
    """Write `dataset` as a VOC root at `root` (added to what is there): ``Annotations/ID.xml``,
    ``JPEGImages/ID.ext`` (a copy or a symbolic link of each image) and, with `split`,
    ``ImageSets/Main/SPLIT.txt``. COCO's ``iscrowd`` and ``area`` have no VOC form and are dropped.
    A sample with masks also gets ``SegmentationObject/ID.png`` and ``SegmentationClass/ID.png``
    (where masks overlap the later object keeps the pixel: VOC holds one object per pixel) and,
    with `split`, a line in ``ImageSets/Segmentation/SPLIT.txt``."""
    if images not in ("copy", "link"):
        raise ValueError(f"images must be 'copy' or 'link', not {images!r}")
    duplicate = dataset.duplicate_id()
    if duplicate:
        i, a, b = duplicate
        raise DatasetError(
            root, f"two samples have the id '{i}' ({a.image_path} and {b.image_path}); VOC file names would clash"
        )
    root = Path(root)
    check_names(dataset.classes, "voc", root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for s in progress(dataset, desc="writing VOC", total=len(dataset)):
        if not s.id or "/" in s.id or os.sep in s.id or s.id.startswith("."):
            raise DatasetError(s.image_path, f"sample id '{s.id}' cannot be a VOC file name")
        dst = root / "JPEGImages" / (s.id + s.image_path.suffix)
        place_image(s.image_path, dst, images, "a VOC root")
        write_text(root / "Annotations" / f"{s.id}.xml", voc_xml(s, dataset.classes, dst.name))
        if s.masks is not None:
            objects = index_image(s.masks, s.height, s.width)
            for folder, indices in (("SegmentationObject", objects), ("SegmentationClass", _class_image(s, objects))):
                write_index_png(root / folder / f"{s.id}.png", indices)
    if split is not None:
        write_text(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{s.id}\n" for s in dataset))
        segmented = [s.id for s in dataset if s.masks is not None]
        if segmented:
            write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in segmented))


def _class_image(sample: Sample, objects: np.ndarray) -> np.ndarray:
    """``SegmentationClass`` indices from ``SegmentationObject``'s: each object's label."""
    lut = np.zeros(256, np.uint8)
    lut[1 : len(sample.labels) + 1] = sample.labels
    return lut[objects]
