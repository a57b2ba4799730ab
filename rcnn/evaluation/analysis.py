"""Error analysis of detections: false-positive types (Hoiem et al. 2012, as in R-CNN Fig. 4).

Every detection gets a type code. True positives and ignored detections are exactly those of
`rcnn.evaluation.evaluate_voc` at the same IoU threshold (same IoU formula in float64, same
best-IoU ground truth, first-on-ties, same score order, difficult and crowd boxes ignored).
Each false positive is then, in this order of precedence:

- ``LOC``, localisation error: its best IoU with a ground-truth box of its own class is in
  ``[low_iou, iou)``, or it is a duplicate (IoU >= `iou` with a box that a higher-scored
  detection already took);
- ``CONFUSION``, confusion with another class: IoU >= `low_iou` with a box of another class
  (Hoiem's "similar" and "other" together);
- ``BACKGROUND``: everything else.

The R-CNN / Hoiem plot is the share of each type among the top-``k`` false positives in
decreasing score, for growing ``k`` (`error_shares`).
"""

from __future__ import annotations

import numpy as np

from rcnn.boxes import box_iou
from rcnn.datasets.core import Dataset, Detections
from rcnn.evaluation.voc import gather

__all__ = [
    "TRUE_POSITIVE",
    "LOC",
    "CONFUSION",
    "BACKGROUND",
    "IGNORED",
    "ERROR_TYPES",
    "ERROR_NAMES",
    "classify_false_positives",
    "rank_false_positives",
    "error_shares",
    "error_summary",
    "best_f1_threshold",
    "image_f1",
]

TRUE_POSITIVE, LOC, CONFUSION, BACKGROUND, IGNORED = 0, 1, 2, 3, -1
ERROR_TYPES = (LOC, CONFUSION, BACKGROUND)
ERROR_NAMES = {LOC: "loc", CONFUSION: "other", BACKGROUND: "bg"}


def _classify_image(boxes, scores, labels, gt_boxes, gt_labels, gt_ignore, iou, low_iou, inclusive) -> np.ndarray:
    K = len(scores)
    types = np.full(K, BACKGROUND, np.int8)
    if K == 0 or len(gt_labels) == 0:
        return types
    ov = box_iou(np.asarray(boxes, np.float64), np.asarray(gt_boxes, np.float64), inclusive)  # [K, G], as evaluate_voc
    same = labels[:, None] == gt_labels[None, :]
    ov_same = np.where(same, ov, -1.0)
    best = ov_same.argmax(1)  # first box on ties, as evaluate_voc
    ovmax = ov_same.max(1)  # -1: no box of this class
    hit = (ovmax > 0) & (ovmax >= iou)
    ignored = hit & gt_ignore[best]
    order = np.lexsort((np.arange(K), -scores.astype(np.float64)))
    claimers = order[(hit & ~ignored)[order]]
    tp = np.zeros(K, bool)
    _, first = np.unique(best[claimers], return_index=True)
    tp[claimers[first]] = True
    duplicate = hit & ~ignored & ~tp
    loc = duplicate | ((ovmax >= low_iou) & (ovmax < iou))
    other = np.where(same, 0.0, ov).max(1) >= low_iou
    return np.select([tp, ignored, loc, other], [TRUE_POSITIVE, IGNORED, LOC, CONFUSION], BACKGROUND).astype(np.int8)


def classify_false_positives(
    dataset: Dataset,
    detections: dict[str, Detections],
    iou: float = 0.5,
    low_iou: float = 0.1,
    inclusive: bool = False,
) -> dict[str, np.ndarray]:
    """The type of every detection, ``{sample id: int8 [K]}`` aligned with that image's
    `Detections`: `TRUE_POSITIVE` (0), `LOC` (1), `CONFUSION` (2), `BACKGROUND` (3) or
    `IGNORED` (-1, matched a difficult or crowd box). See the module docstring for the rules;
    `inclusive` is `evaluate_voc`'s ``+1`` pixel rule. Unknown ids or labels raise
    `DatasetError` (as `evaluate_voc`)."""
    gather(dataset, detections)  # validates ids and labels
    samples = {s.id: s for s in dataset}
    out = {}
    for sid, d in detections.items():
        s = samples[sid]
        out[sid] = _classify_image(
            d.boxes, d.scores, d.labels, s.boxes, s.labels, s.difficult | s.iscrowd, iou, low_iou, inclusive
        )
    return out


def rank_false_positives(
    detections: dict[str, Detections], types: dict[str, np.ndarray], label: int | None = None
) -> dict:
    """The false positives (of class `label`, or all) by decreasing score (ties keep the
    order of `detections`, then of each image's detections): ``{"id": str [F], "index": int64 [F], "label": int64 [F],
    "type": int8 [F], "score": float64 [F]}``; ``index`` is the row in that image's `Detections`."""
    sids = list(detections)
    if not sids:
        empty = {"id": str, "index": np.int64, "label": np.int64, "type": np.int8, "score": np.float64}
        return {k: np.zeros(0, dtype) for k, dtype in empty.items()}
    t = np.concatenate([types[k] for k in sids])
    lab = np.concatenate([detections[k].labels for k in sids])
    keep = (t > TRUE_POSITIVE) & ((lab == label) if label is not None else True)
    img = np.repeat(np.arange(len(sids)), [len(detections[k]) for k in sids])[keep]
    index = np.concatenate([np.arange(len(detections[k])) for k in sids])[keep]
    score = np.concatenate([detections[k].scores for k in sids]).astype(np.float64)[keep]
    order = np.argsort(-score, kind="stable")
    return {
        "id": np.asarray(sids, str)[img[order]],
        "index": index[order],
        "label": lab[keep][order],
        "type": t[keep][order].astype(np.int8),
        "score": score[order],
    }


def error_shares(fp_types: np.ndarray) -> np.ndarray:
    """Share ``float64 [F, 3]`` of `LOC`, `CONFUSION`, `BACKGROUND` among the top ``k``
    false positives (types ``[F]`` in decreasing score), row ``k - 1`` for ``k = 1..F``."""
    fp_types = np.asarray(fp_types)
    onehot = fp_types[:, None] == np.asarray(ERROR_TYPES)[None, :]
    return np.cumsum(onehot, 0) / np.arange(1, len(fp_types) + 1)[:, None]


def _summary(fp_types: np.ndarray, ks) -> dict:
    F = len(fp_types)
    shares = error_shares(fp_types)
    counts = {ERROR_NAMES[t]: int(np.count_nonzero(fp_types == t)) for t in ERROR_TYPES}
    at = {}
    for k in sorted({k for k in ks if k < F} | ({F} if F else set())):
        at[str(k)] = {ERROR_NAMES[t]: float(shares[k - 1, j]) for j, t in enumerate(ERROR_TYPES)}
    return {"false_positives": F, "counts": counts, "share_at_top_k": at}


def error_summary(
    dataset: Dataset,
    detections: dict[str, Detections],
    types: dict[str, np.ndarray],
    ks=(25, 50, 100, 200, 400, 800, 1600, 3200),
) -> dict:
    """Counts and top-``k`` shares of each error type, overall (false positives of every
    class pooled by score) and per class: ``{"overall": S, "per_class": {name: S}}`` with
    ``S = {"false_positives": F, "counts": {loc, other, bg}, "share_at_top_k": {"k": {loc,
    other, bg}}}`` for each `ks` below ``F`` and for ``F`` itself."""
    ranked = rank_false_positives(detections, types)
    out = {"overall": _summary(ranked["type"], ks), "per_class": {}}
    for label, name in enumerate(dataset.classes, 1):
        out["per_class"][name] = _summary(ranked["type"][ranked["label"] == label], ks)
    return out


def _counted(dataset: Dataset, detections: dict[str, Detections], types: dict[str, np.ndarray]):
    """Non-ignored detections as (sample index [D], is-TP [D], score [D]) and the number of
    non-ignored ground-truth boxes per sample ``[N]``."""
    index = {s.id: i for i, s in enumerate(dataset)}
    img, tp, score = [], [], []
    for sid, d in detections.items():
        keep = types[sid] != IGNORED
        img.append(np.full(int(keep.sum()), index[sid]))
        tp.append(types[sid][keep] == TRUE_POSITIVE)
        score.append(d.scores[keep].astype(np.float64))
    npos = np.array([int(np.count_nonzero(~(s.difficult | s.iscrowd))) for s in dataset], np.int64)
    if not img:
        return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), npos
    return np.concatenate(img), np.concatenate(tp), np.concatenate(score), npos


def best_f1_threshold(dataset: Dataset, detections: dict[str, Detections], types: dict[str, np.ndarray]) -> float:
    """The score threshold (keep detections scoring >= it) that maximises the F1 of all
    detections pooled over classes and images; +inf when there are no detections."""
    _, tp, score, npos = _counted(dataset, detections, types)
    if score.size == 0:
        return float("inf")
    order = np.argsort(-score, kind="stable")
    s, t = score[order], tp[order]
    ctp = np.cumsum(t)
    f1 = 2 * ctp / (np.arange(1, len(s) + 1) + npos.sum())
    cut = np.r_[s[1:] != s[:-1], True]  # only between distinct scores
    return float(s[np.flatnonzero(cut)[np.argmax(f1[cut])]])


def image_f1(
    dataset: Dataset, detections: dict[str, Detections], types: dict[str, np.ndarray], threshold: float
) -> dict:
    """Per image, counting the detections scoring >= `threshold`: ``{"tp", "fp", "fn":
    int64 [N], "f1": float64 [N]}`` in dataset order. Ignored detections and difficult boxes
    count neither way; an image with nothing to find and nothing found has F1 1. (Matching
    goes by decreasing score, so cutting at a threshold keeps every true positive above it.)"""
    img, tp, score, npos = _counted(dataset, detections, types)
    kept = score >= threshold
    n = len(dataset)
    tps = np.bincount(img[kept & tp], minlength=n)
    fps = np.bincount(img[kept & ~tp], minlength=n)
    fns = npos - tps
    denom = 2 * tps + fps + fns
    f1 = np.where(denom > 0, 2 * tps / np.maximum(denom, 1), 1.0)
    return {"tp": tps, "fp": fps, "fn": fns, "f1": f1}
