"""`load_dataset`: one entry point for every dataset form, chosen by what the path is.

- a Pascal VOC root (has ``Annotations/``): `rcnn.datasets.voc.read_voc`;
- a folder of images with same-stem VOC ``.xml`` files beside them: `read_voc_folder`;
- a ``.json`` file: COCO instances, `rcnn.datasets.coco.read_coco`.
"""

from __future__ import annotations

from pathlib import Path

from rcnn.datasets.coco import read_coco
from rcnn.datasets.core import Dataset
from rcnn.datasets.rules import Problem, ProblemPolicy
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
    path,
    split=None,
    images=None,
    skip_bad: bool = False,
    *,
    classes=None,
    check_images=None,
    allow_outside_images: bool = False,
    policy=None,
    decode=False,
) -> Dataset:
    """The dataset at `path` (see the module docstring).

    `split` picks ``ImageSets/Main/SPLIT.txt`` of a VOC root (None: every annotation).
    `images` overrides the image folder. `classes` fixes the class list and its order (labels
    follow it; a class the data lacks has no ground truth; a class the data has but `classes`
    lacks is an error; default: the sorted names found; COCO files bring their own, in
    category-id order). `check_images` opens image headers to check they exist, are not over
    `rcnn.datasets.images.MAX_PIXELS` and match the annotated size (default True, for every
    kind: pass False to use the annotations alone, as ``rcnn evaluate`` does). Image paths in
    the annotations must stay inside the image folder unless `allow_outside_images`. Bad
    samples raise `DatasetError` / `ImageError` naming the file, or with `skip_bad` are
    counted in `Dataset.skipped`. (`policy`, a `rcnn.datasets.rules.ProblemPolicy`, and `decode` are for
    `rcnn.datasets.check.check_dataset`.)
    """
    policy = policy or ProblemPolicy(skip_bad)
    kind = dataset_kind(path)
    check = True if check_images is None else check_images
    outside = allow_outside_images
    if kind == "coco":
        if split is not None:
            raise DatasetError(path, "--split applies to VOC roots; a COCO file is one split")
        dataset = read_coco(path, images, check_images=check, allow_outside_images=outside, policy=policy, decode=decode)
        if classes is not None:
            unknown = [c for c in dataset.classes if c not in classes]
            if unknown:
                policy.fatal(Problem(str(path), f"unknown class(es) {', '.join(unknown)}; expected {', '.join(classes)}"))
                return dataset
            try:
                dataset = dataset.with_classes(classes)
            except ValueError as e:
                policy.fatal(Problem(str(path), str(e)))
        return dataset
    if kind == "voc":
        return read_voc(path, split, images, classes, check_images=check, allow_outside_images=outside, policy=policy, decode=decode)
    if split is not None:
        raise DatasetError(path, "--split applies to VOC roots (with ImageSets/Main/); this is a plain folder")
    return read_voc_folder(path, images, classes, check_images=check, allow_outside_images=outside, policy=policy, decode=decode)
