"""Box conventions and every box operation in `rcnn`.

Every box in `rcnn` is ``x1, y1, x2, y2`` in continuous pixel coordinates: the left edge of
the first pixel is 0, so a box covering pixels 0..9 horizontally has ``x1 = 0, x2 = 10`` and
width ``x2 - x1 = 10``. Arrays are ``float32 [N, 4]``. Pascal VOC's 1-based inclusive corners
and COCO's ``x, y, w, h`` are converted once, in their readers and writers; the VOC devkit's
``+1`` pixel rule survives only as the ``inclusive`` option of the area and IoU (for scoring
boxes that hold inclusive corners as they are).

numpy, not torch: the functions take numpy arrays (anything `np.asarray` accepts) and return
numpy arrays. Every caller holds numpy: proposals come from OpenCV and the proposal cache,
the heads are scikit-learn, `Detections` and the datasets are numpy, and the evaluation is
numpy float64. Only NMS runs in torch (torchvision's C++ kernel), behind a zero-copy
``torch.from_numpy``. Measured on the 2-core development machine (one thread, loaded by other
work, so ranges): the numpy -> torch -> numpy round trip costs 1.5 to 3.5 us, against 2.7 to
5.3 ms for torchvision's NMS of 2000 boxes; the IoU of 2000 x 10 boxes takes 0.14 to 0.23 ms
in numpy against 0.22 to 0.44 ms for ``torchvision.ops.box_iou`` on tensors. Tensors inside
would buy nothing, and numpy keeps float64 evaluation boxes in float64. A torch caller (a
detector on a GPU) should call ``torchvision.ops`` on its tensors directly.

Dtypes: float64 boxes stay float64 (the evaluation, which must equal the VOC devkit and
pycocotools to the last digit); anything else becomes float32. The arithmetic is
torchvision's (``torchvision.ops.box_area``, ``box_iou``, ``clip_boxes_to_image``,
``remove_small_boxes``, ``box_convert``), operation for operation, so float32 results equal
torchvision's (``tests/test_boxes.py`` checks each against it). It is written here in numpy
rather than called because torchvision has no ``+1`` rule, no crowd (intersection over the
detection's area) and no IoU of matched pairs, works in tensors only, and is slower for these
one-line operations on a CPU. `BoxCoder` uses numpy's ``log`` and ``exp``, which differ from
torch's by at most an ulp or two.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import ops

__all__ = [
    "box_area",
    "box_iou",
    "matched_box_iou",
    "batched_nms",
    "clip_boxes",
    "remove_small_boxes",
    "scale_boxes",
    "xyxy_to_xywh",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "BoxCoder",
]


def _as_boxes(boxes, flat: bool = True) -> np.ndarray:
    """`boxes` as a numpy array, float64 kept and anything else float32; ``[N, 4]`` when
    `flat`, else any ``[..., 4]`` shape."""
    b = np.asarray(boxes)
    if b.dtype != np.float64:
        b = b.astype(np.float32, copy=False)
    if flat:
        return b.reshape(-1, 4)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {b.shape}")
    return b


def box_area(boxes, inclusive: bool = False) -> np.ndarray:
    """Areas ``[...]`` of boxes ``[..., 4]`` (float64 kept, else float32).

    Width ``x2 - x1`` and height ``y2 - y1``, each plus 1 when `inclusive` (the VOC devkit's
    rule for inclusive pixel corners), and each taken as 0 when negative, so an inverted box
    has area 0 (torchvision's ``box_area`` would give a negative number).
    """
    b = _as_boxes(boxes, flat=False)
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    if inclusive:
        w, h = w + 1.0, h + 1.0
    return np.maximum(w, 0.0) * np.maximum(h, 0.0)


def matched_box_iou(boxes1, boxes2, inclusive: bool = False, crowd=None) -> np.ndarray:
    """IoU of matched pairs: ``iou[...] = IoU(boxes1[..., :], boxes2[..., :])``, with numpy
    broadcasting of ``boxes1 [..., 4]`` against ``boxes2 [..., 4]`` (e.g. ``[P, 4]`` with
    ``[P, 4]`` gives ``[P]``; ``[N, 1, 4]`` with ``[N, G, 4]`` gives ``[N, G]``). float64 when
    either input is float64, else float32.

    This is the evaluation's formula (the VOC devkit's and pycocotools' ``bbIou``): the
    intersection ``iw * ih`` counts only when both ``iw > 0`` and ``ih > 0``; pairs that do
    not overlap, including touching and degenerate boxes, give exactly 0 (never NaN).
    `inclusive` adds the devkit's ``+1`` to widths, heights and intersections. `crowd` (bool,
    broadcastable to the result) marks pairs whose ``boxes2`` is a COCO crowd region: their
    IoU is the intersection over the area of ``boxes1`` (the detection) alone, as
    pycocotools'.

    Not ``torchvision.ops.box_iou``: that has no ``+1`` rule and no crowd, and only computes
    full matrices, where the evaluation needs the IoU of its (detection, ground truth) pairs
    only. On plain float32 boxes the result equals torchvision's (same operations, same order).
    """
    a, b = _as_boxes(boxes1, flat=False), _as_boxes(boxes2, flat=False)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    if inclusive:
        iw, ih = iw + 1.0, ih + 1.0
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    area1 = box_area(a, inclusive)
    union = area1 + box_area(b, inclusive) - inter
    if crowd is not None:
        union = np.where(crowd, area1, union)
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def box_iou(boxes1, boxes2, inclusive: bool = False, crowd=None) -> np.ndarray:
    """IoU matrix ``[N, M]`` of boxes ``[N, 4]`` against boxes ``[M, 4]``: `matched_box_iou`
    of every pair (same formula, dtype rule, `inclusive`). `crowd`: bool ``[M]``, the
    ``boxes2`` that are crowd regions (IoU = intersection / area of the ``boxes1`` box).
    Equals ``torchvision.ops.box_iou`` on float32 boxes, except that pairs of zero-area boxes
    give 0 rather than NaN."""
    a, b = _as_boxes(boxes1), _as_boxes(boxes2)
    return matched_box_iou(
        a[:, None, :], b[None, :, :], inclusive, None if crowd is None else np.asarray(crowd, bool)[None, :]
    )


def batched_nms(boxes, scores, labels, iou_threshold: float) -> np.ndarray:
    """Per-class greedy NMS (``torchvision.ops.batched_nms``): indices ``int64 [K]`` of the
    kept boxes by decreasing score. A box is suppressed by a kept box of the same label with
    IoU > `iou_threshold` (strictly). boxes ``[N, 4]``, scores ``[N]``, labels ``[N]`` (use one
    label for plain NMS). Runs in float32; the tensors are zero-copy views of the arrays."""
    b = np.require(np.asarray(boxes, np.float32).reshape(-1, 4), requirements=["C", "W"])
    s = np.require(np.asarray(scores, np.float32).reshape(-1), requirements=["C", "W"])
    lab = np.require(np.asarray(labels, np.int64).reshape(-1), requirements=["C", "W"])
    keep = ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab), float(iou_threshold))
    return keep.numpy()


def clip_boxes(boxes, size) -> np.ndarray:
    """Boxes ``[N, 4]`` clipped to an image of ``size = (height, width)``: ``0 <= x <= width``,
    ``0 <= y <= height`` (``torchvision.ops.clip_boxes_to_image``'s rule). A new array."""
    b = _as_boxes(boxes)
    height, width = int(size[0]), int(size[1])
    out = np.empty_like(b)
    out[:, 0::2] = b[:, 0::2].clip(0, width)
    out[:, 1::2] = b[:, 1::2].clip(0, height)
    return out


def remove_small_boxes(boxes, min_size: float) -> np.ndarray:
    """Indices ``int64 [K]`` of the boxes ``[N, 4]`` whose width and height are both
    >= `min_size` pixels (``torchvision.ops.remove_small_boxes``'s rule)."""
    b = _as_boxes(boxes)
    return np.flatnonzero(((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size))


def scale_boxes(boxes, factor: float) -> np.ndarray:
    """Boxes ``[N, 4]`` scaled by `factor` about their centres (a negative width or height
    is taken as 0 first), e.g. R-CNN's context padding."""
    c = xyxy_to_cxcywh(boxes)
    c[:, 2:] = np.maximum(c[:, 2:], 0.0) * factor
    return cxcywh_to_xyxy(c)


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``[N, 4]`` ``x1, y1, x2, y2`` -> ``x, y, w, h`` (COCO's form), ``w = x2 - x1``."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def xywh_to_xyxy(boxes) -> np.ndarray:
    """``[N, 4]`` ``x, y, w, h`` (COCO's form) -> ``x1, y1, x2, y2``, ``x2 = x + w``."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_cxcywh(boxes) -> np.ndarray:
    """``[N, 4]`` ``x1, y1, x2, y2`` -> centre ``cx, cy`` and size ``w, h``."""
    b = _as_boxes(boxes)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)


def cxcywh_to_xyxy(boxes) -> np.ndarray:
    """``[N, 4]`` centre ``cx, cy`` and size ``w, h`` -> ``x1, y1, x2, y2``."""
    b = _as_boxes(boxes)
    return np.concatenate([b[:, :2] - 0.5 * b[:, 2:], b[:, :2] + 0.5 * b[:, 2:]], axis=1)


class BoxCoder:
    """R-CNN's box parameterisation (Girshick et al. 2014, Appendix C).

    For a proposal P (centre ``px, py``, size ``pw, ph``) and a target G::

        tx = (gx - px) / pw    ty = (gy - py) / ph
        tw = log(gw / pw)      th = log(gh / ph)

    `encode` returns ``(t - means) / stds``; `decode` undoes it and applies the deltas to the
    proposals. Boxes and deltas are ``float32 [N, 4]`` numpy arrays; widths use ``x2 - x1``
    (continuous pixels). ``tw, th`` are clamped at decode to ``log(1000 / 16)`` as torchvision
    does, so a wild regression cannot overflow.
    """

    def __init__(self, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0), clamp=math.log(1000.0 / 16)):
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clamp = clamp

    def encode(self, proposals, targets) -> np.ndarray:
        """Deltas ``float32 [N, 4]`` that take each proposal ``[N, 4]`` to its target ``[N, 4]``."""
        p = xyxy_to_cxcywh(np.asarray(proposals, np.float32))
        g = xyxy_to_cxcywh(np.asarray(targets, np.float32))
        pw = np.maximum(p[:, 2], 1e-6)
        ph = np.maximum(p[:, 3], 1e-6)
        t = np.stack(
            [
                (g[:, 0] - p[:, 0]) / pw,
                (g[:, 1] - p[:, 1]) / ph,
                np.log(np.maximum(g[:, 2], 1e-6) / pw),
                np.log(np.maximum(g[:, 3], 1e-6) / ph),
            ],
            axis=1,
        )
        return (t - np.asarray(self.means, np.float32)) / np.asarray(self.stds, np.float32)

    def decode(self, proposals, deltas) -> np.ndarray:
        """Boxes ``float32 [N, 4]`` from proposals ``[N, 4]`` moved by deltas ``[N, 4]``."""
        p = xyxy_to_cxcywh(np.asarray(proposals, np.float32))
        t = np.asarray(deltas, np.float32).reshape(-1, 4) * np.asarray(self.stds, np.float32) + np.asarray(
            self.means, np.float32
        )
        tw = np.minimum(t[:, 2], self.clamp)
        th = np.minimum(t[:, 3], self.clamp)
        c = np.stack(
            [p[:, 0] + t[:, 0] * p[:, 2], p[:, 1] + t[:, 1] * p[:, 3], p[:, 2] * np.exp(tw), p[:, 3] * np.exp(th)],
            axis=1,
        )
        return cxcywh_to_xyxy(c)
