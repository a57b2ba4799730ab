"""Instance masks: one COCO run-length encoding (RLE) per object, via `pycocotools.mask`.

In memory a mask is pycocotools' compressed RLE, ``{"size": [H, W], "counts": bytes}``: what
`pycocotools.mask` computes on (``area``, ``toBbox``, ``iou``, ``merge``) without decoding,
small (a shape's mask is a few dozen bytes against ``H * W`` for an array) and what COCO files
and results JSON carry. `decode` gives the ``uint8 [H, W]`` array where pixels are needed (VOC
PNGs, polygons, drawing). A sample's masks are `Sample.masks`: None when it has none, else a
list with one RLE or None per object.

Polygons are continuous pixel coordinates (the left edge of the first pixel is 0), as
pycocotools rasterises them: `to_polygon` traces a mask's outline on pixel edges (marching
squares at level 0.5) and joins its parts and holes into one polygon, which rasterises back
to the same pixels.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import measure

from rcnn.cache import atomic_write
from rcnn.datasets.rules import TOLERANCE, Problem

__all__ = [
    "encode",
    "decode",
    "mask_boxes",
    "mask_areas",
    "from_polygons",
    "to_polygon",
    "parse_segmentation",
    "rle_json",
    "check_masks",
    "overlapping",
    "read_index_png",
    "write_index_png",
    "index_masks",
    "index_image",
    "VOC_VOID",
]


def encode(mask: np.ndarray) -> dict:
    """The RLE of a ``bool`` or ``uint8 [H, W]`` mask."""
    return mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))


def decode(rle: dict) -> np.ndarray:
    """The ``uint8 [H, W]`` mask (0 / 1) of an RLE."""
    return mask_utils.decode(rle)


def mask_boxes(rles: list) -> np.ndarray:
    """``float32 [N, 4]`` xyxy boxes of the masks' pixels (pixel edges; zeros for an empty mask)."""
    if not rles:
        return np.zeros((0, 4), np.float32)
    xywh = mask_utils.toBbox(list(rles)).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).astype(np.float32)


def mask_areas(rles: list) -> np.ndarray:
    """``float64 [N]`` pixel counts of the masks (in chunks of 255: pycocotools' ``area`` fails on
    256 or more under NumPy 2, making a ``uint8`` array of their count)."""
    rles = list(rles)
    parts = [mask_utils.area(rles[i : i + 255]).reshape(-1) for i in range(0, len(rles), 255)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def from_polygons(polygons: list, height: int, width: int) -> dict:
    """The RLE of flat polygons ``[[x1, y1, x2, y2, ...], ...]`` (their union)."""
    return mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width))


def to_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon ``float64 [P, 2]`` (x, y) whose rasterisation is `mask`'s pixels: the
    outlines of its parts and holes on pixel edges, joined by zero-width bridges (as
    Ultralytics joins a split object; empty ``[0, 2]`` for an empty mask)."""
    padded = np.pad(np.asarray(mask, np.float32), 1)
    outlines = [measure.approximate_polygon(c[:, ::-1] - 0.5, 0) for c in measure.find_contours(padded, 0.5)]
    if not outlines:
        return np.zeros((0, 2))
    joined = [outlines[0]]
    for c in outlines[1:]:
        joined += [c, c[:1], outlines[0][:1]]
    return np.concatenate(joined)


def overlapping(masks: list) -> bool:
    """Whether two of the masks (RLEs or None) share a pixel."""
    rles = [m for m in masks if m is not None]
    return len(rles) > 1 and mask_utils.area(mask_utils.merge(rles)) < mask_areas(rles).sum()


def _rle_string_sum(counts: bytes) -> int | None:
    """The sum of the run lengths in pycocotools' compressed RLE string, None if it is malformed
    (pycocotools' ``rleFrString`` in numpy, so that a corrupt string never reaches its C code,
    which does not check it: ``rleDecode`` would write past the mask)."""
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return 0
    if (c < 0).any() or (c >= 64).any() or c[-1] & 0x20:
        return None
    ends = np.flatnonzero((c & 0x20) == 0)  # each value's last character
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts + 1
    if lengths.max() > 6:  # 30 bits: pycocotools shifts in a C int (longer values overflow there)
        return None
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    x = np.where(c[ends] & 0x10, x - (1 << (5 * lengths)), x)  # sign extension
    runs = x.copy()  # run m > 2 is stored as its difference from run m - 2
    runs[3::2] = np.cumsum(x[3::2]) + (x[1] if len(x) > 3 else 0)
    runs[4::2] = np.cumsum(x[4::2]) + (x[2] if len(x) > 4 else 0)
    if (runs < 0).any():
        return None
    return int(runs.sum())


def parse_segmentation(seg, width: int, height: int):
    """A COCO ``segmentation`` (polygons ``[[x, y, ...], ...]``, or RLE ``{"size": [H, W],
    "counts": [...] or "..."}``) of a ``width x height`` image as ``(RLE, None)``, or
    ``(None, reason)`` when it is malformed: a polygon with an odd number of coordinates or
    fewer than 3 points, a point more than `TOLERANCE` outside the image, a string, an RLE of
    another size or whose counts do not add up to ``H * W``."""
    if isinstance(seg, list):
        if not seg:
            return None, "'segmentation' is an empty list"
        for k, p in enumerate(seg):
            if not (isinstance(p, list) and all(_number(v) for v in p)):
                return None, f"'segmentation' polygon {k + 1} is not a list of numbers: {p!r:.60}"
            if len(p) % 2:
                return None, f"'segmentation' polygon {k + 1} has an odd number of coordinates ({len(p)})"
            if len(p) < 6:
                return None, f"'segmentation' polygon {k + 1} has {len(p) // 2} point(s); a polygon needs 3"
            xy = np.array(p, np.float64).reshape(-1, 2)
            if (xy < -TOLERANCE).any() or (xy[:, 0] > width + TOLERANCE).any() or (xy[:, 1] > height + TOLERANCE).any():
                return None, f"'segmentation' polygon {k + 1} lies outside the {width}x{height} image"
        return from_polygons(seg, height, width), None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if size != [height, width]:
            return None, f"'segmentation' RLE size {size!r:.40} is not the image's [height, width] [{height}, {width}]"
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return None, "'segmentation' RLE counts are not non-negative integers"
            if sum(counts) != height * width:
                return None, f"'segmentation' RLE counts add up to {sum(counts)}, not {height}*{width}"
            return mask_utils.frPyObjects(seg, height, width), None
        if isinstance(counts, str):
            raw = counts.encode("ascii", "replace")
            total = _rle_string_sum(raw)
            if total != height * width:
                shown = "are malformed" if total is None else f"add up to {total}"
                return None, f"'segmentation' RLE counts {shown}, not {height}*{width}"
            return {"size": [height, width], "counts": raw}, None
        return None, f"'segmentation' RLE counts must be a list or a string, not {counts!r:.40}"
    if isinstance(seg, str):
        return None, f"'segmentation' is a string ({seg!r:.40}), not polygons or RLE"
    return None, f"'segmentation' must be polygons or RLE, not {seg!r:.40}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rle_json(rle: dict) -> dict:
    """An RLE as JSON: ``{"size": [H, W], "counts": str}`` (compressed)."""
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def check_masks(masks, boxes: np.ndarray, path, what=None) -> list[Problem]:
    """Problems of masks (an RLE or None per box) against their annotated ``boxes [N, 4]``
    (xyxy): an empty mask, or one whose box differs from the annotated box by more than
    `TOLERANCE` (1 px: rounding) on a side. `what` names the objects as in `check_boxes`."""
    problems = []
    for i, rle in enumerate(masks):
        if rle is None:
            continue
        name = what[i] if what is not None else f"object {i + 1}"
        if mask_areas([rle])[0] == 0:
            problems.append(Problem(str(path), f"{name}: its mask is empty"))
            continue
        own = mask_boxes([rle])[0]
        if np.abs(own.astype(np.float64) - boxes[i]).max() > TOLERANCE:
            shown = " ".join(f"{v:g}" for v in own)
            box = " ".join(f"{v:g}" for v in boxes[i])
            problems.append(
                Problem(str(path), f"{name}: its mask's box [{shown}] disagrees with the box [{box}] (x1 y1 x2 y2)")
            )
    return problems


def _voc_palette() -> list[int]:
    """Pascal VOC's colour map (``bitget`` of the index), 256 RGB triples flattened."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_VOID = 255  # VOC's "void" index: object borders and unlabelled pixels, no object's


def read_index_png(path) -> tuple[np.ndarray | None, str | None]:
    """The indices ``uint8 [H, W]`` of a palette (or 8-bit grey) PNG such as VOC's
    ``SegmentationObject/ID.png``, or ``(None, reason)`` when it cannot be read as one."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                return None, f"not a palette or 8-bit grey PNG (mode {im.mode})"
            return np.asarray(im, np.uint8), None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return None, f"unreadable PNG: {e}"


def write_index_png(path, indices: np.ndarray) -> None:
    """Write ``uint8 [H, W]`` indices as a palette PNG with VOC's colours (atomically)."""
    im = Image.fromarray(np.asarray(indices, np.uint8), "P")
    im.putpalette(_voc_palette())
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def index_masks(indices: np.ndarray, count: int) -> list:
    """The RLEs of indices ``1..count`` of an index image (None where an index has no pixel;
    0 is background and `VOC_VOID` no object's)."""
    return [encode(indices == k) if (indices == k).any() else None for k in range(1, count + 1)]


def index_image(masks: list, height: int, width: int) -> np.ndarray:
    """``uint8 [H, W]``: index ``i + 1`` where mask ``i`` is set (a later mask over an earlier
    one where they overlap), 0 elsewhere; at most 254 masks (255 is VOC's void)."""
    if len(masks) >= VOC_VOID:
        raise ValueError(f"{len(masks)} objects: a VOC index image holds at most {VOC_VOID - 1}")
    out = np.zeros((height, width), np.uint8)
    for i, rle in enumerate(masks):
        if rle is not None:
            out[decode(rle).astype(bool)] = i + 1
    return out
