"""Per-class linear SVMs over shared CNN features, with hard negative mining (R-CNN, Sec. 2.3).

One scikit-learn `LinearSVC` per class, one-vs-rest. Labels per class (`class_labels`):
positives are the ground-truth boxes of that class (or proposals with IoU >= `positive_iou`),
negatives the boxes with IoU < `neg_iou` to every ground truth of that class, the grey zone
and difficult objects ignored. Training streams over images:

1. pass 1 measures the features' mean L2 norm (scaled to `feature_norm` at training and at
   test), keeps every positive and a seeded random `negatives_per_image` negatives per class;
2. each mining round scores every image's negatives with the current SVMs, drops cached
   negatives scoring below `easy_threshold`, adds those above `hard_threshold` (inside the
   margin) and retrains; the cache keeps at most `max_negatives` per class (the hardest).

Only the cache is held in memory, never all features.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from rcnn.config import from_dict, require, to_dict
from rcnn.errors import ModelError
from rcnn.heads.data import as_image_data, feature_scale
from rcnn.heads.labeling import IGNORE, NEGATIVE, POSITIVE, Matcher, class_labels
from rcnn.heads.sampler import BalancedSampler
from rcnn.progress import progress

__all__ = ["SVMConfig", "SVMHead", "GT_IOU"]

GT_IOU = 0.999  # a box this close to a ground-truth box is that box (R-CNN's "positives: ground truth only")


@dataclass(frozen=True)
class SVMConfig:
    """Linear SVM training (defaults: R-CNN's). `loss` "hinge" or "squared_hinge"; `pos_weight`
    is the positives' class weight (negatives weigh 1); `intercept_scaling` is liblinear's bias
    multiplier; `feature_norm` the mean L2 norm features are scaled to (None: no scaling);
    `positive_iou`: proposals from this IoU with a ground truth are positives too (None, or 0
    in TOML, which has no null: the ground-truth boxes only)."""

    C: float = 0.001
    loss: str = "hinge"
    pos_weight: float = 2.0
    intercept_scaling: float = 10.0
    feature_norm: float | None = 20.0
    neg_iou: float = 0.3
    positive_iou: float | None = None  # None: ground-truth boxes only
    negatives_per_image: int = 30  # pass 1: random negatives per class per image
    max_negatives: int = 20000  # cache size per class
    rounds: int = 2  # hard negative mining passes after pass 1
    hard_threshold: float = -1.0
    easy_threshold: float = -1.2
    max_iter: int = 10000
    tol: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.positive_iou == 0:  # TOML's way to say None
            object.__setattr__(self, "positive_iou", None)
        require(self, "loss", self.loss in ("hinge", "squared_hinge"), "one of hinge, squared_hinge")
        for name in ("C", "pos_weight", "intercept_scaling", "tol"):
            require(self, name, getattr(self, name) > 0, "a number > 0")
        require(self, "feature_norm", self.feature_norm is None or self.feature_norm > 0, "a number > 0")
        pos = GT_IOU if self.positive_iou is None else self.positive_iou
        require(self, "neg_iou", 0 < self.neg_iou < 1, "an IoU in (0, 1)")
        require(
            self,
            "positive_iou",
            self.neg_iou < pos <= 1,
            f"0 (ground truth only) or an IoU in (neg_iou, 1] (neg_iou = {self.neg_iou})",
        )
        for name in ("negatives_per_image", "rounds", "seed"):
            require(self, name, getattr(self, name) >= 0, "an integer >= 0")
        for name in ("max_negatives", "max_iter"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        require(
            self,
            "easy_threshold",
            self.easy_threshold <= self.hard_threshold,
            f"a number <= hard_threshold (hard_threshold = {self.hard_threshold})",
        )

    @property
    def matcher(self) -> Matcher:
        pos = GT_IOU if self.positive_iou is None else self.positive_iou
        return Matcher([self.neg_iou, pos], [NEGATIVE, IGNORE, POSITIVE])


class _Cache:
    """Training rows: features ``[K, D]`` (unscaled), their ``(image, row)`` keys ``[K]`` and
    roles ``int8 [K, C]`` (1 positive, 0 cached negative, -1 unused for that class)."""

    def __init__(self, dim: int, num_classes: int):
        self._blocks = [np.zeros((0, dim), np.float32)]  # concatenated only when read
        self.keys = np.zeros(0, np.int64)
        self.roles = np.zeros((0, num_classes), np.int8)

    @property
    def x(self) -> np.ndarray:
        if len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks)]
        return self._blocks[0]

    def add(self, image: int, rows, x, roles):
        self._blocks.append(np.array(x, np.float32))
        self.keys = np.concatenate([self.keys, (image << 32) + np.asarray(rows, np.int64)])
        self.roles = np.concatenate([self.roles, roles])

    def compact(self):
        keep = (self.roles != IGNORE).any(1)
        self._blocks, self.keys, self.roles = [self.x[keep]], self.keys[keep], self.roles[keep]

    def negatives(self) -> np.ndarray:
        return (self.roles == NEGATIVE).sum(0)


class SVMHead:
    """One linear SVM per class on shared features; scores ``[N, C]`` for labels ``1..C``.

    Fitted: `weights_` ``float32 [D, C]`` and `bias_` ``[C]`` (on scaled features), `scale_`
    (feature scale), `history_` (per pass: cached negatives, added, evicted per class),
    `n_iter_` (liblinear iterations per class), `empty_classes_` (labels lacking positives or
    negatives: they get a constant score, -10 or +10, and a warning).
    """

    def __init__(self, num_classes: int, config: SVMConfig = SVMConfig()):
        self.num_classes = num_classes
        self.config = config

    # -- training -------------------------------------------------------------------------------
    def fit(self, images: Sequence):
        """Fit from a sequence of `ImageData`, one per training image, each read once per
        pass (1 + rounds passes); returns self."""
        cfg, C = self.config, self.num_classes
        cache, norm_sum, count = None, 0.0, 0
        n_images = len(images)
        sampler = BalancedSampler(0, cfg.negatives_per_image, shuffle=False)  # every positive is kept anyway
        for i in progress(range(n_images), desc="SVM pass 1", total=n_images):
            d = as_image_data(images[i], i)
            if cache is None:
                cache = _Cache(d.features.shape[1], C)
            norm_sum += float(np.linalg.norm(d.features, axis=1).sum())
            count += len(d.features)
            labels = self._labels(d)
            rng = np.random.default_rng([cfg.seed, i])
            roles = np.where(labels == POSITIVE, POSITIVE, IGNORE).astype(np.int8)
            for c in range(C):
                roles[sampler(labels[:, c], rng)[1], c] = NEGATIVE  # labels: POSITIVE 1, NEGATIVE 0
            rows = np.flatnonzero((roles != IGNORE).any(1))
            cache.add(i, rows, d.features[rows], roles[rows])
        if cache is None:
            raise ValueError("SVMHead.fit: no training images")
        self.scale_ = feature_scale(norm_sum, count, cfg.feature_norm)
        sampled = cache.negatives().tolist()
        ties = np.random.default_rng([cfg.seed, n_images]).random((len(cache.keys), self.num_classes))
        self._limit(cache, ties, cfg.max_negatives)  # random ones when pass 1 kept too many
        self.history_ = [{"pass": 1, "negatives": cache.negatives().tolist(), "added": sampled, "evicted": [0] * C}]
        self._train(cache)
        for r in range(cfg.rounds):
            if not self._mine(cache, images, r + 2):
                break
            self._train(cache)
        return self

    def _labels(self, d) -> np.ndarray:
        return class_labels(d.boxes, d.gt_boxes, d.gt_labels, self.num_classes, d.gt_difficult, self.config.matcher)

    def _mine(self, cache: _Cache, images: Sequence, pass_no: int) -> bool:
        """One hard negative mining pass; False when it added nothing (evicting negatives outside
        the margin alone leaves the SVM as it is: they carry no loss)."""
        cfg = self.config
        easy = (cache.roles == NEGATIVE) & (self.decision_function(cache.x) < cfg.easy_threshold)
        cache.roles[easy] = IGNORE
        cache.compact()
        evicted = easy.sum(0)
        added = np.zeros(self.num_classes, np.int64)
        for i in progress(range(len(images)), desc=f"SVM mining pass {pass_no}", total=len(images)):
            d = as_image_data(images[i], i)
            hard = (self._labels(d) == NEGATIVE) & (self.decision_function(d.features) > cfg.hard_threshold)
            mine = np.flatnonzero((cache.keys >> 32) == i)  # this image's cached rows
            where = np.full(len(d.features), -1, np.int64)
            where[cache.keys[mine] & 0xFFFFFFFF] = mine
            known = where >= 0
            where = where[known]
            new_role = hard[known] & (cache.roles[where] == IGNORE)
            cache.roles[where] = np.where(new_role, NEGATIVE, cache.roles[where])
            added += new_role.sum(0)
            fresh = np.flatnonzero(~known & hard.any(1))
            if len(fresh):
                cache.add(i, fresh, d.features[fresh], np.where(hard[fresh], NEGATIVE, IGNORE).astype(np.int8))
                added += hard[fresh].sum(0)
            if (cache.negatives() > 2 * cfg.max_negatives).any():
                self._limit(cache, self.decision_function(cache.x), cfg.max_negatives)
        self._limit(cache, self.decision_function(cache.x), cfg.max_negatives)
        self.history_.append(
            {
                "pass": pass_no,
                "negatives": cache.negatives().tolist(),
                "added": added.tolist(),
                "evicted": evicted.tolist(),
            }
        )
        return bool(added.any())

    def _limit(self, cache: _Cache, scores: np.ndarray, limit: int):
        """Keep at most `limit` cached negatives per class, the highest scoring (hardest)."""
        for c in np.flatnonzero(cache.negatives() > limit):
            negs = np.flatnonzero(cache.roles[:, c] == NEGATIVE)
            drop = negs[np.argsort(-scores[negs, c], kind="stable")[limit:]]
            cache.roles[drop, c] = IGNORE
        cache.compact()

    def _train(self, cache: _Cache):
        cfg = self.config
        D, C = cache.x.shape[1], self.num_classes
        weights, bias = np.zeros((D, C), np.float32), np.zeros(C, np.float32)
        self.n_iter_, self.empty_classes_ = [0] * C, []
        for c in range(C):
            use = np.flatnonzero(cache.roles[:, c] != IGNORE)
            y = (cache.roles[use, c] == POSITIVE).astype(np.int64)
            if y.all() or not y.any():  # one class only: no SVM can be fitted
                self.empty_classes_.append(c + 1)
                bias[c] = -10.0 if not y.any() else 10.0
                continue
            svm = LinearSVC(
                C=cfg.C,
                loss=cfg.loss,
                class_weight={1: cfg.pos_weight, 0: 1.0},
                intercept_scaling=cfg.intercept_scaling,
                dual=True,
                tol=cfg.tol,
                max_iter=cfg.max_iter,
                random_state=cfg.seed,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # reported through n_iter_
                svm.fit(cache.x[use] * np.float32(self.scale_), y)
            weights[:, c], bias[c] = svm.coef_[0], svm.intercept_[0]
            self.n_iter_[c] = int(svm.n_iter_)
        if self.empty_classes_:
            hint = " (positive_iou=None takes the ground-truth boxes themselves: are they among `boxes`?)"
            warnings.warn(
                f"SVMHead: classes {self.empty_classes_} had only one kind of example; they score a "
                f"constant{hint if self.config.positive_iou is None else ''}",
                stacklevel=2,
            )
        self.weights_, self.bias_ = weights, bias

    # -- use ---------------------------------------------------------------------------------------
    def decision_function(self, features):
        """SVM scores ``float32 [N, C]`` (column ``c - 1`` is label ``c``) of features ``[N, D]``
        (numpy or torch; the same kind comes back)."""
        if isinstance(features, torch.Tensor):
            w = torch.from_numpy(self.weights_).to(features.device)
            return (features.float() @ w) * self.scale_ + torch.from_numpy(self.bias_).to(features.device)
        x = np.asarray(features, np.float32)
        return (x @ self.weights_) * np.float32(self.scale_) + self.bias_

    # -- saving ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Fitted state as tensors and plain values (``torch.load(weights_only=True)``-safe)."""
        return {
            "kind": "svm",
            "num_classes": self.num_classes,
            "config": to_dict(self.config),
            "weights": torch.from_numpy(self.weights_.copy()),
            "bias": torch.from_numpy(self.bias_.copy()),
            "scale": float(self.scale_),
            "history": self.history_,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> SVMHead:
        """The fitted head saved by `state_dict` (raises `ModelError` when it does not fit)."""
        try:
            head = cls(int(d["num_classes"]), from_dict(SVMConfig, d["config"]))
            head.weights_ = np.asarray(d["weights"], np.float32)
            head.bias_ = np.asarray(d["bias"], np.float32)
            head.scale_ = float(d["scale"])
            head.history_ = list(d.get("history", []))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"SVM head state: {e!r}") from None
        if (
            head.weights_.ndim != 2
            or head.weights_.shape[1] != head.num_classes
            or head.bias_.shape != (head.num_classes,)
        ):
            raise ModelError(
                f"SVM head state: weights {head.weights_.shape} / bias {head.bias_.shape} do not fit {head.num_classes} classes"
            )
        return head
