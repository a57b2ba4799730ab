"""Proposals of a whole dataset, computed in parallel and cached on disk.

Layout (`rcnn.cache.ImageStore`): ``ROOT/<method>-<params key>/params.json`` and one
``<image content hash>.npz`` per image holding ``boxes`` (``float32 [N, 4]``) and ``seconds``
(time to propose). Files are written atomically, so a killed run leaves whole files only and
a re-run computes just what is missing; a damaged entry is reported and recomputed; changed
parameters give a new folder. Where the proposer caps its ranked boxes last
(`Proposer.prefix_param`), an image already proposed under ROOT with the same settings and a
larger cap (or none) is not proposed again: the first `max_boxes` of those boxes are stored
(so `rcnn train`'s 500 boxes reuse `rcnn propose`'s 2000). Work runs in joblib worker processes, or on a Dask cluster
through joblib's Dask backend. Concurrent runs on one cache share the work: each image is
locked while it is proposed, and a run waits for the images another run holds.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from rcnn.cache import ImageStore
from rcnn.cluster import dask_client, remote_path
from rcnn.datasets.images import read_image
from rcnn.errors import DatasetError, RcnnError
from rcnn.progress import progress
from rcnn.proposals.registry import make_proposer

log = logging.getLogger(__name__)

DASK_TIMEOUT = 30  # seconds to reach a Dask scheduler (`rcnn.cluster.dask_client`)
ENTRY = ("boxes", "seconds")
BUSY = "busy"  # a worker's answer for an image another run is proposing


@functools.lru_cache(maxsize=8)
def _proposer(params_json: str):
    return make_proposer(**json.loads(params_json))


def _exit_with_parent(parent_pid: int) -> None:
    """Initializer of each worker process started by `parent_pid`: exit as soon as that
    parent is gone (a killed `rcnn propose` must not leave its workers running)."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="rcnn-parent-watchdog", daemon=True).start()


def _propose_file(params_json: str, image_path: str, folder: str, wait: bool = False):
    """Worker: propose for one image file and store it. Returns ``(n boxes, seconds)``;
    ``(n boxes, None)`` when another run stored it meanwhile; ``(None, error text)``; or
    ``(BUSY, None)`` when another run holds the image (and not `wait`)."""
    cv2.setNumThreads(1)  # one image per core: parallel across images, not inside OpenCV
    store = ImageStore(folder, json.loads(params_json))
    try:
        out = store.path(image_path)
        with store.claim(out, wait=wait) as mine:
            if not mine:
                return BUSY, None
            if store.has(image_path, require=ENTRY):  # another run finished it meanwhile
                entry = store.read(image_path, require=ENTRY)
                if entry is not None:
                    return len(entry["boxes"]), None
            image = read_image(image_path)
            start = time.perf_counter()
            boxes = _proposer(params_json)(image)
            seconds = time.perf_counter() - start
            store.write(image_path, boxes=np.asarray(boxes, np.float32).reshape(-1, 4), seconds=np.float64(seconds))
    except RcnnError as e:  # rcnn errors do not survive pickling between processes: send the text
        return None, str(getattr(e, "message", e))
    return len(boxes), seconds


class ProposalStore:
    """Cached proposals of one proposer under `root`.

    ``store.compute(dataset)`` fills the cache; ``store.load(sample)`` -> ``float32 [N, 4]``.
    """

    def __init__(self, root, proposer):
        self.root = Path(root)
        self.proposer = proposer
        self.store = ImageStore(self.root / f"{proposer.method}-{proposer.key()}", proposer.params())

    @property
    def folder(self) -> Path:
        return self.store.folder

    @folder.setter
    def folder(self, value) -> None:
        self.store.folder = Path(value)

    @classmethod
    def open(cls, root, key: str | None = None) -> ProposalStore:
        """The store written under `root` (or `root` itself being one store's folder); `key`
        picks among several (a prefix of the folder name's key is enough)."""
        root = Path(root)
        folders = [root] if (root / "params.json").is_file() else sorted(p.parent for p in root.glob("*/params.json"))
        if key:
            folders = [f for f in folders if f.name.split("-")[-1].startswith(key)]
        if len(folders) != 1:
            found = ", ".join(f.name for f in folders) or "none"
            raise RcnnError(f"{root}: expected one proposal folder{' matching ' + key if key else ''}, found {found}")
        params = json.loads((folders[0] / "params.json").read_text())
        store = cls(folders[0].parent, make_proposer(**params))
        store.folder = folders[0]  # files stay readable even if a library version changed the key
        return store

    def path(self, sample) -> Path:
        """The cache file of a sample (or an image path)."""
        return self.store.path(getattr(sample, "image_path", sample))

    def _entry(self, sample) -> dict:
        image_path = getattr(sample, "image_path", sample)

        def repair() -> dict | None:  # a damaged entry: propose again here
            n, info = _propose_file(self._params_json(), str(image_path), str(self.folder), wait=True)
            if n is None:
                raise DatasetError(image_path, info)
            return self.store.read(image_path, require=ENTRY)

        entry = self.store.read(image_path, require=ENTRY, repair=repair)
        if entry is None:
            raise RcnnError(f"{self.folder}: no proposals for {image_path}; run compute first")
        return entry

    def load(self, sample) -> np.ndarray:
        """Ranked proposals of a computed sample, ``float32 [N, 4]``."""
        return self._entry(sample)["boxes"].astype(np.float32, copy=False).reshape(-1, 4)

    def seconds(self, sample) -> float:
        """Seconds the proposer took on this sample's image."""
        return float(self._entry(sample)["seconds"])

    def _params_json(self) -> str:
        return json.dumps(self.proposer.params(), sort_keys=True)

    def compute(self, dataset, workers: int | None = None, dask: str | None = None) -> dict:
        """Propose for every sample not cached yet. `workers`: processes (None: all cores;
        1: in this process); `dask`: a scheduler address to run on instead (the cache must be
        on storage every worker sees: `rcnn.cluster.dask_client` checks it). Returns counts
        (``images``, ``computed``, ``cached``, ``reused``: the first boxes of a larger cap's
        entries, ``by_another_run``: stored by a concurrent run
        while this one ran, ``damaged``: unreadable entries recomputed),
        ``seconds`` and ``images_per_second``."""
        import joblib

        if getattr(self.proposer, "in_process", False) and not dask:
            workers = 1  # a proposer holding a torch model (the RPN) runs here, with torch's threads
        self.store.write_params()
        damaged = len(self.store.damaged)
        params_json = self._params_json()
        where = remote_path if dask else str  # a worker's working directory is not ours
        todo, reused, larger = {}, {}, self._larger_stores()
        for sample in dataset:
            out = str(self.path(sample))
            if out in todo or out in reused or self.store.has(sample.image_path, require=ENTRY):
                continue
            donor = self._reuse(sample.image_path, larger)
            if donor is not None:
                reused[out] = donor
            else:
                todo[out] = where(sample.image_path)
        if reused:
            folders = ", ".join(sorted({str(f) for f in reused.values()}))
            n = self.proposer.params()[self.proposer.prefix_param]
            log.info(f"proposals: {len(reused)} image(s) take the first {n} of the ranked boxes cached in {folders}")
        jobs = [joblib.delayed(_propose_file)(params_json, image, where(self.folder)) for image in todo.values()]
        start, shared = time.perf_counter(), 0
        if jobs:
            with progress(total=len(jobs), desc=f"proposals ({self.proposer.method})") as bar:
                busy = []
                for (n, info), image in zip(self._run(jobs, workers, dask, list(todo.values())), todo.values()):
                    if n is None:
                        raise DatasetError(image, info)
                    if n == BUSY:
                        busy.append(image)
                        continue
                    shared += info is None
                    bar.update(1)
                for image in busy:  # held by another run: wait for it (or take over if it died)
                    n, info = _propose_file(params_json, image, str(self.folder), wait=True)
                    if n is None:
                        raise DatasetError(image, info)
                    shared += info is None
                    bar.update(1)
        seconds = time.perf_counter() - start
        return {
            "images": len(dataset),
            "computed": len(jobs) - shared,
            "cached": len(dataset) - len(jobs) - len(reused),
            "reused": len(reused),
            "by_another_run": shared,
            "damaged": len(self.store.damaged) - damaged,
            "seconds": seconds,
            "images_per_second": len(jobs) / seconds if jobs and seconds > 0 else None,
            "folder": str(self.folder),
        }

    def _larger_stores(self) -> list[ImageStore]:
        """The stores under `root` whose proposer differs from this one only by a larger cap
        (or none) on a `Proposer.prefix_param`: their first boxes are this proposer's."""
        name = self.proposer.prefix_param
        mine = json.loads(self._params_json())  # as params.json holds them (tuples as lists)
        n = mine.get(name) if name else None
        if not n:
            return []
        rest = {k: v for k, v in mine.items() if k != name}
        found = []
        for params_file in sorted(self.root.glob(f"{self.proposer.method}-*/params.json")):
            if params_file.parent == self.folder:
                continue
            try:
                theirs = json.loads(params_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            cap = theirs.get(name) if isinstance(theirs, dict) else None
            if (
                isinstance(cap, int)
                and (cap == 0 or cap > n)
                and {k: v for k, v in theirs.items() if k != name} == rest
            ):
                found.append(ImageStore(params_file.parent, theirs))
        return found

    def _reuse(self, image_path, larger: list[ImageStore]) -> Path | None:
        """Store the first `max_boxes` of an entry of one of the `larger` stores, if one has
        the image; returns that store's folder (None: none has it)."""
        n = self.proposer.params()[self.proposer.prefix_param] if larger else 0
        for donor in larger:
            entry = donor.read(image_path, require=ENTRY) if donor.has(image_path, require=ENTRY) else None
            if entry is not None:
                boxes = entry["boxes"].astype(np.float32, copy=False).reshape(-1, 4)[:n]
                self.store.write(image_path, boxes=boxes, seconds=np.float64(entry["seconds"]))
                return donor.folder
        return None

    def _run(self, jobs, workers, dask, images=()):
        """Results of joblib `jobs` in order, as they finish: in-process, loky or Dask (after
        checking that the workers see this cache folder and the first of `images`)."""
        import joblib

        if dask:
            with (
                dask_client(dask, self.folder, images, timeout=DASK_TIMEOUT),
                joblib.parallel_config(backend="dask"),
            ):
                yield from joblib.Parallel(n_jobs=-1, return_as="generator")(jobs)
            return
        if workers == 1 or len(jobs) == 1:
            for fn, args, kwargs in jobs:
                yield fn(*args, **kwargs)
            return
        # each worker watches this process from its start, so none outlives a killed run
        with joblib.parallel_config(backend="loky", initializer=_exit_with_parent, initargs=(os.getpid(),)):
            yield from joblib.Parallel(n_jobs=workers or -1, return_as="generator")(jobs)
