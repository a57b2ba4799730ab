"""Balanced positive/negative sampling, one policy for every head that learns from labelled
proposals: `draw` and `BalancedSampler` (torchvision's ``BalancedPositiveNegativeSampler``
with a numpy ``Generator`` and a rule for a short supply), used by the SVMs' first mining pass,
R-CNN's fine-tuning batches and `RoISampler` (Fast R-CNN's mini-batches, Sec. 2.3)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rcnn.heads.labeling import IGNORE, NEGATIVE, POSITIVE, Matcher, label_proposals

__all__ = ["BalancedSampler", "RoISample", "RoISampler", "draw"]


def draw(candidates: np.ndarray, n: int | None, rng: np.random.Generator, *, short: str = "all", shuffle: bool = True):
    """`n` of `candidates` (``int64 [M]`` indices) at random, without replacement while there
    are enough. With fewer than `n`, `short` says what happens: ``"all"`` takes them all (the
    sample is smaller), ``"repeat"`` draws `n` with replacement (an empty supply gives an
    empty sample). `n` None: all of them. `shuffle` False: a subset in any order is enough,
    so the generator is used only when there are more than `n` (the sample comes back
    sorted); True: always in random order (a mini-batch's order). -> ``int64 [K]``."""
    _check_short(short)
    candidates = np.asarray(candidates, np.int64).reshape(-1)
    m = len(candidates)
    n = m if n is None else int(n)
    if m == 0 or n <= 0:
        return np.zeros(0, np.int64)
    if not shuffle and m <= n and short == "all":
        return candidates
    if m < n and short == "all":
        n = m
    picked = rng.choice(candidates, n, replace=m < n).astype(np.int64)
    return picked if shuffle else np.sort(picked)


def _check_short(short: str):
    if short not in ("all", "repeat"):
        raise ValueError(f"short must be 'all' or 'repeat', got {short!r}")


class BalancedSampler:
    """Up to `positives` indices with ``labels > 0`` and up to `negatives` with
    ``labels == 0`` (other labels never drawn; None: all of a kind), each by `draw` with
    `short` and `shuffle` (positives drawn first, then negatives, from one generator).
    ``sampler(labels int [N], rng) -> (positive int64 [P'], negative int64 [N'])``."""

    def __init__(self, positives: int | None, negatives: int | None, short: str = "all", shuffle: bool = True):
        self.positives, self.negatives, self.short, self.shuffle = positives, negatives, short, shuffle
        _check_short(short)

    def __call__(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(labels)
        kw = {"short": self.short, "shuffle": self.shuffle}
        return (
            draw(np.flatnonzero(labels > 0), self.positives, rng, **kw),
            draw(np.flatnonzero(labels == 0), self.negatives, rng, **kw),
        )


class RoISample(NamedTuple):
    """One image's sampled RoIs: ``index int64 [R]`` into the boxes given to the sampler
    (foreground first), ``labels int64 [R]`` (class ``1..C``, 0 background) and
    ``gt_index int64 [R]`` (the matched ground truth of each; meaningful for foreground)."""

    index: np.ndarray
    labels: np.ndarray
    gt_index: np.ndarray


class RoISampler:
    """Draws `rois_per_image` RoIs of one image: at most ``round(fg_fraction * rois_per_image)``
    foreground (best IoU >= `fg_iou` with a non-difficult ground truth, labelled with its
    class), the rest background (best IoU in ``[bg_iou_low, fg_iou)``, label 0). Boxes below
    `bg_iou_low`, and those near a difficult object, are never drawn. With too few of either
    kind the sample is smaller; nothing is drawn twice. An image without objects has no box
    in that band, so all its boxes are background. Paper: 128 RoIs, 25 % foreground at
    IoU >= 0.5, background in [0.1, 0.5).

    ``sampler(boxes [N, 4], gt_boxes [G, 4], gt_labels [G], gt_difficult [G] | None, rng)``
    -> `RoISample`; `rng` is a ``numpy.random.Generator`` (seed it from the config).
    """

    def __init__(
        self, rois_per_image: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5, bg_iou_low: float = 0.1
    ):
        if not 0 <= bg_iou_low < fg_iou <= 1:
            raise ValueError(f"need 0 <= bg_iou_low < fg_iou <= 1, got {bg_iou_low}, {fg_iou}")
        self.rois_per_image = rois_per_image
        self.fg_fraction = fg_fraction
        self.fg_iou = fg_iou
        self.bg_iou_low = bg_iou_low
        if bg_iou_low > 0:
            self.matcher = Matcher([bg_iou_low, fg_iou], [IGNORE, NEGATIVE, POSITIVE])
        else:
            self.matcher = Matcher([fg_iou], [NEGATIVE, POSITIVE])

    def label(self, boxes, gt_boxes, gt_labels, gt_difficult=None):
        """``(labels int64 [N]`` in ``-1..C`` (-1: never drawn), ``gt_index int64 [N])``."""
        labels, _, gt_index = label_proposals(boxes, gt_boxes, gt_labels, gt_difficult, self.matcher)
        if len(np.asarray(gt_boxes).reshape(-1, 4)) == 0:
            labels = np.zeros_like(labels)  # an image without objects: every box is background
        return labels, gt_index

    def __call__(self, boxes, gt_boxes, gt_labels, gt_difficult, rng: np.random.Generator) -> RoISample:
        labels, gt_index = self.label(boxes, gt_boxes, gt_labels, gt_difficult)
        return self.sample(labels, gt_index, rng)

    def sample(self, labels: np.ndarray, gt_index: np.ndarray, rng: np.random.Generator) -> RoISample:
        """Draw from precomputed `label` output (labels ``[N]``, gt_index ``[N]``)."""
        n_fg = min(int((labels > 0).sum()), int(round(self.fg_fraction * self.rois_per_image)))
        fg, bg = BalancedSampler(n_fg, self.rois_per_image - n_fg)(labels, rng)
        index = np.concatenate([fg, bg])
        return RoISample(index, labels[index].astype(np.int64), gt_index[index].astype(np.int64))
