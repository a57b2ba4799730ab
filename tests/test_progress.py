"""Progress off a terminal: plain lines in a log (a stage's start, periodic done/total with the
rate, its end); nothing with --quiet."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np

from rcnn import progress as progress_module
from rcnn.cache import ImageStore
from rcnn.datasets.synthetic import make_synthetic
from rcnn.progress import LogProgress
from rcnn.reports.draw import save_image


def test_log_lines_say_start_progress_and_end(capsys):
    bar = LogProgress(desc="features", total=4, unit="crop", interval=0.0, defer=0.0)
    bar.set_postfix(loss="0.250")
    with bar:
        bar.update(1)
        bar.update(3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "rcnn: features: started, 4 crop to do"
    assert lines[1].startswith("rcnn: features: 1/4 crop (25 %), ") and lines[1].endswith("crop/s, loss=0.250")
    assert lines[2].startswith("rcnn: features: 4/4 crop (100 %)")
    assert lines[3].startswith("rcnn: features: done, 4 crop in ") and len(lines) == 4


def test_iterating_reports_each_item_and_closes_once(capsys):
    assert list(LogProgress(range(3), desc="detect", interval=1e9, defer=0.0)) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "rcnn: detect: started, 3 img to do" and lines[-1].startswith("rcnn: detect: done, 3 img in ")
    assert len(lines) == 2  # nothing between: the interval never passed


def test_a_quick_stage_gets_its_end_line_only(capsys):
    assert list(LogProgress(range(3), desc="reading VOC", defer=60.0)) == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rcnn: reading VOC: done, 3 img in ")


def test_progress_picks_log_lines_off_a_terminal_and_nothing_when_quiet(monkeypatch, capsys):
    assert isinstance(progress_module.progress(range(2), desc="x"), LogProgress)  # pytest's stderr is no TTY
    capsys.readouterr()
    monkeypatch.setattr(progress_module, "QUIET", True)
    assert list(progress_module.progress(range(2), desc="x")) == [0, 1]
    assert capsys.readouterr().err == ""


def test_a_train_run_redirected_to_a_file_shows_its_stages(tmp_path, tiny_rcnn_set_args):
    make_synthetic(tmp_path / "synth", images=6, seed=4, size=96, test_fraction=0.0)
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rcnn.cli",
                "train",
                str(tmp_path / "synth"),
                "--out",
                str(tmp_path / "m.pt"),
                *tiny_rcnn_set_args(tmp_path / "cache", max_boxes=30),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    for stage in ("proposals (sliding_window)", "features", "SVM pass 1", "box regression"):
        assert f"rcnn: {stage}: done" in text, text  # (started: only for a stage over a second)
    assert "\r" not in text
    assert "rcnn: proposals cover the training objects: recall@0.5 " in text
    assert "rcnn: plan: 6 images, " in text and "crops for features; the CNN runs " in text


def test_library_messages_go_through_named_loggers_a_user_can_silence(tmp_path, caplog, capsys):
    image = tmp_path / "a.png"
    save_image(image, np.full((8, 8, 3), 200, np.uint8))
    store = ImageStore(tmp_path / "store", {"k": 1})
    store.write(image, boxes=np.zeros((1, 4), np.float32))
    store.path(image).write_bytes(b"x" * 10)  # damaged: reported, deleted, read as missing
    with caplog.at_level(logging.INFO, logger="rcnn"):
        assert store.read(image) is None
    (record,) = [r for r in caplog.records if r.name.startswith("rcnn")]
    assert record.name == "rcnn.cache" and record.levelno == logging.WARNING
    assert "damaged cache entry" in record.getMessage()
    assert "rcnn: damaged cache entry" in capsys.readouterr().err  # the command's handler (tests/conftest.py)
    store.write(image, boxes=np.zeros((1, 4), np.float32))
    store.path(image).write_bytes(b"x" * 10)
    logging.getLogger("rcnn").setLevel(logging.ERROR)  # a library user silencing it
    try:
        assert store.read(image) is None
    finally:
        progress_module.log_to_stderr()
    assert capsys.readouterr().err == ""
