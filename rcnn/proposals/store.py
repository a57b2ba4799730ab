"""Proposals of a whole dataset, computed in parallel and cached on disk.

Layout: ``ROOT/<method>-<params key>/params.json`` and one ``<image content hash>.npz`` per
image holding ``boxes`` (``float32 [N, 4]``) and ``seconds`` (time to propose). Files are
written to a temporary name and renamed (`rcnn.cache`), so a killed run leaves whole files
only and a re-run computes just what is missing; changed parameters give a new folder.
Work runs in joblib worker processes, or on a Dask cluster through joblib's Dask backend.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np

from rcnn.cache import atomic_save_npz, file_hash, load_npz
from rcnn.errors import DatasetError, RcnnError
from rcnn.progress import progress

DASK_TIMEOUT = 30  # seconds to reach a Dask scheduler


@functools.lru_cache(maxsize=8)
def _proposer(params_json: str):
    from rcnn.proposals import make_proposer

    return make_proposer(**json.loads(params_json))


def _propose_file(params_json: str, image_path: str, out_path: str):
    """Worker: propose for one image file and save it; ``(n boxes, seconds)`` or ``(path, error)``."""
    import cv2

    from rcnn.datasets.images import read_image

    cv2.setNumThreads(1)  # one image per core: parallel across images, not inside OpenCV
    try:
        image = read_image(image_path)
        start = time.perf_counter()
        boxes = _proposer(params_json)(image)
        seconds = time.perf_counter() - start
    except RcnnError as e:  # rcnn errors do not survive pickling between processes: send the text
        return None, str(getattr(e, "message", e))
    atomic_save_npz(out_path, boxes=np.asarray(boxes, np.float32).reshape(-1, 4), seconds=np.float64(seconds))
    return len(boxes), seconds


class ProposalStore:
    """Cached proposals of one proposer under `root`.

    ``store.compute(dataset)`` fills the cache; ``store.load(sample)`` -> ``float32 [N, 4]``.
    """

    def __init__(self, root, proposer):
        self.root = Path(root)
        self.proposer = proposer
        self.folder = self.root / f"{proposer.method}-{proposer.key()}"
        self._hashes: dict = {}

    @classmethod
    def open(cls, root, key: str | None = None) -> "ProposalStore":
        """The store written under `root` (or `root` itself being one store's folder); `key`
        picks among several (a prefix of the folder name's key is enough)."""
        from rcnn.proposals import make_proposer

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
        image_path = Path(getattr(sample, "image_path", sample))
        try:
            st = image_path.stat()
        except OSError as e:
            raise DatasetError(image_path, f"cannot read image: {e.strerror or e}") from None
        memo = (str(image_path), st.st_size, st.st_mtime_ns)
        if memo not in self._hashes:
            self._hashes[memo] = file_hash(image_path)
        return self.folder / f"{self._hashes[memo]}.npz"

    def _entry(self, sample) -> dict:
        data = load_npz(self.path(sample))
        if data is None or "boxes" not in data:
            raise RcnnError(f"{self.folder}: no proposals for {getattr(sample, 'image_path', sample)}; run compute first")
        return data

    def load(self, sample) -> np.ndarray:
        """Ranked proposals of a computed sample, ``float32 [N, 4]``."""
        return self._entry(sample)["boxes"].astype(np.float32, copy=False).reshape(-1, 4)

    def seconds(self, sample) -> float:
        """Seconds the proposer took on this sample's image."""
        return float(self._entry(sample)["seconds"])

    def compute(self, dataset, workers: int | None = None, dask: str | None = None) -> dict:
        """Propose for every sample not cached yet. `workers`: processes (None: all cores;
        1: in this process); `dask`: a scheduler address to run on instead. Returns counts
        (``images``, ``computed``, ``cached``), ``seconds`` and ``images_per_second``."""
        import joblib

        self.folder.mkdir(parents=True, exist_ok=True)
        params_json = json.dumps(self.proposer.params(), sort_keys=True)
        if not (self.folder / "params.json").is_file():
            tmp = self.folder / f".params.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(self.proposer.params(), indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.folder / "params.json")
        todo = {}
        for sample in dataset:
            out = self.path(sample)
            if str(out) not in todo and load_npz(out) is None:
                todo[str(out)] = str(sample.image_path)
        jobs = [joblib.delayed(_propose_file)(params_json, image, out) for out, image in todo.items()]
        start = time.perf_counter()
        if jobs:
            bar = progress(total=len(jobs), desc=f"proposals ({self.proposer.method})")
            with bar:
                for (n, info), image in zip(self._run(jobs, workers, dask), todo.values()):
                    if n is None:
                        raise DatasetError(image, info)
                    bar.update(1)
        seconds = time.perf_counter() - start
        return {
            "images": len(dataset),
            "computed": len(jobs),
            "cached": len(dataset) - len(jobs),
            "seconds": seconds,
            "images_per_second": len(jobs) / seconds if jobs and seconds > 0 else None,
            "folder": str(self.folder),
        }

    @staticmethod
    def _run(jobs, workers, dask):
        """Results of joblib `jobs` in order, as they finish: in-process, loky or Dask."""
        import joblib

        if dask:
            try:
                from dask.distributed import Client
            except ImportError:
                raise RcnnError("--dask needs Dask: pip install 'rcnn[dask]'") from None
            try:
                client = Client(dask, timeout=DASK_TIMEOUT)
            except (OSError, TimeoutError) as e:
                raise RcnnError(f"cannot reach the Dask scheduler at {dask}: {e}") from None
            with client, joblib.parallel_config(backend="dask"):
                yield from joblib.Parallel(n_jobs=-1, return_as="generator")(jobs)
            return
        if workers == 1 or len(jobs) == 1:
            for fn, args, kwargs in jobs:
                yield fn(*args, **kwargs)
            return
        yield from joblib.Parallel(n_jobs=workers or -1, return_as="generator")(jobs)
