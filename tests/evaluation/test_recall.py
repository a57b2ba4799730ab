import numpy as np
import pytest

from rcnn.datasets import Dataset, Sample
from rcnn.evaluation.recall import best_overlaps, format_report, proposal_recall


def sample(id, boxes, labels, difficult=None):
    return Sample(id, f"{id}.jpg", 100, 100, np.array(boxes, np.float32), labels, difficult)


def row(report, k):
    return next(r for r in report["overall"] if r["k"] == k)


def test_exact_iou_cases():
    # One object 10x10; proposals covering it with IoU 1, 0.8 and 0.5 in three images.
    ds = Dataset(["a"], [sample(str(i), [[0, 0, 10, 10]], [1]) for i in range(3)])
    props = {"0": [[0, 0, 10, 10]], "1": [[0, 0, 10, 8]], "2": [[0, 0, 10, 5]]}
    r = row(proposal_recall(ds, props, ks=[1]), 1)
    assert r["recall@0.5"] == pytest.approx(1.0)  # IoU exactly 0.5 counts (>=)
    assert r["recall@0.7"] == pytest.approx(2 / 3)
    assert r["ar"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)  # 2 * (IoU - 0.5) each
    assert r["mabo"] == pytest.approx((1.0 + 0.8 + 0.5) / 3)
    assert r["boxes_per_image"] == 1.0


def test_top_k_uses_the_ranking():
    ds = Dataset(["a"], [sample("x", [[0, 0, 10, 10]], [1])])
    props = {"x": [[50, 50, 60, 60], [40, 40, 90, 90], [0, 0, 10, 10]]}
    report = proposal_recall(ds, props, ks=[1, 2, 3, 10])
    assert [r["recall@0.5"] for r in report["overall"]] == [0.0, 0.0, 1.0, 1.0]
    assert [r["boxes_per_image"] for r in report["overall"]] == [1.0, 2.0, 3.0, 3.0]
    np.testing.assert_allclose(best_overlaps([[0, 0, 10, 10]], props["x"], [1, 3]), [[0.0], [1.0]])


def test_mabo_averages_classes_not_objects():
    ds = Dataset(
        ["a", "b"],
        [
            sample("x", [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]),
            sample("y", [[0, 0, 10, 10]], [2]),
        ],
    )
    props = {"x": [[0, 0, 10, 10], [20, 20, 30, 25]], "y": [[0, 0, 10, 8]]}
    report = proposal_recall(ds, props, ks=[5])
    assert report["per_class"]["a"][0]["abo"] == pytest.approx(0.75)
    assert report["per_class"]["b"][0]["abo"] == pytest.approx(0.8)
    assert report["overall"][0]["mabo"] == pytest.approx(0.775)
    assert report["overall"][0]["boxes_per_image"] == 1.5
    assert report["per_class"]["a"][0]["objects"] == 2 and report["objects"] == 3


def test_difficult_objects_left_out_unless_asked_and_missing_proposals():
    ds = Dataset(["a"], [sample("x", [[0, 0, 10, 10], [50, 50, 80, 80]], [1, 1], [False, True])])
    props = {"x": np.zeros((0, 4), np.float32)}
    assert proposal_recall(ds, props, ks=[10])["objects"] == 1
    report = proposal_recall(ds, {"x": [[50, 50, 80, 80]]}, ks=[10], include_difficult=True)
    assert report["objects"] == 2 and report["overall"][0]["recall@0.5"] == 0.5
    assert proposal_recall(ds, props, ks=[10])["overall"][0]["recall@0.5"] == 0.0


def test_ar_is_the_integral_of_recall_over_iou():
    rng = np.random.default_rng(0)
    samples, props = [], {}
    for i in range(20):
        xy = rng.uniform(0, 50, (3, 2))
        gt = np.hstack([xy, xy + rng.uniform(10, 40, (3, 2))])
        samples.append(sample(str(i), gt, [1, 1, 1]))
        props[str(i)] = gt[rng.integers(0, 3, 30)] + rng.normal(0, 3, (30, 4))
    report = proposal_recall(Dataset(["a"], samples), props, ks=[30])
    best = np.concatenate([best_overlaps(s.boxes, props[s.id], [30])[0] for s in samples])
    thresholds = np.linspace(0.5, 1.0, 20001)
    recall_curve = (best[None, :] >= thresholds[:, None]).mean(axis=1)
    assert report["overall"][0]["ar"] == pytest.approx(np.trapezoid(recall_curve, thresholds) * 2, abs=1e-3)


def test_seconds_and_table():
    ds = Dataset(["a"], [sample("x", [[0, 0, 10, 10]], [1]), sample("y", [], [])])
    report = proposal_recall(ds, {"x": [[0, 0, 10, 10]], "y": []}, ks=[10], seconds={"x": 1.0, "y": 3.0})
    assert report["seconds_per_image"] == 2.0 and report["images"] == 2
    assert "proposing took 2.000 s/img (the time stored with the proposals)" in format_report(report)
