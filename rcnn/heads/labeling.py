"""Labelling proposals by IoU with the ground truth, the R-CNN way.

`Matcher` turns an IoU matrix into a matched ground-truth index and a label per proposal with
thresholds and labels, as detectron2's ``Matcher([0.3, 0.5], [0, -1, 1])`` does (IoU < 0.3:
negative 0; 0.3 <= IoU < 0.5: ignored -1; IoU >= 0.5: positive 1). `label_proposals` (one
label per proposal, for the softmax head and box regression) and `class_labels` (one column
per class, for the per-class SVMs) build on it. Difficult ground truth never makes a
positive: a proposal it would not call negative is ignored instead, unless a non-difficult
box already makes it positive.
"""

from __future__ import annotations

import numpy as np

from rcnn.boxes import box_iou

__all__ = ["POSITIVE", "NEGATIVE", "IGNORE", "Matcher", "label_proposals", "class_labels"]

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


class Matcher:
    """Bins each proposal's best IoU with the thresholds and labels the bin.

    ``thresholds`` ``[t1 < ... < tk]`` split ``[0, 1]`` into k+1 bins ``[0, t1), [t1, t2), ...,
    [tk, 1]``; ``labels`` (k+1 of them, each -1, 0 or 1) name the bins, low to high.

    Orientation: the IoU matrix is ``[N proposals, G ground truths]``, rows are proposals, as
    ``rcnn.boxes.box_iou(proposals, gt_boxes)`` gives it; this is the transpose of
    detectron2's and torchvision's ``Matcher``, which take ``[G, N]``.
    """

    def __init__(self, thresholds=(0.3, 0.5), labels=(NEGATIVE, IGNORE, POSITIVE)):
        thresholds = [float(t) for t in thresholds]
        if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"Matcher thresholds must increase: {thresholds}")
        if len(labels) != len(thresholds) + 1 or any(lab not in (-1, 0, 1) for lab in labels):
            raise ValueError(f"Matcher needs {len(thresholds) + 1} labels in (-1, 0, 1), got {labels}")
        self.thresholds = tuple(thresholds)
        self.labels = tuple(int(lab) for lab in labels)

    def __call__(self, iou):
        """From IoU ``[N, G]`` (N proposals x G ground truths, `rcnn.boxes.box_iou`):
        ``(matches int64 [N], labels int8 [N])``.

        `matches` is the index of the best ground truth (-1 when G = 0); with no ground truth
        every proposal falls in the lowest bin (IoU 0).
        """
        iou = np.asarray(iou, np.float32)
        if iou.ndim != 2:
            raise ValueError(f"Matcher needs an IoU matrix [N, G], got shape {iou.shape}")
        if iou.shape[1] == 0:
            best = np.zeros(len(iou), np.float32)
            matches = np.full(len(iou), -1, np.int64)
        else:
            matches = iou.argmax(1)
            best = iou[np.arange(len(iou)), matches]
        return matches, self.bin_labels(best)

    def bin_labels(self, best_iou):
        """Labels ``int8 [N]`` of the bins that IoU values ``[N]`` fall in."""
        bins = np.searchsorted(np.asarray(self.thresholds, np.float32), np.asarray(best_iou, np.float32), side="right")
        return np.asarray(self.labels, np.int8)[bins]


def _as_numpy(x, dtype, shape=(-1,)):
    """numpy from numpy or (the one place torch enters the labelling) a torch tensor."""
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype).reshape(shape)


def label_proposals(boxes, gt_boxes, gt_labels, gt_difficult=None, matcher: Matcher | None = None):
    """One label per proposal: the matched ground truth's class, background or ignored.

    boxes ``[N, 4]``, gt_boxes ``[G, 4]``, gt_labels ``[G]`` in ``1..C``, gt_difficult bool
    ``[G]`` or None. `matcher` defaults to ``Matcher([0.5], [0, 1])`` (R-CNN fine-tuning:
    IoU >= 0.5 is its class, below is background). Returns ``(labels int64 [N]`` in
    ``-1..C`` (-1 ignored, 0 background), ``max_iou float32 [N], gt_index int64 [N])``, the
    last two over the non-difficult ground truth (index -1 when there is none).
    """
    matcher = matcher or Matcher([0.5], [NEGATIVE, POSITIVE])
    boxes = _as_numpy(boxes, np.float32, (-1, 4))
    gt_boxes = _as_numpy(gt_boxes, np.float32, (-1, 4))
    gt_labels = _as_numpy(gt_labels, np.int64)
    difficult = np.zeros(len(gt_boxes), bool) if gt_difficult is None else _as_numpy(gt_difficult, bool)
    iou = box_iou(boxes, gt_boxes)
    easy = iou[:, ~difficult]
    matches, bins = matcher(easy)
    max_iou = easy.max(1) if easy.shape[1] else np.zeros(len(boxes), np.float32)
    gt_index = np.flatnonzero(~difficult)[matches] if easy.shape[1] else matches
    labels = bins.astype(np.int64)
    positive = bins == POSITIVE
    labels[positive] = gt_labels[gt_index[positive]]
    if difficult.any():
        _, hard_bins = matcher(iou[:, difficult])
        labels[(hard_bins != NEGATIVE) & (bins != POSITIVE)] = IGNORE
    return labels, max_iou.astype(np.float32), gt_index.astype(np.int64)


def class_labels(boxes, gt_boxes, gt_labels, num_classes: int, gt_difficult=None, matcher: Matcher | None = None):
    """Per-class labels ``int8 [N, C]`` (1 positive, 0 negative, -1 ignored) for one-vs-rest heads.

    Column ``c - 1`` matches each proposal against the ground truth of class ``c`` only, so a
    proposal on a ``king`` is a negative for ``queen``. `matcher` defaults to R-CNN's SVM
    labelling ``Matcher([0.3, 0.5], [0, -1, 1])``; pass e.g. ``Matcher([0.3, 0.999], [0, -1, 1])``
    to make only the ground-truth boxes themselves positive. Difficult boxes of class ``c``
    turn their would-be positives and grey zone for ``c`` into ignored.
    """
    matcher = matcher or Matcher()
    boxes = _as_numpy(boxes, np.float32, (-1, 4))
    gt_boxes = _as_numpy(gt_boxes, np.float32, (-1, 4))
    gt_labels = _as_numpy(gt_labels, np.int64)
    difficult = np.zeros(len(gt_boxes), bool) if gt_difficult is None else _as_numpy(gt_difficult, bool)
    iou = box_iou(boxes, gt_boxes)
    out = np.empty((len(boxes), num_classes), np.int8)
    for c in range(1, num_classes + 1):
        easy, hard = (gt_labels == c) & ~difficult, (gt_labels == c) & difficult
        col = matcher.bin_labels(iou[:, easy].max(1) if easy.any() else np.zeros(len(boxes), np.float32))
        if hard.any():
            col[(matcher.bin_labels(iou[:, hard].max(1)) != NEGATIVE) & (col != POSITIVE)] = IGNORE
        out[:, c - 1] = col
    return out
