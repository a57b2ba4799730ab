import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from rcnn.cache import load_npz
from rcnn.datasets import Dataset, Sample, write_voc
from rcnn.errors import DatasetError, RcnnError
from rcnn.proposals import ProposalStore, SelectiveSearch, SlidingWindows, make_proposer


def make_images(folder, n, size=(90, 120)):
    """`n` small distinct jpg scenes in `folder` as a Dataset (no annotations needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = rng.integers(80, 150, (*size, 3), dtype=np.uint8)
        x, y = rng.integers(0, size[1] // 2), rng.integers(0, size[0] // 2)
        image[y : y + size[0] // 2, x : x + size[1] // 2] = rng.integers(0, 255, 3)
        path = folder / f"img{i}.jpg"
        cv2.imwrite(str(path), image)
        samples.append(Sample(f"img{i}", path, size[1], size[0]))
    return Dataset(["thing"], samples)


PROPOSER = dict(method="selective_search", mode="single", min_size=10)


def test_compute_load_resume_and_invalidate(tmp_path):
    ds = make_images(tmp_path / "images", 4)
    store = ProposalStore(tmp_path / "cache", make_proposer(**PROPOSER))
    stats = store.compute(ds, workers=1)
    assert (stats["computed"], stats["cached"]) == (4, 0)
    boxes = store.load(ds[0])
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(boxes) > 0
    np.testing.assert_array_equal(boxes, store.proposer(cv2.imread(str(ds[0].image_path))[:, :, ::-1]))
    assert store.seconds(ds[0]) > 0

    store.path(ds[1]).unlink()
    assert ProposalStore(tmp_path / "cache", make_proposer(**PROPOSER)).compute(ds, workers=1)["computed"] == 1

    other = ProposalStore(tmp_path / "cache", make_proposer(**{**PROPOSER, "max_boxes": 7}))
    assert other.folder != store.folder
    stats = other.compute(ds, workers=1)  # the first 7 of the cached (uncapped: 2000) ranked lists
    assert (stats["computed"], stats["reused"], stats["cached"]) == (0, 4, 0)
    assert len(other.load(ds[0])) <= 7
    np.testing.assert_array_equal(other.load(ds[0]), boxes[:7])
    fresh = ProposalStore(tmp_path / "fresh", make_proposer(**{**PROPOSER, "max_boxes": 7}))
    assert fresh.compute(ds, workers=1)["computed"] == 4  # what proposing with the cap gives
    for sample in ds:
        np.testing.assert_array_equal(other.load(sample), fresh.load(sample))
    assert other.compute(ds, workers=1)["cached"] == 4
    # a larger cap, or other settings, are proposed anew
    larger = ProposalStore(tmp_path / "cache", make_proposer(**{**PROPOSER, "max_boxes": 3000}))
    assert larger.compute(ds, workers=1)["computed"] == 4
    seeded = ProposalStore(tmp_path / "cache", make_proposer(**{**PROPOSER, "max_boxes": 7, "min_size": 12}))
    assert seeded.compute(ds, workers=1)["computed"] == 4

    with pytest.raises(RcnnError, match="expected one proposal folder"):
        ProposalStore.open(tmp_path / "cache")
    reopened = ProposalStore.open(tmp_path / "cache", key=other.folder.name.split("-")[-1][:6])
    np.testing.assert_array_equal(reopened.load(ds[0]), other.load(ds[0]))


def test_sliding_windows_are_not_taken_from_a_larger_list(tmp_path):
    ds = make_images(tmp_path / "images", 2)
    ProposalStore(tmp_path / "cache", SlidingWindows(max_boxes=50)).compute(ds, workers=1)
    stats = ProposalStore(tmp_path / "cache", SlidingWindows(max_boxes=20)).compute(ds, workers=1)
    assert (stats["computed"], stats["reused"]) == (2, 0)  # a smaller count changes the stride


def test_training_defaults_reuse_what_propose_caches_by_default():
    """`rcnn propose` (2000 boxes) then `rcnn train` (500): one setting apart, the cap."""
    from argparse import Namespace

    from rcnn.commands.propose import proposer_from_args
    from rcnn.detectors import load_config

    options = dict(method=None, max_boxes=None, min_size=None, mode=None, longest_side=None, config=None)
    cli = proposer_from_args(Namespace(**options)).params()
    train = make_proposer(load_config(None, {}).proposals).params()
    assert (cli["max_boxes"], train["max_boxes"]) == (2000, 500)
    assert {k: v for k, v in cli.items() if k != "max_boxes"} == {k: v for k, v in train.items() if k != "max_boxes"}


def test_key_follows_content_not_file_name(tmp_path):
    ds = make_images(tmp_path / "images", 2)
    store = ProposalStore(tmp_path / "cache", SlidingWindows(max_boxes=50))
    store.compute(ds, workers=1)
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(ds[0].image_path.read_bytes())
    assert store.path(copy) == store.path(ds[0])
    cv2.imwrite(str(ds[1].image_path), np.zeros((90, 120, 3), np.uint8))  # edited image: new entry
    assert store.compute(ds, workers=1)["computed"] == 1


def test_broken_file_is_recomputed_and_unfinished_never_read(tmp_path, capsys):
    ds = make_images(tmp_path / "images", 2)
    store = ProposalStore(tmp_path / "cache", make_proposer(**PROPOSER))
    store.compute(ds, workers=1)
    good = store.load(ds[0])
    path = store.path(ds[0])
    raw = path.read_bytes()
    path.write_bytes(raw[:50])  # as if cut off by a crash: load reports it and recomputes it
    np.testing.assert_array_equal(store.load(ds[0]), good)
    assert "damaged cache entry" in capsys.readouterr().err
    path.write_bytes(raw[:-20])  # compute counts it as damaged and recomputes it
    fresh = ProposalStore(tmp_path / "cache", make_proposer(**PROPOSER))
    stats = fresh.compute(ds, workers=1)
    assert (stats["computed"], stats["cached"], stats["damaged"]) == (1, 1, 1)
    np.testing.assert_array_equal(fresh.load(ds[0]), good)
    path.unlink()  # a missing entry is a caller's mistake: load says so
    with pytest.raises(RcnnError, match="run compute first"):
        fresh.load(ds[0])


def test_killed_run_resumes(tmp_path):
    ds = make_images(tmp_path / "images", 8)
    write_voc(ds, tmp_path / "voc")
    out = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcnn.cli", "--quiet", "propose", str(tmp_path / "voc"), "--out", str(out),
         "--workers", "1", "--mode", "fast"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    proposer = make_proposer("selective_search", mode="fast")
    store = ProposalStore(out, proposer)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(store.folder.glob("*.npz")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name for p in store.folder.glob("*.npz")}
    assert 0 < len(done) < 8
    assert all(load_npz(store.folder / name) is not None for name in done)  # whole files only
    assert store.compute(ds, workers=1)["computed"] == 8 - len(done)
    for s in ds:  # the killed process's files hold what this process computes
        if store.path(s).name in done:
            np.testing.assert_array_equal(store.load(s), proposer(cv2.imread(str(s.image_path))[:, :, ::-1]))


def test_worker_processes_give_the_same_boxes(tmp_path):
    ds = make_images(tmp_path / "images", 4)
    one = ProposalStore(tmp_path / "a", SelectiveSearch())
    two = ProposalStore(tmp_path / "b", SelectiveSearch())
    one.compute(ds, workers=1)
    assert two.compute(ds, workers=2)["computed"] == 4
    for s in ds:
        np.testing.assert_array_equal(one.load(s), two.load(s))


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    ds = make_images(tmp_path / "images", 4)
    local = ProposalStore(tmp_path / "a", SelectiveSearch())
    local.compute(ds, workers=1)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = ProposalStore(tmp_path / "b", SelectiveSearch())
        assert remote.compute(ds, dask=cluster.scheduler_address)["computed"] == 4
    for s in ds:
        np.testing.assert_array_equal(remote.load(s), local.load(s))


def test_unreachable_dask_and_bad_image(tmp_path, monkeypatch):
    monkeypatch.setattr("rcnn.proposals.store.DASK_TIMEOUT", 2)
    ds = make_images(tmp_path / "images", 1)
    store = ProposalStore(tmp_path / "cache", SlidingWindows())
    ds[0].image_path.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="img0.jpg"):
        store.compute(ds, workers=1)
    with pytest.raises(RcnnError, match="Dask"):
        store.compute(make_images(tmp_path / "more", 1), dask="tcp://127.0.0.1:9")
