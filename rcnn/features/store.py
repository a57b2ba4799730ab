"""On-disk cache of CNN features per image, and a dataset's proposals with their features.

`FeatureStore`: an entry is ``ROOT/<key>/<image hash>-<boxes hash>.npz`` (`rcnn.cache.ImageStore`)
holding ``features`` (``[N, D]``, float16 by default: half the size, relative error below
1e-3, see ``tests/features/test_store.py``; float32 for an entry that float16 cannot hold to
that error, e.g. features near 1e-9), the ``boxes`` ``float32 [N, 4]`` they were computed on
and the ``seconds`` the warp and CNN took (wall clock). ``<key>`` is `rcnn.cache.params_key`
of the extractor's `params()` (backbone, weights source, fine-tuned weights hash, crop size,
padding, pool) and the stored dtype; ``ROOT/<key>/params.json`` says which. An entry is thus
keyed by everything it is computed from: the image's bytes, the boxes (ground truth included,
for training entries: an edited annotation is a new entry) and the extractor.

`DatasetFeatures`: what `RCNN.fit`, `RCNN.detect_dataset` and the experiments read, a
dataset's cached proposals and their cached features, computed once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rcnn.cache import ImageStore, array_hash, params_key
from rcnn.datasets.images import read_image
from rcnn.errors import RcnnError
from rcnn.progress import progress

__all__ = ["FeatureStore", "DatasetFeatures"]

ENTRY = ("features", "boxes", "seconds")


def _boxes(boxes) -> np.ndarray:
    return np.asarray(boxes, np.float32).reshape(-1, 4)


class FeatureStore:
    """Features of `extractor` (a `FeatureExtractor`) cached under `root`.

    ``compute(dataset, boxes_for, dask=None)`` fills the cache (``boxes_for``: a callable
    ``sample -> float32 [N, 4]`` or a dict ``sample id -> boxes``; `dask`: a scheduler
    address to extract on, `rcnn.features.distributed`);
    ``load(sample, boxes) -> float32 [N, D]`` reads one entry, ``seconds(sample, boxes)`` the
    time its extraction took. A damaged entry is reported and recomputed.
    """

    def __init__(self, root, extractor, dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype {dtype!r}: float16 or float32")
        self.root = Path(root)
        self.extractor = extractor
        self.dtype = dtype
        self.store = ImageStore(self.root / params_key(self.params), self.params)

    @property
    def params(self) -> dict:
        """Everything an entry depends on besides the image and its boxes."""
        return {**self.extractor.params(), "dtype": self.dtype}

    @property
    def folder(self) -> Path:
        return self.store.folder

    def path(self, sample, boxes) -> Path:
        """Where `sample`'s features on `boxes` are (or will be) stored."""
        return self.store.path(sample.image_path, array_hash(_boxes(boxes)))

    def compute(self, dataset, boxes_for, dask: str | None = None) -> dict:
        """Extract and store the features of every sample not cached yet, here or on the
        Dask scheduler at `dask`; a progress bar counts crops/s. Returns counts
        ``{"computed", "cached", "crops", "damaged"}``."""
        damaged = len(self.store.damaged)
        todo, cached = [], 0
        for sample in dataset:
            boxes = _boxes(boxes_for[sample.id] if isinstance(boxes_for, dict) else boxes_for(sample))
            if self.store.has(sample.image_path, array_hash(boxes), ENTRY):
                cached += 1
            else:
                todo.append((sample, boxes))
        crops = sum(len(b) for _, b in todo)
        with progress(total=crops, desc="features" + (" (Dask)" if dask else ""), unit="crop") as bar:
            if dask and todo:
                from rcnn.features.distributed import compute_on_cluster

                compute_on_cluster(self, todo, dask, bar)
            for sample, boxes in [] if dask else todo:
                self.extract(sample.image_path, boxes)
                bar.update(len(boxes))
        return {"computed": len(todo), "cached": cached, "crops": crops, "damaged": len(self.store.damaged) - damaged}

    def extract(self, image_path, boxes: np.ndarray) -> dict:
        """Extract the features of `boxes` ``float32 [N, 4]`` in an image and store the entry
        (``features``, ``boxes``, ``seconds``), which it returns."""
        start = time.perf_counter()
        features = self.extractor.extract(read_image(image_path), boxes)
        seconds = time.perf_counter() - start
        stored = features.astype(self.dtype)
        if self.dtype == "float16" and not _close(stored, features):
            stored = features  # out of float16's range (e.g. random weights' vanishing features)
        entry = {"features": stored, "boxes": boxes, "seconds": np.float64(seconds)}
        self.store.write(image_path, array_hash(boxes), **entry)
        return entry

    def _entry(self, sample, boxes) -> dict:
        boxes = _boxes(boxes)
        entry = self.store.read(
            sample.image_path, array_hash(boxes), ENTRY, repair=lambda: self.extract(sample.image_path, boxes)
        )
        if entry is None:
            raise RcnnError(
                f"{self.path(sample, boxes)}: no cached features for sample {sample.id!r} "
                f"on these {len(boxes)} boxes; run FeatureStore.compute first"
            )
        if not np.array_equal(entry["boxes"], boxes):  # a hash collision, or a hand-edited cache
            raise RcnnError(
                f"{self.path(sample, boxes)}: cached features of sample {sample.id!r} were computed on other boxes"
            )
        return entry

    def load(self, sample, boxes) -> np.ndarray:
        """Cached features ``float32 [N, D]`` of `sample` on `boxes` ``[N, 4]``; a missing
        entry raises `RcnnError`, a damaged one is recomputed."""
        return self._entry(sample, boxes)["features"].astype(np.float32)

    def seconds(self, sample, boxes) -> float:
        """Seconds the warp and CNN took on `sample`'s cached entry."""
        return float(self._entry(sample, boxes)["seconds"])


class DatasetFeatures:
    """A dataset's proposals (`ProposalStore`) and their features (`FeatureStore`), both
    computed (or found in the caches) on construction.

    With `ground_truth`, each image's boxes are its ground-truth boxes followed by its
    proposals (R-CNN's training set of regions). ``boxes(sample) -> float32 [N, 4]``,
    ``features(sample) -> float32 [N, D]``, ``seconds(sample) -> (proposals, features)``.
    `workers`: proposal processes; `dask`: a Dask scheduler address that runs both stages
    instead (the caches must be on storage every worker sees).
    """

    def __init__(
        self,
        dataset,
        proposals,
        features: FeatureStore,
        ground_truth: bool = False,
        workers: int | None = None,
        dask: str | None = None,
    ):
        self.dataset, self.proposals, self.store, self.ground_truth = dataset, proposals, features, ground_truth
        self.proposal_stats = proposals.compute(dataset, workers=workers, dask=dask)
        self.feature_stats = features.compute(dataset, self.boxes, dask=dask)

    def boxes(self, sample) -> np.ndarray:
        boxes = self.proposals.load(sample)
        if self.ground_truth:
            boxes = np.concatenate([sample.boxes, boxes])
        return _boxes(boxes)

    def features(self, sample, boxes=None) -> np.ndarray:
        return self.store.load(sample, self.boxes(sample) if boxes is None else boxes)

    def seconds(self, sample) -> tuple[float, float]:
        return self.proposals.seconds(sample), self.store.seconds(sample, self.boxes(sample))


def _close(stored: np.ndarray, features: np.ndarray) -> bool:
    """Whether `stored` holds `features` to 1e-3 of their largest magnitude (and finite)."""
    if not np.isfinite(stored).all():
        return False
    scale = float(np.abs(features).max()) if features.size else 0.0
    return bool(np.abs(stored.astype(np.float32) - features).max() <= 1e-3 * scale) if scale > 0 else True
