"""R-CNN's test rule over a dataset (``test_rule = "rcnn"``, `rcnn_test.m`): each class's best
`top_per_class` boxes per image, a per-class threshold that keeps about `per_class_per_image`
per image over the set, then NMS; the fixed threshold as the other rule; `rcnn detect` on a
dataset resumed from its parts writes what an uninterrupted run writes."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from rcnn.cli import main
from rcnn.datasets import Dataset, Detections, load_dataset, read_image
from rcnn.detectors import RCNN, load_config
from rcnn.detectors.base import best_per_class, set_thresholds, top_candidates
from rcnn.errors import ConfigError
from rcnn.evaluation import evaluate_voc


@pytest.fixture(scope="module")
def tiny(tiny_trained, tmp_path_factory):
    """The shared tiny R-CNN (caching in a folder of its own) and all 8 of its images (train
    and test) as one set, their proposals computed."""
    model = with_config(RCNN.load(tiny_trained / "model.pt"), cache_dir=str(tmp_path_factory.mktemp("rule-cache")))
    train, test = (load_dataset(tiny_trained / "synth", split=s, classes=model.classes_) for s in ("train", "test"))
    images = Dataset(list(model.classes_), train.samples + test.samples)
    model.proposal_store().compute(images, workers=1)
    return tiny_trained, model, images


def with_config(model: RCNN, **changes) -> RCNN:
    """A shallow copy of fitted `model` with `changes` to its config."""
    other = copy.copy(model)
    other.config = replace(model.config, **changes)
    return other


def test_best_per_class_keeps_each_class_best_k_above_the_floor():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 3)).astype(np.float32)
    rows, cols = best_per_class(scores, -0.5, 7)
    for c in range(3):
        mine = rows[cols == c]
        expected = np.argsort(-scores[:, c], kind="stable")[:7]
        expected = expected[scores[expected, c] >= -0.5]
        assert mine.tolist() == expected.tolist()
    every = best_per_class(scores, -0.5)
    assert (scores[every] >= -0.5).all() and len(every[0]) == (scores >= -0.5).sum()


def test_nms_before_the_per_image_cut_keeps_a_second_object_of_the_class():
    # object A: five near-duplicates scoring 0.9 .. 0.86; object B, far away, scores 0.5
    a = np.array([[10, 10, 50, 50]], np.float32) + np.arange(5, dtype=np.float32)[:, None]
    boxes = np.concatenate([a, [[100, 100, 140, 140]]]).astype(np.float32)
    d = Detections(boxes, np.array([0.9, 0.89, 0.88, 0.87, 0.86, 0.5], np.float32), np.ones(6, np.int64))
    rule = load_config(None, {"top_per_class": 3})  # R-CNN's: the best 3 first, all of them on A
    assert not replace(rule, candidate_nms=False).candidate_nms
    kept = top_candidates(d, rule)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.89, 0.88]) and (kept.boxes[:, 0] < 60).all()
    kept = top_candidates(d, replace(rule, candidate_nms=True, nms_threshold=0.5))  # NMS first: A once, then B
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5])
    assert load_config(None, {"detector": "faster_rcnn"}).candidate_nms
    assert load_config(None, {"detector": "fast_rcnn"}).candidate_nms


def test_set_thresholds_keep_per_image_times_images_per_class_in_any_order():
    rng = np.random.default_rng(1)
    candidates = {
        str(i): Detections(np.zeros((30, 4)), rng.normal(size=30), rng.integers(1, 3, size=30)) for i in range(10)
    }
    t = set_thresholds(candidates, 2, per_image=4)
    for c in (1, 2):
        scores = np.concatenate([d.scores[d.labels == c] for d in candidates.values()])
        assert (scores >= t[c - 1]).sum() == 40
    shuffled = dict(reversed(list(candidates.items())))
    np.testing.assert_array_equal(set_thresholds(shuffled, 2, per_image=4), t)
    assert np.isneginf(set_thresholds(candidates, 2, per_image=100)).all()  # too few: no threshold


def test_the_rule_keeps_about_k_per_class_per_image_on_a_real_model(tiny):
    _, model, images = tiny
    n, k, top = len(images), 3, 10
    ruled = with_config(model, per_class_per_image=k, top_per_class=top, nms_threshold=1.0, max_detections=10**6)
    candidates = {s.id: ruled.candidates(read_image(s.image_path), ruled.proposal_store().load(s)) for s in images}
    for d in candidates.values():  # each class's best `top` per image
        assert np.bincount(d.labels, minlength=len(model.classes_) + 1).max() <= top
    detections = ruled.detect_dataset(images)  # NMS at IoU 1 suppresses nothing: what the thresholds keep
    assert detections.keys() == candidates.keys()
    for c in range(1, len(model.classes_) + 1):
        offered = sum(int((d.labels == c).sum()) for d in candidates.values())
        kept = sum(int((d.labels == c).sum()) for d in detections.values())
        assert offered > k * n and kept == k * n  # float scores: no ties at the threshold
    # the default rule (40 per class per image, NMS 0.3): precision-recall past the fixed
    # threshold's end, from the caches as from the images
    default = model.detect_dataset(images)
    no_cache = model.detect_dataset(images, use_cache=False)
    assert min(d.scores.min() for d in no_cache.values() if len(d)) < model.config.min_score
    lowest = min(d.scores.min() for d in default.values() if len(d))
    assert lowest < model.config.min_score  # boxes the fixed threshold (-1) drops
    fixed = with_config(model, test_rule="threshold").detect_dataset(images)
    rule_ap = evaluate_voc(images, default, 0.5)
    fixed_ap = evaluate_voc(images, fixed, 0.5)
    assert rule_ap.mAP >= fixed_ap.mAP - 1e-9  # more of the same ranking never lowers all-point AP


def test_the_fixed_threshold_rule_is_detect_on_every_image(tiny):
    _, model, images = tiny
    fixed = with_config(model, test_rule="threshold")
    detections = fixed.detect_dataset(images, use_cache=False)
    for s in images:
        d = model.detect(read_image(s.image_path), proposals=model.proposal_store().load(s))
        np.testing.assert_allclose(detections[s.id].scores, d.scores, rtol=1e-5, atol=1e-5)
        assert (detections[s.id].scores >= model.config.min_score).all()


def test_detect_on_a_dataset_resumed_writes_what_an_uninterrupted_run_writes(tiny, tmp_path, capsys):
    root, model, images = tiny
    ruled = with_config(model, per_class_per_image=2, top_per_class=6)
    ruled.save(tmp_path / "model.pt")
    data = tmp_path / "synth"
    shutil.copytree(root / "synth", data)
    detect = ["--quiet", "detect", str(tmp_path / "model.pt"), str(data), "--split", "train"]
    assert main([*detect, "--out", str(tmp_path / "fresh.json")]) == 0
    assert "test rule rcnn" in capsys.readouterr().out
    # interrupted by an unreadable image half-way: the images before it are kept as candidates
    train = load_dataset(data, split="train")
    bad = data / "JPEGImages" / f"{train.samples[4].id}.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    out = tmp_path / "dets.json"
    assert main([*detect, "--out", str(out)]) == 1
    assert len(list(tmp_path.glob(".dets.json.parts/*-candidates6/*.npz"))) == 4
    capsys.readouterr()
    bad.write_bytes(good)
    assert main([*detect, "--out", str(out)]) == 0
    assert "(4 from an interrupted run)" in capsys.readouterr().out
    assert out.read_bytes() == (tmp_path / "fresh.json").read_bytes()
    assert not (tmp_path / ".dets.json.parts").exists()
    # the thresholds are the set's: per class at most 2 per image over the 6 images, after NMS
    per_class = Counter(r["category_id"] for r in json.loads(out.read_text()))
    assert max(per_class.values()) <= 2 * len(train)
    # the fixed threshold on request: every score at least the SVMs' -1
    assert main([*detect, "--out", str(tmp_path / "fixed.json"), "--test-rule", "threshold"]) == 0
    assert min(r["score"] for r in json.loads((tmp_path / "fixed.json").read_text())) >= -1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"test_rule": "best"}, 'test_rule = "best": expected one of rcnn, threshold'),
        ({"top_per_class": 0}, "top_per_class = 0: expected an integer >= 1"),
        ({"per_class_per_image": 2.5}, "per_class_per_image = 2.5: expected an integer"),
    ],
)
def test_test_rule_settings_are_checked(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, changes)


def test_the_base_candidates_from_detect_match_the_detectors_own(tiny):
    """`Detector.candidates`' default (detect with no threshold, no NMS, no cap; for a detector
    that does not write its own, such as a new one) gives what `RCNN.candidates` gives."""
    from rcnn.detectors.base import Detector

    _, model, images = tiny
    model = with_config(model, top_per_class=7)
    for s in images.samples[:3]:
        image, proposals = read_image(s.image_path), model.proposal_store().load(s)
        own = model.candidates(image, proposals)
        generic = Detector.candidates(model, image, proposals)
        assert model.config.score_threshold is None and model.config.nms_threshold == 0.3  # put back

        def rows(d):
            return sorted(zip(d.labels.tolist(), np.round(d.scores, 4).tolist(), np.round(d.boxes, 2).tolist()))

        assert rows(own) == rows(generic) and len(own) == 7 * len(model.classes_)
