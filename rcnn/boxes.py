"""Box conventions and box operations.

Every box in `rcnn` is ``x1, y1, x2, y2`` in continuous pixel coordinates: the left edge of
the first pixel is 0, so a box covering pixels 0..9 horizontally has ``x1 = 0, x2 = 10`` and
width ``x2 - x1 = 10``. Arrays are ``float32 [N, 4]``. Pascal VOC's 1-based inclusive corners
and COCO's ``x, y, w, h`` are converted once, in their readers and writers.

The functions accept numpy arrays or torch tensors and return the kind they were given.
IoU and NMS are torchvision's (`torchvision.ops`); this module adds the R-CNN box
parameterisation (`BoxCoder`) and the conversions.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torchvision import ops

__all__ = [
    "box_area",
    "box_iou",
    "nms",
    "batched_nms",
    "clip_boxes",
    "remove_small_boxes",
    "xyxy_to_xywh",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "BoxCoder",
]


def _numpy_in_numpy_out(fn):
    """Run `fn` on float32 tensors; give numpy back when any argument came as numpy."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_numpy = any(isinstance(a, np.ndarray) for a in args)
        args = [torch.as_tensor(a, dtype=torch.float32) if isinstance(a, np.ndarray) else a for a in args]
        out = fn(*args, **kwargs)
        if was_numpy:
            return out.numpy() if isinstance(out, torch.Tensor) else tuple(o.numpy() for o in out)
        return out

    return wrapper


def _as_boxes(boxes) -> torch.Tensor:
    t = torch.as_tensor(boxes, dtype=torch.float32)
    return t.reshape(-1, 4)


@_numpy_in_numpy_out
def box_area(boxes):
    """Areas ``[N]`` of boxes ``[N, 4]``; degenerate (x2 < x1) boxes have area 0."""
    b = _as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


@_numpy_in_numpy_out
def box_iou(boxes1, boxes2):
    """IoU matrix ``[N, M]`` between ``[N, 4]`` and ``[M, 4]`` boxes (torchvision's `box_iou`).

    Pairs where both boxes have zero area give 0, not NaN.
    """
    iou = ops.box_iou(_as_boxes(boxes1), _as_boxes(boxes2))
    return torch.nan_to_num(iou, nan=0.0)


def nms(boxes, scores, iou_threshold: float):
    """Indices (int64, by decreasing score) kept by greedy NMS; boxes overlapping a kept
    one by IoU > `iou_threshold` are suppressed. numpy in, numpy out."""
    keep = ops.nms(_as_boxes(boxes), torch.as_tensor(scores, dtype=torch.float32), iou_threshold)
    return keep.numpy() if isinstance(boxes, np.ndarray) else keep


def batched_nms(boxes, scores, labels, iou_threshold: float):
    """Per-class NMS: like `nms`, but boxes only suppress boxes of the same label."""
    keep = ops.batched_nms(
        _as_boxes(boxes),
        torch.as_tensor(scores, dtype=torch.float32),
        torch.as_tensor(labels, dtype=torch.int64),
        iou_threshold,
    )
    return keep.numpy() if isinstance(boxes, np.ndarray) else keep


@_numpy_in_numpy_out
def clip_boxes(boxes, size):
    """Clip boxes ``[N, 4]`` to an image of ``size = (height, width)``: 0 <= x <= width."""
    return ops.clip_boxes_to_image(_as_boxes(boxes), (int(size[0]), int(size[1])))


def remove_small_boxes(boxes, min_size: float):
    """Indices of boxes whose width and height are both >= `min_size` pixels."""
    b = _as_boxes(boxes)
    keep = torch.where(((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size))[0]
    return keep.numpy() if isinstance(boxes, np.ndarray) else keep


@_numpy_in_numpy_out
def xyxy_to_xywh(boxes):
    """``x1, y1, x2, y2`` -> ``x, y, w, h`` (COCO)."""
    return ops.box_convert(_as_boxes(boxes), "xyxy", "xywh")


@_numpy_in_numpy_out
def xywh_to_xyxy(boxes):
    """``x, y, w, h`` (COCO) -> ``x1, y1, x2, y2``."""
    return ops.box_convert(_as_boxes(boxes), "xywh", "xyxy")


@_numpy_in_numpy_out
def xyxy_to_cxcywh(boxes):
    """``x1, y1, x2, y2`` -> centre ``cx, cy`` and size ``w, h``."""
    return ops.box_convert(_as_boxes(boxes), "xyxy", "cxcywh")


@_numpy_in_numpy_out
def cxcywh_to_xyxy(boxes):
    """Centre ``cx, cy`` and size ``w, h`` -> ``x1, y1, x2, y2``."""
    return ops.box_convert(_as_boxes(boxes), "cxcywh", "xyxy")


class BoxCoder:
    """R-CNN's box parameterisation (Girshick et al. 2014, Appendix C).

    For a proposal P (centre ``px, py``, size ``pw, ph``) and a target G::

        tx = (gx - px) / pw    ty = (gy - py) / ph
        tw = log(gw / pw)      th = log(gh / ph)

    `encode` returns ``(t - means) / stds``; `decode` undoes it and applies the deltas to the
    proposals. Deltas are ``float32 [N, 4]``; widths use ``x2 - x1`` (continuous pixels).
    ``tw, th`` are clamped at decode to ``log(1000 / 16)`` as torchvision does, so a wild
    regression cannot overflow.
    """

    def __init__(self, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0), clamp=math.log(1000.0 / 16)):
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clamp = clamp

    @_numpy_in_numpy_out
    def encode(self, proposals, targets):
        """Deltas ``[N, 4]`` that take each proposal ``[N, 4]`` to its target ``[N, 4]``."""
        p = xyxy_to_cxcywh(_as_boxes(proposals))
        g = xyxy_to_cxcywh(_as_boxes(targets))
        pw = p[:, 2].clamp(min=1e-6)
        ph = p[:, 3].clamp(min=1e-6)
        t = torch.stack(
            [
                (g[:, 0] - p[:, 0]) / pw,
                (g[:, 1] - p[:, 1]) / ph,
                torch.log(g[:, 2].clamp(min=1e-6) / pw),
                torch.log(g[:, 3].clamp(min=1e-6) / ph),
            ],
            dim=1,
        )
        return (t - torch.tensor(self.means)) / torch.tensor(self.stds)

    @_numpy_in_numpy_out
    def decode(self, proposals, deltas):
        """Boxes ``[N, 4]`` from proposals ``[N, 4]`` moved by deltas ``[N, 4]``."""
        p = xyxy_to_cxcywh(_as_boxes(proposals))
        t = _as_boxes(deltas) * torch.tensor(self.stds) + torch.tensor(self.means)
        tw = t[:, 2].clamp(max=self.clamp)
        th = t[:, 3].clamp(max=self.clamp)
        c = torch.stack(
            [p[:, 0] + t[:, 0] * p[:, 2], p[:, 1] + t[:, 1] * p[:, 3], p[:, 2] * torch.exp(tw), p[:, 3] * torch.exp(th)],
            dim=1,
        )
        return cxcywh_to_xyxy(c)
