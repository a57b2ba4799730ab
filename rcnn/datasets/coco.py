"""COCO files: instances JSON (ground truth) and results JSON (detections).

COCO's ``bbox`` is ``x, y, w, h`` in continuous pixels; it becomes ``x1, y1, x2, y2`` here and
nowhere else. Classes are the categories in id order and `Dataset.category_ids` keeps their
ids; a sample's id is ``str(image id)``; ``iscrowd`` and ``area`` are kept per box. A
``segmentation`` (polygons, RLE or crowd RLE; absent, null or ``[]``: none) becomes the
object's mask (`rcnn.datasets.masks`), checked like a box: a malformed one, or one whose
box disagrees with ``bbox``, is an error naming the file and the annotation id.

Results records are ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, plus a
COCO RLE ``segmentation`` when the detector gives masks. For a
COCO dataset ``image_id`` is the integer image id and ``category_id`` the COCO category id;
for a VOC or folder dataset (no `category_ids`) ``image_id`` is the sample id (the image
file's stem, a string) and ``category_id`` the class name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from rcnn.boxes import xywh_to_xyxy
from rcnn.cache import read_text, write_text
from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.datasets.masks import check_masks, decode, parse_segmentation, rle_json, to_polygon
from rcnn.datasets.rules import Problem, ProblemPolicy, check_boxes, check_image, image_path_in, size_problem
from rcnn.datasets.writing import exact_number, image_base, relative_name
from rcnn.errors import DatasetError
from rcnn.progress import progress

__all__ = ["read_coco", "write_coco", "read_detections", "write_detections", "load_results", "result_categories"]


def load_json(path):
    """The parsed JSON file at `path`; missing or malformed files raise `DatasetError`."""
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a folder, not a JSON file") from None
    except OSError as e:
        raise DatasetError(path, f"cannot read: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"malformed JSON: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fits_float32(v) -> bool:
    """A finite number that float32 holds without overflowing (boxes, scores and areas are float32)."""
    return _is_number(v) and abs(v) <= FLOAT32_MAX


def _flag(a: dict, key: str):
    """A COCO 0/1 flag (``iscrowd``, ``difficult``): absent or null is 0; 0, 1, false and true
    are accepted; anything else (the string "0" among them, which pycocotools would take as
    true) is refused: returns ``(value, None)`` or ``(None, reason)``."""
    v = a.get(key)
    if v is None:
        return False, None
    if isinstance(v, (bool, int, float)) and v in (0, 1):
        return bool(v), None
    return None, f"'{key}' must be 0 or 1 (or false / true), not {v!r}"


def _scalar_id(v) -> bool:
    """An id usable as a key: an integer or a string (not a list, dict, float or bool)."""
    return _is_int(v) or isinstance(v, str)


def read_coco(
    path,
    images=None,
    skip_bad: bool = False,
    check_images: bool = False,
    *,
    allow_outside_images: bool = False,
    policy=None,
    decode=False,
):
    """The COCO instances file at `path` as a `Dataset`.

    `images` is the folder the ``file_name``\\ s are relative to (default: the JSON's folder);
    a ``file_name`` that leaves it (absolute, or ``..``) is an error unless
    `allow_outside_images`. Image files are not touched unless `check_images` (header read:
    exists, not over `rcnn.datasets.images.MAX_PIXELS`, size matches ``width``/``height``;
    `decode` reads them fully). ``iscrowd`` and ``difficult`` are 0 / 1 / false / true. Bad
    entries raise `DatasetError` naming the file, or with `skip_bad` are left out and listed
    in `Dataset.skipped`.
    """
    path = Path(path)
    policy = policy or ProblemPolicy(skip_bad)
    where = str(path)
    try:
        data = load_json(path)
    except DatasetError as e:
        policy.fatal(Problem(where, e.message))
        return Dataset([], [])
    if not (
        isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("categories"), list)
    ):
        policy.fatal(Problem(where, "not a COCO instances file: needs 'images' and 'categories' lists"))
        return Dataset([], [])
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        policy.fatal(Problem(where, "'annotations' is not a list"))
        return Dataset([], [])
    image_dir = Path(images) if images is not None else path.parent

    names = {}
    for k, c in enumerate(data["categories"]):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str) and c["name"]):
            policy.fatal(Problem(where, f"category #{k}: needs an integer 'id' and a non-empty string 'name'"))
            return Dataset([], [])
        if c["id"] in names or c["name"] in names.values():
            policy.fatal(Problem(where, f"duplicate category {c['id']} '{c['name']}'"))
            return Dataset([], [])
        names[c["id"]] = c["name"]
    category_ids = sorted(names)
    classes = [names[i] for i in category_ids]
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}

    entries = {}  # image id -> {"image": dict, "anns": [...], "problems": [...]}
    for k, im in enumerate(data["images"]):
        ok = isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
        ok = ok and _is_int(im.get("width")) and _is_int(im.get("height"))
        ok = ok and 0 < im["width"] < 2**31 and 0 < im["height"] < 2**31
        if not ok:
            policy.accept([Problem(where, f"image #{k}: needs an integer 'id', 'width', 'height' and a 'file_name'")])
        elif im["id"] in entries:
            policy.accept([Problem(where, f"image #{k}: duplicate image id {im['id']}")])
        else:
            entries[im["id"]] = {"image": im, "anns": [], "problems": []}

    seen = set()
    for k, a in enumerate(annotations):
        if not isinstance(a, dict):
            policy.accept([Problem(where, f"annotation #{k}: not a JSON object: {a!r:.60}")])
            continue
        image_id = a.get("image_id")
        entry = entries.get(image_id) if _is_int(image_id) else None
        if entry is None:
            policy.accept([Problem(where, f"annotation #{k}: unknown image_id {image_id!r:.60}")])
            continue
        if "id" in a and not _scalar_id(a["id"]):
            entry["problems"].append(
                Problem(where, f"image {image_id}: annotation #{k}: 'id' must be an integer, not {a['id']!r:.60}")
            )
            continue
        what = f"image {image_id}: annotation {a.get('id', '#' + str(k))}"
        if "id" in a:
            if a["id"] in seen:
                entry["problems"].append(Problem(where, f"{what}: duplicate annotation id"))
            seen.add(a["id"])
        category = a.get("category_id")
        if not (_is_int(category) and category in label_of):
            entry["problems"].append(Problem(where, f"{what}: unknown category_id {category!r:.60}"))
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            entry["problems"].append(Problem(where, f"{what}: 'bbox' is not 4 numbers: {bbox!r:.80}"))
            continue
        flags = [_flag(a, "iscrowd"), _flag(a, "difficult")]
        area = a.get("area")
        if area is not None and not (_fits_float32(area) and area >= 0):
            flags.append((None, f"'area' must be a number >= 0, not {area!r:.60}"))
        mask, seg = None, a.get("segmentation")
        if seg is not None and seg != []:
            mask, reason = parse_segmentation(seg, entry["image"]["width"], entry["image"]["height"])
            flags.append((None, reason))
        bad = [reason for _, reason in flags if reason]
        if bad:
            entry["problems"] += [Problem(where, f"{what}: {reason}") for reason in bad]
            continue
        a = dict(a, iscrowd=flags[0][0], difficult=flags[1][0], mask=mask)
        entry["anns"].append((f"{what} ('{names[category]}')", a, bbox))

    samples = []
    for image_id, entry in progress(entries.items(), desc="reading COCO", total=len(entries)):
        im, anns, problems = entry["image"], entry["anns"], entry["problems"]
        image_path, outside = image_path_in(image_dir, im["file_name"], allow_outside_images)
        if outside:
            problems.append(Problem(where, f"image {image_id}: file_name {im['file_name']!r:.200} {outside}"))
        elif check_images:
            size, image_problems = check_image(image_path, decode)
            what = f"image {image_id} ({image_path})"
            problems += image_problems
            problems += size_problem(where, (im["width"], im["height"]), size, image_path, what)
        xyxy = _xyxy([b for _, _, b in anns])
        boxes, box_problems = check_boxes(xyxy, im["width"], im["height"], where, [w for w, _, _ in anns])
        masks = [a["mask"] for _, a, _ in anns]
        if any(m is not None for m in masks):
            box_problems += check_masks(masks, boxes, where, [w for w, _, _ in anns])
        else:
            masks = None
        if not policy.accept(problems + box_problems):
            continue
        samples.append(
            Sample(
                id=str(image_id),
                image_path=image_path,
                width=im["width"],
                height=im["height"],
                boxes=boxes,
                labels=[label_of[a["category_id"]] for _, a, _ in anns],
                difficult=[a["difficult"] for _, a, _ in anns],
                iscrowd=[a["iscrowd"] for _, a, _ in anns],
                area=[a["area"] if _is_number(a.get("area")) else w * h for _, a, (_, _, w, h) in anns],
                masks=masks,
            )
        )
    return Dataset(classes, samples, policy.skipped, category_ids, policy.repairs)


def _segmentation(rle: dict, crowd: bool, mask_format: str):
    """A mask as COCO ``segmentation``: RLE (always for a crowd region) or one polygon."""
    if crowd or mask_format == "rle":
        return rle_json(rle)
    return [[exact_number(v) for v in to_polygon(decode(rle)).ravel()]]


def _xyxy(xywh) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes as float64 ``[N, 4]`` xyxy (a sum past float64 is inf, quietly:
    the box rule then reports it)."""
    with np.errstate(over="ignore"):
        return xywh_to_xyxy(np.array(xywh, np.float64).reshape(-1, 4))


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


def write_coco(dataset: Dataset, path, images=None, mask_format: str = "rle") -> Path:
    """Write `dataset` as a COCO instances file at `path`; returns the image folder its
    ``file_name``\\ s are relative to, the folder to read it with.

    That folder is `images` when given (every image must lie inside it), else the JSON's
    folder when every image lies inside it, else the images' deepest common folder: a
    ``file_name`` never leaves its folder (`read_coco` refuses ``..`` and absolute paths), so
    such a file is read back with ``images=`` that folder (``--images``). Difficult boxes
    carry ``"difficult": 1`` (COCO has no such flag). Masks are written as ``segmentation``:
    compressed RLE (exact), or with `mask_format` ``"polygon"`` one polygon on pixel edges
    (exact too, `rcnn.datasets.masks.to_polygon`; crowd regions stay RLE).
    """
    if mask_format not in ("rle", "polygon"):
        raise ValueError(f"mask_format must be 'rle' or 'polygon', not {mask_format!r}")
    path = Path(path)
    base = image_base([s.image_path for s in dataset], path.parent, images)
    cat_ids = dataset.category_ids or list(range(1, dataset.num_classes + 1))
    out_images, out_anns = [], []
    for image_id, s in zip(coco_image_ids(dataset), dataset):
        file_name = relative_name(s.image_path, base)
        out_images.append({"id": image_id, "file_name": file_name, "width": s.width, "height": s.height})
        masks = s.masks if s.masks is not None else [None] * len(s.labels)
        for box, label, difficult, crowd, area, mask in zip(s.boxes, s.labels, s.difficult, s.iscrowd, s.area, masks):
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
            if mask is not None:
                ann["segmentation"] = _segmentation(mask, crowd, mask_format)
            out_anns.append(ann)
    categories = [{"id": c, "name": n, "supercategory": ""} for c, n in zip(cat_ids, dataset.classes)]
    data = {"images": out_images, "annotations": out_anns, "categories": categories}
    write_text(path, json.dumps(data, separators=(",", ":")))
    return base


def load_results(path) -> list:
    """The records of the results file at `path` (a JSON list; records are checked by
    `read_detections`)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetError(path, "a results file is a JSON list of {image_id, category_id, bbox, score} records")
    return data


def result_categories(records) -> list:
    """The distinct ``category_id`` values of results records, in order of first appearance
    (what `rcnn evaluate` adds as classes when the ground truth lacks them)."""
    found = {}
    for r in records:
        c = r.get("category_id") if isinstance(r, dict) else None
        if _is_int(c) or isinstance(c, str):
            found.setdefault(c, None)
    return list(found)


def read_detections(path, dataset: Dataset, records=None) -> dict[str, Detections]:
    """The results file at `path` as ``{sample id: Detections}`` for every sample of `dataset`
    (empty where it has none). See the module docstring for the two naming styles; an
    unknown image or category, or a malformed record, raises `DatasetError` naming both.
    Boxes and scores are float32: a number beyond float32's range (about 3.4e38) is an error.
    `records`: the file's records when already read (`load_results`)."""
    data = load_results(path) if records is None else records
    duplicate = dataset.duplicate_id()
    if duplicate:
        i, a, b = duplicate
        raise DatasetError(path, f"the dataset has two samples with id '{i}' ({a.image_path} and {b.image_path})")
    coco = dataset.category_ids is not None
    ids = {s.id for s in dataset}
    labels = {c: i + 1 for i, c in enumerate(dataset.category_ids if coco else dataset.classes)}
    sizes = {s.id: (s.width, s.height) for s in dataset}
    found = {s.id: ([], [], [], []) for s in dataset}
    for k, r in enumerate(data):
        if not (isinstance(r, dict) and {"image_id", "category_id", "bbox", "score"} <= r.keys()):
            raise DatasetError(path, f"record {k}: needs image_id, category_id, bbox and score")
        image_id, category = r["image_id"], r["category_id"]
        key = str(image_id) if (_is_int(image_id) if coco else isinstance(image_id, str)) else None
        if key not in ids:
            raise DatasetError(path, f"record {k}: unknown image_id {image_id!r:.60}")
        label = labels.get(category) if (_is_int(category) if coco else isinstance(category, str)) else None
        if label is None:
            raise DatasetError(path, f"record {k}: unknown category_id {category!r:.60}")
        bbox, score = r["bbox"], r["score"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DatasetError(path, f"record {k}: 'bbox' is not 4 numbers: {bbox!r:.80}")
        if not all(_fits_float32(v) for v in bbox + [bbox[0] + bbox[2], bbox[1] + bbox[3]]):
            raise DatasetError(path, f"record {k}: 'bbox' {bbox} reaches beyond float32's range (about 3.4e38)")
        if not _is_number(score):
            raise DatasetError(path, f"record {k}: 'score' is not a number: {score!r:.60}")
        if not _fits_float32(score):
            raise DatasetError(path, f"record {k}: 'score' {score!r} is beyond float32's range (about 3.4e38)")
        mask = None
        if r.get("segmentation") is not None:
            mask, reason = parse_segmentation(r["segmentation"], *sizes[key])
            if reason:
                raise DatasetError(path, f"record {k}: {reason}")
        boxes, scores, labs, masks = found[key]
        boxes.append(bbox)
        scores.append(score)
        labs.append(label)
        masks.append(mask)
    return {
        key: Detections(_xyxy(boxes), scores, labs, masks if any(m is not None for m in masks) else None)
        for key, (boxes, scores, labs, masks) in found.items()
    }


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
        masks = d.masks if d.masks is not None else [None] * len(d)
        for box, score, label, mask in zip(d.boxes, d.scores, d.labels, masks):
            if not 1 <= label <= len(names):
                raise DatasetError(path, f"sample {s.id}: label {label} outside 1..{len(names)}")
            record = {
                "image_id": image_id,
                "category_id": names[label - 1],
                "bbox": _xywh(box),
                "score": exact_number(score),
            }
            if mask is not None:
                record["segmentation"] = rle_json(mask)
            records.append(record)
    write_text(path, json.dumps(records, separators=(",", ":")))
