"""The command line as a newcomer meets it: `rcnn --help` is quick (the parsers import no
torch), every command that reads a dataset takes ``--skip-bad``, and what commands print."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from rcnn.cli import main


def truncate(path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_building_the_parser_imports_neither_torch_nor_the_data_layer():
    code = (
        "import sys; from rcnn.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'torchvision', 'cv2', 'numpy', 'rcnn.datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_synth_help_still_lists_the_presets(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    out = capsys.readouterr().out
    assert "presets, the road to R-CNN in order: rectangle:" in out and "dense:" in out


def test_an_unknown_preset_is_one_line(tmp_path, capsys):
    assert (
        main(["--quiet", "data", "synth", str(tmp_path / "s"), "--images", "2", "--seed", "0", "--preset", "nope"]) == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'nope'" in err


@pytest.mark.parametrize("command", ["train", "propose", "detect", "report", "recall", "explain"])
def test_every_command_that_reads_a_dataset_takes_skip_bad(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--skip-bad" in capsys.readouterr().out


def test_report_skip_bad_reports_a_test_split_with_a_truncated_image(tiny_trained, tmp_path, capsys):
    data = tmp_path / "synth"
    shutil.copytree(tiny_trained / "synth", data)
    ids = (data / "ImageSets" / "Main" / "test.txt").read_text().split()
    bad = data / "JPEGImages" / f"{ids[0]}.jpg"
    model = str(tiny_trained / "model.pt")
    dets = tmp_path / "dets.json"  # detections of every test image, the bad one's included
    assert main(["--quiet", "detect", model, str(data), "--split", "test", "--out", str(dets)]) == 0
    truncate(bad)
    args = ["--quiet", "report", model, str(data), "--split", "test", "--gallery", "0", "--top-fp", "0"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err
    assert main([*args, "--out", str(tmp_path / "r2/"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 bad sample(s):" in out and str(bad) in out
    assert f"on {len(ids) - 1} images -> {tmp_path / 'r2' / 'report.md'}" in out  # one slash
    assert str(bad) in (tmp_path / "r2" / "report.md").read_text()
    assert main([*args, "--out", str(tmp_path / "r3"), "--skip-bad", "--detections", str(dets)]) == 0
    out = capsys.readouterr().out
    assert f"of 1 skipped image(s) left out of {dets}" in out and f"on {len(ids) - 1} images" in out
