"""`make experiment-family` (experiments/family.py) end to end on a tiny synthetic set: R-CNN
with SVMs and with the fine-tuned softmax, Fast R-CNN with a test-time SVD, from the
experiment's own config format, and a warm re-run from the model cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import family  # noqa: E402

from rcnn.datasets.synthetic import make_synthetic  # noqa: E402

RCNN_BASE = """
[proposals]
method = "selective_search"
max_boxes = 30
[features]
backbone = "resnet18"
weights = "random"
crop_size = 32
padding = 2
frozen = false
[finetune]
iterations = 4
batch_positives = 4
batch_negatives = 12
epoch_iterations = 2
[svm]
positive_iou = 0.7
C = 0.01
"""
FAST_BASE = """
detector = "fast_rcnn"
scale = 128
max_size = 128
test_proposals = 30
[proposals]
method = "selective_search"
max_boxes = 30
[backbone]
name = "resnet18"
weights = "random"
[head]
fc = [64, 64]
[train]
iterations = 6
rois_per_image = 16
checkpoint_every = 100
"""
MASK_BASE = """
detector = "mask_rcnn"
scale = 96
max_size = 96
[backbone]
weights = "random"
[head]
fc = [32, 32]
[mask]
layers = [16]
[train]
iterations = 4
rois_per_image = 16
"""
YOLO_BASE = """
detector = "yolo"
scale = 96
max_size = 96
stride = 32
[backbone]
weights = "random"
[train]
iterations = 4
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    make_synthetic(root / "tiny", images=12, seed=0, size=128, test_fraction=0.25)
    (root / "rcnn.toml").write_text(RCNN_BASE)
    (root / "fast.toml").write_text(FAST_BASE)
    (root / "mask.toml").write_text(MASK_BASE)
    (root / "yolo.toml").write_text(YOLO_BASE)
    (root / "family.toml").write_text(f"""
[experiment]
title = "Tiny family"
timed_images = 2
cache = "{root / "cache"}"

[experiment.bases.tiny]
rcnn = "{root / "rcnn.toml"}"
fast_rcnn = "{root / "fast.toml"}"
mask_rcnn = "{root / "mask.toml"}"
yolo = "{root / "yolo.toml"}"

[[arms]]
name = "R-CNN, SVMs"
detector = "rcnn"
overrides = {{classifier = "svm"}}

[[arms]]
name = "R-CNN, softmax"
detector = "rcnn"
overrides = {{classifier = "softmax"}}
shares = "R-CNN, SVMs"

[[arms]]
name = "Fast R-CNN, SVD 8"
detector = "fast_rcnn"
test = {{svd_rank = 8}}

[[arms]]
name = "Mask R-CNN"
detector = "mask_rcnn"

[[arms]]
name = "YOLO"
detector = "yolo"

[[arms]]
name = "No such detector"
detector = "no_such_kind"
""")
    return root


def _run(root, monkeypatch) -> dict:
    monkeypatch.chdir(root)  # family.main chdirs to the repository root; monkeypatch restores the cwd
    args = ["--config", str(root / "family.toml"), "--out", str(root / "out"), "--data", str(root / "tiny")]
    assert family.main([*args, "--only", "tiny"]) == 0
    return json.loads((root / "out" / "results.json").read_text())["tiny"]


@pytest.mark.slow  # end to end: seconds of training in child processes
def test_family_table_plot_shared_training_and_test_time_settings(setup, monkeypatch):
    first = _run(setup, monkeypatch)
    rows = {r["arm"]: r for r in first["rows"]}
    assert list(rows) == ["R-CNN, SVMs", "R-CNN, softmax", "Fast R-CNN, SVD 8", "Mask R-CNN", "YOLO"]
    assert first["left_out"] == ["No such detector"]
    for name, r in rows.items():
        assert 0.0 <= r["mAP50"] <= 1.0 and -1.0 <= r["coco_AP"] <= 1.0, name
        assert r["network_seconds"] > 0 and (r["proposals_seconds"] > 0) == (name not in ("Mask R-CNN", "YOLO")), name
        assert r["total_seconds"] == pytest.approx(r["proposals_seconds"] + r["network_seconds"])
        assert r["train_seconds"] > 0, name
        assert (r["mask_AP"] is not None) == (name == "Mask R-CNN"), name  # mask AP where there are masks
        assert r["boxes_scored"] == pytest.approx(sum(r["boxes_scored_steps"].values())) and r["boxes_scored"] > 0
    _check_boxes_scored(setup, first)
    assert -1.0 <= rows["Mask R-CNN"]["mask_AP"] <= 1.0 and rows["Mask R-CNN"]["proposals_seconds"] == 0
    # the softmax arm read the SVM arm's fine-tuned network and features from the cache: its
    # training counts them at the SVM arm's cost, and it has no CPU time of its own to show
    assert rows["R-CNN, softmax"]["train_cpu_seconds"] is None
    assert rows["R-CNN, SVMs"]["train_cpu_seconds"] > 0
    svm = first["fits"]["R-CNN, SVMs"]
    assert svm["finetune_seconds"] > 0 and svm["features_seconds"] > 0
    assert rows["R-CNN, softmax"]["train_seconds"] >= svm["finetune_seconds"] + svm["features_seconds"]
    assert first["configs"]["Fast R-CNN, SVD 8"]["svd_rank"] == 8  # set on the fitted model at test time
    assert first["configs"]["R-CNN, softmax"]["classifier"] == "softmax"
    report = (setup / "out" / "report.md").read_text()
    assert "| R-CNN, softmax |" in report and "Left out" in report and "Faster R-CNN paper" in report
    assert (setup / "out" / "family.png").stat().st_size > 0

    second = _run(setup, monkeypatch)  # warm: every model from the cache, the same scores
    for a, b in zip(first["rows"], second["rows"]):
        assert b["fit_from_cache"] is True
        assert (a["mAP50"], a["coco_AP"], a["train_seconds"]) == (b["mAP50"], b["coco_AP"], b["train_seconds"])


def _check_boxes_scored(root, results: dict) -> None:
    """Each row's boxes scored per image: its model's traces' counts over the timed test images."""
    from rcnn.datasets import load_dataset
    from rcnn.datasets.images import read_image
    from rcnn.detectors import load_model

    samples = load_dataset(root / "tiny", split="test").samples[:2]  # timed_images = 2
    for row in results["rows"]:
        model = load_model(results["fits"][row["arm"]]["path"])
        store = None if model.learns_proposals else model.proposal_store()
        counts = [
            model.trace(read_image(s.image_path), proposals=None if store is None else store.load(s)).scored
            for s in samples
        ]
        expected = {k: sum(c[k] for c in counts) / len(counts) for k in counts[0]}
        assert row["boxes_scored_steps"] == pytest.approx(expected), row["arm"]
    rows = {r["arm"]: r for r in results["rows"]}
    assert rows["YOLO"]["boxes_scored_steps"] == {"grid boxes": 3 * 3 * 2}  # 96 px: 3 x 3 cells of 32 px, B = 2
    assert set(rows["Mask R-CNN"]["boxes_scored_steps"]) == {"anchors", "proposals"}
    assert set(rows["Fast R-CNN, SVD 8"]["boxes_scored_steps"]) == {"proposals"}


def test_a_sharing_arm_counts_the_shared_stages_at_the_other_arms_cost():
    own = {
        "fit_seconds": 10.0,
        "proposals_seconds": 2.0,
        "finetune_seconds": 0.5,
        "features_seconds": 1.5,
        "fit_cpu_seconds": 9.0,
    }
    shared = {"finetune_seconds": 100.0, "features_seconds": 50.0}
    assert family.train_seconds(own, None) == (8.0, 9.0)
    assert family.train_seconds(own, shared) == (8.0 - 0.5 - 1.5 + 150.0, None)


def test_test_time_settings_share_the_fitted_model_and_others_are_refused(setup, monkeypatch, tmp_path):
    import harness

    from rcnn.datasets import load_dataset
    from rcnn.detectors import load_config

    train = load_dataset(setup / "tiny", split="train")
    base = [{"cache_dir": str(tmp_path / "cache")}, {"train": {"iterations": 2}}]
    model, fit = harness.fit_or_load(load_config(setup / "fast.toml", base), train)
    again, fit2 = harness.fit_or_load(
        load_config(setup / "fast.toml", [*base, {"svd_rank": 4, "test_rule": "threshold"}]), train
    )
    assert fit["from_cache"] is False and fit2["from_cache"] is True
    assert (again.config.svd_rank, again.config.test_rule) == (4, "threshold")  # the new test-time values
    _, fit3 = harness.fit_or_load(load_config(setup / "fast.toml", [*base, {"head": {"fc": [32, 32]}}]), train)
    assert fit3["from_cache"] is False  # a training setting: a model of its own
    config = setup / "bad.toml"
    config.write_text(
        (setup / "family.toml").read_text().replace("test = {svd_rank = 8}", 'test = {roi = {mode = "pool"}}')
    )
    monkeypatch.chdir(setup)
    with pytest.raises(SystemExit, match="not test-time settings"):
        family.main(
            ["--config", str(config), "--out", str(tmp_path / "out"), "--data", str(setup / "tiny"), "--only", "tiny"]
        )


def test_arm_names_an_arm_of_the_config_and_keeps_every_dataset(setup, tmp_path):
    args = ["--config", str(setup / "family.toml"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="no arm Bogus"):
        family.main([*args, "--arm", "Bogus"])
    with pytest.raises(SystemExit, match="leave out --only"):
        family.main([*args, "--arm", "Mask R-CNN", "--only", "tiny"])
