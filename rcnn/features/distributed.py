"""CNN features on a Dask cluster: `FeatureStore.compute(..., dask=ADDRESS)`.

One task per image: the worker builds the extractor from plain values (the `FeatureConfig`
as a dict, the device type, and for fine-tuned weights the path of ``backbone.pt``, a state
dict the client writes once into the feature folder and the worker reads with
``weights_only=True``), checks that its extractor's `params()` are the client's (the same
weights source, the same fine-tuned hash: ``weights = "auto"`` could find other weights on
another machine), extracts, and writes the entry into the same `FeatureStore` folder, which
the client then reads. `rcnn.cluster.dask_client` checks first that every worker sees that
folder and the images.

Threads (`worker_threads`): as the `rcnn` command sets them locally, OpenCV one thread and
torch the worker's CPUs (divided among the tasks a worker runs at once: run ``dask worker
--nthreads 1`` to give one image all of them), or the config's ``num_threads``. Features do
not depend on the thread count here (1 and 2 threads gave equal bits, resnet18 and
MobileNetV2, eager and frozen; ``tests/test_dask_features.py`` compares a cluster's entries
with a local run's).
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from rcnn.cache import atomic_write
from rcnn.cluster import dask_client, remote_path
from rcnn.errors import RcnnError

__all__ = ["compute_on_cluster", "worker_threads"]

WEIGHTS_FILE = "backbone.pt"  # fine-tuned weights, in the feature folder (keyed by their hash)


def worker_threads(num_threads: int = 0) -> int:
    """Thread settings of a Dask task that runs a CNN (see the module docstring); torch's
    thread count."""
    import cv2

    from rcnn.features.extractor import set_threads

    cv2.setNumThreads(1)
    if num_threads <= 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            from distributed import get_worker

            tasks = max(1, int(getattr(get_worker(), "nthreads", 1)))
        except (ImportError, ValueError):  # not inside a Dask task
            tasks = 1
        num_threads = max(1, cpus // tasks)
    return set_threads(num_threads)


def compute_on_cluster(store, todo: list[tuple], address: str, bar=None) -> None:
    """Extract the features of `todo` (``(sample, boxes float32 [N, 4])`` pairs) for
    `store` (a `FeatureStore`) on the Dask scheduler at `address`, one task per image;
    `bar` (a progress bar) counts crops. A worker's error is raised here as `RcnnError`."""
    from rcnn.config import to_dict
    from rcnn.features.backbones import WEIGHT_SOURCES

    extractor = store.extractor
    weights = ""
    if extractor.finetuned_hash is not None:
        weights = str(store.folder / WEIGHTS_FILE)
        if not os.path.isfile(weights):
            import torch

            with atomic_write(weights) as f:
                torch.save({k: v.detach().cpu() for k, v in extractor.module.state_dict().items()}, f)
    config = to_dict(extractor.config)
    files = [weights] if weights else []
    for key in ("weights", "weights_file"):  # a weights file named in the config: absolute, and checked
        if config[key] and config[key] not in WEIGHT_SOURCES:
            config[key] = remote_path(config[key])
            files.append(config[key])
    spec = json.dumps(
        {
            "config": config,
            "device": extractor.device.type,
            "weights": remote_path(weights) if weights else "",
            "params": extractor.params(),
            "dtype": store.dtype,
        },
        sort_keys=True,
    )
    root = remote_path(store.root)
    images = [remote_path(sample.image_path) for sample, _ in todo]
    with dask_client(address, store.folder, images, files) as client:
        from dask.distributed import as_completed

        futures = [
            client.submit(_extract_task, type(store), spec, image, boxes, root, pure=False)
            for image, (_, boxes) in zip(images, todo)
        ]
        for future in as_completed(futures):
            crops, error = future.result()
            if error is not None:
                raise RcnnError(error)
            if bar is not None:
                bar.update(crops)


@functools.lru_cache(maxsize=2)
def _extractor(spec_json: str):
    """The worker's extractor of a spec (built once per worker process and spec)."""
    import torch

    from rcnn.config import from_dict
    from rcnn.features.extractor import FeatureConfig, FeatureExtractor

    spec = json.loads(spec_json)
    if spec["device"] != "cpu" and not torch.cuda.is_available():
        raise RcnnError(f"the features run on {spec['device']}, but this Dask worker has none")
    extractor = FeatureExtractor(from_dict(FeatureConfig, spec["config"], "features"), device=spec["device"])
    if spec["weights"]:
        path = spec["weights"]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  torch raises many kinds for a bad file
            raise RcnnError(f"{path}: cannot read the fine-tuned weights on this Dask worker ({e})") from None
        extractor.load_state_dict(state, where=path)
    if extractor.params() != spec["params"]:
        raise RcnnError(
            f"this Dask worker's extractor is {extractor.params()}, the client's {spec['params']}: "
            "the workers need the same backbone weights (pin features.weights, e.g. to a file on shared storage)"
        )
    return extractor


def _extract_task(store_class, spec_json: str, image_path: str, boxes: np.ndarray, root: str) -> tuple[int, str | None]:
    """Runs on a worker: extract and store one image's features in a `store_class`
    (`FeatureStore`, sent by reference: this module does not import its importer).
    ``(crops, None)`` or ``(0, error text)`` (rcnn errors are sent as text: they do not
    survive pickling)."""
    import socket

    spec = json.loads(spec_json)
    try:
        worker_threads(spec["config"].get("num_threads", 0))
        store = store_class(root, _extractor(spec_json), spec["dtype"])
        store.extract(image_path, boxes)
    except RcnnError as e:
        return 0, f"{e} (on Dask worker {socket.gethostname()})"
    return len(boxes), None
