"""COCO files: instances JSON (ground truth) and results JSON (detections).

COCO's ``bbox`` is ``x, y, w, h`` in continuous pixels; it becomes ``x1, y1, x2, y2`` here and
nowhere else. Classes are the categories in id order and `Dataset.category_ids` keeps their
ids; a sample's id is ``str(image id)``; ``iscrowd`` and ``area`` are kept per box.

Results records are ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``. For a
COCO dataset ``image_id`` is the integer image id and ``category_id`` the COCO category id;
for a VOC or folder dataset (no `category_ids`) ``image_id`` is the sample id (the image
file's stem, a string) and ``category_id`` the class name.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from rcnn.datasets.check import Gather, Problem, check_boxes, check_image, exact_number, size_problem, write_atomic
from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.errors import DatasetError
from rcnn.progress import progress

__all__ = ["read_coco", "write_coco", "read_detections", "write_detections"]


def load_json(path):
    """The parsed JSON file at `path`; missing or malformed files raise `DatasetError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"malformed JSON: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_coco(path, images=None, skip_bad: bool = False, check_images: bool = False, *, gather=None, decode=False):
    """The COCO instances file at `path` as a `Dataset`.

    `images` is the folder the ``file_name``\\ s are relative to (default: the JSON's folder).
    Image files are not touched unless `check_images` (header read: exists, size matches;
    `decode` reads them fully). Bad entries raise `DatasetError` naming the file, or with
    `skip_bad` are left out and listed in `Dataset.skipped`.
    """
    path = Path(path)
    gather = gather or Gather(skip_bad)
    where = str(path)
    try:
        data = load_json(path)
    except DatasetError as e:
        gather.fatal(Problem(where, e.message))
        return Dataset([], [])
    if not (isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("categories"), list)):
        gather.fatal(Problem(where, "not a COCO instances file: needs 'images' and 'categories' lists"))
        return Dataset([], [])
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        gather.fatal(Problem(where, "'annotations' is not a list"))
        return Dataset([], [])
    image_dir = Path(images) if images is not None else path.parent

    names = {}
    for k, c in enumerate(data["categories"]):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            gather.fatal(Problem(where, f"category #{k}: needs an integer 'id' and a string 'name'"))
            return Dataset([], [])
        if c["id"] in names or c["name"] in names.values():
            gather.fatal(Problem(where, f"duplicate category {c['id']} '{c['name']}'"))
            return Dataset([], [])
        names[c["id"]] = c["name"]
    category_ids = sorted(names)
    classes = [names[i] for i in category_ids]
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}

    entries = {}  # image id -> {"image": dict, "anns": [...], "problems": [...]}
    for k, im in enumerate(data["images"]):
        ok = isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
        ok = ok and _is_int(im.get("width")) and _is_int(im.get("height")) and im["width"] > 0 and im["height"] > 0
        if not ok:
            gather.accept([Problem(where, f"image #{k}: needs an integer 'id', 'width', 'height' and a 'file_name'")])
        elif im["id"] in entries:
            gather.accept([Problem(where, f"image #{k}: duplicate image id {im['id']}")])
        else:
            entries[im["id"]] = {"image": im, "anns": [], "problems": []}

    seen = set()
    for k, a in enumerate(annotations):
        entry = entries.get(a.get("image_id")) if isinstance(a, dict) else None
        if entry is None:
            image_id = a.get("image_id") if isinstance(a, dict) else None
            gather.accept([Problem(where, f"annotation #{k}: unknown image_id {image_id!r}")])
            continue
        what = f"image {a['image_id']}: annotation {a.get('id', '#' + str(k))}"
        if "id" in a:
            if a["id"] in seen:
                entry["problems"].append(Problem(where, f"{what}: duplicate annotation id"))
            seen.add(a["id"])
        if a.get("category_id") not in label_of:
            entry["problems"].append(Problem(where, f"{what}: unknown category_id {a.get('category_id')!r}"))
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            entry["problems"].append(Problem(where, f"{what}: 'bbox' is not 4 numbers: {bbox!r}"))
            continue
        entry["anns"].append((f"{what} ('{names[a['category_id']]}')", a, bbox))

    samples = []
    for image_id, entry in progress(entries.items(), desc="reading COCO", total=len(entries)):
        im, anns, problems = entry["image"], entry["anns"], entry["problems"]
        image_path = image_dir / im["file_name"]
        if check_images:
            size, image_problems = check_image(image_path, decode)
            problems += image_problems + size_problem(image_path, (im["width"], im["height"]), size)
        xywh = np.array([b for _, _, b in anns], np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes, box_problems = check_boxes(xyxy, im["width"], im["height"], where, [w for w, _, _ in anns])
        if not gather.accept(problems + box_problems):
            continue
        samples.append(
            Sample(
                id=str(image_id),
                image_path=image_path,
                width=im["width"],
                height=im["height"],
                boxes=boxes,
                labels=[label_of[a["category_id"]] for _, a, _ in anns],
                difficult=[bool(a.get("difficult", 0)) for _, a, _ in anns],
                iscrowd=[bool(a.get("iscrowd", 0)) for _, a, _ in anns],
                area=[a["area"] if _is_number(a.get("area")) else w * h for _, a, (_, _, w, h) in anns],
            )
        )
    return Dataset(classes, samples, gather.skipped, category_ids, gather.repairs)


def coco_image_ids(dataset: Dataset) -> list[int]:
    """Integer image ids for a dataset's samples: the ids themselves when all are distinct
    non-negative integers (as after `read_coco`), else ``1..N`` in sample order."""
    ids = [s.id for s in dataset]
    if all(re.fullmatch(r"\d+", i) for i in ids) and len(set(map(int, ids))) == len(ids):
        return [int(i) for i in ids]
    return list(range(1, len(ids) + 1))


def _xywh(box) -> list:
    """An xyxy float32 box as COCO ``[x, y, w, h]`` numbers that read back to the same box."""
    x, y = exact_number(box[0]), exact_number(box[1])
    return [x, y, exact_number(box[2], x), exact_number(box[3], y)]


def write_coco(dataset: Dataset, path, images=None) -> None:
    """Write `dataset` as a COCO instances file at `path`.

    ``file_name``\\ s are relative to `images` (default: the JSON's folder), so `read_coco`
    finds them again. Difficult boxes carry ``"difficult": 1`` (COCO has no such flag).
    """
    path = Path(path)
    base = os.path.abspath(images if images is not None else path.parent)
    cat_ids = dataset.category_ids or list(range(1, dataset.num_classes + 1))
    out_images, out_anns = [], []
    for image_id, s in zip(coco_image_ids(dataset), dataset):
        file_name = Path(os.path.relpath(os.path.abspath(s.image_path), base)).as_posix()
        out_images.append({"id": image_id, "file_name": file_name, "width": s.width, "height": s.height})
        for box, label, difficult, crowd, area in zip(s.boxes, s.labels, s.difficult, s.iscrowd, s.area):
            ann = {
                "id": len(out_anns) + 1,
                "image_id": image_id,
                "category_id": cat_ids[label - 1],
                "bbox": _xywh(box),
                "area": exact_number(area),
                "iscrowd": int(crowd),
            }
            if difficult:
                ann["difficult"] = 1
            out_anns.append(ann)
    categories = [{"id": c, "name": n, "supercategory": ""} for c, n in zip(cat_ids, dataset.classes)]
    data = {"images": out_images, "annotations": out_anns, "categories": categories}
    write_atomic(path, json.dumps(data, separators=(",", ":")))


def read_detections(path, dataset: Dataset) -> dict[str, Detections]:
    """The results file at `path` as ``{sample id: Detections}`` for every sample of `dataset`
    (empty where it has none). See the module docstring for the two naming styles; an
    unknown image or category, or a malformed record, raises `DatasetError` naming both."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetError(path, "a results file is a JSON list of {image_id, category_id, bbox, score} records")
    coco = dataset.category_ids is not None
    ids = {s.id for s in dataset}
    labels = {c: i + 1 for i, c in enumerate(dataset.category_ids if coco else dataset.classes)}
    found = {s.id: ([], [], []) for s in dataset}
    for k, r in enumerate(data):
        if not (isinstance(r, dict) and {"image_id", "category_id", "bbox", "score"} <= r.keys()):
            raise DatasetError(path, f"record {k}: needs image_id, category_id, bbox and score")
        image_id, category = r["image_id"], r["category_id"]
        key = str(image_id) if (_is_int(image_id) if coco else isinstance(image_id, str)) else None
        if key not in ids:
            raise DatasetError(path, f"record {k}: unknown image_id {image_id!r}")
        label = labels.get(category) if (_is_int(category) if coco else isinstance(category, str)) else None
        if label is None:
            raise DatasetError(path, f"record {k}: unknown category_id {category!r}")
        bbox, score = r["bbox"], r["score"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DatasetError(path, f"record {k}: 'bbox' is not 4 numbers: {bbox!r}")
        if not _is_number(score):
            raise DatasetError(path, f"record {k}: 'score' is not a number: {score!r}")
        boxes, scores, labs = found[key]
        boxes.append(bbox)
        scores.append(score)
        labs.append(label)
    out = {}
    for key, (boxes, scores, labs) in found.items():
        xywh = np.array(boxes, np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out[key] = Detections(xyxy, scores, labs)
    return out


def write_detections(path, detections: dict[str, Detections], dataset: Dataset) -> None:
    """Write ``{sample id: Detections}`` as a results file at `path`, named as `read_detections`
    reads them (COCO ids for a COCO dataset, sample ids and class names otherwise)."""
    coco = dataset.category_ids is not None
    ids = {s.id for s in dataset}
    unknown = [i for i in detections if i not in ids]
    if unknown:
        raise DatasetError(path, f"detections for sample id {unknown[0]!r}, which is not in the dataset")
    names = dataset.category_ids if coco else dataset.classes
    records = []
    for s in dataset:
        d = detections.get(s.id)
        if d is None:
            continue
        image_id = int(s.id) if coco else s.id
        for box, score, label in zip(d.boxes, d.scores, d.labels):
            if not 1 <= label <= len(names):
                raise DatasetError(path, f"sample {s.id}: label {label} outside 1..{len(names)}")
            records.append(
                {"image_id": image_id, "category_id": names[label - 1], "bbox": _xywh(box), "score": exact_number(score)}
            )
    write_atomic(path, json.dumps(records, separators=(",", ":")))
