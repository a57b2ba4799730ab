"""Kill `rcnn propose`, `rcnn train` and `rcnn detect` at seeded random points, re-run them, and
check the result equals an uninterrupted run's, bit for bit.

Two ways of killing: ``RCNN_FAULT_WRITE=N`` makes the process SIGKILL itself in the middle of
its N-th atomic write (`rcnn.cache._fault`: part of the temporary file is on disk, the target
is not renamed yet), which reaches every write a run makes; and a SIGKILL from outside after
a seeded random delay, which lands wherever the run happens to be.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn.cache import FAULT_ENV, load_npz
from rcnn.datasets.synthetic import make_synthetic

pytestmark = pytest.mark.slow  # every interruption point of three commands: minutes

CONFIG = """
workers = 1
[proposals]
method = "sliding_window"
max_boxes = 40
[features]
backbone = "resnet18"
weights = "random"
crop_size = 32
padding = 2
frozen = false
pool = 1
[finetune]
iterations = 3
checkpoint_every = 1
batch_positives = 8
batch_negatives = 8
epoch_iterations = 2
[svm]
positive_iou = 0.7
C = 0.01
"""


def rcnn(*args, cwd, fault: int | None = None, kill_after: float | None = None) -> int:
    """Run the CLI in a fresh process in `cwd`; returns its exit status (-9: killed)."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault is not None:
        env[FAULT_ENV] = str(fault)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcnn.cli", "--quiet", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, -9), err.decode()
    return proc.returncode


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    make_synthetic(root / "synth", images=8, seed=11, size=128, test_fraction=0.25)
    (root / "tiny.toml").write_text(CONFIG)
    return root


def clean_copy(work, name) -> Path:
    """A folder with the dataset and config linked in and nothing else (no caches)."""
    d = work / name
    d.mkdir()
    (d / "synth").symlink_to(work / "synth")
    (d / "tiny.toml").symlink_to(work / "tiny.toml")
    return d


def model_state(path):
    state = torch.load(path, weights_only=True)
    state["config"].pop("cache_dir")
    return state


def assert_equal_states(a, b, where="model"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_states(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


TRAIN = (
    "train",
    "synth",
    "--split",
    "train",
    "--config",
    "tiny.toml",
    "--set",
    "cache_dir='cache'",
    "--out",
    "model.pt",
)


PROPOSE = ("propose", "synth", "--method", "sliding_window", "--max-boxes", "40", "--workers", "1", "--out", "cache")


def test_propose_killed_anywhere_resumes_to_the_same_boxes(work):
    ref = clean_copy(work, "propose-ref")
    assert rcnn(*PROPOSE, cwd=ref) == 0
    reference = {p.name: load_npz(p)["boxes"] for p in ref.glob("cache/*/*.npz")}
    assert len(reference) == 8
    rng = random.Random(0)
    for n in rng.sample(range(1, 10), 2):  # 9 writes: params.json and 8 entries
        d = clean_copy(work, f"propose-{n}")
        assert rcnn(*PROPOSE, cwd=d, fault=n) == -9
        assert rcnn(*PROPOSE, cwd=d) == 0
        got = {p.name: load_npz(p)["boxes"] for p in d.glob("cache/*/*.npz")}
        assert got.keys() == reference.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], reference[k])
        # a write killed mid-way leaves its temporary file (.NAME.XXXX.tmp), never a half entry


def test_train_killed_anywhere_resumes_to_the_same_model(work):
    ref = clean_copy(work, "train-ref")
    assert rcnn(*TRAIN, cwd=ref) == 0
    reference = model_state(ref / "model.pt")
    rng = random.Random(1)
    # writes: proposals (params + 6), checkpoints (3), features (params + 6), the model: 18
    points = [("write", n) for n in sorted(rng.sample(range(1, 19), 2))] + [("time", rng.uniform(3.0, 8.0))]
    for kind, at in points:
        d = clean_copy(work, f"train-{kind}-{at:.2f}")
        status = rcnn(*TRAIN, cwd=d, fault=at if kind == "write" else None, kill_after=at if kind == "time" else None)
        if kind == "write":
            assert status == -9
        assert rcnn(*TRAIN, cwd=d) == 0
        assert_equal_states(model_state(d / "model.pt"), reference)


def test_detect_killed_anywhere_resumes_to_the_same_detections(work):
    ref = clean_copy(work, "detect-ref")
    assert rcnn(*TRAIN, cwd=ref) == 0
    detect = ("detect", "model.pt", "synth/JPEGImages", "--out", "dets.json")
    assert rcnn(*detect, cwd=ref) == 0
    reference = (ref / "dets.json").read_bytes()
    for n in (4, 9):  # 8 images' entries, then the results file
        d = clean_copy(work, f"detect-{n}")
        (d / "model.pt").symlink_to(ref / "model.pt")
        assert rcnn(*detect, cwd=d, fault=n) == -9
        assert not (d / "dets.json").exists()
        assert rcnn(*detect, cwd=d) == 0
        assert (d / "dets.json").read_bytes() == reference
        assert not list(d.glob(".dets.json.parts"))  # removed once the results are written
