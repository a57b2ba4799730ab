"""Objects as Points (Zhou et al., 2019, "CenterNet") on the project's trunk: every object is
the peak of its class's heatmap at its centre, with its size and the centre's sub-cell offset
regressed there.

The image (sized as Fast R-CNN's, `rcnn.detectors.dense`) goes through the stride-16 trunk and
a 4x4 transposed convolution of stride 2 (the paper's upsampling, here one step) to a stride-8
map (with ``stage32 = true``, off by default, the map first goes through the backbone's
pretrained stride-32 stage and back up, added to a 1x1 projection of the trunk's map, as the
paper upsamples its stride-32 backbones); then three heads of a 3x3 convolution, a ReLU and a
1x1 convolution: a heatmap per class (sigmoid; its bias starts at -2.19, the paper's), the size ``(w, h)`` and
the offset ``(dx, dy)``, both in cells of the stride-8 map.

Training (`centernet_loss`): each object splats a Gaussian on its class's heatmap around the
cell of its centre (radius from CornerNet's rule, `gaussian_radius`: corners within it keep an
IoU of `min_overlap` with the box; sigma = (2 radius + 1) / 6, the maximum where two overlap);
the heatmap's loss is the paper's focal loss (alpha 2, beta 4) over every cell, divided by the
number of objects; size (x `size_weight`) and offset (x 1) are L1 at the objects' centre
cells only. The size is regressed as its logarithm (``size_space = "log"``, the default: the
head's output is ``log(cells)``, L1 on ``log w, log h`` at weight 1, as Faster R-CNN's box
coder regresses ``log(w / w_a)``) or, ``size_space = "cells"``, as the paper does: the size in
cells itself, L1 at weight 0.1. The paper's raw size learns under Adam over 140 epochs; under
the project's SGD over 20 epochs its 0.1-weighted, sign-sized gradient leaves large objects'
sizes far from fitted (raccoon, objects about 35 cells wide: the size term still 11.6 cells
at the end of training, the best box's width off by more than 30 % on a quarter of the test
photos), where the logarithm treats a 3-cell and a 40-cell object alike. Detection: peaks are the cells equal to the 3x3 max-pool of their heatmap (the
paper's replacement for NMS: ``nms_threshold = 1`` leaves the boxes as they are), the best
`max_detections` of them, each box centred at its cell plus offset, sized by its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rcnn.config import require
from rcnn.detectors.dense import DenseConfig, DenseDetector, numpy32
from rcnn.detectors.trace import Grid

__all__ = ["CenterNet", "CenterNetConfig", "centernet_loss", "gaussian_radius"]

STRIDE = 8  # the output map's stride: the trunk's 16, upsampled once
HEAT_PRIOR = 0.1  # the heatmap's start: bias -2.19, the paper's
MIN_SIZE = 1 / STRIDE  # cells: one pixel, the smallest size whose logarithm is regressed
LOG_SIZE_CAP = math.log(1e4)  # a decoded size is at most this many cells (the exponential kept finite)
SIZE_SPACES = {"log": 1.0, "cells": 0.1}  # how the size is regressed, and its loss weight by default


@dataclass(frozen=True)
class CenterNetConfig(DenseConfig):
    """A CenterNet config (``detector = "centernet"``): the dense settings (`DenseConfig`)
    and `hidden` (channels of the upsampled map and the heads), `alpha` and `beta` (the focal
    loss's, 2 and 4), `size_space` (``"log"``: the size regressed as ``log(cells)``; ``"cells"``:
    the paper's, in cells), `size_weight` (None: 1 in log space, the paper's 0.1 in cells),
    `min_overlap` (CornerNet's radius rule, 0.7).
    `nms_threshold` is 1 (no NMS: peaks are 3x3 maxima)."""

    detector: str = "centernet"
    hidden: int = 64
    alpha: float = 2.0
    beta: float = 4.0
    size_space: str = "log"
    size_weight: float | None = None
    min_overlap: float = 0.7
    nms_threshold: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        require(self, "detector", self.detector == "centernet", '"centernet" for a CenterNet config')
        require(self, "hidden", self.hidden >= 1, "an integer >= 1")
        for name in ("alpha", "beta"):
            require(self, name, getattr(self, name) >= 0, "a number >= 0")
        require(self, "size_space", self.size_space in SIZE_SPACES, f"one of {', '.join(SIZE_SPACES)}")
        require(self, "size_weight", self.size_weight is None or self.size_weight >= 0, "a number >= 0 (or absent)")
        require(self, "min_overlap", 0 < self.min_overlap < 1, "an IoU in (0, 1)")

    @property
    def size_loss_weight(self) -> float:
        """`size_weight`, or its default for `size_space` (log: 1, cells: the paper's 0.1)."""
        return SIZE_SPACES[self.size_space] if self.size_weight is None else self.size_weight


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet's radius for a box of `height` x `width` (cells): the smallest of the three
    cases' roots, so that a box whose corners move that far keeps IoU >= `min_overlap`."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def heatmap_targets(boxes, labels, shape, min_overlap: float = 0.7):
    """``(heatmaps [C, h, w], centre cells (rows [G], cols [G]), sizes [G, 2], offsets [G, 2])``
    of objects `boxes` ``[G, 4]`` (pixels) with `labels` ``[G]`` in ``1..C`` on a stride-8 map
    of ``shape = (C, h, w)``; sizes ``(w, h)`` and offsets in cells."""
    heat = torch.zeros(shape, dtype=boxes.dtype, device=boxes.device)
    centre = torch.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], 1) / (2 * STRIDE)
    cell = centre.floor()
    cols = cell[:, 0].clamp(0, shape[2] - 1).long()
    rows = cell[:, 1].clamp(0, shape[1] - 1).long()
    sizes = (boxes[:, 2:] - boxes[:, :2]) / STRIDE
    ys = torch.arange(shape[1], dtype=boxes.dtype, device=boxes.device).view(-1, 1)
    xs = torch.arange(shape[2], dtype=boxes.dtype, device=boxes.device).view(1, -1)
    for k in range(len(boxes)):
        r = max(0, int(gaussian_radius(float(sizes[k, 1]), float(sizes[k, 0]), min_overlap)))
        sigma = (2 * r + 1) / 6
        dy, dx = ys - rows[k], xs - cols[k]
        g = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * ((dx.abs() <= r) & (dy.abs() <= r))
        c = int(labels[k]) - 1
        heat[c] = torch.maximum(heat[c], g)
    return heat, (rows, cols), sizes, centre - torch.stack([cols, rows], 1).to(centre.dtype)


def centernet_loss(out, boxes, labels, alpha=2.0, beta=4.0, size_weight=0.1, min_overlap=0.7, log_size=False):
    """One image's loss (see the module docstring): `out` = ``(heatmap logits [C, h, w], sizes
    [2, h, w], offsets [2, h, w])`` of the stride-8 map (sizes in cells, or their logarithm
    with `log_size`), the objects' `boxes` ``[G, 4]`` (pixels) and `labels` ``[G]`` in ``1..C``.
    ``{"loss", "heatmap", "size", "offset"}``."""
    logits, size, offset = out
    heat, (rows, cols), sizes, offsets = heatmap_targets(boxes, labels, logits.shape, min_overlap)
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat == 1
    pos_loss = -((1 - p) ** alpha * torch.log(p))[pos].sum()
    neg_loss = -((1 - heat) ** beta * p**alpha * torch.log(1 - p))[~pos].sum()
    n = max(1, len(boxes))
    focal = (pos_loss + neg_loss) / n
    if log_size:
        sizes = sizes.clamp(min=MIN_SIZE).log()
    size_l1 = (size[:, rows, cols].T - sizes).abs().sum() / n
    offset_l1 = (offset[:, rows, cols].T - offsets).abs().sum() / n
    total = focal + size_weight * size_l1 + offset_l1
    return {"loss": total, "heatmap": focal, "size": size_l1, "offset": offset_l1}


def _branch(hidden: int, out: int, bias: float | None = None) -> nn.Sequential:
    last = nn.Conv2d(hidden, out, 1)
    if bias is not None:
        nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True), last)


def _up(channels: int, hidden: int) -> nn.Sequential:
    """A 4x4 transposed convolution of stride 2 (the paper's upsampling) and a ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(channels, hidden, 4, stride=2, padding=1), nn.ReLU(inplace=True))


class CenterNetHead(nn.Module):
    """The trunk's map ``[1, C_map, h, w]`` -> ``(heatmap logits [C, 2h, 2w], sizes [2, 2h,
    2w], offsets [2, 2h, 2w])`` at stride 8. With `stage32` (the backbone's pretrained
    stride-32 stage and its channels) the map first goes down through it and back up, added to
    a 1x1 projection of the trunk's map (a skip, as the paper's upsampling of its stride-32
    backbones, so that a large object's centre sees all of it); without, the trunk's map is
    upsampled alone."""

    def __init__(self, channels: int, hidden: int, num_classes: int, stage32: tuple[nn.Module, int] | None = None):
        super().__init__()
        self.stage = None
        if stage32 is not None:
            self.stage, self.up32 = stage32[0], _up(stage32[1], hidden)
            self.skip = nn.Conv2d(channels, hidden, 1)
            channels = hidden
        self.up = _up(channels, hidden)
        self.heatmap = _branch(hidden, num_classes, math.log(HEAT_PRIOR / (1 - HEAT_PRIOR)))
        self.size = _branch(hidden, 2)
        self.offset = _branch(hidden, 2)

    def forward(self, fmap: torch.Tensor):
        x = fmap
        if self.stage is not None:
            h, w = fmap.shape[-2:]
            x = self.up32(self.stage(fmap))[..., :h, :w] + self.skip(fmap)
        x = self.up(x)
        return self.heatmap(x)[0], self.size(x)[0], self.offset(x)[0]


class CenterNet(DenseDetector):
    """Objects as Points on the project's trunk: ``CenterNet(config).fit(dataset)``, then
    ``detect(image)`` or ``detect_dataset(ds)`` (see the module docstring and `DenseDetector`)."""

    kind = "centernet"
    config_class = CenterNetConfig
    title = "CenterNet"
    terms = ("heatmap", "size", "offset")

    def _head(self, channels: int, num_classes: int, stage32) -> nn.Module:
        return CenterNetHead(channels, self.config.hidden, num_classes, stage32)

    def _forward(self, head: nn.Module, fmap: torch.Tensor):
        return head(fmap)

    def _loss(self, out, boxes, labels, size):
        c = self.config
        return centernet_loss(
            out, boxes, labels, c.alpha, c.beta, c.size_loss_weight, c.min_overlap, c.size_space == "log"
        )

    def _peaks(self, heat: torch.Tensor):
        """The peaks kept of class heatmaps `heat` ``[C, h, w]`` (probabilities): cells equal to
        their 3x3 max-pool, the best `max_detections`, those under ``min_score`` dropped, best
        first: ``(scores [K], labels [K] in 0..C-1, rows [K], cols [K])``."""
        peaks = heat == nn.functional.max_pool2d(heat[None], 3, stride=1, padding=1)[0]
        scores = torch.where(peaks, heat, torch.full_like(heat, -1.0)).flatten()  # -1: not a peak, never kept
        top = torch.topk(scores, min(self.config.max_detections, len(scores)))
        keep = top.values >= self.config.min_score
        index = top.indices[keep]
        w = heat.shape[2]
        label, cell = index // (heat.shape[1] * w), index % (heat.shape[1] * w)
        return top.values[keep], label, cell // w, cell % w

    def _decode(self, out, size):
        logits, sizes, offsets = out
        scores, label, row, col = self._peaks(torch.sigmoid(logits))
        size = sizes[:, row, col]  # [2, K]: the peaks' only
        if self.config.size_space == "log":
            size = size.clamp(max=LOG_SIZE_CAP).exp()
        cx = (col + offsets[0, row, col]) * STRIDE
        cy = (row + offsets[1, row, col]) * STRIDE
        half_w, half_h = size[0] * STRIDE / 2, size[1] * STRIDE / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1)
        return boxes, scores, label + 1

    def _grids(self, out, size, factor):
        """The stride-8 map: the class heatmaps' highest value in each cell, and the peaks kept
        (``(row, col)``, in the order of the boxes grown from them); ``heatmap cells x
        classes``: every value of the heatmaps."""
        heat = torch.sigmoid(out[0])
        _, _, row, col = self._peaks(heat)
        peaks = torch.stack([row, col], 1).cpu().numpy().astype(np.int64).reshape(-1, 2)
        grid = Grid(STRIDE, factor, numpy32(heat.amax(0)), "class heatmap, the highest over the classes", peaks=peaks)
        return (grid,), {"heatmap cells x classes": int(heat.numel())}
