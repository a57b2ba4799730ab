"""The localiser: its loss terms (presence masks class and box), a tiny real fit, the model
file, determinism, and the CLI path (train -> detect -> report -> evaluate)."""

import json

import numpy as np
import pytest
import torch

from rcnn.boxes import box_iou
from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import Localizer, LocalizerConfig, build_detector, load_config, load_model
from rcnn.detectors.localizer import localizer_loss, targets
from rcnn.errors import ConfigError

SLOW_FIXTURES = ("fitted",)  # trained to real accuracy: the tests that use it run in the slow tier (conftest.py)

TINY = {
    "detector": "localizer",
    "backbone": "resnet18",
    "weights": "random",
    "input_size": 48,
    "batch_size": 8,
    "epochs": 15,
}


@pytest.fixture(scope="module")
def one_thread():
    """This machine is shared: one intra-op thread is several times faster than two fighting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("loc")
    make_synthetic(root / "rect", images=60, seed=0, size=64, preset="rectangle")
    train, test = load_dataset(root / "rect", split="train"), load_dataset(root / "rect", split="test")
    model = build_detector(load_config(None, {**TINY, "cache_dir": str(root / "cache")})).fit(train)
    return root, model, train, test


def test_loss_terms_mask_class_and_box_by_presence():
    torch.manual_seed(0)
    presence, logits, boxes = torch.randn(4), torch.randn(4, 3), torch.rand(4, 4)
    present = torch.tensor([True, False, True, False])
    labels = torch.tensor([2, 0, 3, 0])
    target = torch.rand(4, 4)
    target[~present] = 5.0  # absent images' boxes are garbage: they must not count
    terms = localizer_loss(presence, logits, boxes, present, labels, target, box_weight=2.0, box_loss="l2")
    # by hand
    p = torch.sigmoid(presence)
    bce = -(present * p.log() + ~present * (1 - p).log()).mean()
    logp = torch.log_softmax(logits, 1)
    ce = -(logp[0, 1] + logp[2, 2]) / 2
    l2 = (((boxes[0] - target[0]) ** 2).sum() + ((boxes[2] - target[2]) ** 2).sum()) / 2
    assert torch.allclose(terms["presence"], bce, atol=1e-6)
    assert torch.allclose(terms["class"], ce, atol=1e-6)
    assert torch.allclose(terms["box"], l2, atol=1e-6)
    assert torch.allclose(terms["total"], bce + ce + 2.0 * l2, atol=1e-6)
    d = (boxes[[0, 2]] - target[[0, 2]]).abs()
    smooth = torch.where(d < 0.1, 0.5 * d**2 / 0.1, d - 0.05).sum(1).mean()
    assert torch.allclose(localizer_loss(presence, logits, boxes, present, labels, target)["box"], smooth, atol=1e-6)
    # no object in the batch: only the presence term, and it still has a gradient
    none = localizer_loss(presence.requires_grad_(), logits, boxes, torch.zeros(4, dtype=torch.bool), labels, target)
    assert none["class"].item() == 0 and none["box"].item() == 0
    none["total"].backward()
    assert presence.grad is not None


def test_targets_take_the_largest_object_and_normalise(fitted):
    _, _, train, _ = fitted
    s = train[0]
    present, label, box = targets(s)
    assert present and label == 1
    assert np.allclose(box * 64, s.boxes[0])


def test_tiny_fit_localises_the_rectangle(fitted):
    _, model, _, test = fitted
    p = model.predict([s.image_path for s in test])
    ious = np.array([box_iou(p["boxes"][i : i + 1], s.boxes)[0, 0] for i, s in enumerate(test)])
    assert ious.mean() > 0.45 and (ious >= 0.5).mean() >= 0.6, ious  # a box at random: IoU about 0.1
    assert (p["presence"] > 0.5).all()
    dets = model.detect_dataset(test)
    assert all(len(d) == 1 and d.labels[0] == 1 for d in dets.values())
    assert model.history_["total"][-1] < model.history_["total"][0] / 3


def test_save_load_round_trip_gives_identical_detections(fitted, tmp_path):
    _, model, _, test = fitted
    path = model.save(tmp_path / "loc.pt")
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["detector"] == "localizer"
    again = load_model(path)
    assert isinstance(again, Localizer) and again.classes_ == model.classes_
    for s in test:
        a, b = model.detect(s.image_path), again.detect(s.image_path)
        assert (
            np.array_equal(a.boxes, b.boxes)
            and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.labels, b.labels)
        )
    with pytest.raises(Exception, match="not rcnn"):
        from rcnn.detectors import RCNN

        RCNN.load(path)


def test_fit_is_bit_identical_and_resumes_from_its_checkpoint(fitted, tmp_path):
    root, _, train, _ = fitted
    small = train.subset([s.id for s in train][:16])
    config = load_config(None, {**TINY, "epochs": 2, "checkpoint_every": 1, "cache_dir": str(tmp_path / "a")})
    a = Localizer(config).fit(small)
    b = Localizer(load_config(None, {**TINY, "epochs": 2, "cache_dir": str(tmp_path / "b")})).fit(small)
    for k, v in a.net_.state_dict().items():
        assert torch.equal(v, b.net_.state_dict()[k]), k
    # the checkpoint written after epoch 2 is picked up: a re-run starts there
    c = Localizer(config).fit(small)
    assert c.fit_stats_["resumed_from_epoch"] == 2
    assert all(torch.equal(v, c.net_.state_dict()[k]) for k, v in a.net_.state_dict().items())


def test_config_is_checked():
    with pytest.raises(ConfigError, match="box_loss"):
        load_config(None, {"detector": "localizer", "box_loss": "l3"})
    with pytest.raises(ConfigError, match="input_size"):
        load_config(None, {"detector": "localizer", "input_size": 8})
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, {"detector": "localizer", "optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="epochs"):
        load_config(None, {"detector": "localizer", "epochs": 1.5})
    assert isinstance(load_config(None, {"detector": "localizer"}), LocalizerConfig)


def test_cli_train_detect_report_evaluate(fitted, tmp_path, capsys):
    root, _, _, _ = fitted
    data, model = root / "rect", tmp_path / "loc.pt"
    sets = [
        "--set=detector='localizer'",
        "--set=backbone='resnet18'",
        "--set=weights='random'",
        "--set=input_size=32",
        "--set=epochs=2",
        f"--set=cache_dir='{tmp_path / 'cache'}'",
    ]
    assert main(["--quiet", "train", str(data), "--split", "train", "--out", str(model), *sets]) == 0
    assert not (tmp_path / "cache" / "proposals").exists()  # no proposals for a localiser
    dets = tmp_path / "dets.json"
    assert (
        main(
            [
                "--quiet",
                "detect",
                str(model),
                str(data),
                "--split",
                "test",
                "--out",
                str(dets),
                "--draw",
                str(tmp_path / "drawn"),
            ]
        )
        == 0
    )
    records = json.loads(dets.read_text())
    assert len({r["image_id"] for r in records}) == len(records)  # at most one box per image
    assert main(["--quiet", "report", str(model), str(data), "--split", "test", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    assert not (tmp_path / "cache" / "proposals").exists()
    assert main(["--quiet", "evaluate", "--gt", str(data), "--split", "test", "--detections", str(dets)]) == 0
    assert "mAP" in capsys.readouterr().out
