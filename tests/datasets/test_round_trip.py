"""Round trips through every format and beside the tools people already use.

VOC -> COCO -> YOLO -> CSV -> VOC with ``rcnn data convert`` keeps every box (within 1e-3 px)
and class, and ``rcnn data check`` of each export finds 0 errors and 0 repairs; supervision
reads each export with equal boxes and we read each of its exports (skipped where it is not
installed: not a test dependency, as it pulls in PyAV); Ultralytics' own dataset check
accepts a YOLO export (skipped where it is not installed).
"""

import importlib.util

import cv2
import numpy as np
import pytest

from rcnn.cli import main
from rcnn.datasets import Dataset, Sample, load_dataset, write_voc, write_yolo
from rcnn.datasets.check import check_dataset
from rcnn.datasets.yolo import parse_data_yaml

CLASSES = ["ace", "king", "nine"]
SIZES = [(512, 288), (378, 504), (97, 61)]  # the cards' two shapes, and an odd one


def source_dataset(folder, integer: bool = False, seed: int = 0) -> Dataset:
    """Images of `SIZES` with boxes at random and against every edge (integer VOC corners
    as in the cards, or any float32 corners)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (w, h) in enumerate(SIZES):
        path = folder / f"im{i}.jpg"
        assert cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), np.uint8))
        x1 = rng.uniform(0, w - 4, 40)
        y1 = rng.uniform(0, h - 4, 40)
        x2 = x1 + rng.uniform(2, w - x1)
        y2 = y1 + rng.uniform(2, h - y1)
        boxes = np.stack([x1, y1, x2, y2], 1)
        boxes[:10, 2], boxes[10:20, 3] = w, h  # the right and bottom edges (item 1's false repairs)
        boxes[20:25, 0], boxes[25:30, 1] = 0, 0
        if integer:
            boxes = np.floor(boxes)
            boxes[:, 2:] = np.maximum(np.ceil(np.stack([x2, y2], 1)), boxes[:, :2] + 1)
            boxes[:10, 2], boxes[10:20, 3] = w, h
            boxes = np.minimum(boxes, [w, h, w, h])
        samples.append(Sample(f"im{i}", path, w, h, boxes.astype(np.float32), rng.integers(1, 4, 40)))
    return Dataset(list(CLASSES), samples)


def assert_same(a: Dataset, b: Dataset, atol=1e-3):
    """Equal classes, and boxes and labels per image (images told apart by their sizes: sample
    ids change on the way, COCO numbers the images)."""
    assert a.classes == b.classes
    by_size = {(s.width, s.height): s for s in b}
    assert sorted(by_size) == sorted((s.width, s.height) for s in a)
    for s in a:
        t = by_size[s.width, s.height]
        np.testing.assert_allclose(t.boxes, s.boxes, rtol=0, atol=atol)
        np.testing.assert_array_equal(t.labels, s.labels)


def convert(src, dst, *extra):
    assert main(["--quiet", "data", "convert", str(src), str(dst), *map(str, extra)]) == 0


def test_voc_coco_yolo_csv_voc_keeps_every_box_and_checks_clean(tmp_path, capsys):
    write_voc(source_dataset(tmp_path / "src"), tmp_path / "voc")
    source = load_dataset(tmp_path / "voc")
    chain = [
        (tmp_path / "voc", tmp_path / "gt.json", []),
        (tmp_path / "gt.json", tmp_path / "yolo", ["--format", "yolo"]),
        (tmp_path / "yolo", tmp_path / "gt.csv", []),
        (tmp_path / "gt.csv", tmp_path / "voc2", []),
    ]
    for src, dst, extra in chain:
        capsys.readouterr()
        convert(src, dst, *extra)
        assert "repaired" not in capsys.readouterr().out
        report = check_dataset(dst)
        assert report.count("error") == 0 and report.count("repair") == 0, [str(p) for p in report.problems]
        assert report.samples == len(SIZES)
        assert_same(source, load_dataset(dst))


def test_a_yolo_export_of_boxes_on_the_edges_reads_back_inside_the_image(tmp_path, capsys):
    """Item 1: 5 false repairs on cards/train, e.g. (0.77430556 + 0.45138889 / 2) * 288 =
    288.0000014. Every written box now reads back inside the image, also in float64."""
    source = source_dataset(tmp_path / "src", integer=True)
    write_voc(source, tmp_path / "voc")
    convert(tmp_path / "voc", tmp_path / "y", "--format", "yolo")
    capsys.readouterr()
    assert main(["--quiet", "data", "check", str(tmp_path / "y")]) == 0
    assert "0 errors, 0 repairs" in capsys.readouterr().out
    for s in source:
        for line in (tmp_path / "y" / "labels" / f"{s.id}.txt").read_text().splitlines():
            cx, cy, w, h = map(float, line.split()[1:])
            assert 0 <= (cx - w / 2) * s.width and (cx + w / 2) * s.width <= s.width, line
            assert 0 <= (cy - h / 2) * s.height and (cy + h / 2) * s.height <= s.height, line


def test_a_one_split_yolo_export_has_train_and_val(tmp_path, capsys):
    """Item 2: Ultralytics requires both keys; each points at what was written, and a second
    split written later takes its key back."""
    source = source_dataset(tmp_path / "src")
    write_voc(source, tmp_path / "voc", split="val")
    convert(tmp_path / "voc", tmp_path / "y", "--format", "yolo", "--split", "val")
    out = capsys.readouterr().out
    assert "note:" in out and "train points at images/val" in out
    data = parse_data_yaml(tmp_path / "y" / "data.yaml")
    assert data["train"] == data["val"] == "images/val"
    assert_same(source, load_dataset(tmp_path / "y", split="train"))
    assert_same(source, load_dataset(tmp_path / "y"))  # each image once
    write_yolo(source.subset(["im0"]), tmp_path / "y", split="train")
    data = parse_data_yaml(tmp_path / "y" / "data.yaml")
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert [s.id for s in load_dataset(tmp_path / "y", split="train")] == ["im0"]
    # no split at all: both at images/
    convert(tmp_path / "voc", tmp_path / "all", "--format", "yolo")
    data = parse_data_yaml(tmp_path / "all" / "data.yaml")
    assert data["train"] == data["val"] == "images"
    assert_same(source, load_dataset(tmp_path / "all", split="val"))


def test_a_data_yaml_is_a_dataset(tmp_path, capsys):
    """Item 3: Ultralytics users pass the data.yaml."""
    source = source_dataset(tmp_path / "src")
    write_yolo(source, tmp_path / "y", split="train")
    capsys.readouterr()
    assert main(["--quiet", "data", "check", str(tmp_path / "y" / "data.yaml"), "--split", "train"]) == 0
    assert "3 good samples" in capsys.readouterr().out
    assert_same(source, load_dataset(tmp_path / "y" / "data.yaml"))
    (tmp_path / "y" / "data.yaml").rename(tmp_path / "y" / "mine.yaml")
    assert_same(source, load_dataset(tmp_path / "y" / "mine.yaml", split="train"))


# --- supervision and Ultralytics -----------------------------------------------------------

needs_supervision = pytest.mark.skipif(
    importlib.util.find_spec("supervision") is None,
    reason="supervision is not installed (pip install supervision; it is not a test dependency: it pulls in PyAV)",
)


def sv_boxes(sv_dataset):
    """``{stem: (xyxy float32 [N, 4], class names)}`` of a supervision DetectionDataset."""
    from pathlib import Path

    out = {}
    for path, _, det in sv_dataset:
        out[Path(path).stem] = (det.xyxy.astype(np.float32), [sv_dataset.classes[c] for c in det.class_id])
    return out


def our_boxes(dataset):
    return {s.image_path.stem: (s.boxes, [dataset.classes[label - 1] for label in s.labels]) for s in dataset}


def assert_equal_boxes(a, b, atol=0.01):
    """Equal boxes and classes per image, in any order; `atol`: supervision writes YOLO's
    normalised numbers with 5 significant digits (0.005 px on these images)."""
    assert sorted(a) == sorted(b)
    for k in a:
        order_a, order_b = np.lexsort(np.round(a[k][0], 1).T), np.lexsort(np.round(b[k][0], 1).T)
        np.testing.assert_allclose(a[k][0][order_a], b[k][0][order_b], rtol=0, atol=atol)
        assert [a[k][1][i] for i in order_a] == [b[k][1][i] for i in order_b]


@needs_supervision
def test_supervision_reads_our_exports(tmp_path):
    import supervision as sv

    source = source_dataset(tmp_path / "src", integer=True)  # integers: supervision rounds VOC corners
    write_voc(source, tmp_path / "voc")
    ours = our_boxes(load_dataset(tmp_path / "voc"))
    convert(tmp_path / "voc", tmp_path / "y", "--format", "yolo")
    convert(tmp_path / "voc", tmp_path / "gt.json")
    voc = sv.DetectionDataset.from_pascal_voc(
        str(tmp_path / "voc" / "JPEGImages"), str(tmp_path / "voc" / "Annotations")
    )
    yolo = sv.DetectionDataset.from_yolo(
        str(tmp_path / "y" / "images"), str(tmp_path / "y" / "labels"), str(tmp_path / "y" / "data.yaml")
    )
    coco = sv.DetectionDataset.from_coco(str(tmp_path), str(tmp_path / "gt.json"))
    for theirs in (voc, yolo, coco):
        assert theirs.classes == CLASSES
        assert_equal_boxes(ours, sv_boxes(theirs))


@needs_supervision
def test_we_read_supervisions_exports(tmp_path):
    import supervision as sv

    write_voc(source_dataset(tmp_path / "src", integer=True), tmp_path / "voc")
    theirs = sv.DetectionDataset.from_pascal_voc(
        str(tmp_path / "voc" / "JPEGImages"), str(tmp_path / "voc" / "Annotations")
    )
    expected = sv_boxes(theirs)
    theirs.as_pascal_voc(str(tmp_path / "sv_voc" / "images"), str(tmp_path / "sv_voc" / "annotations"))
    theirs.as_yolo(
        str(tmp_path / "sv_yolo" / "images"),
        str(tmp_path / "sv_yolo" / "labels"),
        str(tmp_path / "sv_yolo" / "data.yaml"),
    )
    theirs.as_coco(str(tmp_path / "sv_coco"), str(tmp_path / "sv_coco" / "gt.json"))
    for path in (tmp_path / "sv_voc", tmp_path / "sv_yolo", tmp_path / "sv_coco" / "gt.json"):
        ours = load_dataset(path, classes=CLASSES)
        assert check_dataset(path, classes=CLASSES).count("repair") == 0
        assert_equal_boxes(expected, our_boxes(ours))


@pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None,
    reason="Ultralytics is not installed (a large dependency, not a test one)",
)
@pytest.mark.parametrize("split", [None, "val"])
def test_ultralytics_accepts_a_yolo_export(tmp_path, split):
    from ultralytics.data.utils import check_det_dataset, verify_image_label

    source = source_dataset(tmp_path / "src")
    write_voc(source, tmp_path / "voc", split=split)
    convert(tmp_path / "voc", tmp_path / "y", "--format", "yolo", *(["--split", split] if split else []))
    data = check_det_dataset(str(tmp_path / "y" / "data.yaml"), autodownload=False)
    assert list(data["names"].values()) == CLASSES
    for s in source:
        sub = f"{split}/" if split else ""
        image = tmp_path / "y" / "images" / f"{sub}{s.id}.jpg"
        label = tmp_path / "y" / "labels" / f"{sub}{s.id}.txt"
        *_, found, empty, corrupt, message = verify_image_label(
            (str(image), str(label), "", False, len(CLASSES), 0, 0, False)
        )
        assert (found, corrupt, message) == (1, 0, ""), message
