"""The R-CNN detector (Girshick et al. 2014), built from the stages to its left.

Training (`RCNN.fit`): proposals for every image (cached, parallel) -> optional fine-tuning
of the CNN with a softmax head on warped crops -> CNN features of every proposal and ground
truth box (cached) -> per-class linear SVMs with hard negative mining -> per-class ridge box
regression. Detection (`RCNN.detect`): proposals -> warped crops -> features -> scores
``[N, C]`` -> class-specific box regression -> clip -> score threshold -> per-class NMS ->
the best `max_detections`.

A model is one file of tensors and plain values (``torch.load(path, weights_only=True)``):
format and version, the full config, class names, the backbone weights when they are not
reproducible from their source (fine-tuned), and the heads' state dicts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rcnn import __version__
from rcnn.boxes import batched_nms, clip_boxes
from rcnn.cache import array_hash, atomic_write, params_key
from rcnn.config import from_dict, load_toml, merge, require, to_dict
from rcnn.datasets.core import Dataset, Detections, Sample
from rcnn.datasets.images import read_image
from rcnn.errors import ConfigError, DatasetError, ModelError
from rcnn.features.extractor import FeatureConfig, FeatureExtractor
from rcnn.features.store import DatasetFeatures, FeatureStore
from rcnn.heads import BoxRegressor, ImageData, RegressionConfig, SVMConfig, SVMHead
from rcnn.heads.softmax import FinetuneConfig, FinetuneImage, Finetuner, SoftmaxHead
from rcnn.progress import progress
from rcnn.proposals import ProposalsConfig, ProposalStore, SelectiveSearchConfig, make_proposer, proposals_config

__all__ = ["DetectorConfig", "RCNN", "load_config"]

MODEL_FORMAT = "rcnn-model"
MODEL_VERSION = 1
CLASSIFIERS = ("svm", "softmax")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a detector is built from; an experiment's TOML file fills it.

    `proposals`: the ``[proposals]`` table, ``method`` plus that proposer's parameters: the
    config of the proposer `method` names (`rcnn.proposals.PROPOSERS`; a plain dict given
    here is converted); `features`, `finetune`, `svm`, `regression`: the stages' tables.
    `finetune.iterations = 0` skips fine-tuning; `classifier` is ``svm`` or ``softmax`` (the
    fine-tuned network's own scores; needs fine-tuning); `box_regression` turns the ridge
    regressors on. At test time: boxes scoring under `score_threshold` (None: -1.0 for SVM
    margins, 0.01 for softmax probabilities) are dropped, per-class NMS at `nms_threshold`
    (IoU), then the best `max_detections` per image. `cache_dir` holds proposals and features;
    `workers`: processes for proposals (0: all cores).
    """

    proposals: ProposalsConfig = field(default_factory=SelectiveSearchConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(iterations=0))
    classifier: str = "svm"
    svm: SVMConfig = field(default_factory=SVMConfig)
    box_regression: bool = True
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    nms_threshold: float = 0.3
    score_threshold: float | None = None
    max_detections: int = 100
    cache_dir: str = "cache"
    workers: int = 0

    def __post_init__(self):
        if isinstance(self.proposals, dict):  # a plain [proposals] table, as before typed configs
            object.__setattr__(self, "proposals", proposals_config(self.proposals, "DetectorConfig", "proposals"))
        require(self, "classifier", self.classifier in CLASSIFIERS, f"one of {', '.join(CLASSIFIERS)}")
        require(self, "classifier", self.classifier != "softmax" or self.finetune.iterations > 0,
                "\"svm\" (softmax needs fine-tuning: set finetune.iterations > 0)")
        require(self, "nms_threshold", 0 < self.nms_threshold <= 1, "an IoU in (0, 1]")
        require(self, "max_detections", self.max_detections >= 1, "an integer >= 1")
        require(self, "workers", self.workers >= 0, "an integer >= 0 (0: all cores)")
        require(self, "cache_dir", bool(self.cache_dir), "a folder name")

    @property
    def min_score(self) -> float:
        if self.score_threshold is not None:
            return self.score_threshold
        return -1.0 if self.classifier == "svm" else 0.01


def load_config(path=None, overrides: dict | list | tuple | None = None) -> DetectorConfig:
    """A `DetectorConfig` from a TOML file (None: the defaults) with `overrides` (one dict of
    tables, ``{"features": {"crop_size": 128}}``, or a sequence of them, in order) merged in
    by `rcnn.config.merge` (tables key by key; a different ``proposals.method`` replaces the
    table). Every value is checked before anything runs: unknown keys, wrong types and values
    out of range raise `ConfigError` naming the file (and the overrides), key and value."""
    values = load_toml(path) if path else {}
    values.pop("experiment", None)  # experiments keep their own settings in [experiment]
    if isinstance(overrides, dict) or overrides is None:
        overrides = [overrides]
    where = str(path or "defaults") + (" + overrides" if any(overrides) else "")
    return from_dict(DetectorConfig, merge(values, *overrides, cls=DetectorConfig), where=where)


class RCNN:
    """R-CNN: ``RCNN(config).fit(dataset)``, then ``detect(image)`` / ``detect_dataset(ds)``.

    Fitted attributes: ``classes_`` (names, label ``i + 1`` is ``classes_[i]``),
    ``extractor_`` (`FeatureExtractor`), ``classifier_`` (`SVMHead` or `SoftmaxHead`),
    ``regressor_`` (`BoxRegressor` or None), ``finetuned_`` (backbone state dict or None),
    ``fit_stats_`` (counts and seconds per stage).
    """

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config if config is not None else DetectorConfig()

    # -- training ---------------------------------------------------------------------------

    def proposal_store(self) -> ProposalStore:
        """The cache of this config's proposals under ``cache_dir/proposals``."""
        return ProposalStore(Path(self.config.cache_dir) / "proposals", make_proposer(self.config.proposals))

    def dataset_features(self, dataset: Dataset, ground_truth: bool = False) -> DatasetFeatures:
        """`dataset`'s proposals and this detector's features of them, from (and into) the
        caches under `cache_dir`; with `ground_truth`, each image's ground-truth boxes come
        first (the training set of regions)."""
        c = self.config
        features = FeatureStore(Path(c.cache_dir) / "features", self.extractor_)
        return DatasetFeatures(dataset, self.proposal_store(), features, ground_truth, workers=c.workers or None)

    def fit(self, dataset: Dataset) -> "RCNN":
        """Train every stage on `dataset`; returns self."""
        c = self.config
        check_trainable(dataset)
        stats = {"images": len(dataset)}
        self.classes_ = list(dataset.classes)
        num_classes = len(self.classes_)

        start = time.perf_counter()
        proposals = self.proposal_store()
        proposals.compute(dataset, workers=c.workers or None)
        stats["proposals_seconds"] = time.perf_counter() - start

        self.extractor_ = FeatureExtractor(c.features)
        self.finetuned_ = None
        softmax = None
        if c.finetune.iterations > 0:
            start = time.perf_counter()
            key = _finetune_key(c, dataset, proposals)
            checkpoint = Path(c.cache_dir) / "finetune" / f"{proposals.folder.name}-{key}.pt"
            tuner = Finetuner(num_classes, c.finetune, c.features.crop_size, c.features.padding, checkpoint=checkpoint)
            images = [
                FinetuneImage(s.image_path, proposals.load(s), s.boxes, s.labels, s.difficult) for s in dataset
            ]
            tuner.fit(self.extractor_.module, self.extractor_.feature_dim, images)
            self.finetuned_ = {k: v.detach().clone() for k, v in tuner.backbone_.state_dict().items()}
            self.extractor_.load_state_dict(self.finetuned_)
            softmax = tuner.head_
            stats["finetune_seconds"] = time.perf_counter() - start

        if c.classifier == "svm" or c.box_regression:
            start = time.perf_counter()
            regions = self.dataset_features(dataset, ground_truth=True)
            stats["features_seconds"] = time.perf_counter() - start

            def image_data(i: int) -> ImageData:
                s = dataset[i]
                boxes = regions.boxes(s)
                return ImageData(regions.features(s, boxes), boxes, s.boxes, s.labels, s.difficult)

        start = time.perf_counter()
        if c.classifier == "svm":
            self.classifier_ = SVMHead(num_classes, c.svm).fit(image_data, len(dataset))
        else:
            self.classifier_ = softmax
        self.regressor_ = None
        if c.box_regression:
            self.regressor_ = BoxRegressor(num_classes, c.regression).fit(image_data, len(dataset))
        stats["heads_seconds"] = time.perf_counter() - start
        self.fit_stats_ = stats
        return self

    # -- detection --------------------------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "classifier_"):
            raise ModelError("this detector is not fitted: call fit() or RCNN.load()")

    def detect(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Detections:
        """Detections on one image: a path or ``uint8 [H, W, 3]`` RGB array.

        `proposals` ``float32 [N, 4]`` replaces the configured proposer; `timings`, when given,
        is filled with seconds spent in ``proposals, warp, cnn, heads, nms`` (added to).
        """
        self._check_fitted()
        c = self.config
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        height, width = image.shape[:2]
        with _timed(timings, "proposals"):
            if proposals is None:
                proposals = make_proposer(c.proposals)(image)
            proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
        if len(proposals) == 0:
            return Detections()
        feats = np.empty((len(proposals), self.extractor_.feature_dim), np.float32)
        bs = self.extractor_.config.batch_size
        for i in range(0, len(proposals), bs):
            with _timed(timings, "warp"):
                crops = self.extractor_.crops(image, proposals[i:i + bs])
            with _timed(timings, "cnn"):
                feats[i:i + bs] = self.extractor_.forward(crops).numpy()
        return self.predict(proposals, feats, (height, width), timings)

    def predict(self, proposals: np.ndarray, features: np.ndarray, image_size, timings: dict | None = None) -> Detections:
        """Detections from proposals ``[N, 4]`` and their features ``[N, D]`` on an image of
        ``image_size = (height, width)``: scores, class-specific regression, clipping, the
        score threshold, per-class NMS and the cap on detections."""
        self._check_fitted()
        c = self.config
        with _timed(timings, "heads"):
            scores = np.asarray(self.classifier_.decision_function(features), np.float32)  # [N, C]
            rows, cols = np.nonzero(scores >= c.min_score)
            labels = cols.astype(np.int64) + 1
            boxes = np.asarray(proposals, np.float32).reshape(-1, 4)[rows]
            if self.regressor_ is not None and len(rows):
                boxes = self.regressor_.predict(features[rows], boxes, labels)
            boxes = clip_boxes(np.asarray(boxes, np.float32), image_size)
            kept_scores = scores[rows, cols]
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, kept_scores, labels = boxes[ok], kept_scores[ok], labels[ok]
        with _timed(timings, "nms"):
            keep = batched_nms(boxes, kept_scores, labels, c.nms_threshold)[: c.max_detections]
        return Detections(boxes[keep], kept_scores[keep], labels[keep])

    def detect_dataset(self, dataset: Dataset, use_cache: bool = True, timings: dict | None = None) -> dict[str, Detections]:
        """Detections for every sample, ``{sample id: Detections}``. With `use_cache`,
        proposals and their features come from (and go to) the caches under `cache_dir`, so
        re-fitted heads are scored in seconds; without, every image runs through `detect`."""
        self._check_fitted()
        out = {}
        if not use_cache:
            for sample in progress(dataset.samples, desc="detect"):
                out[sample.id] = self.detect(read_image(sample.image_path), timings=timings)
            return out
        regions = self.dataset_features(dataset)
        for sample in dataset:
            boxes = regions.boxes(sample)
            out[sample.id] = self.predict(boxes, regions.features(sample, boxes), (sample.height, sample.width), timings)
        return out

    # -- saving -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The fitted model as tensors and plain values (see the module docstring)."""
        self._check_fitted()
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "rcnn_version": __version__,
            "config": to_dict(self.config),
            "classes": list(self.classes_),
            "weights_source": self.extractor_.weights_source,
            "backbone": self.finetuned_,
            "classifier": self.classifier_.state_dict(),
            "regressor": None if self.regressor_ is None else self.regressor_.state_dict(),
        }

    def save(self, path) -> Path:
        """Write the model to `path` atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            torch.save(self.state_dict(), f)
        return path

    @classmethod
    def load(cls, path) -> "RCNN":
        """A fitted detector from a file written by `save`; a corrupt file or one from another
        format version raises `ModelError` naming the file."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found") from None
        except IsADirectoryError:
            raise ModelError(f"{path}: is a folder, not a model file") from None
        except Exception as e:  # noqa: BLE001  torch raises many kinds for a bad file
            raise ModelError(f"{path}: not a readable rcnn model ({_load_error(e)})") from None
        if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path}: not an rcnn model file")
        if state.get("version") != MODEL_VERSION:
            raise ModelError(
                f"{path}: model format version {state.get('version')} (rcnn {state.get('rcnn_version')}); "
                f"this rcnn {__version__} reads version {MODEL_VERSION}: retrain the model"
            )
        try:
            config = from_dict(DetectorConfig, state["config"], where=f"{path}: config")
            model = cls(config)
            model.classes_ = list(state["classes"])
            model.extractor_ = FeatureExtractor(config.features)
            if model.extractor_.weights_source != state["weights_source"]:
                raise ModelError(
                    f"{path}: trained on backbone weights {state['weights_source']}, but only "
                    f"{model.extractor_.weights_source} can be loaded here"
                )
            model.finetuned_ = state["backbone"]
            if model.finetuned_ is not None:
                model.extractor_.load_state_dict(model.finetuned_, where=str(path))
            head = SVMHead if config.classifier == "svm" else SoftmaxHead
            model.classifier_ = head.from_state_dict(state["classifier"])
            model.regressor_ = None if state["regressor"] is None else BoxRegressor.from_state_dict(state["regressor"])
            _check_heads(model)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ModelError(f"{path}: damaged model file ({type(e).__name__}: {e})") from None
        return model


def _load_error(e: Exception) -> str:
    """A short reason for a file `torch.load(weights_only=True)` refused, without PyTorch's
    advice to load it with ``weights_only=False`` (never do that with a file you did not write)."""
    text = str(e)
    if "weights_only" in text or "Unpickl" in type(e).__name__:
        return "not a PyTorch file of tensors and plain values"
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else 'truncated or corrupt'}"


def _check_heads(model: "RCNN") -> None:
    """The class list, the heads and the backbone of a loaded model must fit one another."""
    classes = model.classes_
    if not classes or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"class list {classes!r} is not a list of distinct names")
    dim = model.extractor_.feature_dim
    heads = [("classifier", model.classifier_), ("box regressor", model.regressor_)]
    for name, head in heads:
        if head is None:
            continue
        if head.num_classes != len(classes):
            raise ValueError(f"the {name} has {head.num_classes} classes, the class list {len(classes)}")
        head_dim = getattr(head, "feature_dim", None) or head.weights_.shape[0]
        if head_dim != dim:
            raise ValueError(f"the {name} takes {head_dim}-d features, the backbone gives {dim}")


def _finetune_key(config: DetectorConfig, dataset: Dataset, proposals: ProposalStore) -> str:
    """What a fine-tuning checkpoint depends on: its config, the features, and every image's
    content and annotations (boxes, labels, difficult flags) with the class list. Proposals
    follow from the images and the proposal folder, which is part of the checkpoint's name."""
    samples = [
        (proposals.store.image_hash(s.image_path), array_hash(s.boxes, s.labels, s.difficult)) for s in dataset
    ]
    return params_key({
        "finetune": to_dict(config.finetune), "features": to_dict(config.features),
        "classes": list(dataset.classes), "samples": samples,
    })


def check_trainable(dataset: Dataset, where=None) -> None:
    """Refuse a dataset that cannot train a detector: no images, no objects, or a class
    without a single (non-difficult) training object."""
    if len(dataset) == 0:
        raise DatasetError(where, "cannot train on an empty dataset (no images)")
    labels = np.concatenate([s.labels[~s.difficult] for s in dataset] + [np.zeros(0, np.int64)])
    if len(dataset.classes) == 0 or len(labels) == 0:
        raise DatasetError(where, f"cannot train: its {len(dataset)} image(s) have no annotated objects")
    counts = np.bincount(labels, minlength=len(dataset.classes) + 1)[1:]
    empty = [name for name, n in zip(dataset.classes, counts) if n == 0]
    if empty:
        raise DatasetError(where, f"cannot train: no training object of class(es) {', '.join(map(repr, empty))}; "
                                  "add examples or leave the class out of the class list")


@contextlib.contextmanager
def _timed(timings: dict | None, stage: str):
    """Add the block's seconds to ``timings[stage]`` (when `timings` is given)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
