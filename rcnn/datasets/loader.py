"""`load_dataset`: one entry point for every dataset form, chosen by what the path is.

- a Pascal VOC root (has ``Annotations/``): `rcnn.datasets.voc.read_voc`;
- a folder of images with same-stem VOC ``.xml`` files beside them: `read_voc_folder`;
- a ``.json`` file: COCO instances, `rcnn.datasets.coco.read_coco`.
"""

from __future__ import annotations

from pathlib import Path

from rcnn.datasets.check import Gather, Problem
from rcnn.datasets.coco import read_coco
from rcnn.datasets.core import Dataset
from rcnn.datasets.voc import read_voc, read_voc_folder
from rcnn.errors import DatasetError


def dataset_kind(path) -> str:
    """``"voc"``, ``"folder"`` or ``"coco"``: what kind of dataset `path` is."""
    path = Path(path)
    if path.is_dir():
        return "voc" if (path / "Annotations").is_dir() else "folder"
    if path.suffix.lower() == ".json":
        return "coco"
    if not path.exists():
        raise DatasetError(path, "no such file or folder")
    raise DatasetError(path, "not a dataset: expected a VOC root, a folder of images with .xml files, or a COCO .json")


def load_dataset(
    path, split=None, images=None, skip_bad: bool = False, *, classes=None, check_images=None, gather=None, decode=False
) -> Dataset:
    """The dataset at `path` (see the module docstring).

    `split` picks ``ImageSets/Main/SPLIT.txt`` of a VOC root (None: every annotation).
    `images` overrides the image folder. `classes` fixes the class list (unknown names are
    errors; default: the sorted names found; COCO files bring their own). `check_images`
    opens image headers to check they exist and match the annotated size (default: True for
    VOC, False for COCO, whose ground truth is often used without images). Bad samples raise
    `DatasetError` / `ImageError` naming the file, or with `skip_bad` are counted in
    `Dataset.skipped`. (`gather` and `decode` are for `check_dataset`.)
    """
    gather = gather or Gather(skip_bad)
    kind = dataset_kind(path)
    if kind == "coco":
        if split is not None:
            raise DatasetError(path, "--split applies to VOC roots; a COCO file is one split")
        dataset = read_coco(path, images, check_images=bool(check_images), gather=gather, decode=decode)
        unknown = [c for c in dataset.classes if classes is not None and c not in classes]
        if unknown:
            gather.fatal(Problem(str(path), f"unknown class(es) {', '.join(unknown)}; expected {', '.join(classes)}"))
        return dataset
    check = True if check_images is None else check_images
    if kind == "voc":
        return read_voc(path, split, images, classes, check_images=check, gather=gather, decode=decode)
    if split is not None:
        raise DatasetError(path, "--split applies to VOC roots (with ImageSets/Main/); this is a plain folder")
    return read_voc_folder(path, images, classes, check_images=check, gather=gather, decode=decode)
