"""What the heads are trained from: per image, features of boxes and the ground truth.

The heads never hold every image's features at once: `fit` takes ``get_image_data(i)`` for
``i in range(n_images)`` and calls it once per image per pass.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

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


GetImageData = Callable[[int], "ImageData | tuple"]


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
