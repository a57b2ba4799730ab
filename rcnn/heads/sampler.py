"""Mini-batch sampling of regions of interest (Fast R-CNN, Sec. 2.3), shareable by any
detector that trains a head on labelled proposals."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rcnn.heads.labeling import IGNORE, NEGATIVE, POSITIVE, Matcher, label_proposals

__all__ = ["RoISample", "RoISampler"]


class RoISample(NamedTuple):
    """One image's sampled RoIs: ``index int64 [R]`` into the boxes given to the sampler
    (foreground first), ``labels int64 [R]`` (class ``1..C``, 0 background) and
    ``gt_index int64 [R]`` (the matched ground truth of each; meaningful for foreground)."""

    index: np.ndarray
    labels: np.ndarray
    gt_index: np.ndarray


class RoISampler:
    """Draws `rois_per_image` RoIs of one image: at most ``round(fg_fraction * rois_per_image)``
    foreground (best IoU >= `fg_iou` with a non-difficult ground truth, labelled with its
    class), the rest background (best IoU in ``[bg_iou_low, fg_iou)``, label 0). Boxes below
    `bg_iou_low`, and those near a difficult object, are never drawn. With too few of either
    kind the sample is smaller; nothing is drawn twice. An image without objects has no box
    in that band, so all its boxes are background. Paper: 128 RoIs, 25 % foreground at
    IoU >= 0.5, background in [0.1, 0.5).

    ``sampler(boxes [N, 4], gt_boxes [G, 4], gt_labels [G], gt_difficult [G] | None, rng)``
    -> `RoISample`; `rng` is a ``numpy.random.Generator`` (seed it from the config).
    """

    def __init__(
        self, rois_per_image: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5, bg_iou_low: float = 0.1
    ):
        if not 0 <= bg_iou_low < fg_iou <= 1:
            raise ValueError(f"need 0 <= bg_iou_low < fg_iou <= 1, got {bg_iou_low}, {fg_iou}")
        self.rois_per_image = rois_per_image
        self.fg_fraction = fg_fraction
        self.fg_iou = fg_iou
        self.bg_iou_low = bg_iou_low
        if bg_iou_low > 0:
            self.matcher = Matcher([bg_iou_low, fg_iou], [IGNORE, NEGATIVE, POSITIVE])
        else:
            self.matcher = Matcher([fg_iou], [NEGATIVE, POSITIVE])

    def label(self, boxes, gt_boxes, gt_labels, gt_difficult=None):
        """``(labels int64 [N]`` in ``-1..C`` (-1: never drawn), ``gt_index int64 [N])``."""
        labels, _, gt_index = label_proposals(boxes, gt_boxes, gt_labels, gt_difficult, self.matcher)
        if len(np.asarray(gt_boxes).reshape(-1, 4)) == 0:
            labels = np.zeros_like(labels)  # an image without objects: every box is background
        return labels, gt_index

    def __call__(self, boxes, gt_boxes, gt_labels, gt_difficult, rng: np.random.Generator) -> RoISample:
        labels, gt_index = self.label(boxes, gt_boxes, gt_labels, gt_difficult)
        return self.sample(labels, gt_index, rng)

    def sample(self, labels: np.ndarray, gt_index: np.ndarray, rng: np.random.Generator) -> RoISample:
        """Draw from precomputed `label` output (labels ``[N]``, gt_index ``[N]``)."""
        fg, bg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
        n_fg = min(len(fg), int(round(self.fg_fraction * self.rois_per_image)))
        n_bg = min(len(bg), self.rois_per_image - n_fg)
        index = np.concatenate([rng.choice(fg, n_fg, replace=False), rng.choice(bg, n_bg, replace=False)])
        index = index.astype(np.int64)
        return RoISample(index, labels[index].astype(np.int64), gt_index[index].astype(np.int64))
