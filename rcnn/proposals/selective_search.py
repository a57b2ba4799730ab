"""Selective Search proposals (Uijlings et al. 2013) through OpenCV's `cv2.ximgproc.segmentation`.

OpenCV does the work: Felzenszwalb graph segmentation of each colour space at each ``k``,
then hierarchical grouping under each similarity strategy set, then ranking. This module
adds what a pipeline needs around it: a shrink to a longest side before segmenting (boxes
are mapped back), a minimum box side, exact-duplicate removal, a cap on the count, and
deterministic ranking.

Determinism: OpenCV ranks regions by ``level * rand()`` (C library ``rand()``, not
`cv::theRNG`, so `cv2.setRNGSeed` has no effect; checked on OpenCV 5.0), which makes its
top-k differ from call to call. We seed the C library's generator with ``srand(seed)``
right before `process()`, under a lock so threads cannot interleave their draws: the same
image and parameters give the same ranked boxes in any process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from rcnn.boxes import clip_boxes, remove_small_boxes
from rcnn.config import require
from rcnn.errors import ImageError
from rcnn.proposals.base import Proposer, ProposerConfig

MODES = ("single", "fast", "quality", "custom")
COLOR_SPACES = ("hsv", "lab", "rgb", "gray", "hue", "rgi")
STRATEGIES = ("color", "fill", "texture", "size")
VERSION = 1  # bump when the boxes change for the same parameters: cache keys follow it


@dataclass(frozen=True)
class SelectiveSearchConfig(ProposerConfig):
    """Selective Search parameters.

    `mode`: OpenCV's presets ``single`` (HSV, k=200, one strategy set), ``fast`` (HSV+Lab,
    k=150/300/450, two sets) and ``quality`` (5 colour spaces, 5 k, four sets), or ``custom``:
    `color_spaces` x `ks` graph segmentations (smoothing `sigma`), each grouped under every
    set in `strategies` (a set is a tuple of ``color/fill/texture/size``, equally weighted;
    a bare name is a set of one).
    The default is the custom configuration chosen by measurement on cards/test
    (experiments/bench_proposals.py --candidates): HSV, Lab and rgI at k = 100, 200, 400,
    grouped by colour+fill+size, by fill alone and by size alone (texture added nothing there
    but time), on a 300 px working image; its AR is at least that of OpenCV's fast preset on the full image at a third of
    the time in one process. Small objects may want ``longest_side = 500`` or more.
    `longest_side`: images whose longest side exceeds it are shrunk to it before segmenting
    (0: never). `min_size`: boxes narrower or shorter than this many pixels (original scale)
    are dropped. `max_boxes`: keep the best this many (0: all). `seed`: ranking seed.
    `method` is always ``selective_search`` (the ``[proposals]`` table's tag).
    """

    method: Literal["selective_search"] = field(default="selective_search", repr=False, kw_only=True)
    mode: str = "custom"
    color_spaces: tuple[str, ...] = ("hsv", "lab", "rgi")
    ks: tuple[float, ...] = (100, 200, 400)
    strategies: tuple[str | tuple[str, ...], ...] = (("color", "fill", "size"), ("fill",), ("size",))
    sigma: float = 0.8
    longest_side: int = 300
    min_size: float = 20.0
    max_boxes: int = 2000
    seed: int = 0

    def __post_init__(self):
        require(self, "method", self.method == "selective_search", '"selective_search"')
        require(self, "mode", self.mode in MODES, f"one of {', '.join(MODES)}")
        bad = [c for c in self.color_spaces if c not in COLOR_SPACES]
        require(self, "color_spaces", self.color_spaces and not bad, f"1 or more of {', '.join(COLOR_SPACES)}")
        require(self, "ks", self.ks and all(k > 0 for k in self.ks), "a list of positive numbers")
        sets = [(s,) if isinstance(s, str) else tuple(s) for s in self.strategies]
        ok = sets and all(s and len(s) <= 4 and all(x in STRATEGIES for x in s) for s in sets)
        require(self, "strategies", ok, f"a list of sets, each 1 to 4 of {', '.join(STRATEGIES)}")
        object.__setattr__(self, "strategies", tuple(sets))
        require(self, "sigma", self.sigma >= 0, "a number >= 0")
        for name in ("longest_side", "min_size", "max_boxes", "seed"):
            require(self, name, getattr(self, name) >= 0, "a number >= 0" if name == "min_size" else "an integer >= 0")


def _find_libc():
    for name in (ctypes.util.find_library("c"), "ucrtbase", None):
        try:
            libc = ctypes.CDLL(name)
            libc.srand  # noqa: B018 - raises AttributeError when absent
            return libc
        except (OSError, AttributeError):
            continue
    return None


_LIBC = _find_libc()
_RAND_LOCK = threading.Lock()


def _convert(bgr: np.ndarray, space: str) -> np.ndarray:
    """The image in one of `COLOR_SPACES` as OpenCV's quality preset builds them."""
    if space == "hsv":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    if space == "lab":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)
    if space == "rgb":
        return bgr
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if space == "gray":
        return gray
    if space == "hue":
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[:, :, 0])
    return cv2.merge([bgr[:, :, 2], bgr[:, :, 1], gray])  # rgi


def _strategy(names) -> object:
    seg = cv2.ximgproc.segmentation
    make = {
        "color": seg.createSelectiveSearchSegmentationStrategyColor,
        "fill": seg.createSelectiveSearchSegmentationStrategyFill,
        "texture": seg.createSelectiveSearchSegmentationStrategyTexture,
        "size": seg.createSelectiveSearchSegmentationStrategySize,
    }
    return seg.createSelectiveSearchSegmentationStrategyMultiple(*[make[n]() for n in names])


def as_rgb(image) -> np.ndarray:
    """``uint8 [H, W, 3]`` from an RGB, RGBA or grayscale ``uint8`` array (raises `ImageError`)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageError(None, f"proposals need a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = image[:, :, :3] if image.shape[2] != 1 else image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(None, f"proposals need an HxWx3 image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def finish_boxes(boxes: np.ndarray, width: int, height: int, min_size: float, max_boxes: int) -> np.ndarray:
    """Clip ranked boxes ``[N, 4]`` to the image, drop small ones and exact duplicates
    (keeping the first), cap at `max_boxes` (0: no cap). Order is kept; ``float32 [M, 4]``."""
    boxes = clip_boxes(np.asarray(boxes, np.float32), (height, width))
    boxes = boxes[remove_small_boxes(boxes, max(min_size, 1e-6))]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return boxes[:max_boxes] if max_boxes else boxes


class SelectiveSearch(Proposer):
    """Selective Search proposer: ``proposer(image)`` -> ranked ``float32 [N, 4]`` xyxy boxes
    (best first) in the image's own pixels, for a ``uint8 [H, W, 3]`` RGB image.
    ``SelectiveSearch(config)`` or ``SelectiveSearch(mode="fast", ...)``."""

    method = "selective_search"
    config_class = SelectiveSearchConfig
    version = VERSION
    prefix_param = "max_boxes"  # `finish_boxes` caps last: 500 boxes are the first 500 of 2000

    def params(self) -> dict:
        """Everything that determines the boxes (cache key material), OpenCV's version and ours too."""
        params = super().params()
        if self.config.mode != "custom":  # preset modes ignore these: keep their keys stable
            for name in ("color_spaces", "ks", "strategies", "sigma"):
                del params[name]
        del params["version"]
        return {**params, "opencv": cv2.__version__, "version": VERSION}

    def __call__(self, image) -> np.ndarray:
        c = self.config
        image = as_rgb(image)
        height, width = image.shape[:2]
        if min(height, width) < max(c.min_size, 2):  # no box could pass; also keeps OpenCV off 1-px images
            return np.zeros((0, 4), np.float32)
        scale = c.longest_side / max(height, width) if c.longest_side and max(height, width) > c.longest_side else 1.0
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if scale != 1.0:
            size = (max(2, round(width * scale)), max(2, round(height * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        rects = self._process(bgr)
        sh, sw = bgr.shape[:2]
        boxes = np.asarray(rects, np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h (whole pixels) -> continuous x1, y1, x2, y2
        boxes *= np.array([width / sw, height / sh, width / sw, height / sh], np.float32)
        return finish_boxes(boxes, width, height, c.min_size, c.max_boxes)

    def _process(self, bgr: np.ndarray) -> np.ndarray:
        c = self.config
        seg = cv2.ximgproc.segmentation
        ss = seg.createSelectiveSearchSegmentation()
        ss.setBaseImage(bgr)
        if c.mode == "single":
            ss.switchToSingleStrategy()
        elif c.mode == "fast":
            ss.switchToSelectiveSearchFast()
        elif c.mode == "quality":
            ss.switchToSelectiveSearchQuality()
        else:
            for space in c.color_spaces:
                ss.addImage(_convert(bgr, space))
            for k in c.ks:
                ss.addGraphSegmentation(seg.createGraphSegmentation(sigma=c.sigma, k=float(k)))
            for names in c.strategies:
                ss.addStrategy(_strategy(names))
        threads = cv2.getNumThreads()
        with _RAND_LOCK:
            cv2.setNumThreads(1)  # one thread draws rand() in one order; restored below
            try:
                if _LIBC is not None:
                    _LIBC.srand(ctypes.c_uint((c.seed + 1) & 0xFFFFFFFF))  # glibc treats 0 as 1
                rects = ss.process()
            finally:
                cv2.setNumThreads(threads)
        return np.asarray(rects).reshape(-1, 4)


def opencv_stock_fast(image) -> np.ndarray:
    """What a naive user gets: OpenCV's ``switchToSelectiveSearchFast()`` on the full-size
    image, every box in OpenCV's (unseeded) order, as ``float32 [N, 4]`` xyxy. The reference
    for experiments and benchmarks, not for the pipeline."""
    bgr = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2BGR)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    ss.switchToSelectiveSearchFast()
    boxes = np.asarray(ss.process(), np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes
