"""Pascal VOC AP: hand-computed cases, the golden case, and a literal port of the devkit loop."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rcnn.boxes import xywh_to_xyxy
from rcnn.datasets import Dataset, Detections, Sample
from rcnn.errors import DatasetError
from rcnn.evaluation.voc import evaluate_voc, voc_ap

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "eval-golden" / "voc-case1"


def devkit_ap(dataset, detections, label, thresh, use_07, inclusive):
    """py-faster-rcnn's ``voc_eval`` loop, one detection at a time, with the MATLAB devkit's
    ``>=`` and stable sort: the oracle for the vectorised code."""
    e = 1.0 if inclusive else 0.0
    recs = {}
    npos = 0
    for s in dataset:
        keep = s.labels == label
        recs[s.id] = dict(bbox=s.boxes[keep].astype(float), difficult=s.difficult[keep], det=[False] * int(keep.sum()))
        npos += int((~s.difficult[keep]).sum())
    ids, conf, bbs = [], [], []
    for s in dataset:  # dataset order, then detection order
        d = detections.get(s.id)
        if d is not None:
            for b, sc, lab in zip(d.boxes, d.scores, d.labels):
                if lab == label:
                    ids.append(s.id)
                    conf.append(float(sc))
                    bbs.append(b.astype(float))
    order = np.argsort(-np.array(conf), kind="stable")
    tp, fp = np.zeros(len(ids)), np.zeros(len(ids))
    for d, i in enumerate(order):
        R, bb = recs[ids[i]], bbs[i]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(R["bbox"]):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + e
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + e
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + e) * (bb[3] - bb[1] + e) + (g[2] - g[0] + e) * (g[3] - g[1] + e) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= thresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1
                    R["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07)


def random_case(seed, n_images=25, n_classes=3):
    rng = np.random.default_rng(seed)
    samples, dets = [], {}
    for i in range(n_images):
        n = rng.choice([0, 1, 2, 5, 9])
        xy = rng.integers(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(4, 80, (n, 2))], 1)
        labels = rng.integers(1, n_classes + 1, n)
        samples.append(Sample(f"img{i}", f"img{i}.jpg", 300, 300, boxes, labels, rng.random(n) < 0.15))
        k = rng.choice([0, 3, 12])
        src = rng.integers(0, max(n, 1), k)
        d = (boxes[src] if n else rng.integers(0, 200, (k, 4))) + rng.integers(-6, 7, (k, 4))  # integer: IoU ties
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        lab = np.where(rng.random(k) < 0.8, labels[src] if n else 1, rng.integers(1, n_classes + 1, k))
        dets[f"img{i}"] = Detections(d, np.round(rng.random(k), 1), lab)
    return Dataset([f"c{c}" for c in range(1, n_classes + 1)], samples), dets


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "thresh, use_07, inclusive", [(0.5, False, False), (0.5, True, True), (0.3, False, True), (0.7, True, False)]
)
def test_random_cases_equal_devkit_loop(seed, thresh, use_07, inclusive):
    dataset, dets = random_case(seed)
    r = evaluate_voc(dataset, dets, thresh, use_07, inclusive)
    for c in range(dataset.num_classes):
        if r.npos[c]:
            assert r.ap[c] == pytest.approx(devkit_ap(dataset, dets, c + 1, thresh, use_07, inclusive), abs=1e-12)
    assert r.mAP == pytest.approx(np.mean(r.ap[r.npos > 0]))


def _case():
    """Image a: a normal box and a difficult one; image b: one box. Detections: a hit, a hit on
    the difficult box, a duplicate of the first hit, a hit in b."""
    a = Sample("a", "a.jpg", 50, 50, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], difficult=[False, True])
    b = Sample("b", "b.jpg", 50, 50, [[0, 0, 10, 10]], [1])
    dets = {
        "a": Detections([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], [0.9, 0.8, 0.7], [1, 1, 1]),
        "b": Detections([[0, 0, 10, 10]], [0.6], [1]),
    }
    return Dataset(["x", "y"], [a, b]), dets


def test_difficult_and_duplicate():
    dataset, dets = _case()
    r = evaluate_voc(dataset, dets)
    # TP, ignored (neither), FP (duplicate), TP with 2 positives: precision 1, 1, 1/2, 2/3.
    np.testing.assert_allclose(r.recall[0], [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.precision[0], [1, 1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(r.scores[0], [0.9, 0.8, 0.7, 0.6], rtol=1e-6)
    assert r.ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert evaluate_voc(dataset, dets, use_07_metric=True).ap[0] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # The class without ground truth has AP NaN, is left out of the mean, and is null in JSON.
    assert math.isnan(r.ap[1]) and r.mAP == pytest.approx(5 / 6)
    assert r.to_dict() == {"mAP": pytest.approx(5 / 6), "per_class": {"x": pytest.approx(5 / 6), "y": None}}
    json.dumps(r.to_dict(), allow_nan=False)
    # Without the difficult flag the second detection is a true positive: 3 positives,
    # precision 1, 1, 2/3, 3/4 at recall 1/3, 2/3, 2/3, 1.
    dataset.samples[0].difficult[:] = False
    assert evaluate_voc(dataset, dets).ap[0] == pytest.approx(2 / 3 * 1 + 1 / 3 * 0.75)


def test_best_box_taken_is_a_false_positive():
    """The devkit matches to the max-IoU box only: when it is taken, a second box above the
    threshold does not rescue the detection."""
    s = Sample("a", "a.jpg", 50, 50, [[0, 0, 10, 10], [5, 0, 15, 10]], [1, 1])
    d = Detections([[0, 0, 10, 10], [2, 0, 12, 10]], [0.9, 0.8], [1, 1])  # IoU 2/3 with box 0, 7/13 with box 1
    r = evaluate_voc(Dataset(["x"], [s]), {"a": d})
    np.testing.assert_allclose(r.precision[0], [1, 0.5])
    assert r.mAP == pytest.approx(0.5)


def test_threshold_is_inclusive_and_plus_one_pixel():
    gt = Sample("a", "a.jpg", 50, 50, [[0, 0, 10, 20]], [1])
    d = {"a": Detections([[0, 0, 10, 10]], [1.0], [1])}  # IoU exactly 0.5
    assert evaluate_voc(Dataset(["x"], [gt]), d, 0.5).mAP == 1.0
    assert evaluate_voc(Dataset(["x"], [gt]), d, 0.5 + 1e-9).mAP == 0.0
    gt = Sample("a", "a.jpg", 50, 50, [[0, 0, 9, 9]], [1])
    d = {"a": Detections([[0, 0, 9, 4]], [1.0], [1])}  # 36/81 continuous, 50/100 with +1
    assert evaluate_voc(Dataset(["x"], [gt]), d, 0.5).mAP == 0.0
    assert evaluate_voc(Dataset(["x"], [gt]), d, 0.5, inclusive=True).mAP == 1.0


def test_no_detections_and_errors():
    dataset, _ = _case()
    r = evaluate_voc(dataset, {})
    assert r.ap[0] == 0.0 and len(r.precision[0]) == 0
    with pytest.raises(DatasetError, match="not in the dataset"):
        evaluate_voc(dataset, {"zzz": Detections()})
    with pytest.raises(DatasetError, match="outside"):
        evaluate_voc(dataset, {"a": Detections([[0, 0, 1, 1]], [1.0], [3])})


def _read_golden_txt(path, with_score):
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    start = 2 if with_score else 1
    boxes = xywh_to_xyxy(np.array([[float(v) for v in r[start:]] for r in rows], np.float64))
    return boxes, [float(r[1]) for r in rows] if with_score else None


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/data/eval-golden/voc-case1 not present")
def test_golden_voc_case1():
    samples, dets = [], {}
    for p in sorted((GOLDEN / "gts").glob("*.txt")):
        boxes, _ = _read_golden_txt(p, False)
        samples.append(Sample(p.stem, p, 0, 0, boxes, np.ones(len(boxes))))
        boxes, scores = _read_golden_txt(GOLDEN / "dets" / p.name, True)
        dets[p.stem] = Detections(boxes, scores, np.ones(len(boxes)))
    dataset = Dataset(["object"], samples)
    expected = json.loads((GOLDEN / "expected.json").read_text())
    for key, use_07 in [("11_point", True), ("all_point", False)]:
        for thresh, ap in expected[key].items():
            r = evaluate_voc(dataset, dets, float(thresh), use_07, inclusive=True)
            assert r.mAP == pytest.approx(ap, abs=1e-6), (key, thresh)


CARDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cards" / "test"


@pytest.mark.skipif(not CARDS.is_dir(), reason="../shared/data/cards/test not present")
@pytest.mark.parametrize("metric", ["voc", "voc07"])
def test_cli_voc_end_to_end_on_cards(tmp_path, capsys, metric):
    """Ground truth from the real VOC folder, detections written to a results file, read back
    by `rcnn evaluate`: the report equals the library's numbers."""
    from rcnn.cli import main
    from rcnn.datasets import load_dataset, write_detections

    dataset = load_dataset(CARDS, check_images=False)
    rng = np.random.default_rng(0)
    detections = {}
    for s in dataset:
        src = np.repeat(np.arange(len(s.labels)), rng.integers(0, 3, len(s.labels)))  # misses and duplicates
        boxes = s.boxes[src] + rng.normal(0, 15, (len(src), 4)).astype(np.float32)
        labels = np.where(rng.random(len(src)) < 0.9, s.labels[src], rng.integers(1, dataset.num_classes + 1, len(src)))
        detections[s.id] = Detections(boxes, rng.random(len(src)).astype(np.float32), labels)
    write_detections(tmp_path / "dets.json", detections, dataset)
    out = tmp_path / "report.json"
    argv = ["--quiet", "evaluate", "--gt", str(CARDS), "--detections", str(tmp_path / "dets.json")]
    assert main(argv + ["--metric", metric, "--iou", "0.6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    expected = evaluate_voc(dataset, detections, 0.6, metric == "voc07").to_dict()
    assert report["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert report["per_class"] == pytest.approx(expected["per_class"], abs=1e-12)
    assert set(report["per_class"]) == {"nine", "ten", "jack", "queen", "king", "ace"}
    assert 0.2 < report["mAP"] < 0.95
    assert "mAP" in capsys.readouterr().out


def test_iou_threshold_and_duplicate_ids_are_checked():
    dataset = Dataset(["a"], [Sample("1", "x/1.jpg", 10, 10, [[0, 0, 5, 5]], [1]), Sample("1", "y/1.jpg", 10, 10)])
    with pytest.raises(DatasetError, match=r"two samples have the id '1' \(x/1.jpg and y/1.jpg\)"):
        evaluate_voc(dataset, {})
    dataset.samples.pop()
    dets = {"1": Detections([[0, 0, 5, 5]], [1.0], [1])}
    for iou in (0, -1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"IoU threshold must be a number in \(0, 1\]"):
            evaluate_voc(dataset, dets, iou)
    assert evaluate_voc(dataset, dets, 1.0).mAP == 1.0
