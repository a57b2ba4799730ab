"""Shared test set-up. OMP_WAIT_POLICY=PASSIVE before any test loads torch, as the `rcnn`
command sets it (see rcnn/cli.py): busy-waiting OpenMP threads slow a shared CPU down."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from rcnn.progress import log_to_stderr  # noqa: E402

log_to_stderr()  # the library's messages on stderr, as the `rcnn` command shows them


def pytest_collection_modifyitems(items):
    """A test that asks for one of its module's `SLOW_FIXTURES` (a model trained to real
    accuracy: a minute or more to build) is marked slow: `make test` leaves it to `make
    test-all` and CI."""
    for item in items:
        if set(getattr(item.module, "SLOW_FIXTURES", ())) & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


# A tiny R-CNN that trains in seconds: sliding windows, random resnet18 weights, 32 px crops,
# one global pool, no fine-tuning.
TINY_RCNN = {
    "proposals": {"method": "sliding_window", "max_boxes": 40},
    "features": {
        "backbone": "resnet18",
        "weights": "random",
        "crop_size": 32,
        "padding": 2,
        "frozen": False,
        "pool": 1,
    },
    "finetune": {"iterations": 0},
    "svm": {"positive_iou": 0.7, "C": 0.01},
    "workers": 1,
}


def _tiny_rcnn_set_args(cache_dir, max_boxes: int = 40) -> list[str]:
    """`TINY_RCNN` as ``rcnn train --set`` options, caching under `cache_dir`."""
    values = {
        "proposals.method": "'sliding_window'",
        "proposals.max_boxes": str(max_boxes),
        "features.backbone": "'resnet18'",
        "features.weights": "'random'",
        "features.crop_size": "32",
        "features.padding": "2",
        "features.frozen": "false",
        "features.pool": "1",
        "finetune.iterations": "0",
        "cache_dir": f"'{cache_dir}'",
        "workers": "1",
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="session")
def tiny_rcnn_set_args():
    """``f(cache_dir, max_boxes=40) -> list``: the tiny R-CNN as ``rcnn train --set`` options."""
    return _tiny_rcnn_set_args


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """A folder with a small synthetic set (``synth``: 8 images of 128 px, 6 train / 2 test)
    and a tiny R-CNN trained on its train split (``model.pt``). Read-only: copy before changing."""
    from rcnn.datasets import load_dataset
    from rcnn.datasets.synthetic import make_synthetic
    from rcnn.detectors import RCNN, load_config

    root = tmp_path_factory.mktemp("tiny-trained")
    make_synthetic(root / "synth", images=8, seed=2, size=128, test_fraction=0.25)
    model = RCNN(load_config(None, {**TINY_RCNN, "cache_dir": str(root / "cache")}))
    model.fit(load_dataset(root / "synth", split="train")).save(root / "model.pt")
    return root


@pytest.fixture(scope="session")
def synth60(tmp_path_factory):
    """``(train, test)``: 60 synthetic images of 192 px (45 train, 15 test), for the tests
    that fit a small Fast or Faster R-CNN. Read-only."""
    from rcnn.datasets import load_dataset
    from rcnn.datasets.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synth60") / "synth"
    make_synthetic(root, images=60, seed=5, size=192, test_fraction=0.25)
    train = load_dataset(root, split="train")
    return train, load_dataset(root, split="test", classes=train.classes)
