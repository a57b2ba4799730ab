"""Seeded data augmentation for the trainers with a RoI head (`rcnn.heads.roi_trainer`): pure
numpy / OpenCV functions on ``uint8 [H, W, 3]`` RGB images and ``float32 [N, 4]`` boxes
(``x1, y1, x2, y2``, continuous pixels), every random choice drawn from the numpy
``Generator`` given.

- Scale jitter (Fast R-CNN's multi-scale training, Sec. 5.2): `draw_scale` picks the
  shortest side of one image for one iteration; `rcnn.features.roi.rescale` does the rest.
- Random crops (SSD's and torchvision's ``RandomIoUCrop`` in spirit, simpler): `draw_crop`
  picks a window of 0.3 to 1 of each side holding at least one object's centre, `crop_image`
  cuts it, `crop_boxes` moves boxes into it (clipped to it; a box whose centre falls outside
  is dropped).
- Colour jitter: `draw_colour` draws brightness, contrast and saturation factors, each in
  ``[1 - s, 1 + s]``, `adjust_colour` applies them (torchvision's ``ColorJitter`` rules, in a
  fixed order).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "CROP_MIN_SIDE",
    "CROP_TRIES",
    "adjust_colour",
    "crop_boxes",
    "crop_image",
    "draw_colour",
    "draw_crop",
    "draw_scale",
]

CROP_MIN_SIDE = 0.3  # a crop keeps at least this fraction of each side (SSD's, RandomIoUCrop's min_scale)
CROP_TRIES = 10  # windows tried before giving up on a crop (the image is then not cropped)
CROP_DISTORTION = 2.0  # the crop's two fractions differ by at most this factor (RandomIoUCrop's aspect range)


def draw_scale(rng: np.random.Generator, scales: Sequence[int]) -> int:
    """One of `scales` (shortest sides in pixels), uniformly: one integer drawn from `rng`."""
    return int(scales[int(rng.integers(len(scales)))])


def draw_crop(
    rng: np.random.Generator,
    boxes: np.ndarray,
    height: int,
    width: int,
    min_side: float = CROP_MIN_SIDE,
    tries: int = CROP_TRIES,
) -> np.ndarray | None:
    """A crop window ``float32 [4]`` (``x1, y1, x2, y2``, whole pixels inside ``[0, width] x
    [0, height]``) of an image `height` x `width` px holding the centre of at least one of
    `boxes` ``[N, 4]`` (pixels of that image); None when there are no boxes or none of `tries`
    windows holds a centre. Each try draws four numbers from `rng`: the fraction of each side
    kept (uniform in ``[min_side, 1]``; tries whose two fractions differ by more than a factor
    `CROP_DISTORTION` are passed over) and the window's place (uniform)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    for _ in range(tries):
        fw, fh = rng.uniform(min_side, 1.0, size=2)
        u, v = rng.random(2)
        if not 1 / CROP_DISTORTION <= fw / fh <= CROP_DISTORTION:
            continue
        w, h = max(1, round(fw * width)), max(1, round(fh * height))
        x1, y1 = int(u * (width - w + 1)), int(v * (height - h + 1))
        window = np.array([x1, y1, x1 + w, y1 + h], np.float32)
        if _centres_inside(boxes, window).any():
            return window
    return None


def _centres_inside(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``bool [N]``: each box's centre strictly inside `window`."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx > window[0]) & (cx < window[2]) & (cy > window[1]) & (cy < window[3])


def crop_boxes(boxes: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cropped float32 [M, 4], keep bool [N])``: `boxes` ``[N, 4]`` (pixels of the whole
    image) in the pixels of `window`'s crop (`crop_image`): those whose centre lies inside the
    window (`keep`), shifted by its corner and clipped to its sides. A box inside the window
    is only shifted (exactly); a kept box keeps a positive area."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    window = np.asarray(window, np.float32)
    keep = _centres_inside(boxes, window)
    w, h = window[2] - window[0], window[3] - window[1]
    moved = boxes[keep] - window[[0, 1, 0, 1]]
    moved = np.clip(moved, 0, np.array([w, h, w, h], np.float32))
    return moved.astype(np.float32), keep


def crop_image(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """`image` ``[H, W, ...]`` cut to `window` (``x1, y1, x2, y2``, whole pixels, from
    `draw_crop`): ``[y2 - y1, x2 - x1, ...]``, a view."""
    x1, y1, x2, y2 = (int(v) for v in window)
    return image[y1:y2, x1:x2]


def draw_colour(rng: np.random.Generator, strength: float) -> np.ndarray:
    """Colour-jitter factors ``float64 [3]`` (brightness, contrast, saturation), each uniform
    in ``[1 - strength, 1 + strength]``: three numbers drawn from `rng`."""
    return rng.uniform(1.0 - strength, 1.0 + strength, size=3)


def adjust_colour(image: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """`image` ``uint8 [H, W, 3]`` RGB with `factors` (`draw_colour`) applied in turn, each
    result clipped to ``[0, 255]`` (torchvision's ``adjust_*`` rules): brightness scales the
    pixels, contrast blends them with the mean grey level of the image, saturation with each
    pixel's own grey level (ITU-R 601). A new ``uint8`` array of the same shape; factors of 1
    give the image back."""
    brightness, contrast, saturation = (float(f) for f in factors)
    x = np.ascontiguousarray(image, np.float32)
    x = np.clip(x * brightness, 0, 255)
    grey = float(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).mean())
    x = np.clip(grey + contrast * (x - grey), 0, 255)
    grey_px = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = np.clip(grey_px + saturation * (x - grey_px), 0, 255)
    return np.rint(x).astype(np.uint8)
