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


@pytest.mark.slow  # end to end: seconds of training in child processes
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
    """A scheduler and one worker process with storage of its own (a mount namespace,
    `unshare -m`), at the same paths as the client's: ``hidden/`` is an empty tmpfs there (a
    local disk of another machine), and ``overlaid/`` reads the client's files but keeps what
    the worker writes to itself (an overlay with a private upper layer; None where overlays
    cannot be mounted). Yields ``(scheduler address, hidden, overlaid)``."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give a worker storage of its own")
    root = tmp_path_factory.mktemp("hidden-worker")
    hidden, overlaid, scratch = root / "hidden", root / "overlaid", root / "scratch"
    for folder in (hidden, overlaid, scratch):
        folder.mkdir()
    mounts = [
        f"mount -t tmpfs tmpfs {hidden}",
        f"mount -t tmpfs tmpfs {scratch} && mkdir {scratch}/up {scratch}/work && mount -t overlay overlay "
        f"-o lowerdir={overlaid},upperdir={scratch}/up,workdir={scratch}/work {overlaid}",
    ]
    works = [subprocess.run(["unshare", "-m", "sh", "-c", m], capture_output=True).returncode == 0 for m in mounts]
    if not works[0]:
        pytest.skip("cannot mount in a new namespace here")
    if not works[1]:
        mounts, overlaid = mounts[:1], None
    with distributed.LocalCluster(n_workers=0, protocol="tcp://", host="127.0.0.1", dashboard_address=":0") as cluster:
        command = (
            " && ".join(mounts) + f" && exec {sys.executable} -m distributed.cli.dask_worker "
            f"{cluster.scheduler_address} --nthreads 1 --no-nanny --no-dashboard --host 127.0.0.1"
        )
        worker = subprocess.Popen(["unshare", "-m", "sh", "-c", command], stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(cluster.scheduler_address) as client:
                client.wait_for_workers(1, timeout=60)
            yield cluster.scheduler_address, hidden, overlaid
        finally:
            worker.kill()  # its mount namespace, and the tmpfs, go with it
            worker.wait(timeout=30)


def test_a_cache_folder_the_workers_do_not_see_is_refused(hidden_worker, synth, tmp_path):
    address, hidden, _ = hidden_worker
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
    address, hidden, _ = hidden_worker
    images = hidden / f"synth-{time.monotonic_ns()}"
    shutil.copytree(synth, images)
    dataset = load_dataset(images, split="test")
    with pytest.raises(RcnnError, match=r"\.jpg is not visible to the Dask workers .*cannot read it"):
        features_of(dataset, tmp_path / "cache", dask=address)


def test_a_cache_folder_that_keeps_a_workers_writes_to_itself_is_refused(hidden_worker, synth):
    """The worker reads the client's files there, but what it writes the client never sees."""
    address, _, overlaid = hidden_worker
    if overlaid is None:
        pytest.skip("cannot mount an overlay here")
    dataset = load_dataset(synth, split="test")
    cache = overlaid / f"cache-{time.monotonic_ns()}"
    with pytest.raises(RcnnError, match="a file worker .* wrote there is not seen here.*storage every worker sees"):
        features_of(dataset, cache, dask=address)
    assert not list((cache / "proposals").rglob("*.npz"))


def test_a_worker_whose_extractor_differs_is_refused():
    """The worker builds its extractor from the spec and compares its params with the
    client's (here the client claims fine-tuned weights the worker was not sent)."""
    from rcnn.config import to_dict
    from rcnn.features.distributed import _extractor

    extractor = FeatureExtractor(**TINY)
    params = {**extractor.params(), "finetuned": "0123456789ab"}
    spec = {"config": to_dict(extractor.config), "device": "cpu", "weights": "", "params": params}
    with pytest.raises(RcnnError, match="this Dask worker's extractor is .* the client's"):
        _extractor(json.dumps(spec, sort_keys=True))


def test_fast_rcnn_sends_its_proposals_to_the_cluster(cluster, synth, tmp_path):
    """Fast R-CNN has no per-image feature cache: --dask runs its proposals on the workers,
    its CNN here; the model equals a local run's."""
    from rcnn.detectors import FastRCNN, load_config

    train, test = load_dataset(synth, split="train"), load_dataset(synth, split="test")
    detections = {}
    for name, dask in (("local", None), ("remote", cluster.scheduler_address)):
        overrides = {
            "detector": "fast_rcnn",
            "scale": 96,
            "max_size": 96,
            "device": "cpu",
            "cache_dir": str(tmp_path / name),
            "proposals": {"method": "sliding_window", "max_boxes": 30},
            "backbone": {"weights": "random", "torchscript": False},
            "head": {"fc": [32, 32]},
            "train": {"iterations": 2, "rois_per_image": 16},
        }
        model = FastRCNN(load_config(overrides=overrides))
        model.dask = dask
        detections[name] = model.fit(train).detect_dataset(test)
    assert assert_same_entries(tmp_path / "local" / "proposals", tmp_path / "remote" / "proposals") == 6
    for sample_id, local in detections["local"].items():
        remote = detections["remote"][sample_id]
        for field in ("boxes", "scores", "labels"):
            assert np.array_equal(getattr(local, field), getattr(remote, field))
