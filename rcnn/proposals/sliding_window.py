"""Sliding-window proposals: a multi-scale, multi-aspect grid, the baseline for Selective Search.

Windows have sides ``scale * sqrt(W * H) * (sqrt(a), 1 / sqrt(a))`` for each scale and aspect
ratio ``a = width / height`` (clipped to the image), placed with a step of at most `stride` times
the window's side so that the first and last windows touch the image's edges. The windows are
ordered round robin over the (scale, aspect) levels, largest first, each level's own windows in bit-reversed
order, so that any first k windows are an even thinning of the grid with about as many windows
per level: methods compare at equal budgets (k = 100, 500, ...). When the grid has fewer than
`max_boxes` windows the stride is made finer until it has enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rcnn.boxes import xywh_to_xyxy
from rcnn.config import require
from rcnn.proposals.base import Proposer, ProposerConfig
from rcnn.proposals.selective_search import as_rgb, finish_boxes

VERSION = 4  # bump when the windows change for the same parameters: cache keys follow it


@dataclass(frozen=True)
class SlidingWindowConfig(ProposerConfig):
    """`scales`: window sides relative to ``sqrt(W * H)``; `aspect_ratios`: width / height;
    `stride`: step as a fraction of the window side; `min_size`: smallest side kept (pixels);
    `max_boxes`: the number of windows (0: the whole grid at `stride`). `method` is always
    ``sliding_window`` (the ``[proposals]`` table's tag)."""

    method: Literal["sliding_window"] = field(default="sliding_window", repr=False, kw_only=True)
    scales: tuple[float, ...] = (0.1, 0.14, 0.2, 0.28, 0.4, 0.57, 0.8, 1.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    stride: float = 0.5
    min_size: float = 20.0
    max_boxes: int = 2000

    def __post_init__(self):
        require(self, "method", self.method == "sliding_window", '"sliding_window"')
        require(self, "scales", self.scales and all(s > 0 for s in self.scales), "a list of positive numbers")
        require(
            self,
            "aspect_ratios",
            self.aspect_ratios and all(a > 0 for a in self.aspect_ratios),
            "a list of positive numbers",
        )
        require(self, "stride", 0 < self.stride <= 1, "a number in (0, 1]")
        require(self, "min_size", self.min_size >= 0, "a number >= 0")
        require(self, "max_boxes", self.max_boxes >= 0, "an integer >= 0")


def window_grid(width: int, height: int, scales, aspect_ratios, stride: float) -> list[np.ndarray]:
    """The grid's windows, one ``float32 [n, 4]`` xyxy array (row by row) per scale (largest
    first) and aspect ratio."""
    base = np.sqrt(float(width) * float(height))
    out = []
    for s in sorted(scales, reverse=True):
        for a in aspect_ratios:
            w = min(width, s * base * np.sqrt(a))
            h = min(height, s * base / np.sqrt(a))
            nx = int(np.ceil((width - w) / (stride * w) - 1e-6)) + 1  # step <= stride * w, edges touched
            ny = int(np.ceil((height - h) / (stride * h) - 1e-6)) + 1
            x, y = np.meshgrid(np.linspace(0, width - w, nx), np.linspace(0, height - h, ny))
            x, y = x.ravel(), y.ravel()
            out.append(
                xywh_to_xyxy(np.stack([x, y, np.full_like(x, w), np.full_like(y, h)], axis=1)).astype(np.float32)
            )
    return out


def interleave(levels: list[np.ndarray]) -> np.ndarray:
    """Windows of all levels, round robin; each level's own windows in `spread_order` from
    its middle window (so the first window of a level is central, not a corner)."""
    if not levels:
        return np.zeros((0, 4), np.float32)
    rank = np.concatenate([np.argsort((spread_order(len(b)) + len(b) // 2) % len(b)) for b in levels])
    level = np.concatenate([np.full(len(b), i) for i, b in enumerate(levels)])
    return np.concatenate(levels)[np.lexsort((level, rank))]


def spread_order(n: int) -> np.ndarray:
    """A permutation of ``range(n)`` by bit-reversed index: every prefix is spread evenly."""
    if n <= 1:
        return np.arange(n)
    bits = (n - 1).bit_length()
    i = np.arange(n)
    rev = np.zeros(n, np.int64)
    for b in range(bits):
        rev |= ((i >> b) & 1) << (bits - 1 - b)
    return np.argsort(rev, kind="stable")


class SlidingWindows(Proposer):
    """Sliding-window proposer: ``proposer(image)`` -> ``float32 [N, 4]`` xyxy windows,
    ``N = max_boxes`` where the image allows, in an order whose prefixes are even thinnings."""

    method = "sliding_window"
    config_class = SlidingWindowConfig
    version = VERSION

    def __call__(self, image) -> np.ndarray:
        c = self.config
        height, width = as_rgb(image).shape[:2]
        if min(height, width) < max(c.min_size, 1):
            return np.zeros((0, 4), np.float32)
        stride = c.stride
        while True:
            levels = window_grid(width, height, c.scales, c.aspect_ratios, stride)
            boxes = finish_boxes(interleave(levels), width, height, c.min_size, 0)
            if not c.max_boxes or len(boxes) >= c.max_boxes or stride < 0.01:
                break
            stride *= 0.7  # too few windows for the budget: a finer grid
        return np.ascontiguousarray(boxes[: c.max_boxes] if c.max_boxes else boxes)
