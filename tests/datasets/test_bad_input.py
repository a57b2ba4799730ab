"""Bad input, as a table every reader is tried against: one box per case, written in each
format (VOC, COCO, YOLO, CSV) by an encoder below, and the outcome expected of every reader:
an error (one line naming the annotation file), a counted repair, or the box accepted.

A new reader gets an encoder in `ENCODERS` and is tried against every case; a new case is one
row of `CASES`. Class names a writer cannot carry are a second table (`NAMES`).
"""

import json
import re
from decimal import Decimal, getcontext

import cv2
import numpy as np
import pytest

from rcnn.datasets import Dataset, Sample, load_dataset, write_coco, write_csv_labels, write_voc, write_yolo
from rcnn.datasets.check import check_dataset
from rcnn.errors import DatasetError

getcontext().prec = 40
W, H = 40, 30
CLASSES = ["cat", "dog"]

# (case, x1 y1 x2 y2 as written: continuous pixel corners, class, (outcome, message regex or box))
CASES = [
    ("a fine box", "4 5 20 25", "dog", ("ok", [4, 5, 20, 25])),
    ("zero width in float32", "32.0000001 5 32.0000009 25", "cat", ("error", r"zero area")),
    ("x2 before x1", "20 5 10 25", "cat", ("error", r"zero area")),
    ("zero height", "4 5 20 5", "cat", ("error", r"zero area")),
    ("nan", "nan 5 20 25", "cat", ("error", r"not a finite number|not 4 numbers")),
    ("inf", "4 5 inf 25", "cat", ("error", r"not a finite number|not 4 numbers")),
    ("not a number", "4 5 x 25", "cat", ("error", r"numbers")),
    ("outside the image", "4 5 46 25", "cat", ("error", r"outside the 40x30 image")),
    ("beyond float32's range", "4 5 1e39 25", "cat", ("error", r"outside the 40x30 image")),
    ("far negative", "-1e30 5 20 25", "cat", ("error", r"outside the 40x30 image")),
    ("unknown class", "4 5 20 25", "emu", ("error", r"unknown (class|category)")),
    ("poking out by half a pixel", "-0.5 5 20 25", "cat", ("repair", r"clipped to the 40x30 image", [0, 5, 20, 25])),
    ("poking out by a pixel", "4 5 20 31", "cat", ("repair", r"clipped to the 40x30 image", [4, 5, 20, 30])),
    ("float rounding at the edge", "4 5 40.0001 30.00003", "cat", ("ok", [4, 5, 40, 30])),
    ("float rounding below zero", "-0.00001 0 20 25", "cat", ("ok", [0, 0, 20, 25])),
]


def _decimal(token):
    try:
        d = Decimal(token)
    except ArithmeticError:
        return None
    return d if d.is_finite() else None


def _encode(corners, formula):
    """The format's numbers from the corners through `formula` (exact decimals), or the
    tokens themselves where a corner is not a finite number (``nan``, ``inf``, ``x``)."""
    numbers = [_decimal(t) for t in corners]
    if all(n is not None for n in numbers):
        return [format(v.normalize(), "f") if abs(v) < 10**20 else str(v) for v in formula(*numbers)]
    bad = next(t for t, n in zip(corners, numbers) if n is None)
    return [t if n is not None else bad for t, n in zip(corners, numbers)]


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((H, W, 3), 127, np.uint8))


def voc(folder, corners, name):
    image(folder / "a.png")
    xmin, ymin, xmax, ymax = _encode(corners, lambda a, b, c, d: (a + 1, b + 1, c, d))
    (folder / "a.xml").write_text(
        f"<annotation><filename>a.png</filename><size><width>{W}</width><height>{H}</height></size>"
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
        f"<ymax>{ymax}</ymax></bndbox></object></annotation>"
    )
    return folder, folder / "a.xml"


def coco(folder, corners, name):
    image(folder / "a.png")
    bbox = _encode(corners, lambda a, b, c, d: (a, b, c - a, d - b))
    bbox = [{"nan": "NaN", "inf": "Infinity"}.get(t, t if _decimal(t) is not None else json.dumps(t)) for t in bbox]
    category = CLASSES.index(name) + 1 if name in CLASSES else 7
    head = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    annotation = f'{{"id": 1, "image_id": 1, "category_id": {category}, "bbox": [{", ".join(bbox)}]}}'
    (folder / "gt.json").write_text(json.dumps(head)[:-1] + f', "annotations": [{annotation}]}}')  # exact decimals
    return folder / "gt.json", folder / "gt.json"


def yolo(folder, corners, name):
    image(folder / "images" / "a.png")
    values = _encode(corners, lambda a, b, c, d: ((a + c) / 2 / W, (b + d) / 2 / H, (c - a) / W, (d - b) / H))
    (folder / "labels").mkdir()
    index = CLASSES.index(name) if name in CLASSES else 2
    (folder / "labels" / "a.txt").write_text(f"{index} {' '.join(values)}\n")
    (folder / "data.yaml").write_text("names: [cat, dog]\n")
    return folder, folder / "labels" / "a.txt"


def csv(folder, corners, name):
    image(folder / "a.png")
    values = _encode(corners, lambda a, b, c, d: (a, b, c, d))
    (folder / "gt.csv").write_text(
        f"filename,width,height,class,xmin,ymin,xmax,ymax\na.png,{W},{H},{name},{','.join(values)}\n"
    )
    return folder / "gt.csv", folder / "gt.csv"


ENCODERS = {"voc": voc, "coco": coco, "yolo": yolo, "csv": csv}


@pytest.mark.parametrize("fmt", list(ENCODERS))
@pytest.mark.parametrize("case, corners, name, expected", CASES, ids=[c[0] for c in CASES])
def test_every_reader_on_every_bad_box(tmp_path, fmt, case, corners, name, expected):
    dataset_path, annotation = ENCODERS[fmt](tmp_path / fmt, corners.split(), name)
    classes = CLASSES if fmt in ("voc", "csv") else None  # COCO and YOLO bring their own
    report = check_dataset(dataset_path, classes=classes)
    if expected[0] == "error":
        with pytest.raises(DatasetError) as e:
            load_dataset(dataset_path, classes=classes)
        message = str(e.value)
        assert "\n" not in message and e.value.path == str(annotation), message
        assert re.search(expected[1], e.value.message), message
        assert report.count("error") == 1 and report.samples == 0
        assert len(load_dataset(dataset_path, classes=classes, skip_bad=True).skipped) == 1
        return
    ds = load_dataset(dataset_path, classes=classes)
    assert ds.classes == CLASSES and len(ds) == 1
    np.testing.assert_allclose(ds[0].boxes, [expected[-1]], rtol=0, atol=1e-4)
    assert ds[0].boxes.dtype == np.float32 and ds[0].labels.tolist() == [CLASSES.index(name) + 1]
    if expected[0] == "repair":
        assert len(ds.repairs) == 1 and ds.repairs[0][0] == str(annotation)
        assert re.search(expected[1], ds.repairs[0][1]), ds.repairs
        assert report.count("repair") == 1 and report.count("error") == 0
    else:
        assert ds.repairs == [] and report.problems == []


# --- class names a format cannot carry -----------------------------------------------------

# (name, the formats that refuse it: the others must read it back unchanged)
NAMES = [
    ("plain name", ()),
    ("nul\x00inside", ("voc",)),
    ("bell\x07", ("voc",)),
    ("carriage\rreturn", ("voc", "csv")),
    ("line\nfeed", ("voc",)),
    (" padded ", ("voc", "csv")),
    ('comma, "quote" and ünïcödé ✓', ()),
    ("lone \ud800 surrogate", ("voc", "csv", "yolo")),
    ("hash # and: colon", ()),
]
WRITERS = {
    "voc": lambda ds, p: write_voc(ds, p),
    "coco": lambda ds, p: write_coco(ds, p / "gt.json"),
    "yolo": lambda ds, p: write_yolo(ds, p),
    "csv": lambda ds, p: write_csv_labels(ds, p / "gt.csv"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
@pytest.mark.parametrize("name, refused_by", NAMES, ids=[repr(n[0]) for n in NAMES])
def test_a_writer_refuses_a_class_name_its_format_cannot_carry(tmp_path, fmt, name, refused_by):
    out = tmp_path / "out"
    image(out / "a.png")
    ds = Dataset(["cat", name], [Sample("a", out / "a.png", W, H, [[4, 5, 20, 25]], [2])])
    if fmt in refused_by:
        with pytest.raises(DatasetError, match=r"the class name .* which .* cannot carry") as e:
            WRITERS[fmt](ds, out)
        assert "\n" not in str(e.value)
        return
    WRITERS[fmt](ds, out)
    path = {"coco": out / "gt.json", "csv": out / "gt.csv"}.get(fmt, out)
    back = load_dataset(path)
    assert set(back.classes) <= set(ds.classes)  # VOC and CSV: the classes found
    assert [back.classes[label - 1] for label in back[0].labels] == [name]
