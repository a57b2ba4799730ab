"""Drawing detections (and ground truth) on images, for `rcnn detect --draw`, reports and
`rcnn explain`: labelled detections (`draw_detections`, their masks filled: `fill_masks`), plain outlines (`draw_boxes`), box
moves (`draw_moves`: before -> after, as regression moves them), a heat map over an image
(`heat_overlay`), a caption strip (`caption`) and a grid of tiles (`image_grid`)."""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from rcnn.cache import atomic_write
from rcnn.datasets.core import Detections
from rcnn.datasets.masks import decode


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per label (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray, detections: Detections, classes, gt_boxes=None, scores: bool = True
) -> np.ndarray:
    """A copy of ``uint8 [H, W, 3]`` RGB `image` with each detection's box, class name and
    score (unless not `scores`: ground truth, say) drawn, and its mask, when `detections` has
    masks, as a translucent fill in the class's colour (`fill_masks`); `gt_boxes` ``[G, 4]``,
    when given, are drawn first as thin white boxes."""
    out = np.ascontiguousarray(image).copy()
    if detections.masks is not None:
        out = fill_masks(out, detections.masks, detections.labels, np.argsort(detections.scores))
    scale = max(out.shape[:2]) / 500
    thick = max(1, round(2 * scale))
    for box in [] if gt_boxes is None else np.asarray(gt_boxes).reshape(-1, 4):
        x1, y1, x2, y2 = np.round(box).astype(int)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 1, cv2.LINE_AA)
    order = np.argsort(detections.scores)  # best drawn last, on top
    for i in order:
        x1, y1, x2, y2 = np.round(detections.boxes[i]).astype(int)
        label = int(detections.labels[i])
        colour = class_colour(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        text = f"{classes[label - 1]} {detections.scores[i]:.2f}" if scores else classes[label - 1]
        font = 0.4 * max(scale, 0.8)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = max(y1, th + base)
        tx = max(0, min(x1, out.shape[1] - tw))  # the label stays inside the image at its right edge
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw, ty), colour, -1)
        cv2.putText(out, text, (tx, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def fill_masks(image: np.ndarray, masks, labels, order=None, alpha: float = 0.45) -> np.ndarray:
    """A copy of `image` with each mask (a COCO RLE, `rcnn.datasets.masks`; None: skipped)
    filled in its label's colour at opacity `alpha`, in `order` (later on top). A mask of
    another size than the image (a shrunk picture) is resized to it (nearest pixel)."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    for i in range(len(masks)) if order is None else order:
        if masks[i] is None:
            continue
        m = decode(masks[i])
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        on = m.astype(bool)
        colour = np.array(class_colour(int(labels[i])), np.float32)
        out[on] = np.round(out[on] * (1 - alpha) + colour * alpha).astype(np.uint8)
    return out


def _thickness(image: np.ndarray) -> int:
    return max(1, round(2 * max(image.shape[:2]) / 500))


def draw_boxes(image: np.ndarray, boxes, colour=(255, 255, 255), thickness: int | None = None) -> np.ndarray:
    """A copy of `image` with `boxes` ``[N, 4]`` drawn as plain outlines in one colour."""
    out = np.ascontiguousarray(image).copy()
    thick = thickness or _thickness(out)
    for x1, y1, x2, y2 in np.round(np.asarray(boxes, np.float32).reshape(-1, 4)).astype(int):
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
    return out


def draw_moves(
    image: np.ndarray, before, after, before_colour=(255, 255, 255), after_colour=(255, 64, 64)
) -> np.ndarray:
    """A copy of `image` with paired boxes: each `before` box (thin, `before_colour`), the
    `after` box it became (`after_colour`) and an arrow from the one's centre to the other's."""
    before = np.asarray(before, np.float32).reshape(-1, 4)
    after = np.asarray(after, np.float32).reshape(-1, 4)
    out = draw_boxes(image, before, before_colour, 1)
    out = draw_boxes(out, after, after_colour)
    for b, a in zip(before, after):
        p = tuple(np.round((b[:2] + b[2:]) / 2).astype(int).tolist())
        q = tuple(np.round((a[:2] + a[2:]) / 2).astype(int).tolist())
        if p != q:
            cv2.arrowedLine(out, p, q, after_colour, 1, cv2.LINE_AA, tipLength=0.3)
    return out


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55, vmax: float | None = None) -> np.ndarray:
    """`image` blended with `heat` ``[H, W]`` (>= 0; scaled to `vmax`, None: its maximum)
    in a colour map (dark: cold, yellow: hot)."""
    h = np.asarray(heat, np.float32)
    top = h.max() if vmax is None else vmax
    h = np.clip(h / top, 0, 1) if top > 0 else h
    colours = cv2.applyColorMap(np.round(h * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[:, :, ::-1]
    return np.round(image * (1 - alpha) + colours * alpha).astype(np.uint8)


def caption(image: np.ndarray, text: str, width: int | None = None) -> np.ndarray:
    """`image` with a black strip holding `text` (white) above it."""
    font = 0.35 if image.shape[1] < 200 else 0.45
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    strip = np.zeros((th + base + 6, image.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, np.ascontiguousarray(image)], 0)


def image_grid(tiles, columns: int, pad: int = 3, background=(32, 32, 32)) -> np.ndarray:
    """``uint8`` RGB tiles (any sizes) laid out row by row, `columns` a row, each in a cell
    of the largest tile's size, `pad` pixels apart."""
    tiles = [np.ascontiguousarray(t) for t in tiles]
    if not tiles:
        return np.zeros((1, 1, 3), np.uint8)
    ch, cw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    out = np.empty((rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3), np.uint8)
    out[:] = background
    for i, t in enumerate(tiles):
        y, x = pad + (i // columns) * (ch + pad), pad + (i % columns) * (cw + pad)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def save_image(path, image: np.ndarray) -> Path:
    """Write ``uint8 [H, W, 3]`` RGB `image` (PNG or JPEG by suffix), atomically."""
    path = Path(path)
    try:
        ok, data = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f"{path}: could not write image")
    with atomic_write(path) as f:
        f.write(data.tobytes())
    return path
