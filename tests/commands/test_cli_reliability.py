"""Bad input and interrupted runs at the command line: `detect` keeps its work and skips
unreadable images, `--skip-bad` skips truncated images in `train` and `propose`, bad model
files get one line, concurrent `propose` runs share the work, workers die with their parent."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.proposals import ProposalStore, make_proposer


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


def images_folder(trained, tmp_path, n=5):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((trained / "synth" / "JPEGImages").glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    return folder


def truncate(path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_detect_skip_bad_names_the_unreadable_image_and_keeps_the_rest(trained, tmp_path, capsys):
    folder = images_folder(trained, tmp_path)
    bad = sorted(folder.glob("*.jpg"))[2]
    truncate(bad)
    out = tmp_path / "dets.json"
    # without --skip-bad: one line naming the file, exit 1; the images before it are kept
    assert main(["--quiet", "detect", str(trained / "model.pt"), str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "truncated" in err
    parts = list(tmp_path.glob(".dets.json.parts/*/*.npz"))
    assert len(parts) == 2
    assert main(["--quiet", "detect", str(trained / "model.pt"), str(folder), "--out", str(out), "--skip-bad"]) == 0
    printed = capsys.readouterr()
    assert "skipped 1 unreadable image(s): " + bad.stem in printed.out
    assert "(2 from an interrupted run)" in printed.out
    records = json.loads(out.read_text())
    assert {r["image_id"] for r in records} <= {p.stem for p in folder.glob("*.jpg")} - {bad.stem}
    assert not (tmp_path / ".dets.json.parts").exists()
    # the resumed run's detections equal a run from nothing
    fresh = tmp_path / "fresh.json"
    assert main(["--quiet", "detect", str(trained / "model.pt"), str(folder), "--out", str(fresh), "--skip-bad"]) == 0
    assert fresh.read_bytes() == out.read_bytes()


def test_detect_names_the_stem_two_images_share(trained, tmp_path, capsys):
    folder = images_folder(trained, tmp_path, 1)
    first = next(folder.glob("*.jpg"))
    shutil.copy(first, folder / f"{first.stem}.png")
    assert main(["--quiet", "detect", str(trained / "model.pt"), str(folder), "--out", str(tmp_path / "d.json")]) == 1
    err = capsys.readouterr().err
    assert f"share the file stem '{first.stem}'" in err and first.name in err and f"{first.stem}.png" in err


def test_skip_bad_skips_truncated_images_in_train_and_propose(trained, tmp_path, capsys, tiny_rcnn_set_args):
    data = tmp_path / "synth"
    shutil.copytree(trained / "synth", data)
    first_train = (data / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    bad = data / "JPEGImages" / f"{first_train}.jpg"
    truncate(bad)
    cache = tmp_path / "props"
    assert (
        main(
            [
                "--quiet",
                "propose",
                str(data),
                "--method",
                "sliding_window",
                "--workers",
                "1",
                "--out",
                str(cache),
                "--skip-bad",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "skipped 1 bad sample(s)" in out and str(bad) in out and "1 skipped" in out
    assert (
        main(
            [
                "--quiet",
                "train",
                str(data),
                "--split",
                "train",
                "--skip-bad",
                "--out",
                str(tmp_path / "m.pt"),
                *tiny_rcnn_set_args(tmp_path / "cache"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "skipped 1 bad sample(s)" in out and str(bad) in out
    assert (tmp_path / "m.pt").is_file()


def test_bad_model_files_get_one_line(trained, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4000))
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "rcnn-model", "thing": object.__new__(json.JSONDecoder)}, pickled)
    state = torch.load(trained / "model.pt", weights_only=True)
    state["classes"] = state["classes"][:-1]  # a class list that does not fit the heads
    state.pop("content_hash")  # edited by hand (the hash would catch the edit: tests/test_cli_bad_input.py)
    shrunk = tmp_path / "shrunk.pt"
    torch.save(state, shrunk)
    image = next((trained / "synth" / "JPEGImages").glob("*.jpg"))
    for path, message in [
        (junk, "not a readable rcnn model"),
        (pickled, "not a PyTorch file of tensors and plain values"),
        (shrunk, "the classifier has 4 classes, the class list 3"),
        (tmp_path, "is a folder"),
    ]:
        assert main(["--quiet", "detect", str(path), str(image), "--out", str(tmp_path / "d.json")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and message in err, err
        assert "weights_only" not in err


def test_concurrent_propose_runs_share_the_work(trained, tmp_path):
    """Two runs on one cache: every image is proposed once in all (not once per run)."""
    data = trained / "synth"
    cmd = [
        sys.executable,
        "-m",
        "rcnn.cli",
        "--quiet",
        "propose",
        str(data),
        "--mode",
        "fast",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "cache"),
    ]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    assert all(r.returncode == 0 for r in runs), outs
    ds = load_dataset(data)
    computed = [int(re.search(r"(\d+) computed", out).group(1)) for out, _ in outs]
    assert sum(computed) == len(ds), outs  # each image proposed by one run only
    store = ProposalStore(tmp_path / "cache", make_proposer("selective_search", mode="fast"))
    assert len(list(store.folder.glob("*.npz"))) == len(ds)
    for s in ds:
        assert len(store.load(s)) > 0


@pytest.mark.slow  # end to end: seconds of training in child processes
def test_workers_exit_when_their_parent_is_killed(trained, tmp_path):
    data = trained / "synth"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rcnn.cli",
            "--quiet",
            "propose",
            str(data),
            "--mode",
            "quality",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def children():
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in children() if _is_python(p)]
        if len(workers) >= 2 and list((tmp_path / "cache").glob("*/params.json")):
            break
        time.sleep(0.2)
    if proc.poll() is not None or not workers:
        pytest.skip("the run ended before its workers could be seen")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 90  # a worker still importing torch on a loaded machine exits once it can run
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their killed parent"


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_model_asked_to_run_on_a_missing_gpu_says_so_not_damaged(trained, tmp_path, capsys):
    from rcnn.detectors import load_model
    from rcnn.errors import DeviceError

    with pytest.raises(DeviceError, match="torch sees no GPU") as info:
        load_model(trained / "model.pt", device="cuda")
    assert "damaged" not in str(info.value)
    image = next((trained / "synth" / "JPEGImages").glob("*.jpg"))
    args = ["--quiet", "detect", str(trained / "model.pt"), str(image), "--out", str(tmp_path / "d.json")]
    assert main([*args, "--device", "cuda"]) == 1
    assert "use --device cpu" in capsys.readouterr().err
