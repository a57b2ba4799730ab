"""Proposals and CNN features on a Dask cluster (`--dask`): a `LocalCluster` of worker
processes on loopback stores the same entries, bit for bit, as a local run; the check that
every worker sees the cache folder catches a folder the workers do not see."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn.cache import load_npz
from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors.base import read_model
from rcnn.errors import RcnnError
from rcnn.features import FeatureExtractor, FeatureStore
from rcnn.features.store import DatasetFeatures
from rcnn.proposals import ProposalStore, SlidingWindows

distributed = pytest.importorskip("distributed")

TINY = dict(backbone="resnet18", weights="random", crop_size=32, padding=2, frozen=False)


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and one worker process (one task thread) on loopback: the worker builds
    its extractor from the plain values it is sent, as on another machine."""
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-synth")
    make_synthetic(root / "synth", images=6, seed=3, size=96, test_fraction=0.34)
    return root / "synth"


def entries(folder: Path) -> dict:
    """Every ``.npz`` entry under `folder`, by path relative to it, without the timings."""
    return {
        str(p.relative_to(folder)): {k: v for k, v in load_npz(p).items() if k != "seconds"}
        for p in sorted(folder.rglob("*.npz"))
    }


def assert_same_entries(a: Path, b: Path) -> int:
    ea, eb = entries(a), entries(b)
    assert ea.keys() == eb.keys()
    for name in ea:
        assert ea[name].keys() == eb[name].keys(), name
        for key in ea[name]:
            assert np.array_equal(ea[name][key], eb[name][key]), (name, key)
    return len(ea)


def assert_same(a, b) -> None:
    """Nested dicts and lists of tensors, arrays and plain values are equal, bit for bit."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, (torch.Tensor, np.ndarray)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    else:
        assert a == b


def features_of(dataset, cache: Path, finetuned=None, dask=None) -> DatasetFeatures:
    extractor = FeatureExtractor(**TINY)
    if finetuned is not None:
        extractor.load_state_dict(finetuned)
    store = FeatureStore(cache / "features", extractor)
    return DatasetFeatures(
        dataset, ProposalStore(cache / "proposals", SlidingWindows(max_boxes=30)), store, True, workers=1, dask=dask
    )


def test_cluster_features_equal_a_local_run(cluster, synth, tmp_path):
    dataset = load_dataset(synth, split="train")
    torch.manual_seed(0)
    tuned = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in FeatureExtractor(**TINY).module.state_dict().items()}  # fmt: skip
    for finetuned in (None, tuned):
        local = features_of(dataset, tmp_path / "local", finetuned)
        remote = features_of(dataset, tmp_path / "remote", finetuned, dask=cluster.scheduler_address)
        assert remote.proposal_stats["computed"] == (len(dataset) if finetuned is None else 0)
        assert remote.feature_stats["computed"] == len(dataset)
        assert remote.store.folder.name == local.store.folder.name
        for s in dataset:  # what the client reads back
            np.testing.assert_array_equal(remote.features(s), local.features(s))
    # every stored entry (proposals, and features of both backbones), bit for bit
    assert assert_same_entries(tmp_path / "local", tmp_path / "remote") == 3 * len(dataset)
    # the fine-tuned weights went to the workers through the shared cache
    assert len(list((tmp_path / "remote" / "features").glob("*/backbone.pt"))) == 1
    # a second run finds everything cached and sends nothing
    again = features_of(dataset, tmp_path / "remote", tuned, dask=cluster.scheduler_address)
    assert again.feature_stats["computed"] == 0 and again.proposal_stats["computed"] == 0


def test_relative_cache_dir_and_workers_elsewhere(cluster, synth, tmp_path, monkeypatch):
    """The workers run in another working directory: the client sends absolute paths."""
    client = distributed.Client(cluster.scheduler_address)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = client.run(os.getcwd)
    try:
        client.run(os.chdir, str(elsewhere))
        monkeypatch.chdir(tmp_path)
        dataset = load_dataset(Path(os.path.relpath(synth, tmp_path)), split="test")
        features_of(dataset, Path("remote"), dask=cluster.scheduler_address)
        features_of(dataset, Path("local"))
        assert assert_same_entries(tmp_path / "local", tmp_path / "remote") == 2 * len(dataset)
        assert not list(elsewhere.iterdir())  # nothing landed in the workers' directory
    finally:
        for worker, cwd in before.items():
            client.run(os.chdir, cwd, workers=[worker])
        client.close()


def test_cli_train_report_and_detect_on_a_cluster_equal_local(cluster, synth, tmp_path, tiny_rcnn_set_args, capsys):
    address = cluster.scheduler_address
    for name, extra in (("local", []), ("remote", ["--dask", address])):
        args = ["train", str(synth), "--split", "train", "--out", str(tmp_path / f"{name}.pt")]
        assert main(["--quiet", *args, *tiny_rcnn_set_args(tmp_path / f"cache-{name}", 30), *extra]) == 0
        if extra:
            assert "proposals and CNN features run on the Dask workers" in capsys.readouterr().err
        args = ["report", str(tmp_path / f"{name}.pt"), str(synth), "--split", "test", "--gallery", "0"]
        assert main(["--quiet", *args, "--top-fp", "0", "--out", str(tmp_path / f"report-{name}"), *extra]) == 0
        args = ["detect", str(tmp_path / f"{name}.pt"), str(synth), "--split", "test"]
        assert main(["--quiet", *args, "--out", str(tmp_path / f"dets-{name}.json"), *extra]) == 0
    # the cluster computed the same proposals and features, and the heads fitted on them are the same
    assert assert_same_entries(tmp_path / "cache-local", tmp_path / "cache-remote") > 0
    local, remote = (read_model(tmp_path / f"{n}.pt") for n in ("local", "remote"))
    for part in ("classifier", "regressor", "backbone"):
        assert_same(local[part], remote[part])
    reports = [json.loads((tmp_path / f"report-{n}" / "results.json").read_text()) for n in ("local", "remote")]
    assert reports[0]["voc07"] == reports[1]["voc07"] and reports[0]["coco"] == reports[1]["coco"]
    dets = [json.loads((tmp_path / f"dets-{n}.json").read_text()) for n in ("local", "remote")]
    assert dets[0] == dets[1] and len(dets[0]) > 0


# -- storage the workers do not see ---------------------------------------------------------


@pytest.fixture(scope="module")
def hidden_worker(tmp_path_factory):
    """A scheduler and one worker process whose view of ``hidden/`` is an empty tmpfs of its
    own (a mount namespace, `unshare -m`): a folder at the same path as the client's, on
    storage the worker does not share, as a local disk of another machine would be."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give a worker storage of its own")
    root = tmp_path_factory.mktemp("hidden-worker")
    hidden = root / "hidden"
    hidden.mkdir()
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "tmpfs", str(hidden)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a new namespace here: {probe.stderr.decode().strip()}")
    with distributed.LocalCluster(n_workers=0, protocol="tcp://", host="127.0.0.1", dashboard_address=":0") as cluster:
        command = (
            f"mount -t tmpfs tmpfs {hidden} && exec {sys.executable} -m distributed.cli.dask_worker "
            f"{cluster.scheduler_address} --nthreads 1 --no-nanny --no-dashboard --host 127.0.0.1"
        )
        worker = subprocess.Popen(["unshare", "-m", "sh", "-c", command], stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(cluster.scheduler_address) as client:
                client.wait_for_workers(1, timeout=60)
            yield cluster.scheduler_address, hidden
        finally:
            worker.kill()  # its mount namespace, and the tmpfs, go with it
            worker.wait(timeout=30)


def test_a_cache_folder_the_workers_do_not_see_is_refused(hidden_worker, synth, tmp_path):
    address, hidden = hidden_worker
    dataset = load_dataset(synth, split="test")
    cache = hidden / f"cache-{time.monotonic_ns()}"
    with pytest.raises(RcnnError, match="is not visible to the Dask workers") as e:
        features_of(dataset, cache, dask=address)
    assert f"cache folder {cache / 'proposals'}" in str(e.value)
    assert "put cache_dir on storage every worker sees" in str(e.value)
    # the features stage checks too (proposals computed here first)
    features_of(dataset, cache)
    shutil.rmtree(cache / "features")
    with pytest.raises(RcnnError, match=f"cache folder {cache / 'features'}.* is not visible to the Dask workers"):
        features_of(dataset, cache, dask=address)


def test_images_the_workers_do_not_see_are_refused(hidden_worker, synth, tmp_path):
    address, hidden = hidden_worker
    images = hidden / f"synth-{time.monotonic_ns()}"
    shutil.copytree(synth, images)
    dataset = load_dataset(images, split="test")
    with pytest.raises(RcnnError, match=r"\.jpg is not visible to the Dask workers .*cannot read it"):
        features_of(dataset, tmp_path / "cache", dask=address)
