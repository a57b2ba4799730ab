"""On-disk cache of CNN features per image.

An entry is ``ROOT/<key>/<image hash>.npz`` holding ``features`` (``[N, D]``, float16 by
default: half the size, relative error below 1e-3, see ``tests/features/test_store.py``;
float32 for an entry that float16 cannot hold to that error, e.g. features near 1e-9),
the ``boxes`` ``float32 [N, 4]`` they were computed on and the ``seconds`` the warp and CNN
took (wall clock, for experiments' time per image). ``<key>`` is
`rcnn.cache.params_key` of the extractor's `key` (backbone, weights source, fine-tuned
weights hash, crop size, padding, warp), the caller's proposals key and the stored dtype;
``ROOT/<key>/params.json`` says which. Files are written atomically (temporary name then
rename), so an interrupted `compute` leaves whole entries only and a re-run resumes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from rcnn.cache import atomic_save_npz, file_hash, load_npz, params_key
from rcnn.datasets.images import read_image
from rcnn.errors import RcnnError
from rcnn.progress import progress

__all__ = ["FeatureStore"]


class FeatureStore:
    """Features of `extractor` (a `FeatureExtractor`) cached under `root`.

    ``compute(dataset, boxes_for, proposals_key)`` fills the cache (``boxes_for``: a callable
    ``sample -> float32 [N, 4]`` or a dict ``sample id -> boxes``);
    ``load(sample, proposals_key) -> float32 [N, D]`` reads one entry, ``seconds(...)`` the
    time its extraction took.
    """

    def __init__(self, root, extractor, dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype {dtype!r}: float16 or float32")
        self.root = Path(root)
        self.extractor = extractor
        self.dtype = dtype
        self._hashes: dict[tuple, str] = {}

    def params(self, proposals_key: str) -> dict:
        """Everything an entry depends on besides the image."""
        return {**self.extractor.key, "proposals": str(proposals_key), "dtype": self.dtype}

    def folder(self, proposals_key: str) -> Path:
        return self.root / params_key(self.params(proposals_key))

    def path(self, sample, proposals_key: str) -> Path:
        """Where `sample`'s features for `proposals_key` are (or will be) stored."""
        return self.folder(proposals_key) / f"{self._image_hash(sample.image_path)}.npz"

    def _image_hash(self, path) -> str:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._hashes:
            self._hashes[key] = file_hash(path)
        return self._hashes[key]

    def compute(self, dataset, boxes_for, proposals_key: str) -> dict:
        """Extract and store the features of every sample not cached yet; a progress bar
        counts crops/s. Returns counts ``{"computed", "cached", "crops"}``."""
        def boxes_of(sample):
            boxes = boxes_for[sample.id] if isinstance(boxes_for, dict) else boxes_for(sample)
            return np.asarray(boxes, np.float32).reshape(-1, 4)

        self._write_params(proposals_key)
        todo, cached = [], 0
        for sample in dataset:
            path = self.path(sample, proposals_key)
            if path.is_file():
                cached += 1
            else:
                todo.append((sample, path, boxes_of(sample)))
        crops = sum(len(b) for _, _, b in todo)
        with progress(total=crops, desc="features", unit="crop") as bar:
            for sample, path, boxes in todo:
                start = time.perf_counter()
                features = self.extractor.extract(read_image(sample.image_path), boxes)
                seconds = time.perf_counter() - start
                stored = features.astype(self.dtype)
                if self.dtype == "float16" and not _close(stored, features):
                    stored = features  # out of float16's range (e.g. random weights' vanishing features)
                atomic_save_npz(path, features=stored, boxes=boxes, seconds=np.float64(seconds))
                bar.update(len(boxes))
        return {"computed": len(todo), "cached": cached, "crops": crops}

    def load(self, sample, proposals_key: str, boxes=None) -> np.ndarray:
        """Cached features ``float32 [N, D]`` of `sample`; with `boxes`, checks they are the
        boxes the features were computed on. A missing entry raises `RcnnError`."""
        path = self.path(sample, proposals_key)
        entry = load_npz(path)
        if entry is None or "features" not in entry:
            raise RcnnError(f"{path}: no cached features for sample {sample.id!r} "
                            f"(proposals {proposals_key!r}); run FeatureStore.compute first")
        if boxes is not None and not np.array_equal(entry["boxes"], np.asarray(boxes, np.float32).reshape(-1, 4)):
            raise RcnnError(f"{path}: cached features of sample {sample.id!r} were computed on other boxes")
        return entry["features"].astype(np.float32)

    def seconds(self, sample, proposals_key: str) -> float | None:
        """Seconds the warp and CNN took on `sample`'s cached entry (None: not recorded)."""
        entry = load_npz(self.path(sample, proposals_key))
        if entry is None or "seconds" not in entry:
            return None
        return float(entry["seconds"])

    def _write_params(self, proposals_key: str) -> None:
        folder = self.folder(proposals_key)
        target = folder / "params.json"
        if target.is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".params.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(self.params(proposals_key), f, indent=1, sort_keys=True)
        os.replace(tmp, target)


def _close(stored: np.ndarray, features: np.ndarray) -> bool:
    """Whether `stored` holds `features` to 1e-3 of their largest magnitude (and finite)."""
    if not np.isfinite(stored).all():
        return False
    scale = float(np.abs(features).max()) if features.size else 0.0
    return bool(np.abs(stored.astype(np.float32) - features).max() <= 1e-3 * scale) if scale > 0 else True
