"""False-positive types (Hoiem et al.) on hand-made cases, and agreement with evaluate_voc."""

from __future__ import annotations

import numpy as np
import pytest

from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.errors import DatasetError
from rcnn.evaluation import evaluate_voc
from rcnn.evaluation.analysis import (
    BACKGROUND,
    CONFUSION,
    IGNORED,
    LOC,
    TRUE_POSITIVE,
    best_f1_threshold,
    classify_false_positives,
    error_shares,
    error_summary,
    image_f1,
    rank_false_positives,
)

CLASSES = ["cat", "dog"]


def _dataset():
    # a: a cat at 0..100 and a dog at 200..300; b: a difficult cat; c: nothing.
    a = Sample("a", "a.jpg", 400, 400, [[0, 0, 100, 100], [200, 200, 300, 300]], [1, 2])
    b = Sample("b", "b.jpg", 400, 400, [[0, 0, 100, 100]], [1], difficult=[True])
    c = Sample("c", "c.jpg", 400, 400)
    return Dataset(list(CLASSES), [a, b, c])


def _detections():
    return {
        "a": Detections(
            [
                [0, 0, 100, 100],  # 0: cat on the cat: TP
                [0, 0, 100, 90],  # 1: second cat on the cat (IoU .9): duplicate -> LOC
                [0, 0, 100, 30],  # 2: cat at IoU .3 with the cat -> LOC
                [200, 200, 300, 300],  # 3: cat on the dog -> CONFUSION
                [0, 0, 100, 5],  # 4: cat at IoU .05 with the cat, nothing else -> BACKGROUND
                [120, 120, 160, 160],  # 5: dog on empty ground -> BACKGROUND
                [0, 0, 100, 40],  # 6: dog at IoU .4 with the cat -> CONFUSION
            ],
            [0.9, 0.8, 0.7, 0.95, 0.6, 0.5, 0.85],
            [1, 1, 1, 1, 1, 2, 2],
        ),
        "b": Detections([[0, 0, 100, 100], [0, 0, 100, 20]], [0.99, 0.1], [1, 1]),  # difficult: ignored; IoU .2: LOC
        "c": Detections([[10, 10, 50, 50]], [0.3], [2]),
    }


def test_hand_made_error_types():
    types = classify_false_positives(_dataset(), _detections())
    np.testing.assert_array_equal(types["a"], [TRUE_POSITIVE, LOC, LOC, CONFUSION, BACKGROUND, BACKGROUND, CONFUSION])
    np.testing.assert_array_equal(types["b"], [IGNORED, LOC])
    np.testing.assert_array_equal(types["c"], [BACKGROUND])


def test_duplicate_is_the_lower_scored_one():
    ds = _dataset()
    dets = {"a": Detections([[0, 0, 100, 90], [0, 0, 100, 100]], [0.9, 0.8], [1, 1])}
    # The better box scores lower: the first detection takes the cat, the exact box is the duplicate.
    np.testing.assert_array_equal(classify_false_positives(ds, dets)["a"], [TRUE_POSITIVE, LOC])


def test_loc_takes_precedence_over_confusion_and_thresholds_move():
    ds = Dataset(list(CLASSES), [Sample("a", "a.jpg", 400, 400, [[0, 0, 100, 100], [0, 0, 100, 60]], [1, 2])])
    dets = {"a": Detections([[0, 0, 100, 30]], [1.0], [1])}  # IoU .3 with the cat, .5 with the dog
    assert classify_false_positives(ds, dets)["a"].tolist() == [LOC]
    assert classify_false_positives(ds, dets, iou=0.25)["a"].tolist() == [TRUE_POSITIVE]
    assert classify_false_positives(ds, dets, low_iou=0.35)["a"].tolist() == [CONFUSION]


def test_counts_agree_with_evaluate_voc():
    rng = np.random.default_rng(0)
    samples, dets = [], {}
    for i in range(30):
        g = rng.integers(0, 5)
        xy = rng.uniform(0, 150, (g, 2))
        gt = np.c_[xy, xy + rng.uniform(20, 80, (g, 2))]
        samples.append(
            Sample(f"s{i}", f"s{i}.jpg", 256, 256, gt, rng.integers(1, 4, g), difficult=rng.random(g) < 0.15)
        )
        k = rng.integers(0, 12)
        src = gt[rng.integers(0, g, k)] if g else np.zeros((k, 4))
        boxes = src + rng.normal(0, 12, (k, 4)) * (rng.random((k, 1)) < 0.7) + np.array([0, 0, 1, 1])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        dets[f"s{i}"] = Detections(boxes, np.round(rng.random(k), 1), rng.integers(1, 4, k))  # rounded: score ties
    ds = Dataset(["a", "b", "c"], samples)
    types = classify_false_positives(ds, dets)
    voc = evaluate_voc(ds, dets)
    for label in (1, 2, 3):
        c = label - 1
        t = np.concatenate([types[k][d.labels == label] for k, d in dets.items()])
        tp = voc.recall[c][-1] * voc.npos[c] if len(voc.recall[c]) else 0
        assert np.count_nonzero(t == TRUE_POSITIVE) == round(tp)
        fp = len(rank_false_positives(dets, types, label)["type"])
        tp_fp = round(tp / voc.precision[c][-1]) if tp else None
        if tp_fp is not None:
            assert np.count_nonzero(t == TRUE_POSITIVE) + fp == tp_fp
        assert np.count_nonzero(t != IGNORED) == np.count_nonzero(t == TRUE_POSITIVE) + fp
    assert sum(np.count_nonzero(t == IGNORED) for t in types.values()) > 0  # the difficult rule was exercised


def test_ranking_shares_and_summary():
    ds, dets = _dataset(), _detections()
    types = classify_false_positives(ds, dets)
    ranked = rank_false_positives(dets, types)
    np.testing.assert_allclose(ranked["score"], [0.95, 0.85, 0.8, 0.7, 0.6, 0.5, 0.3, 0.1], rtol=1e-6)
    assert ranked["id"].tolist()[:2] == ["a", "a"] and ranked["index"].tolist()[:2] == [3, 6]
    shares = error_shares(ranked["type"])
    np.testing.assert_allclose(shares[0], [0, 1, 0])
    np.testing.assert_allclose(shares[3], [0.5, 0.5, 0])  # conf, conf, loc, loc
    np.testing.assert_allclose(shares.sum(1), 1)
    summary = error_summary(ds, dets, types, ks=(2, 4))
    assert summary["overall"]["counts"] == {"loc": 3, "other": 2, "bg": 3}
    assert summary["overall"]["share_at_top_k"]["4"] == {"loc": 0.5, "other": 0.5, "bg": 0.0}
    assert set(summary["overall"]["share_at_top_k"]) == {"2", "4", "8"}
    assert summary["per_class"]["dog"]["counts"] == {"loc": 0, "other": 1, "bg": 2}


def test_f1_threshold_and_image_scores():
    ds, dets = _dataset(), _detections()
    types = classify_false_positives(ds, dets)
    # Pooled by score (ignored left out): .95 fp, .9 tp, .85 fp, .8 fp ... ; npos = 2.
    # F1 at each cut: 0, 2/5, 2/6, ... so the best keeps >= 0.9.
    threshold = best_f1_threshold(ds, dets, types)
    assert threshold == pytest.approx(0.9)
    f = image_f1(ds, dets, types, threshold)
    assert f["tp"].tolist() == [1, 0, 0] and f["fp"].tolist() == [1, 0, 0] and f["fn"].tolist() == [1, 0, 0]
    np.testing.assert_allclose(f["f1"], [0.5, 1.0, 1.0])
    f = image_f1(ds, dets, types, 0.0)
    assert f["fp"].tolist() == [6, 1, 1] and f["f1"][2] == 0.0
    assert best_f1_threshold(ds, {}, {}) == float("inf")


def test_unknown_image_is_an_error():
    with pytest.raises(DatasetError, match="not in the dataset"):
        classify_false_positives(_dataset(), {"zzz": Detections()})
