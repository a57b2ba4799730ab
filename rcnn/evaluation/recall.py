"""Proposal quality: how well the top-k proposals of each image cover its ground-truth boxes.

For each ground-truth box, its *best overlap* at k is the highest IoU with any of the image's
first k proposals. Over the objects (difficult and crowd ones left out by default):

- ``recall@t``: the fraction whose best overlap is >= t (t = 0.5, 0.7);
- ``ar``: average recall over IoU 0.5 to 1 (Hosang et al. 2016), the exact integral
  ``2 * integral_{0.5}^{1} recall(t) dt = mean(2 * clip(best - 0.5, 0, 0.5))``;
- ``abo``: average best overlap of a class; ``mabo``: the mean of ``abo`` over classes that
  have objects (Uijlings et al. 2013);
- ``boxes_per_image``: mean of ``min(k, N)`` over images.

IoU is `rcnn.boxes.box_iou` (continuous pixels, no +1).
"""

from __future__ import annotations

import numpy as np

from rcnn.boxes import box_iou

DEFAULT_KS = (10, 50, 100, 200, 500, 1000, 2000)
THRESHOLDS = (0.5, 0.7)


def best_overlaps(gt: np.ndarray, proposals: np.ndarray, ks) -> np.ndarray:
    """``float32 [len(ks), G]``: each ground-truth box's best IoU with the first k proposals."""
    gt = np.asarray(gt, np.float32).reshape(-1, 4)
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    out = np.zeros((len(ks), len(gt)), np.float32)
    if len(gt) and len(proposals):
        running = np.maximum.accumulate(box_iou(gt, proposals), axis=1)  # [G, N]
        for i, k in enumerate(ks):
            if k > 0:
                out[i] = running[:, min(k, len(proposals)) - 1]
    return out


def _scores(best: np.ndarray) -> dict:
    """Recall at each threshold, AR and ABO of best overlaps ``[G]``."""
    if len(best) == 0:
        return {**{f"recall@{t}": None for t in THRESHOLDS}, "ar": None, "abo": None}
    return {
        **{f"recall@{t}": float(np.mean(best >= t)) for t in THRESHOLDS},
        "ar": float(np.mean(2.0 * np.clip(best - 0.5, 0.0, 0.5))),
        "abo": float(np.mean(best)),
    }


def proposal_recall(dataset, proposals, ks=DEFAULT_KS, seconds=None, include_difficult: bool = False) -> dict:
    """Recall report of `proposals` on `dataset`.

    `proposals`: ``dict[sample id, float32 [N, 4]]`` ranked best first, or a function of a
    sample returning that. `seconds`: optional ``dict[sample id, float]`` proposal time.
    Returns a JSON-able dict: ``ks``, ``images``, ``objects``, ``seconds_per_image``,
    ``overall`` (one row per k: recall@0.5, recall@0.7, ar, mabo, boxes_per_image) and
    ``per_class`` (class name -> rows per k: objects, recall@0.5, recall@0.7, ar, abo).
    """
    ks = [int(k) for k in ks]
    get = proposals if callable(proposals) else (lambda s: proposals[s.id])
    best, labels, counts = [], [], []
    for sample in dataset:
        boxes = np.asarray(get(sample), np.float32).reshape(-1, 4)
        keep = np.ones(len(sample.labels), bool)
        if not include_difficult:
            keep = ~sample.difficult & ~sample.iscrowd
        best.append(best_overlaps(sample.boxes[keep], boxes, ks))
        labels.append(sample.labels[keep])
        counts.append(len(boxes))
    best = np.concatenate(best, axis=1) if best else np.zeros((len(ks), 0), np.float32)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    counts = np.asarray(counts)

    per_class = {}
    for label, name in enumerate(dataset.classes, start=1):
        mask = labels == label
        per_class[name] = [{"k": k, "objects": int(mask.sum()), **_scores(best[i, mask])} for i, k in enumerate(ks)]
    overall = []
    for i, k in enumerate(ks):
        row = _scores(best[i])
        abos = [rows[i]["abo"] for rows in per_class.values() if rows[i]["abo"] is not None]
        row["mabo"] = float(np.mean(abos)) if abos else None
        row["boxes_per_image"] = float(np.minimum(counts, k).mean()) if len(counts) else 0.0
        overall.append({"k": k, **row})
    secs = None
    if seconds is not None and len(dataset):
        secs = float(np.mean([seconds[s.id] for s in dataset]))
    return {
        "ks": ks,
        "images": len(dataset),
        "objects": int(len(labels)),
        "seconds_per_image": secs,
        "overall": overall,
        "per_class": per_class,
    }


def format_report(report: dict) -> str:
    """The overall rows of a recall report as a plain-text table."""
    lines = [f"{'k':>6} {'R@0.5':>7} {'R@0.7':>7} {'AR':>7} {'MABO':>7} {'boxes/img':>10}"]
    fmt = lambda v: f"{v:7.3f}" if v is not None else f"{'-':>7}"  # noqa: E731
    for r in report["overall"]:
        lines.append(
            f"{r['k']:>6} {fmt(r['recall@0.5'])} {fmt(r['recall@0.7'])} {fmt(r['ar'])} {fmt(r['mabo'])}"
            f" {r['boxes_per_image']:10.1f}"
        )
    if report.get("seconds_per_image") is not None:
        lines.append(
            f"{report['images']} images, {report['objects']} objects; "
            f"proposing took {report['seconds_per_image']:.3f} s/img (the time stored with the proposals)"
        )
    return "\n".join(lines)
