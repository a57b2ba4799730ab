"""`load_dataset`: one entry point for every dataset form, chosen by what the path is.

- a Pascal VOC root (has ``Annotations/``, or ``annotations/`` of ``.xml`` files beside
  ``images/``: `rcnn.datasets.voc.voc_folders`): `rcnn.datasets.voc.read_voc`;
- a YOLO root (has ``data.yaml`` / ``data.yml``, or ``classes.txt`` and ``labels/``), or a
  ``.yaml`` / ``.yml`` file, the data.yaml of one: `rcnn.datasets.yolo.read_yolo`;
- a folder of images with same-stem VOC ``.xml`` files beside them: `read_voc_folder`;
- a ``.json`` file: COCO instances, `rcnn.datasets.coco.read_coco`;
- a ``.csv`` file: one box per row, `rcnn.datasets.csv_labels.read_csv_labels`.
"""

from __future__ import annotations

from pathlib import Path

from rcnn.datasets.coco import read_coco
from rcnn.datasets.core import Dataset
from rcnn.datasets.csv_labels import read_csv_labels
from rcnn.datasets.rules import Problem, ProblemPolicy
from rcnn.datasets.voc import read_voc, read_voc_folder, voc_folders
from rcnn.datasets.yolo import is_yolo_root, read_yolo
from rcnn.errors import DatasetError

KINDS = ("voc", "yolo", "folder", "coco", "csv")


def dataset_kind(path) -> str:
    """``"voc"``, ``"yolo"``, ``"folder"``, ``"coco"`` or ``"csv"``: what kind of dataset `path` is."""
    path = Path(path)
    if path.is_dir():
        if (path / "Annotations").is_dir():
            return "voc"
        if is_yolo_root(path):
            return "yolo"
        return "voc" if voc_folders(path) else "folder"
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        return "yolo"
    if path.suffix.lower() == ".json":
        return "coco"
    if path.suffix.lower() == ".csv":
        return "csv"
    if not path.exists():
        raise DatasetError(path, "no such file or folder")
    raise DatasetError(
        path,
        "not a dataset: expected a VOC root, a YOLO root (data.yaml or classes.txt) or its data.yaml, a folder of"
        " images with .xml files, a COCO .json or a .csv",
    )


def _with_classes(dataset: Dataset, classes, path, policy: ProblemPolicy) -> Dataset:
    """A dataset that brings its own class list (COCO, YOLO) on the class list `classes`."""
    if classes is None:
        return dataset
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        policy.fatal(Problem(str(path), f"unknown class(es) {', '.join(unknown)}; expected {', '.join(classes)}"))
        return dataset
    try:
        return dataset.with_classes(classes)
    except ValueError as e:
        policy.fatal(Problem(str(path), str(e)))
        return dataset


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

    `split` picks ``ImageSets/Main/SPLIT.txt`` of a VOC root, or a YOLO root's split (its
    data.yaml entry, ``images/SPLIT/`` or ``SPLIT.txt``); None: every annotation. `images`
    overrides the image folder (VOC, folder, COCO, CSV; a YOLO root's images are found by its
    layout). `classes` fixes the class list and its order (labels follow it; a class the data
    lacks has no ground truth; a class the data has but `classes` lacks is an error; default:
    the sorted names found; COCO files bring their own, in category-id order, and YOLO roots
    theirs, in index order). `check_images` opens image headers to check they exist, are not
    over `rcnn.datasets.images.MAX_PIXELS` and match the annotated size (default True, for
    every kind: pass False to use the annotations alone, as ``rcnn evaluate`` does; YOLO
    labels and CSV files without sizes need the headers anyway). Image paths in the
    annotations must stay inside the image folder unless `allow_outside_images`. Bad samples
    raise `DatasetError` / `ImageError` naming the file, or with `skip_bad` are counted in
    `Dataset.skipped`. (`policy`, a `rcnn.datasets.rules.ProblemPolicy`, and `decode` are for
    `rcnn.datasets.check.check_dataset`.)
    """
    policy = policy or ProblemPolicy(skip_bad)
    kind = dataset_kind(path)
    check = True if check_images is None else check_images
    outside = allow_outside_images
    if kind in ("coco", "csv", "folder") and split is not None:
        what = {
            "coco": "a COCO file is one split",
            "csv": "a CSV file is one split",
            "folder": "this is a plain folder",
        }[kind]
        raise DatasetError(path, f"--split applies to VOC roots (with ImageSets/Main/) and YOLO roots; {what}")
    if kind == "coco":
        dataset = read_coco(
            path, images, check_images=check, allow_outside_images=outside, policy=policy, decode=decode
        )
        return _with_classes(dataset, classes, path, policy)
    if kind == "yolo":
        if images is not None:
            raise DatasetError(
                path, "--images does not apply to a YOLO root: its images are found by its layout (images/, data.yaml)"
            )
        dataset = read_yolo(path, split, allow_outside_images=outside, policy=policy, decode=decode)
        return _with_classes(dataset, classes, path, policy)
    if kind == "csv":
        return read_csv_labels(
            path, images, classes, check_images=check, allow_outside_images=outside, policy=policy, decode=decode
        )
    if kind == "voc":
        return read_voc(
            path, split, images, classes, check_images=check, allow_outside_images=outside, policy=policy, decode=decode
        )
    return read_voc_folder(
        path, images, classes, check_images=check, allow_outside_images=outside, policy=policy, decode=decode
    )
