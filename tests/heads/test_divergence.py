"""Training that goes wrong says so and stops: a non-finite loss or gradient ends every trainer
(R-CNN's fine-tuning, Fast and Faster R-CNN, the localiser) with one line naming the iteration
and each loss term, exit status 1, the last good checkpoint kept and no model file."""

import math

import pytest
import torch
from torch import nn

from rcnn.cli import main
from rcnn.datasets.synthetic import make_synthetic
from rcnn.errors import TrainingDiverged
from rcnn.heads.sgd import check_weights, train_step

# -- the guarded step ------------------------------------------------------------------------------


def _linear():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    return net, torch.optim.SGD(net.parameters(), lr=0.1)


def test_a_non_finite_loss_stops_before_any_weight_changes():
    net, opt = _linear()
    before = [p.detach().clone() for p in net.parameters()]
    loss = net(torch.ones(1, 3)).sum() * float("nan")
    with pytest.raises(
        TrainingDiverged, match=r"toy training diverged at iteration 7: a non-finite loss \(loss=nan, x=1\)"
    ):
        train_step(opt, {"loss": loss, "x": torch.tensor(1.0)}, 7, "toy")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_non_finite_gradient_stops_before_any_weight_changes():
    net, opt = _linear()
    before = [p.detach().clone() for p in net.parameters()]
    # sqrt at 0: a finite loss whose gradient is infinite
    loss = torch.sqrt(net(torch.ones(1, 3)).sum() * 0)
    assert math.isfinite(loss.item())
    with pytest.raises(TrainingDiverged, match="a non-finite gradient"):
        train_step(opt, {"loss": loss}, 1, "toy")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_the_step_returns_the_gradient_norm_and_clips_it():
    net, opt = _linear()
    x = torch.full((1, 3), 10.0)
    norm = train_step(opt, {"loss": net(x).sum()}, 1, "toy")
    assert norm == pytest.approx(math.sqrt(3 * 10.0**2 + 1))  # d/dw = x, d/db = 1
    net, opt = _linear()
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    train_step(opt, {"loss": net(x).sum()}, 1, "toy", clip=1.0)
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert float((before - after).norm()) == pytest.approx(0.1, rel=1e-4)  # lr x a gradient of norm 1


def test_non_finite_weights_are_caught_before_a_checkpoint(tmp_path):
    net, _ = _linear()
    with torch.no_grad():
        net.bias.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"non-finite weights in bias.*no checkpoint yet"):
        check_weights([net], "toy", 3, {"loss": torch.tensor(1.0)}, tmp_path / "none.pt")


# -- every trainer, from the command line -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("diverge") / "synth"
    make_synthetic(root, images=6, seed=3, size=96, test_fraction=0.34)
    return root


WINDOWS = ["proposals.method='sliding_window'", "proposals.max_boxes=40"]
DETECTORS = {
    "rcnn": [
        *WINDOWS,
        "features.backbone='resnet18'",
        "features.weights='random'",
        "features.crop_size=32",
        "features.padding=2",
        "features.frozen=false",
        "features.pool=1",
        "finetune.iterations=4",
        "finetune.epoch_iterations=2",
        "finetune.lr=100000",
        "workers=1",
    ],
    "fast_rcnn": [
        "detector='fast_rcnn'",
        *WINDOWS,
        "scale=96",
        "max_size=96",
        "backbone.weights='random'",
        "head.fc=[32, 32]",
        "train.iterations=40",
        "train.lr=100000",
    ],
    "faster_rcnn": [
        "detector='faster_rcnn'",
        "scale=96",
        "max_size=96",
        "backbone.weights='random'",
        "head.fc=[32, 32]",
        "train.iterations=6",
        "train.lr=100000",
    ],
    "mask_rcnn": [
        "detector='mask_rcnn'",
        "scale=96",
        "max_size=96",
        "backbone.weights='random'",
        "head.fc=[32, 32]",
        "mask.layers=[16]",
        "train.iterations=6",
        "train.lr=100000",
    ],
    "yolo": [
        "detector='yolo'",
        "scale=96",
        "max_size=96",
        "backbone.weights='random'",
        "train.iterations=6",
        "train.lr=100000",
    ],
    "ssd": [
        "detector='ssd'",
        "scale=96",
        "max_size=96",
        "backbone.weights='random'",
        "train.iterations=6",
        "train.lr=100000",
        "train.clip_grad_norm=0",  # clipped, its normalised losses stay finite (dead ReLUs) for many steps
    ],
    "centernet": [
        "detector='centernet'",
        "scale=96",
        "max_size=96",
        "backbone.weights='random'",
        "train.iterations=6",
        "train.lr=100000",
        "train.clip_grad_norm=0",
    ],
    "localizer": [
        "detector='localizer'",
        "backbone='resnet18'",
        "weights='random'",
        "input_size=32",
        "batch_size=2",
        "epochs=3",
        "optimizer='sgd'",  # Adam's steps are lr-sized whatever the gradient, and batch norm absorbs them
        "lr=100000",
    ],
}


@pytest.mark.parametrize("kind", DETECTORS)
def test_a_diverging_training_ends_in_one_line_and_no_model(kind, tiny_set, tmp_path, capsys):
    out = tmp_path / "model.pt"
    sets = [a for s in [*DETECTORS[kind], f"cache_dir='{tmp_path / 'cache'}'"] for a in ("--set", s)]
    status = main(["--quiet", "train", str(tiny_set), "--split", "train", "--out", str(out), *sets])
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if "error" in line]  # notices may come before it
    assert len(lines) == 1 and lines[0].startswith("rcnn train: error: "), err
    assert "training diverged at iteration" in lines[0] and "no model written" in lines[0]
    if kind in ("fast_rcnn", "faster_rcnn", "mask_rcnn"):  # each loss term is named
        terms = ["classifier", "box", "rpn_objectness", "rpn_box"] if kind != "fast_rcnn" else ["cls", "box"]
        terms += ["mask"] if kind == "mask_rcnn" else []
        assert all(f"{t}=" in lines[0] for t in terms), lines[0]
    assert not out.exists()


def test_the_last_good_checkpoint_is_named_and_left_alone(tmp_path):
    net, opt = _linear()
    checkpoint = tmp_path / "run.pt"
    torch.save({"net": net.state_dict()}, checkpoint)
    before = checkpoint.read_bytes()
    loss = net(torch.ones(1, 3)).sum() * float("inf")
    with pytest.raises(
        TrainingDiverged, match=f"the last good checkpoint is kept \\({checkpoint}\\), no model written"
    ):
        train_step(opt, {"loss": loss}, 12, "toy", checkpoint=checkpoint)
    assert checkpoint.read_bytes() == before
