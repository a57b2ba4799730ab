"""One detection, stage by stage, as plain data: what `Detector.trace(image)` returns.

Every detector's `detect` is the last stage of its trace (``trace(image).detections``), and
pictures (`rcnn.reports.explain`) draw only what a trace holds, so the two cannot drift. A
part a detector does not have is None (a localiser has no proposals; R-CNN no feature map).
Boxes are ``float32 [K, 4]`` in the image's own pixels (``x1, y1, x2, y2``) unless a field
says otherwise; labels ``int64 [K]`` in ``1..C``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rcnn.datasets.core import Detections
from rcnn.features.pyramid import STRIDES

__all__ = [
    "Anchors",
    "Crops",
    "FeatureMap",
    "Grid",
    "MaskProbs",
    "Pooled",
    "Stage",
    "Trace",
    "summarize_map",
    "summarize_pyramid",
    "threshold_stages",
]


@dataclass(frozen=True)
class Stage:
    """One step's boxes: `name` (``threshold``: the proposals whose class score reaches the
    threshold, one row per proposal and class, as proposed; ``regression``: the same, moved
    by their class's box regression, before NMS; ``nms``: after per-class NMS and the cap,
    the final detections; a localiser's ``box``: its one box whatever its presence, and
    ``presence``: that box when its presence reaches the threshold, the final detection),
    and `detections` (boxes, scores, labels)."""

    name: str
    detections: Detections


@dataclass(frozen=True)
class FeatureMap:
    """The one map a detector computes per image, summarised: `channels` x `rows` x `cols`
    cells of `stride` px of the image rescaled by `factor`; `mean` ``float32 [rows, cols]``:
    its channels' mean in each cell. With a feature pyramid this is its stride-16 level, and
    `levels` lists every level as ``(name, stride, channels, rows, cols)``, finest first
    (empty: one map)."""

    channels: int
    rows: int
    cols: int
    stride: int
    factor: float
    mean: np.ndarray
    levels: tuple[tuple[str, int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Anchors:
    """What a region proposal network saw on the stride-16 map: `boxes` ``float32 [rows,
    cols, A, 4]``, that level's anchors in the rescaled image's pixels; `objectness`
    ``float32 [A, rows, cols]`` (probabilities); `sizes` (that level's, px) x `ratios`
    (height / width); `total`: anchors over every level. Then the proposals: the best
    `pre_nms_top_n` by objectness, those under `score_threshold` dropped, NMS at
    `nms_threshold`, the best `post_nms_top_n` kept."""

    boxes: np.ndarray
    objectness: np.ndarray
    sizes: tuple[int, ...]
    ratios: tuple[float, ...]
    total: int
    pre_nms_top_n: int
    post_nms_top_n: int
    nms_threshold: float
    score_threshold: float


@dataclass(frozen=True)
class Crops:
    """How R-CNN looks at each proposal: cut out with `padding` px of context, warped to
    `size` x `size` px, through `backbone` to `feature_dim`-d features."""

    size: int
    padding: int
    backbone: str
    feature_dim: int


@dataclass(frozen=True)
class Pooled:
    """How a RoI head takes its input: `block` ``float32 [C, s, s]``, proposal `index`'s
    pooled features (the best-scoring proposal's), by `mode` (``align`` or ``pool``)."""

    index: int
    block: np.ndarray
    mode: str


@dataclass(frozen=True)
class Grid:
    """One map of a dense detector, cell by cell: ``rows x cols`` cells of `stride` px of the
    image rescaled by `factor` (a cell is ``stride / factor`` px of the image). `heat` ``float32
    [rows, cols]``: each cell's value, `heat_name` says which (YOLO's best box confidence, SSD's
    best class probability over the cell's default boxes, CenterNet's heatmap, the highest
    over the classes). `boxes` ``float32 [rows, cols, B, 4]`` in the image's pixels: each
    cell's B boxes (`boxes_name` says which: YOLO's predicted, SSD's default), with
    `box_scores` ``float32 [rows, cols, B]`` (YOLO: each box's confidence; SSD: each default
    box's best class probability); None where the map has no boxes per cell. `peaks` ``int64
    [K, 2]``: ``(row, col)`` of the cells kept as peaks (CenterNet: the 3x3 maxima kept, in
    the order of the ``regression`` stage's boxes, one box grown from each); None: no peaks."""

    stride: int
    factor: float
    heat: np.ndarray
    heat_name: str
    boxes: np.ndarray | None = None
    box_scores: np.ndarray | None = None
    boxes_name: str = ""
    peaks: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return tuple(int(n) for n in self.heat.shape)


@dataclass(frozen=True)
class MaskProbs:
    """A mask head's output on the final detections: `probs` ``float32 [K, m, m]``, the m x m
    mask probabilities (sigmoid of the logits) of their class, for the detections at `index`
    ``int64 [K]`` (the best-scoring few, best first), before they are pasted into the image
    (resized to the box) and cut at `threshold`."""

    index: np.ndarray
    probs: np.ndarray
    threshold: float


@dataclass(frozen=True)
class Trace:
    """A detection on one image of `image_size` ``(height, width)``, stage by stage.

    `proposals` ``float32 [N, 4]``: the boxes scored (ranked), `proposer` what gave them (a
    proposer's method, ``rpn``, or ``given``); `anchors`, `feature_map`, `crops`, `pooled`:
    the parts above, where the detector has them; `scores` ``float32 [N, C]``: every
    proposal's class scores (`score_name` says what a score is) and `threshold` the score a
    box needs; `outputs`: a detector's own head outputs (a localiser's ``presence``,
    ``class_probs [C]``, ``box [4]``); `grids`: a dense detector's maps (`Grid`, finest
    first); `masks`: Mask R-CNN's mask probabilities (`MaskProbs`); `scored`: how many boxes
    each step scores on this image, counted from what it computed, in order (``anchors`` and
    ``proposals`` for Faster R-CNN, ``proposals`` for Fast R-CNN and R-CNN, a dense detector's
    ``grid boxes``, ``default boxes`` or ``heatmap cells x classes``, a localiser's ``box``);
    `stages`: the boxes after each step, the last the final detections (`detections`)."""

    image_size: tuple[int, int]
    stages: tuple[Stage, ...]
    proposals: np.ndarray | None = None
    proposer: str = ""
    anchors: Anchors | None = None
    feature_map: FeatureMap | None = None
    crops: Crops | None = None
    pooled: Pooled | None = None
    scores: np.ndarray | None = None
    score_name: str = "score"
    threshold: float = -np.inf
    outputs: dict = field(default_factory=dict)
    grids: tuple[Grid, ...] = ()
    masks: MaskProbs | None = None
    scored: dict[str, int] = field(default_factory=dict)

    @property
    def boxes_scored(self) -> int:
        """Every box any step scored on this image: the sum of `scored`."""
        return int(sum(self.scored.values()))

    @property
    def detections(self) -> Detections:
        """The final detections: the last stage's (what `Detector.detect` returns)."""
        return self.stages[-1].detections if self.stages else Detections()

    def stage(self, name: str) -> Detections | None:
        """The named stage's detections, or None when the trace has no such stage."""
        return next((s.detections for s in self.stages if s.name == name), None)


def threshold_stages(proposals: np.ndarray, scores: np.ndarray, rows, cols, moved: np.ndarray) -> tuple[Stage, Stage]:
    """The ``threshold`` and ``regression`` stages of a region-based detector: the
    `proposals` ``[N, 4]`` rows `rows` for classes `cols` (0-based; their scores from
    ``scores [N, C]``), as proposed and as `moved` ``[K, 4]`` by their class's regression."""
    kept, labels = scores[rows, cols], cols.astype(np.int64) + 1
    return (
        Stage("threshold", Detections(np.asarray(proposals, np.float32)[rows], kept, labels)),
        Stage("regression", Detections(np.asarray(moved, np.float32), kept, labels)),
    )


def summarize_map(fmap, factor: float, stride: int = 16, levels=()) -> FeatureMap:
    """The `FeatureMap` of a trunk's map `fmap` (a tensor ``[1, C, h, w]`` of `stride` px
    cells) of an image rescaled by `factor`; `levels` as `FeatureMap`'s."""
    c, h, w = fmap.shape[1:]
    mean = fmap[0].float().mean(0).cpu().numpy().astype(np.float32)
    return FeatureMap(int(c), int(h), int(w), int(stride), float(factor), mean, tuple(levels))


def summarize_pyramid(maps: dict, factor: float) -> FeatureMap:
    """The `FeatureMap` of a feature pyramid's maps ``{level: [1, C, h, w]}``
    (`rcnn.features.pyramid.PyramidTrunk`'s) of an image rescaled by `factor`: its stride-16
    level ``"1"``, with every level listed (finest first)."""
    levels = [(k, STRIDES[k], *(int(n) for n in maps[k].shape[1:])) for k in STRIDES if k in maps]
    return summarize_map(maps["1"], factor, STRIDES["1"], levels)
