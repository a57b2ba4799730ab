"""COCO-style AP/AR: the twelve numbers of pycocotools' ``COCOeval(iouType="bbox")``, and of
``COCOeval(iouType="segm")`` for masks (``iou_type="segm"``).

Same definitions as pycocotools 2.0 (which the tests use as the oracle), in vectorised numpy:

- IoU thresholds ``np.linspace(.5, .95, 10)``, recall thresholds ``np.linspace(0, 1, 101)``,
  max detections 1, 10, 100, area ranges all / small < 32² / medium / large > 96² using the
  annotation's ``area`` for ground truth and ``w * h`` for detections (bounds inclusive).
- Per image and class, detections are sorted by score (stable) and cut to 100; ground truth
  is sorted with ignored boxes last. Each detection in turn, at each threshold, takes the
  free ground truth of highest IoU >= the threshold (on equal IoU the later one in that
  order), preferring boxes that are not ignored; crowd boxes are never used up. IoU is
  ``w * h`` without ``+1``; a crowd box's IoU is intersection / detection area
  (`rcnn.boxes.matched_box_iou` with ``crowd``, float64).
- Ignored: crowd boxes, boxes outside the area range, and `difficult` boxes (VOC data; plain
  IoU, used up like normal boxes). Detections matched to an ignored box, and unmatched ones
  outside the area range, count neither way.
- Per class, detections of all images are sorted by score (stable, images in order of their
  COCO image id as pycocotools sorts them, then rank in the image); precision is made
  monotone and read at the 101 recall thresholds; recall is the final one. Classes or area
  ranges with no (non-ignored) ground truth are -1 and left out of the means; a mean with
  nothing left is -1.

Masks (``segm``): the same, with mask IoU (`pycocotools.mask.iou`; a crowd region's is
intersection / detection area) in place of box IoU, computed once per (image, class) for the
kept detections, and a detection's area its mask's pixel count (pycocotools' ``loadRes``);
ground truth keeps its annotated area (COCO's ``area``; the box's where there is none).
Every ground-truth object and every detection needs a mask.

Matching is greedy and so sequential per (image, class), but independent across them: it
runs as a loop over detection rank (at most 100) with every (image, class) group, all ten
thresholds and all four area ranges in one numpy operation. Groups are bucketed by their
number of ground-truth boxes so the padding stays small.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from rcnn.boxes import matched_box_iou, xyxy_to_xywh
from rcnn.datasets.coco import coco_image_ids
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.masks import mask_areas
from rcnn.errors import DatasetError
from rcnn.evaluation.voc import gather

__all__ = ["evaluate_coco", "has_masks", "coco_accumulate", "STAT_NAMES", "IOU_THRESHOLDS", "RECALL_THRESHOLDS"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]])
AREA_NAMES = ("all", "small", "medium", "large")
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APsmall",
    "APmedium",
    "APlarge",
    "AR1",
    "AR10",
    "AR100",
    "ARsmall",
    "ARmedium",
    "ARlarge",
)


def _image_order(dataset: Dataset) -> np.ndarray:
    """Rank ``[N]`` of each sample in pycocotools' image order (sorted COCO image ids)."""
    ids = np.asarray(coco_image_ids(dataset), np.int64)
    rank = np.empty(len(ids), np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return rank


def _box_ious(f):
    """``pair_iou(d [n], g [n, G], crowd [n, G]) -> float64 [n, G]``: box IoU of detection
    ``d[i]`` with ground truth ``g[i, j]`` (indices into `f`)."""
    return lambda d, g, crowd: matched_box_iou(f.d_box[d][:, None], f.g_box[g], crowd=crowd)


def _mask_ious(f, d_masks, g_masks, d_sel, d_group, g_group):
    """As `_box_ious` for masks: `pycocotools.mask.iou` of each (image, class) group's kept
    detections ``d_sel`` (sorted by group) against its ground truth, looked up by index."""
    n_g = len(g_group)
    g_order = np.argsort(g_group, kind="stable")
    g_groups, g_start, g_count = np.unique(g_group[g_order], return_index=True, return_counts=True)
    col = np.zeros(n_g, np.int64)
    col[g_order] = np.arange(n_g) - np.repeat(g_start, g_count)
    base = np.zeros(len(f.d_label), np.int64)  # where detection d's row of IoUs starts in `flat`
    groups, d_start, d_count = np.unique(d_group, return_index=True, return_counts=True)
    parts, size = [], 0
    for grp, start, count in zip(groups, d_start, d_count):
        k = np.searchsorted(g_groups, grp)
        if k == len(g_groups) or g_groups[k] != grp:
            continue
        gts = g_order[g_start[k] : g_start[k] + g_count[k]]
        dts = d_sel[start : start + count]
        ious = mask_utils.iou([d_masks[i] for i in dts], [g_masks[j] for j in gts], f.g_crowd[gts].astype(np.uint8))
        base[dts] = size + np.arange(count) * len(gts)
        parts.append(np.asarray(ious, np.float64).reshape(-1))
        size += count * len(gts)
    flat = np.concatenate(parts) if parts else np.zeros(1)
    return lambda d, g, crowd: flat[np.minimum(base[d][:, None] + col[g], len(flat) - 1)]


def _match(f, g_ig, d_sel, d_group, g_group, pair_iou):
    """Greedy matching of the kept detections ``d_sel`` (sorted by group ``d_group``, then
    rank) at every threshold and area range: matched ``[T, A, D]`` and matched-to-ignored
    ``[T, A, D]`` over ``d_sel``. ``g_ig [A, G]``: ignored per area range; ``g_group [G]``;
    `pair_iou`: `_box_ious` or `_mask_ious`."""
    T, A, D = len(IOU_THRESHOLDS), len(AREA_RANGES), len(d_sel)
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None, None, None]
    matched = np.zeros((T, A, D), bool)
    to_ignored = np.zeros((T, A, D), bool)
    groups, d_start, d_count = np.unique(d_group, return_index=True, return_counts=True)
    g_order = np.argsort(g_group, kind="stable")  # by group, annotation order inside
    g_start = np.searchsorted(g_group[g_order], groups, "left")
    n_gt = np.searchsorted(g_group[g_order], groups, "right") - g_start
    bucket = np.ceil(np.log2(np.maximum(n_gt, 1))).astype(np.int64)
    for b in np.unique(bucket[n_gt > 0]):
        members = np.flatnonzero((bucket == b) & (n_gt > 0))
        members = members[np.argsort(-d_count[members], kind="stable")]  # most detections first
        G = int(n_gt[members].max())
        j = np.arange(G)
        valid = j < n_gt[members][:, None]  # [n, G]
        gi = g_order[np.where(valid, g_start[members][:, None] + j, 0)]
        crowd = f.g_crowd[gi] & valid
        ig = g_ig[:, gi]  # [A, n, G]
        later = ig * G + j  # position in pycocotools' gt order (ignored last), for ties
        taken = np.zeros((T, A, len(members), G), bool)
        for k in range(int(d_count[members].max())):
            n = int(np.count_nonzero(d_count[members] > k))
            di = d_start[members[:n]] + k
            iou = pair_iou(d_sel[di], gi[:n], crowd[:n])  # [n, G]
            cand = (iou >= thr) & valid[:n] & ~(taken[:, :, :n] & ~crowd[:n])
            real = cand & ~ig[None, :, :n]
            cand = np.where(real.any(-1, keepdims=True), real, cand)
            best = np.where(cand, iou, -1.0).max(-1, keepdims=True)
            m = np.where(cand & (iou == best), later[None, :, :n], -1).argmax(-1)  # [T, A, n]
            hit = cand.any(-1)
            matched[:, :, di] = hit
            to_ignored[:, :, di] = (
                hit & np.take_along_axis(np.broadcast_to(ig[None, :, :n], cand.shape), m[..., None], -1)[..., 0]
            )
            taken[:, :, :n] |= (j == m[..., None]) & hit[..., None]
    return matched, to_ignored


def _masks(dataset: Dataset, detections: dict[str, Detections]):
    """Every ground-truth object's and detection's mask, in `gather`'s order; a missing one
    raises `DatasetError` naming it."""
    g_masks, d_masks = [], []
    for s in dataset:
        masks = s.masks if s.masks is not None else [None] * len(s.labels)
        if any(m is None for m in masks):
            i = [m is None for m in masks].index(True)
            raise DatasetError(s.image_path, f"object {i + 1} has no mask: segm evaluation needs every object's mask")
        g_masks += masks
    for key, d in detections.items():
        masks = d.masks if d.masks is not None else [None] * len(d)
        if any(m is None for m in masks):
            raise DatasetError(None, f"a detection on image {key} has no 'segmentation': segm evaluation needs masks")
        d_masks += masks
    return g_masks, d_masks


def has_masks(dataset: Dataset, detections: dict[str, Detections]) -> bool:
    """Whether masks can be scored: some detection has a mask, and so does every object and
    every detection."""
    masks = [m for s in dataset for m in (s.masks if s.masks is not None else [None] * len(s.labels))]
    masks += [m for d in detections.values() for m in (d.masks if d.masks is not None else [None] * len(d))]
    return any(d.masks is not None for d in detections.values()) and all(m is not None for m in masks)


def coco_accumulate(dataset: Dataset, detections: dict[str, Detections], iou_type: str = "bbox"):
    """pycocotools' ``eval["precision"]`` ``[T, R, K, A, M]`` and ``eval["recall"]``
    ``[T, K, A, M]`` (T=10 IoU thresholds, R=101 recall thresholds, K classes, A=4 area
    ranges, M=3 max detections; -1 where undefined), of boxes or (`iou_type` ``"segm"``) masks."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    f = gather(dataset, detections)
    C = dataset.num_classes
    T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)
    lo, hi = AREA_RANGES[:, :1], AREA_RANGES[:, 1:]
    g_ig = f.g_ignore[None] | (f.g_area[None] < lo) | (f.g_area[None] > hi)  # [A, G]

    # Detections by (image, class) group and decreasing score, cut to the top 100 per group.
    d_group = f.d_img * (C + 1) + f.d_label
    order = np.lexsort((f.d_index, -f.d_score, d_group))
    _, first, counts = np.unique(d_group[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(first, counts)
    keep = rank < MAX_DETS[-1]
    d_sel, rank = order[keep], rank[keep]

    g_group = f.g_img * (C + 1) + f.g_label
    if iou_type == "segm":
        g_masks, d_masks = _masks(dataset, detections)
        pair_iou = _mask_ious(f, d_masks, g_masks, d_sel, d_group[d_sel], g_group)
        d_area = mask_areas([d_masks[i] for i in d_sel])
    else:
        pair_iou = _box_ious(f)
        wh = xyxy_to_xywh(f.d_box[d_sel])[:, 2:]
        d_area = wh[:, 0] * wh[:, 1]  # pycocotools': w * h as given, negative for an inverted box (outside every range)
    matched, to_ignored = _match(f, g_ig, d_sel, d_group[d_sel], g_group, pair_iou)
    outside = (d_area[None] < lo) | (d_area[None] > hi)  # [A, D]
    ignored = to_ignored | (~matched & outside[None])
    tps, fps = matched & ~ignored, ~matched & ~ignored

    npig = np.stack([np.bincount(f.g_label[~g_ig[a]], minlength=C + 1)[1:] for a in range(A)], 1)  # [C, A]
    precision = -np.ones((T, R, C, A, M))
    recall = -np.ones((T, C, A, M))
    image_rank = _image_order(dataset)[f.d_img[d_sel]]
    label, score = f.d_label[d_sel], f.d_score[d_sel]
    for c in range(C):
        areas = np.flatnonzero(npig[c] > 0)
        if areas.size == 0:
            continue
        idx = np.flatnonzero(label == c + 1)
        idx = idx[np.lexsort((rank[idx], image_rank[idx], -score[idx]))]
        tp_c, fp_c, rank_c = tps[:, :, idx][:, areas], fps[:, :, idx][:, areas], rank[idx]
        for m, max_det in enumerate(MAX_DETS):
            sel = rank_c < max_det
            tp = np.cumsum(tp_c[:, :, sel], axis=2, dtype=np.int32).astype(np.float64)  # [T, areas, n]
            fp = np.cumsum(fp_c[:, :, sel], axis=2, dtype=np.int32).astype(np.float64)
            nd = tp.shape[2]
            rc = tp / npig[c, areas][None, :, None]
            pr = tp / (fp + tp + np.spacing(1))
            recall[:, c, areas, m] = rc[:, :, -1] if nd else 0
            pr = np.maximum.accumulate(pr[:, :, ::-1], axis=2)[:, :, ::-1]
            for t in range(T):
                for i, a in enumerate(areas):
                    inds = np.searchsorted(rc[t, i], RECALL_THRESHOLDS, side="left")
                    q = np.zeros(R)
                    ok = inds < nd
                    q[ok] = pr[t, i, inds[ok]]
                    precision[t, :, c, a, m] = q
    return precision, recall


def _mean(s: np.ndarray) -> float:
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict:
    """The twelve numbers of ``COCOeval.summarize()`` as ``{name: value}`` (see STAT_NAMES)."""
    t50, t75 = np.where(IOU_THRESHOLDS == 0.5)[0], np.where(IOU_THRESHOLDS == 0.75)[0]
    p, r = precision, recall
    values = [
        _mean(p[:, :, :, 0, 2]),
        _mean(p[t50][:, :, :, 0, 2]),
        _mean(p[t75][:, :, :, 0, 2]),
        *(_mean(p[:, :, :, a, 2]) for a in (1, 2, 3)),
        *(_mean(r[:, :, 0, m]) for m in range(3)),
        *(_mean(r[:, :, a, 2]) for a in (1, 2, 3)),
    ]
    return dict(zip(STAT_NAMES, values))


def evaluate_coco(dataset: Dataset, detections: dict[str, Detections], iou_type: str = "bbox") -> dict:
    """COCO box (or with `iou_type` ``"segm"``, mask) evaluation of `detections` (``{sample
    id: Detections}``) against `dataset`.

    Returns the twelve numbers (keys `STAT_NAMES`: AP, AP50, AP75, APsmall, APmedium,
    APlarge, AR1, AR10, AR100, ARsmall, ARmedium, ARlarge; -1 where undefined) and
    ``per_class``: ``{name: AP@[.5:.95]}`` over all areas at 100 detections (-1: no ground truth).
    """
    precision, recall = coco_accumulate(dataset, detections, iou_type)
    out = summarize(precision, recall)
    out["per_class"] = {name: _mean(precision[:, :, c, 0, 2]) for c, name in enumerate(dataset.classes)}
    return out
