"""What the heads are trained from: per image, features of boxes and the ground truth.

A head's ``fit(images)`` takes a sequence of `ImageData` (one item per training image) and
reads each item once per pass. The heads never hold every image's features at once: give
them a `LazySequence` whose items are read from the feature cache on access.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


class ImageData(NamedTuple):
    """One training image as the heads see it.

    features ``float32 [N, D]`` of `boxes` ``float32 [N, 4]`` (its proposals and, for R-CNN's
    SVM positives, its ground-truth boxes themselves); gt_boxes ``float32 [G, 4]``, gt_labels
    ``int64 [G]`` in ``1..C``, gt_difficult ``bool [G]`` or None.
    """

    features: np.ndarray
    boxes: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray | None = None


class LazySequence(Sequence):
    """``length`` items made on access by ``make(i)``, none kept (e.g. one image's cached
    features at a time)."""

    def __init__(self, length: int, make: Callable[[int], object]):
        self.length, self.make = length, make

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if not -self.length <= i < self.length:
            raise IndexError(i)
        return self.make(i % self.length)


def as_image_data(item, i: int) -> ImageData:
    """`item` (an `ImageData` or a 4/5-tuple) as numpy `ImageData`, its shapes checked."""
    item = ImageData(*item)
    features = np.asarray(item.features.numpy() if hasattr(item.features, "numpy") else item.features, np.float32)
    boxes = np.asarray(item.boxes, np.float32).reshape(-1, 4)
    gt_boxes = np.asarray(item.gt_boxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(item.gt_labels, np.int64).reshape(-1)
    difficult = None if item.gt_difficult is None else np.asarray(item.gt_difficult, bool).reshape(-1)
    if features.ndim != 2 or len(features) != len(boxes):
        raise ValueError(f"image {i}: features {features.shape} do not match boxes {boxes.shape}")
    if len(gt_labels) != len(gt_boxes) or (difficult is not None and len(difficult) != len(gt_boxes)):
        raise ValueError(f"image {i}: gt_boxes, gt_labels and gt_difficult differ in length")
    return ImageData(features, boxes, gt_boxes, gt_labels, difficult)


def feature_scale(norm_sum: float, count: int, target_norm: float | None) -> float:
    """The factor that brings features' mean L2 norm (``norm_sum / count``) to `target_norm`
    (R-CNN uses 20); 1 when `target_norm` is None or 0 or there were no features."""
    if not target_norm or count == 0 or norm_sum <= 0:
        return 1.0
    return float(target_norm) / (norm_sum / count)
