"""Warped crops, as in R-CNN (Girshick et al. 2014, Appendix A).

Each box is dilated about its centre so that, once warped anisotropically to ``S x S``, it
covers ``[p, S - p]`` with exactly ``p`` pixels of context on each side (a scale factor of
``S / (S - 2p)``); whatever of that dilated box lies outside the image is filled with the
mean pixel (ImageNet's, so it becomes 0 after normalisation, as R-CNN's mean-subtracted
zero padding did). Sampling is bilinear without antialiasing (R-CNN's ``imresize``
setting): output pixel ``(u, v)`` reads the image at continuous point
``(X1 + (u + 0.5) W / S, Y1 + (v + 0.5) H / S)`` of the dilated box ``(X1, Y1, W, H)``.

Two implementations of the same sampling: ``"cv2"`` (`cv2.warpAffine` per crop on the whole
uint8 image, constant border) and ``"roi_align"`` (`torchvision.ops.roi_align`, aligned, one
sample per bin, on the normalised image). They agree except within a pixel of the image
edge, where roi_align repeats the edge pixel instead of blending into the fill. cv2 is the
faster on a CPU (see ``experiments/bench_features.py``) and is the default.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align

from rcnn.boxes import scale_boxes

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "context_boxes", "warp_crops", "normalize", "warp_normalized"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of [0, 1] pixels
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # uint8 fill: (124, 116, 104)


def context_boxes(boxes, crop_size: int = 224, padding: int = 16) -> np.ndarray:
    """Boxes ``float32 [N, 4]`` dilated by ``S / (S - 2p)`` about their centres (xyxy, pixels)."""
    if not 0 <= 2 * padding < crop_size:
        raise ValueError(f"padding {padding} must be >= 0 and < crop_size/2 ({crop_size}/2)")
    return scale_boxes(np.asarray(boxes, np.float32), crop_size / (crop_size - 2 * padding))


def warp_crops(image: np.ndarray, boxes, crop_size: int = 224, padding: int = 16) -> np.ndarray:
    """Warped crops ``uint8 [N, S, S, 3]`` of ``uint8 [H, W, 3]`` `image` (cv2.warpAffine)."""
    image = np.ascontiguousarray(image)
    big = context_boxes(boxes, crop_size, padding)
    out = np.empty((len(big), crop_size, crop_size, 3), np.uint8)
    step = (big[:, 2:] - big[:, :2]) / crop_size  # source pixels per output pixel, [N, 2]
    offset = big[:, :2] + 0.5 * step - 0.5  # source pixel index of output pixel (0, 0)
    for i in range(len(big)):
        m = np.array([[step[i, 0], 0, offset[i, 0]], [0, step[i, 1], offset[i, 1]]], np.float64)
        cv2.warpAffine(
            image,
            m,
            (crop_size, crop_size),
            dst=out[i],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=MEAN_PIXEL,
        )
    return out


def normalize(crops: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 [N, S, S, 3]`` crops to ``float32 [N, 3, S, S]`` ImageNet-normalised tensors,
    stored channels-last (a view of the NHWC data, no copy of the layout)."""
    x = torch.as_tensor(crops).to(torch.float32, copy=True)  # NHWC: the channel is the fast axis, cheap to broadcast
    x.sub_(torch.tensor(IMAGENET_MEAN) * 255).mul_(1 / (torch.tensor(IMAGENET_STD) * 255))
    return x.permute(0, 3, 1, 2)


def warp_normalized(
    image: np.ndarray, boxes, crop_size: int = 224, padding: int = 16, method: str = "cv2"
) -> torch.Tensor:
    """Warped, normalised crops ``float32 [N, 3, S, S]`` by `method` ``"cv2"`` or ``"roi_align"``."""
    if method == "cv2":
        return normalize(warp_crops(image, boxes, crop_size, padding))
    if method != "roi_align":
        raise ValueError(f"unknown warp method {method!r}; known: cv2, roi_align")
    whole = normalize(np.ascontiguousarray(image)[None]).contiguous()  # [1, 3, H, W]
    big = torch.from_numpy(context_boxes(boxes, crop_size, padding))
    rois = torch.cat([torch.zeros(len(big), 1), big], dim=1)
    return roi_align(whole, rois, crop_size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
