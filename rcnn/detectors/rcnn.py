"""The R-CNN detector (Girshick et al. 2014), built from the stages to its left.

Training (`RCNN.fit`): proposals for every image (cached, parallel) -> optional fine-tuning
of the CNN with a softmax head on warped crops -> CNN features of every proposal and ground
truth box (cached) -> per-class linear SVMs with hard negative mining -> per-class ridge box
regression. Detection (`RCNN.trace`, whose last stage is `detect`'s): proposals -> warped crops ->
features -> scores ``[N, C]`` -> score threshold -> class-specific box regression -> clip ->
per-class NMS -> the best `max_detections`.

A model is one file of tensors and plain values (``torch.load(path, weights_only=True)``):
format and version, the full config, class names, the backbone weights when they are not
reproducible from their source (fine-tuned), and the heads' state dicts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnn.config import require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.detectors.base import (
    CommonConfig,
    Detector,
    best_per_class,
    check_trainable,
    clean_candidates,
    postprocess,
    resolve_device,
    timed,
    training_key,
)
from rcnn.detectors.trace import Crops, Stage, Trace, threshold_stages
from rcnn.errors import ModelError
from rcnn.features.extractor import FeatureConfig, FeatureExtractor
from rcnn.features.store import DatasetFeatures, FeatureStore
from rcnn.heads import BoxRegressor, ImageData, RegressionConfig, SVMConfig, SVMHead
from rcnn.heads.data import LazySequence
from rcnn.heads.softmax import FinetuneConfig, FinetuneImage, Finetuner, SoftmaxHead
from rcnn.proposals import ProposalsConfig, ProposalStore, SelectiveSearchConfig, make_proposer

__all__ = ["DetectorConfig", "RCNN"]

log = logging.getLogger(__name__)
CLASSIFIERS = ("svm", "softmax")


@dataclass(frozen=True)
class DetectorConfig(CommonConfig):
    """An R-CNN's config (``detector = "rcnn"``, the default); an experiment's TOML file fills
    it. Besides the common settings (`rcnn.detectors.base.CommonConfig`):

    `features`, `finetune`, `svm`, `regression`: the stages' tables. `finetune.iterations = 0`
    skips fine-tuning; `classifier` is ``svm`` or ``softmax`` (the fine-tuned network's own
    scores; needs fine-tuning); `box_regression` turns the ridge regressors on. The score
    threshold (None: -1.0 for SVM margins, 0.01 for softmax probabilities) drops boxes
    before NMS in `RCNN.detect` and under ``test_rule = "threshold"``.

    The defaults are the settings measured on real photos at a laptop's cost (cards: VOC
    mAP@0.5 0.915 in about 12 minutes on 2 cores): 500 Selective Search boxes per image,
    MobileNetV2 on 128 px crops with 8 px context and a 2x2 pool grid, 400 fine-tuning
    iterations with blocks 0 to 10 frozen, SVMs with C = 0.1 and positives from IoU 0.7.
    R-CNN's paper settings (2000 boxes, 224 px crops with 16 px context, no fine-tuning, C =
    0.001, ground-truth positives): ``experiments/configs/paper.toml``. A table in a config
    file changes only the keys it names (`rcnn.config.from_dict`).
    """

    proposals: ProposalsConfig = field(default_factory=lambda: SelectiveSearchConfig(max_boxes=500))
    features: FeatureConfig = field(default_factory=lambda: FeatureConfig(crop_size=128, padding=8, pool=2))
    finetune: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(iterations=400, frozen=tuple(f"features.{i}." for i in range(11)))
    )
    classifier: str = "svm"
    svm: SVMConfig = field(default_factory=lambda: SVMConfig(C=0.1, positive_iou=0.7))
    box_regression: bool = True
    regression: RegressionConfig = field(default_factory=RegressionConfig)

    def __post_init__(self):
        super().__post_init__()
        require(self, "detector", self.detector == "rcnn", '"rcnn" for an R-CNN config')
        require(self, "classifier", self.classifier in CLASSIFIERS, f"one of {', '.join(CLASSIFIERS)}")
        require(
            self,
            "classifier",
            self.classifier != "softmax" or self.finetune.iterations > 0,
            '"svm" (softmax needs fine-tuning: set finetune.iterations > 0)',
        )

    @property
    def min_score(self) -> float:
        if self.score_threshold is not None:
            return self.score_threshold
        return -1.0 if self.classifier == "svm" else 0.01


class RCNN(Detector):
    """R-CNN: ``RCNN(config).fit(dataset)``, then ``detect(image)`` / ``detect_dataset(ds)``.

    Fitted attributes: ``classes_`` (names, label ``i + 1`` is ``classes_[i]``),
    ``extractor_`` (`FeatureExtractor`), ``classifier_`` (`SVMHead` or `SoftmaxHead`),
    ``regressor_`` (`BoxRegressor` or None), ``finetuned_`` (backbone state dict or None),
    ``fit_stats_`` (counts and seconds per stage).
    """

    kind = "rcnn"
    config_class = DetectorConfig

    @property
    def draw_threshold(self) -> float:
        """0 for SVM margins (the decision boundary), 0.5 for softmax probabilities."""
        return 0.0 if self.config.classifier == "svm" else 0.5

    # -- training ---------------------------------------------------------------------------

    def dataset_features(self, dataset: Dataset, ground_truth: bool = False) -> DatasetFeatures:
        """`dataset`'s proposals and this detector's features of them, from (and into) the
        caches under `cache_dir` (both computed on the Dask scheduler `dask` when it is set);
        with `ground_truth`, each image's ground-truth boxes come first (the training set of
        regions)."""
        c = self.config
        features = FeatureStore(Path(c.cache_dir) / "features", self.extractor_)
        return DatasetFeatures(
            dataset, self.proposal_store(), features, ground_truth, workers=c.workers or None, dask=self.dask
        )

    def fit(self, dataset: Dataset) -> RCNN:
        """Train every stage on `dataset`; returns self."""
        c = self.config
        check_trainable(dataset)
        stats = {"images": len(dataset)}
        self.classes_ = list(dataset.classes)
        num_classes = len(self.classes_)

        proposals = self.training_proposals(dataset, stats)

        device = resolve_device(c.device)
        self.extractor_ = FeatureExtractor(c.features, device=device)
        stats["plan"] = self._plan(dataset, proposals)
        self.finetuned_ = None
        softmax = None
        if c.finetune.iterations > 0:
            start = time.perf_counter()
            key = _finetune_key(c, dataset)
            checkpoint = Path(c.cache_dir) / "finetune" / f"{proposals.folder.name}-{key}.pt"
            tuner = Finetuner(
                num_classes, c.finetune, c.features.crop_size, c.features.padding, checkpoint=checkpoint, device=device
            )
            images = [FinetuneImage(s.image_path, proposals.load(s), s.boxes, s.labels, s.difficult) for s in dataset]
            tuner.fit(self.extractor_.module, self.extractor_.feature_dim, images)
            self.finetuned_ = {k: v.detach().cpu().clone() for k, v in tuner.backbone_.state_dict().items()}
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

            images = LazySequence(len(dataset), image_data)  # one image's features in memory at a time

        start = time.perf_counter()
        if c.classifier == "svm":
            self.classifier_ = SVMHead(num_classes, c.svm).fit(images)
        else:
            self.classifier_ = softmax
        self.regressor_ = None
        if c.box_regression:
            self.regressor_ = BoxRegressor(num_classes, c.regression).fit(images)
        stats["heads_seconds"] = time.perf_counter() - start
        self.fit_stats_ = stats
        return self

    def _plan(self, dataset: Dataset, proposals: ProposalStore) -> dict:
        """What the CNN stages will compute, printed before they start, with a rough time
        estimate from a measured sample: the CNN's rate on four batches of the first image's
        boxes, after one untimed batch; a fine-tuning crop counted as two forward passes
        (measured on `make demo`: 1.35 with blocks 0 to 10 frozen). Cached work is skipped
        later, so a warm re-run takes less."""
        c = self.config
        boxes = [len(s.boxes) + len(proposals.load(s)) for s in dataset]
        feature_crops = sum(boxes) if (c.classifier == "svm" or c.box_regression) else 0
        finetune_crops = c.finetune.iterations * c.finetune.batch_size
        first = dataset[0]
        sample = np.concatenate([first.boxes, proposals.load(first)])[: 4 * c.features.batch_size]
        image = read_image(first.image_path)
        self.extractor_.extract(image, sample[: c.features.batch_size])  # builds the frozen CNN: not timed
        start = time.perf_counter()
        self.extractor_.extract(image, sample)
        rate = len(sample) / max(time.perf_counter() - start, 1e-9)
        plan = {
            "boxes_per_image": float(np.mean(boxes)),
            "feature_crops": feature_crops,
            "finetune_crops": finetune_crops,
            "crops_per_second": rate,
            "estimated_seconds": (feature_crops + 2 * finetune_crops) / rate,
        }
        parts = [f"{len(dataset)} images, {plan['boxes_per_image']:.0f} boxes per image (ground truth + proposals)"]
        if finetune_crops:
            parts.append(f"fine-tuning {c.finetune.iterations} iterations x {c.finetune.batch_size} crops")
        if feature_crops:
            parts.append(f"{feature_crops} crops for features")
        log.info(
            f"plan: {'; '.join(parts)}; the CNN runs {rate:.0f} crops/s here, so about "
            f"{_duration(plan['estimated_seconds'])} for the CNN stages (less for what is cached)"
        )
        return plan

    # -- detection --------------------------------------------------------------------------

    def trace(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Trace:
        """Every stage on one image (a path or ``uint8 [H, W, 3]`` RGB array), as plain data
        (`rcnn.detectors.trace.Trace`): the proposals, how each is warped (``crops``), every
        proposal's class scores, the boxes reaching the score threshold before and after box
        regression, and the detections after NMS (`detect`'s).

        `proposals` ``float32 [N, 4]`` replaces the configured proposer; `timings`, when given,
        is filled with seconds spent in ``proposals, warp, cnn, heads, nms`` (added to).
        """
        self._check_fitted()
        c, image, proposals, proposer = self.config, *self._proposals(image, proposals, timings)
        fc = self.extractor_.config
        parts = {
            "image_size": tuple(image.shape[:2]),
            "proposals": proposals,
            "proposer": proposer,
            "crops": Crops(fc.crop_size, fc.padding, fc.backbone, self.extractor_.feature_dim),
            "score_name": "SVM margin" if c.classifier == "svm" else "probability",
            "threshold": c.min_score,
            "scored": {"proposals": len(proposals)},
        }
        if len(proposals) == 0:
            return Trace(stages=(Stage("nms", Detections()),), **parts)
        feats = self.extractor_.extract(image, proposals, timings)
        scores, stages = self._stages(proposals, feats, image.shape[:2], timings)
        return Trace(stages=stages, scores=scores, **parts)

    def candidates(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Detections:
        """Each class's best `top_per_class` boxes on one image, no threshold, no NMS (what
        ``test_rule = "rcnn"`` chooses from over a set); arguments as `detect`."""
        self._check_fitted()
        image, proposals, _ = self._proposals(image, proposals, timings)
        if len(proposals) == 0:
            return Detections()
        feats = self.extractor_.extract(image, proposals, timings)
        return self.predict(proposals, feats, image.shape[:2], timings, candidates=True)

    def _proposals(self, image, proposals, timings) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image uint8 [H, W, 3], proposals float32 [N, 4], what gave them)`` for `image`
        (a path or the array): `proposals` when given, else the configured proposer's."""
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        proposer = "given" if proposals is not None else self.config.proposals.method
        with timed(timings, "proposals"):
            if proposals is None:
                proposals = make_proposer(self.config.proposals)(image)
            proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
        return image, proposals, proposer

    def _scored(self, proposals: np.ndarray, features: np.ndarray, min_score: float, top: int | None, timings):
        """``(scores [N, C], rows, cols, boxes [K, 4])``: every proposal's class scores, the
        (proposal, 0-based class) pairs reaching `min_score` (with `top`, each class's best
        `top` only) and their boxes moved by their class's regressor (as proposed without)."""
        with timed(timings, "heads"):
            scores = np.asarray(self.classifier_.decision_function(features), np.float32)  # [N, C]
            rows, cols = best_per_class(scores, min_score, top)
            boxes = np.asarray(proposals, np.float32).reshape(-1, 4)[rows]
            if self.regressor_ is not None and len(rows):
                boxes = self.regressor_.predict(features[rows], boxes, cols.astype(np.int64) + 1)
        return scores, rows, cols, boxes

    def _stages(self, proposals: np.ndarray, features: np.ndarray, image_size, timings) -> tuple[np.ndarray, tuple]:
        """``(scores [N, C], stages)``: the threshold, regression and NMS stages (`Trace`)."""
        c = self.config
        scores, rows, cols, boxes = self._scored(proposals, features, c.min_score, None, timings)
        labels = cols.astype(np.int64) + 1
        with timed(timings, "nms"):
            final = postprocess(boxes, scores[rows, cols], labels, image_size, c.nms_threshold, c.max_detections)
        return scores, (*threshold_stages(proposals, scores, rows, cols, boxes), Stage("nms", final))

    def predict(
        self,
        proposals: np.ndarray,
        features: np.ndarray,
        image_size,
        timings: dict | None = None,
        candidates: bool = False,
    ) -> Detections:
        """Detections from proposals ``[N, 4]`` and their features ``[N, D]`` on an image of
        ``image_size = (height, width)``: scores, class-specific regression, clipping, the
        score threshold, per-class NMS and the cap on detections (the last stage of `trace`).
        With `candidates`: each class's best `top_per_class` boxes instead, no threshold, no
        NMS (`candidates`)."""
        self._check_fitted()
        proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
        if not candidates:
            return self._stages(proposals, features, image_size, timings)[1][-1].detections
        scores, rows, cols, boxes = self._scored(proposals, features, -np.inf, self.config.top_per_class, timings)
        return clean_candidates(boxes, scores[rows, cols], cols.astype(np.int64) + 1, image_size)

    def detect_dataset(
        self,
        dataset: Dataset,
        use_cache: bool = True,
        timings: dict | None = None,
        parts=None,
        skip_bad: bool = False,
        max_boxes: int | None = None,
    ) -> dict[str, Detections]:
        """Detections for every sample, ``{sample id: Detections}``, by the config's
        `test_rule`. With `use_cache`, proposals and their features come from (and go to) the
        caches under `cache_dir`, so re-fitted heads are scored in seconds, and `max_boxes`
        scores only each image's first that many proposals (a smaller budget, from the same
        cache entries); without, every image runs through `detect` (or `candidates`), with
        `parts` and `skip_bad` as `Detector.detect_dataset`'s."""
        if not use_cache or parts is not None or skip_bad:
            return super().detect_dataset(dataset, use_cache, timings, parts, skip_bad)
        self._check_fitted()
        out = {}
        regions = self.dataset_features(dataset)
        for sample in dataset:
            boxes = regions.boxes(sample)
            features = regions.features(sample, boxes)[:max_boxes]
            size = (sample.height, sample.width)
            out[sample.id] = self.predict(boxes[:max_boxes], features, size, timings, self.set_rule)
        return self.select_over_set(out, timings) if self.set_rule else out

    # -- the model file ---------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "weights_source": self.extractor_.weights_source,
            "backbone": self.finetuned_,
            "classifier": self.classifier_.state_dict(),
            "regressor": None if self.regressor_ is None else self.regressor_.state_dict(),
        }

    def _from_state(self, state: dict, path) -> None:
        config = self.config
        self.extractor_ = FeatureExtractor(config.features, device=resolve_device(config.device))
        if self.extractor_.weights_source != state["weights_source"]:
            raise ModelError(
                f"{path}: trained on backbone weights {state['weights_source']}, but only "
                f"{self.extractor_.weights_source} can be loaded here"
            )
        self.finetuned_ = state["backbone"]
        if self.finetuned_ is not None:
            self.extractor_.load_state_dict(self.finetuned_, where=str(path))
        head = SVMHead if config.classifier == "svm" else SoftmaxHead
        self.classifier_ = head.from_state_dict(state["classifier"])
        self.regressor_ = None if state["regressor"] is None else BoxRegressor.from_state_dict(state["regressor"])
        _check_heads(self)


def _check_heads(model: RCNN) -> None:
    """The class list, the heads and the backbone of a loaded model must fit one another."""
    classes = model.classes_
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


def _finetune_key(config: DetectorConfig, dataset: Dataset) -> str:
    """What a fine-tuning checkpoint depends on (`rcnn.detectors.base.training_key`): its
    config, the features, the images and their annotations; the proposal folder is part of
    the checkpoint's name."""
    return training_key({"finetune": to_dict(config.finetune), "features": to_dict(config.features)}, dataset)


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"7 min"`` or ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
