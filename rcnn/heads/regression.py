"""Class-specific bounding-box regression (R-CNN, Appendix C).

For each class, a scikit-learn `Ridge` (``alpha`` = R-CNN's lambda, 1000) maps scaled
features of a proposal to the R-CNN deltas ``tx, ty, tw, th`` (`rcnn.boxes.BoxCoder`) that take
it to its ground truth. Training pairs: proposals whose best IoU with a non-difficult
ground-truth box exceeds `min_iou` (0.6), paired with that box; the regressor of that box's
class learns from them. Targets are normalised per class (means and stds are stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import Ridge

from rcnn.boxes import BoxCoder
from rcnn.config import from_dict, require, to_dict
from rcnn.errors import ModelError
from rcnn.heads.data import as_image_data, feature_scale
from rcnn.heads.labeling import label_proposals
from rcnn.progress import progress

__all__ = ["RegressionConfig", "BoxRegressor"]


@dataclass(frozen=True)
class RegressionConfig:
    """Ridge box regression (defaults: R-CNN's). `feature_norm`: mean L2 norm features are
    scaled to (None: no scaling); `max_pairs_per_class`: a seeded random subset beyond it."""

    alpha: float = 1000.0
    min_iou: float = 0.6
    feature_norm: float | None = 20.0
    max_pairs_per_class: int = 20000
    seed: int = 0

    def __post_init__(self):
        require(self, "alpha", self.alpha >= 0, "a number >= 0")
        require(self, "min_iou", 0 <= self.min_iou < 1, "an IoU in [0, 1)")
        require(self, "feature_norm", self.feature_norm is None or self.feature_norm > 0, "a number > 0")
        require(self, "max_pairs_per_class", self.max_pairs_per_class >= 1, "an integer >= 1")
        require(self, "seed", self.seed >= 0, "an integer >= 0")


class BoxRegressor:
    """Per-class ridge regression of R-CNN box deltas from features.

    Fitted: `weights_` ``float32 [D, C, 4]``, `bias_` ``[C, 4]`` (normalised deltas from
    scaled features), `target_means_` / `target_stds_` ``[C, 4]``, `scale_`, `num_pairs_`
    ``[C]`` (a class with no pairs leaves its boxes unchanged).
    """

    def __init__(self, num_classes: int, config: RegressionConfig = RegressionConfig()):
        self.num_classes = num_classes
        self.config = config

    def fit(self, images: Sequence):
        """Fit from a sequence of `ImageData`, one per training image (one pass); returns self."""
        cfg, C = self.config, self.num_classes
        xs, ts, cs, norm_sum, count = [], [], [], 0.0, 0
        coder = BoxCoder()
        for i in progress(range(len(images)), desc="box regression", total=len(images)):
            d = as_image_data(images[i], i)
            norm_sum += float(np.linalg.norm(d.features, axis=1).sum())
            count += len(d.features)
            _, max_iou, gt_index = label_proposals(d.boxes, d.gt_boxes, d.gt_labels, d.gt_difficult)
            sel = np.flatnonzero(max_iou > cfg.min_iou)
            if len(sel):
                xs.append(d.features[sel])
                ts.append(coder.encode(d.boxes[sel], d.gt_boxes[gt_index[sel]]))
                cs.append(d.gt_labels[gt_index[sel]])
        if count == 0:
            raise ValueError("BoxRegressor.fit: no training images")
        D = d.features.shape[1]
        x = np.concatenate(xs) if xs else np.zeros((0, D), np.float32)
        t = np.concatenate(ts) if ts else np.zeros((0, 4), np.float32)
        c_of = np.concatenate(cs) if cs else np.zeros(0, np.int64)
        self.scale_ = feature_scale(norm_sum, count, cfg.feature_norm)
        self.weights_ = np.zeros((D, C, 4), np.float32)
        self.bias_ = np.zeros((C, 4), np.float32)
        self.target_means_ = np.zeros((C, 4), np.float32)
        self.target_stds_ = np.ones((C, 4), np.float32)
        self.num_pairs_ = np.zeros(C, np.int64)
        rng = np.random.default_rng(cfg.seed)
        for c in range(C):
            idx = np.flatnonzero(c_of == c + 1)
            if len(idx) > cfg.max_pairs_per_class:
                idx = np.sort(rng.choice(idx, cfg.max_pairs_per_class, replace=False))
            self.num_pairs_[c] = len(idx)
            if len(idx) == 0:
                continue
            mean, std = t[idx].mean(0), t[idx].std(0)
            std = np.where(std > 1e-6, std, 1.0)
            ridge = Ridge(alpha=cfg.alpha).fit(x[idx] * np.float32(self.scale_), (t[idx] - mean) / std)
            self.weights_[:, c], self.bias_[c] = ridge.coef_.T, ridge.intercept_
            self.target_means_[c], self.target_stds_[c] = mean, std
        return self

    def predict_deltas(self, features, labels) -> np.ndarray:
        """R-CNN deltas ``float32 [N, 4]`` (not normalised) of features ``[N, D]`` under each
        box's class regressor; label 0 (background) gives zeros."""
        x = np.asarray(features.numpy() if isinstance(features, torch.Tensor) else features, np.float32)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if len(labels) != len(x) or (labels < 0).any() or (labels > self.num_classes).any():
            raise ValueError(f"labels must be {len(x)} values in 0..{self.num_classes}")
        c = np.clip(labels - 1, 0, None)
        D, C = self.weights_.shape[:2]
        z = ((x @ self.weights_.reshape(D, C * 4)) * np.float32(self.scale_)).reshape(-1, C, 4)
        rows = np.arange(len(x))
        deltas = (z[rows, c] + self.bias_[c]) * self.target_stds_[c] + self.target_means_[c]
        deltas[labels == 0] = 0
        return deltas.astype(np.float32)

    def predict(self, features, boxes, labels):
        """Regressed boxes ``[N, 4]`` for boxes ``[N, 4]`` with class labels ``[N]`` in ``0..C``
        (0 keeps the box); numpy or torch boxes, the same kind comes back (torch boxes are
        converted to numpy and back here: `rcnn.boxes` works in numpy)."""
        if isinstance(boxes, torch.Tensor):
            out = self.predict(features, boxes.detach().cpu().numpy(), labels)
            return torch.from_numpy(out).to(boxes.device)
        deltas = self.predict_deltas(features, labels)
        keep = np.asarray(labels).reshape(-1) == 0
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return np.where(keep[:, None], boxes, BoxCoder().decode(boxes, deltas))

    def state_dict(self) -> dict:
        """Fitted state as tensors and plain values (``torch.load(weights_only=True)``-safe)."""
        return {
            "kind": "box_regression",
            "num_classes": self.num_classes,
            "config": to_dict(self.config),
            "weights": torch.from_numpy(self.weights_.copy()),
            "bias": torch.from_numpy(self.bias_.copy()),
            "target_means": torch.from_numpy(self.target_means_.copy()),
            "target_stds": torch.from_numpy(self.target_stds_.copy()),
            "scale": float(self.scale_),
            "num_pairs": self.num_pairs_.tolist(),
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> BoxRegressor:
        """The fitted regressor saved by `state_dict` (raises `ModelError` when it does not fit)."""
        try:
            reg = cls(int(d["num_classes"]), from_dict(RegressionConfig, d["config"]))
            reg.weights_ = np.asarray(d["weights"], np.float32)
            reg.bias_ = np.asarray(d["bias"], np.float32)
            reg.target_means_ = np.asarray(d["target_means"], np.float32)
            reg.target_stds_ = np.asarray(d["target_stds"], np.float32)
            reg.scale_ = float(d["scale"])
            reg.num_pairs_ = np.asarray(d["num_pairs"], np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"box regression state: {e!r}") from None
        C = reg.num_classes
        if reg.weights_.ndim != 3 or reg.weights_.shape[1:] != (C, 4) or reg.bias_.shape != (C, 4):
            raise ModelError(f"box regression state: weights {reg.weights_.shape} do not fit {C} classes")
        return reg
