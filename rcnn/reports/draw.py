"""Drawing detections (and ground truth) on images, for `rcnn detect --draw` and reports."""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from rcnn.cache import atomic_write
from rcnn.datasets.core import Detections


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per label (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections: Detections, classes, gt_boxes=None) -> np.ndarray:
    """A copy of ``uint8 [H, W, 3]`` RGB `image` with each detection's box, class name and
    score drawn; `gt_boxes` ``[G, 4]``, when given, are drawn first as thin white boxes."""
    out = np.ascontiguousarray(image).copy()
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
        text = f"{classes[label - 1]} {detections.scores[i]:.2f}"
        font = 0.4 * max(scale, 0.8)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
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
