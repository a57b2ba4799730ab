"""`make experiment-generalization` (experiments/generalization.py) end to end on a tiny set:
each arm trained in its own process, scored, where each class's curve ends, a warm re-run from
the model cache reporting the first fit's cost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import generalization  # noqa: E402

from rcnn.datasets.synthetic import make_synthetic  # noqa: E402
from rcnn.evaluation.voc import VocResult  # noqa: E402

CONFIG = """
[experiment]
title = "tiny"
intro = "tiny"
cache = "{cache}"
detectors = ["faster_rcnn", "localizer"]
[experiment.overrides.faster_rcnn]
scale = 96
backbone = {{ weights = "random" }}
head = {{ fc = [32, 32] }}
train = {{ iterations = 4 }}
[experiment.overrides.localizer]
backbone = "resnet18"
weights = "random"
input_size = 32
epochs = 1
"""


def test_end_of_curves_is_the_last_recall_and_precision_of_each_class():
    voc = VocResult(
        classes=["a", "b", "c"],
        ap=np.array([0.5, 0.0, np.nan]),
        precision=[np.array([1.0, 0.5, 0.4]), np.zeros(0), np.zeros(0)],
        recall=[np.array([0.25, 0.25, 0.5]), np.zeros(0), np.zeros(0)],
        scores=[np.array([0.9, 0.8, 0.7]), np.zeros(0), np.zeros(0)],
        npos=np.array([4, 2, 0]),
        iou_threshold=0.5,
        use_07_metric=False,
    )
    assert generalization.end_of_curves(voc) == {
        "a": {"recall": 0.5, "precision": 0.4, "objects": 4},
        "b": {"recall": 0.0, "precision": None, "objects": 2},
    }


@pytest.mark.slow  # end to end: seconds of training in child processes
def test_every_arm_is_trained_apart_scored_and_cached(tmp_path):
    data = tmp_path / "tiny"
    make_synthetic(data, images=8, seed=1, size=96, test_fraction=0.25)
    config = tmp_path / "generalization.toml"
    config.write_text(CONFIG.format(cache=tmp_path / "cache"))
    argv = ["--config", str(config), "--out", str(tmp_path / "out"), "--data", str(data), "--only", "tiny"]
    assert generalization.harness.script_main("generalization", None, generalization.run, argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = results["tiny"]
    assert set(rows) == {"_size", "faster_rcnn", "localizer"}
    faster = rows["faster_rcnn"]
    assert faster["iterations"] == 4 and faster["train_cpu_seconds"] > 0 and faster["peak_rss_mb"] > 100
    assert 0 <= faster["mAP50"] <= 1 and set(faster["end_of_curves"]) <= {"circle", "rectangle", "star", "triangle"}
    assert rows["localizer"]["iterations"] == 1  # one epoch of 6 images in batches of 16
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| faster_rcnn |" in report and "precision-recall curve ends" in report
    # warm: the models come from the cache and the first fit's cost is reported again
    assert generalization.harness.script_main("generalization", None, generalization.run, argv) == 0
    again = json.loads((tmp_path / "out" / "results.json").read_text())["tiny"]["faster_rcnn"]
    assert again["fit_stats"]["from_cache"] is True
    assert again["train_seconds"] == faster["train_seconds"] and again["mAP50"] == faster["mAP50"]
