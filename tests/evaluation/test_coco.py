"""COCO box AP/AR against pycocotools (the oracle) on the golden case and on random cases."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from rcnn.boxes import xyxy_to_xywh
from rcnn.datasets import Dataset, Detections, Sample, read_coco, read_detections
from rcnn.errors import DatasetError
from rcnn.evaluation.coco import STAT_NAMES, evaluate_coco

COCO = pytest.importorskip("pycocotools.coco").COCO
COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "eval-golden" / "coco"


class _DifficultCOCOeval(COCOeval):
    """pycocotools with a VOC `difficult` flag as its `ignore` flag (plain IoU, no crowd)."""

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                g["ignore"] = bool(g["iscrowd"] or g.get("difficult", 0))


def random_case(seed, n_images=30, n_classes=4):
    """Random ground truth and detections: empty images, crowd and difficult boxes, a class with
    no ground truth, tied scores, images with > 100 detections or detections but no objects."""
    rng = np.random.default_rng(seed)
    samples, dets = [], {}
    for i in range(n_images):
        n = rng.choice([0, 1, 3, 6, 12])
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.choice([5, 20, 40, 120], (n, 1)) * rng.uniform(0.5, 2, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        labels = rng.integers(1, n_classes, n)  # the last class never has ground truth
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * rng.uniform(0.6, 1.0, n)
        crowd = rng.random(n) < 0.1
        difficult = ~crowd & (rng.random(n) < 0.1)
        samples.append(Sample(str(i + 1), f"{i + 1}.jpg", 600, 600, boxes, labels, difficult, crowd, area))
        k = rng.choice([0, 2, 10, 130])
        src = rng.integers(0, max(n, 1), k)
        d = boxes[src] if n else rng.uniform(0, 300, (k, 4))
        d = d + rng.normal(0, 6, (k, 4)) * (rng.random((k, 1)) < 0.8)  # 20 % exact copies
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        wild = rng.random(k) < 0.3
        d[wild, :2] = rng.uniform(0, 300, (wild.sum(), 2))
        d[wild, 2:] = d[wild, :2] + rng.uniform(3, 100, (wild.sum(), 2))
        dl = np.where(rng.random(k) < 0.7, labels[src] if n else 1, rng.integers(1, n_classes + 1, k))
        if k:
            dets[str(i + 1)] = Detections(d, np.round(rng.random(k), 1), dl)  # many ties
    return Dataset([f"c{c}" for c in range(1, n_classes + 1)], samples), dets


def _xywh(b):
    return xyxy_to_xywh(np.asarray(b, np.float64))[0].tolist()


def pycocotools_eval(dataset, detections):
    """Run pycocotools on the same numbers (image id = sample id, category id = label)."""
    images = [{"id": int(s.id), "width": s.width, "height": s.height, "file_name": "x"} for s in dataset]
    anns = []
    for s in dataset:
        for b, lab, c, d, a in zip(s.boxes, s.labels, s.iscrowd, s.difficult, s.area):
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=int(s.id),
                    category_id=int(lab),
                    bbox=_xywh(b),
                    area=float(a),
                    iscrowd=int(c),
                    difficult=int(d),
                )
            )
    results = [
        {"image_id": int(k), "category_id": int(lab), "bbox": _xywh(b), "score": float(sc)}
        for k, d in detections.items()
        for b, sc, lab in zip(d.boxes, d.scores, d.labels)
    ]
    return run_cocoeval(images, anns, dataset.classes, results, "bbox", _DifficultCOCOeval)


def run_cocoeval(images, anns, classes, results, iou_type, evaluator=COCOeval):
    """pycocotools' evaluation (`evaluator`, a `COCOeval`) of `results` against the ground
    truth `images` and `anns` (categories 1..C named `classes`), summarised quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(classes)],
        }
        gt.createIndex()
        E = evaluator(gt, gt.loadRes(results), iou_type)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def per_class_ap(E):
    p = E.eval["precision"][:, :, :, 0, 2]
    return [float(np.mean(p[:, :, k][p[:, :, k] > -1])) if (p[:, :, k] > -1).any() else -1.0 for k in range(p.shape[2])]


def assert_same(ours, E):
    for name, ref in zip(STAT_NAMES, E.stats):
        assert ours[name] == pytest.approx(ref, abs=1e-6), name
    assert list(ours["per_class"].values()) == pytest.approx(per_class_ap(E), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_equal_pycocotools(seed):
    dataset, detections = random_case(seed)
    ours = evaluate_coco(dataset, detections)
    E = pycocotools_eval(dataset, detections)
    assert_same(ours, E)
    assert ours["per_class"]["c4"] == -1  # no ground truth
    assert ours["AP"] > 0


def test_well_matched_case_equal_pycocotools():
    """Detections near the objects (high AP, every threshold exercised), sample order != id order."""
    dataset, _ = random_case(11, n_images=40, n_classes=3)
    rng = np.random.default_rng(0)
    detections = {}
    for s in dataset:
        s.iscrowd[:] = False
        src = np.repeat(np.arange(len(s.labels)), rng.integers(1, 3, len(s.labels)))
        boxes = s.boxes[src] + rng.normal(0, 2, (len(src), 4))
        detections[s.id] = Detections(boxes, np.round(rng.random(len(src)), 2), s.labels[src])
    dataset.samples.reverse()
    ours = evaluate_coco(dataset, detections)
    assert ours["AP50"] > 0.5
    assert_same(ours, pycocotools_eval(dataset, detections))


def test_hand_made_crowd_and_duplicates():
    """A crowd region swallows any number of detections inside it; a second detection of one
    object is a false positive."""
    crowd = [0, 0, 100, 100]
    obj = [200, 200, 260, 260]
    dataset = Dataset(["a"], [Sample("1", "1.jpg", 300, 300, [crowd, obj], [1, 1], iscrowd=[True, False])])
    dets = Detections([[10, 10, 20, 20], [30, 30, 60, 60], obj, obj], [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1])
    r = evaluate_coco(dataset, {"1": dets})
    # Crowd detections are ignored; the object is found at rank 1 of the counted ones.
    assert r["AP"] == pytest.approx(1.0)
    assert r["AR1"] == pytest.approx(0.0)  # the top detection is in the crowd region
    assert r["AR10"] == pytest.approx(1.0)
    assert r["APsmall"] == -1 and r["APlarge"] == -1  # the object is medium (60 x 60)
    assert_same(r, pycocotools_eval(dataset, {"1": dets}))


def test_unknown_image_is_an_error():
    dataset = Dataset(["a"], [Sample("1", "1.jpg", 10, 10)])
    with pytest.raises(DatasetError, match="not in the dataset"):
        evaluate_coco(dataset, {"2": Detections([[0, 0, 1, 1]], [1.0], [1])})


def test_no_detections_and_no_ground_truth():
    dataset = Dataset(["a", "b"], [Sample("1", "1.jpg", 10, 10, [[0, 0, 5, 5]], [1])])
    r = evaluate_coco(dataset, {})
    assert r["AP"] == 0 and r["AR100"] == 0 and r["per_class"] == {"a": 0.0, "b": -1.0}
    r = evaluate_coco(Dataset(["a"], [Sample("1", "1.jpg", 10, 10)]), {})
    assert all(r[k] == -1 for k in STAT_NAMES)


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/data/eval-golden/coco not present")
def test_golden_coco():
    dataset = read_coco(GOLDEN / "gt.json")
    detections = read_detections(GOLDEN / "detections.json", dataset)
    ours = evaluate_coco(dataset, detections)
    expected = json.loads((GOLDEN / "expected.json").read_text())
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GOLDEN / "gt.json"))
        E = COCOeval(gt, gt.loadRes(str(GOLDEN / "detections.json")), "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert_same(ours, E)


def test_cli_coco_end_to_end(tmp_path, capsys):
    from rcnn.cli import main
    from rcnn.datasets import write_coco, write_detections

    dataset, detections = random_case(3, n_images=12)
    dataset.category_ids = [1, 2, 3, 4]
    write_coco(dataset, tmp_path / "gt.json")
    write_detections(tmp_path / "dets.json", detections, dataset)
    out = tmp_path / "report.json"
    argv = ["--quiet", "evaluate", "--gt", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dets.json")]
    assert main(argv + ["--metric", "coco", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    expected = evaluate_coco(dataset, detections)
    assert report.keys() == expected.keys()
    for name in STAT_NAMES:
        assert report[name] == pytest.approx(expected[name], abs=1e-12)
    assert report["per_class"] == pytest.approx(expected["per_class"])
    printed = capsys.readouterr().out
    assert "AR100" in printed and "c1" in printed
    # A user mistake is one line and exit 1, not a traceback.
    assert main(argv + ["--metric", "coco", "--iou", "0.7"]) == 1
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err
