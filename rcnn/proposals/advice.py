"""Proposal settings against the data: what the training boxes' sizes say about them.

Selective Search segments a working copy of the image shrunk to `longest_side` and drops boxes
under `min_size` pixels; both lose small objects (objects of 15 to 40 px in 640x480 photos:
recall@0.5 0.90 and recall@0.7 0.55 at 500 boxes with the defaults). `scale_advice` looks at
the training objects before any proposal is computed and says, one line per decision, which
settings to change and to what; the detectors print it, and after the proposal stage their
recall on the training set (a detector cannot find what no proposal covers).
"""

from __future__ import annotations

import math

import numpy as np

from rcnn.boxes import box_area

SMALL_AT_WORKING_SIZE = 24.0  # px: an object's shorter side in the working image below this segments poorly
SHARE = 0.10  # advise when more than this share of the training objects is affected


def object_sides(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Shorter side ``[G]`` of every non-difficult training object (pixels) and the longest
    side ``[G]`` of its image."""
    sides, longest = [], []
    for s in dataset:
        b = s.boxes[~s.difficult]
        if len(b) == 0 or box_area(b).size == 0:
            continue
        sides.append(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
        longest.append(np.full(len(b), max(s.width, s.height), np.float32))
    if not sides:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(sides), np.concatenate(longest)


def scale_advice(dataset, config) -> list[str]:
    """Advice (lines) on a Selective Search config's `min_size` and `longest_side` from the
    sizes of `dataset`'s objects; empty when the settings suit the data or the proposer has
    neither setting (sliding windows)."""
    if not hasattr(config, "longest_side"):
        return []
    sides, longest = object_sides(dataset)
    if len(sides) == 0:
        return []
    lines = []
    if config.min_size > 0:
        too_small = float(np.mean(sides < config.min_size))
        if too_small > SHARE:
            suggest = max(1.0, math.floor(float(np.quantile(sides, 0.05)) * 0.8))
            lines.append(
                f"{too_small:.0%} of the training objects are under proposals.min_size = {config.min_size:g} px "
                f"on their shorter side, so no proposal can fit them: try --set proposals.min_size={suggest:g}"
            )
    if config.longest_side > 0:
        shrink = np.minimum(1.0, config.longest_side / np.maximum(longest, 1.0))
        working = sides * shrink
        small = float(np.mean(working < SMALL_AT_WORKING_SIZE))
        if small > SHARE:
            needed = SMALL_AT_WORKING_SIZE / max(float(np.quantile(working, SHARE)), 1e-6)
            suggest = int(min(float(longest.max()), math.ceil(config.longest_side * needed / 50) * 50))
            if suggest > config.longest_side:
                lines.append(
                    f"{small:.0%} of the training objects are under {SMALL_AT_WORKING_SIZE:g} px at Selective "
                    f"Search's working size (proposals.longest_side = {config.longest_side}), where they "
                    f"segment poorly: try --set proposals.longest_side={suggest} (slower, better recall)"
                )
    return lines
