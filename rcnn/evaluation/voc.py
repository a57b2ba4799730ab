"""Pascal VOC detection AP: per-class average precision and mAP, as the VOC devkit computes it.

The devkit's rules (``VOCevaldet.m``): a class's detections over the whole test set are sorted
by decreasing score; each is matched to the ground-truth box of its image and class with the
highest IoU; it is a true positive when that IoU is >= the threshold and the box is not yet
taken, a false positive when the box was already taken (a second detection of one object) or
the IoU is below the threshold, and neither when the box is ``difficult`` (COCO crowd regions
count as difficult here). Ties in score keep dataset order, then detection order (a stable
sort, as MATLAB's ``sort``). Note ``>=``: the MATLAB devkit and the golden cases use it;
py-faster-rcnn's ``voc_eval.py`` uses ``>``, which differs only at IoU exactly on the threshold.

AP is the 11-point interpolated AP of VOC2007 (``use_07_metric``: mean over recall
``t = 0, 0.1, ..., 1`` of the best precision at recall >= t, with ``np.arange(0, 1.1, 0.1)``
as ``voc_eval.py``) or the all-point area under the monotone precision envelope (VOC2010+).

Pixel convention: `rcnn` boxes are continuous (the VOC reader turns 1-based inclusive corners
``xmin..xmax`` into ``xmin - 1 .. xmax``), so the devkit's ``+1`` widths are already in them
and ``inclusive=False`` reproduces the devkit on VOC data. ``inclusive=True`` adds the ``+1``
to widths, heights and intersections, for boxes that hold inclusive corners as they are. IoU
is `rcnn.boxes.matched_box_iou` in float64 over the (detection, ground truth) pairs of each
image and class.

Matching is vectorised: for one threshold the best-IoU box of each detection does not depend
on earlier matches, so the only sequential rule (first detection in score order takes a box)
is a ``np.unique`` over (box, rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rcnn.boxes import matched_box_iou
from rcnn.datasets.core import Dataset, Detections
from rcnn.errors import DatasetError

__all__ = ["VocResult", "evaluate_voc", "voc_ap", "gather", "check_iou"]


@dataclass
class Flat:
    """A dataset's ground truth and detections as flat float64 arrays.

    Ground truth ``g_*`` ``[G]``: sample index, label, box ``[G, 4]``, ignore (difficult or
    crowd), crowd, annotated area. Detections ``d_*`` ``[D]``: sample index, label, box
    ``[D, 4]``, score, index within its image's `Detections`.
    """

    g_img: np.ndarray
    g_label: np.ndarray
    g_box: np.ndarray
    g_ignore: np.ndarray
    g_crowd: np.ndarray
    g_area: np.ndarray
    d_img: np.ndarray
    d_label: np.ndarray
    d_box: np.ndarray
    d_score: np.ndarray
    d_index: np.ndarray


def gather(dataset: Dataset, detections: dict[str, Detections]) -> Flat:
    """Flatten `dataset` and `detections` (``{sample id: Detections}``) into a `Flat`.

    Raises `DatasetError` for detections on unknown sample ids or with labels outside ``1..C``,
    and for a dataset with two samples of one id.
    """
    duplicate = dataset.duplicate_id()
    if duplicate:
        i, a, b = duplicate
        raise DatasetError(
            None, f"two samples have the id '{i}' ({a.image_path} and {b.image_path}); ids must be unique"
        )
    index = {s.id: i for i, s in enumerate(dataset)}
    unknown = [k for k in detections if k not in index]
    if unknown:
        raise DatasetError(None, f"detections for {len(unknown)} image(s) not in the dataset, e.g. {unknown[:3]}")
    samples = list(dataset)
    n_g = [len(s.labels) for s in samples]
    dets = [(index[k], d) for k, d in detections.items()]
    n_d = [len(d) for _, d in dets]

    def cat(parts, shape, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    flat = Flat(
        g_img=np.repeat(np.arange(len(samples)), n_g),
        g_label=cat([s.labels for s in samples], (0,), np.int64),
        g_box=cat([s.boxes for s in samples], (0, 4), np.float64),
        g_ignore=cat([s.difficult | s.iscrowd for s in samples], (0,), bool),
        g_crowd=cat([s.iscrowd for s in samples], (0,), bool),
        g_area=cat([s.area for s in samples], (0,), np.float64),
        d_img=np.repeat(np.array([i for i, _ in dets], np.int64), n_d),
        d_label=cat([d.labels for _, d in dets], (0,), np.int64),
        d_box=cat([d.boxes for _, d in dets], (0, 4), np.float64),
        d_score=cat([d.scores for _, d in dets], (0,), np.float64),
        d_index=cat([np.arange(n) for n in n_d], (0,), np.int64),
    )
    bad = (flat.d_label < 1) | (flat.d_label > dataset.num_classes)
    if bad.any():
        raise DatasetError(None, f"detection label {flat.d_label[bad][0]} outside 1..{dataset.num_classes}")
    return flat


@dataclass
class VocResult:
    """Per-class VOC AP. ``ap[c]`` is the AP of ``classes[c]`` (label ``c + 1``), NaN for a
    class with no (non-difficult) ground truth; ``precision[c]``, ``recall[c]`` and
    ``scores[c]`` are float64 ``[K_c]`` over that class's detections in decreasing score
    order; ``npos[c]`` counts its non-difficult ground-truth boxes."""

    classes: list[str]
    ap: np.ndarray
    precision: list[np.ndarray]
    recall: list[np.ndarray]
    scores: list[np.ndarray]
    npos: np.ndarray
    iou_threshold: float
    use_07_metric: bool

    @property
    def mAP(self) -> float:
        """Mean AP over the classes that have ground truth (NaN if none has)."""
        has = self.npos > 0
        return float(self.ap[has].mean()) if has.any() else math.nan

    def to_dict(self) -> dict:
        """``{"mAP": float, "per_class": {name: AP}}``; NaN (no ground truth) becomes None."""

        def clean(x):
            return None if math.isnan(x) else float(x)

        return {"mAP": clean(self.mAP), "per_class": {c: clean(a) for c, a in zip(self.classes, self.ap)}}


def check_iou(iou_threshold) -> None:
    """Raise `ValueError` unless ``0 < iou_threshold <= 1`` (NaN is refused too)."""
    try:
        ok = 0 < float(iou_threshold) <= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"IoU threshold must be a number in (0, 1], not {iou_threshold!r}")


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a precision/recall curve ``[K]`` (detections by decreasing score), as the devkit."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = precision[recall >= t]
            ap += (p.max() if p.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_voc(
    dataset: Dataset,
    detections: dict[str, Detections],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    inclusive: bool = False,
) -> VocResult:
    """VOC AP per class of `detections` (``{sample id: Detections}``) against `dataset`.

    A detection is a true positive when its best-IoU ground truth (same image and class) has
    IoU >= `iou_threshold`, is not difficult (or crowd) and was not taken by a higher-scored
    detection. See the module docstring for the conventions. A class with no (non-difficult)
    ground truth has AP NaN and is left out of the mAP (`VocResult.to_dict`: None), whatever
    its detections. `iou_threshold` must be in ``(0, 1]`` (`ValueError` otherwise).
    """
    check_iou(iou_threshold)
    f = gather(dataset, detections)
    C = dataset.num_classes
    D = len(f.d_score)

    # Ground truth sorted by (image, class) group, annotation order kept inside a group.
    g_key = f.g_img * (C + 1) + f.g_label
    g_order = np.argsort(g_key, kind="stable")
    g_key_sorted = g_key[g_order]
    d_key = f.d_img * (C + 1) + f.d_label
    start = np.searchsorted(g_key_sorted, d_key, "left")
    count = np.searchsorted(g_key_sorted, d_key, "right") - start

    # Every (detection, ground truth of its group) pair; the best IoU per detection, first on ties.
    ends = np.cumsum(count)
    det_of_pair = np.repeat(np.arange(D), count)
    gt_of_pair = g_order[start[det_of_pair] + np.arange(ends[-1] if D else 0) - (ends - count)[det_of_pair]]
    iou = matched_box_iou(f.d_box[det_of_pair], f.g_box[gt_of_pair], inclusive)  # float64 [pairs]
    has = count > 0
    offsets = (ends - count)[has]
    ovmax = np.zeros(D)
    best = np.zeros(D, np.int64)
    if offsets.size:
        ovmax[has] = np.maximum.reduceat(iou, offsets)
        first = np.where(iou == ovmax[det_of_pair], np.arange(len(iou)), len(iou))
        best[has] = gt_of_pair[np.minimum.reduceat(first, offsets)]
    hit = has & (ovmax > 0) & (ovmax >= iou_threshold)
    ignored = hit & f.g_ignore[best]

    # Class by class, by decreasing score; the first detection to hit a box takes it.
    order = np.lexsort((f.d_index, f.d_img, -f.d_score, f.d_label))
    claim = hit[order] & ~ignored[order]
    tp = np.zeros(D, bool)
    claimers = np.flatnonzero(claim)
    _, first_claim = np.unique(best[order][claimers], return_index=True)
    tp[claimers[first_claim]] = True
    fp = ~tp & ~ignored[order]

    labels_sorted = f.d_label[order]
    bounds = np.searchsorted(labels_sorted, np.arange(1, C + 2))
    npos = np.bincount(f.g_label[~f.g_ignore], minlength=C + 1)[1:]
    ap = np.full(C, math.nan)
    precision, recall, scores = [], [], []
    for c in range(C):
        s = slice(bounds[c], bounds[c + 1])
        tp_c = np.cumsum(tp[s], dtype=np.float64)
        fp_c = np.cumsum(fp[s], dtype=np.float64)
        rec = tp_c / npos[c] if npos[c] else np.zeros_like(tp_c)
        prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        if npos[c]:
            ap[c] = voc_ap(rec, prec, use_07_metric)
        precision.append(prec)
        recall.append(rec)
        scores.append(f.d_score[order][s])
    return VocResult(
        list(dataset.classes), ap, precision, recall, scores, npos, float(iou_threshold), bool(use_07_metric)
    )
