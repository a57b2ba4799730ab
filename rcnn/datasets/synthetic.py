"""The built-in dataset: textured shapes on photographic backgrounds, in the VOC layout.

Four classes told apart by shape: ``circle`` (ellipses), ``rectangle``, ``star`` (five
points) and ``triangle``; each of varied size (about 12 to 55 % of the image side), aspect,
rotation, colour and texture (plain, stripes, checks, gradient), 0 to 5 per image. Later
shapes may cover earlier ones, but every shape keeps at least `MIN_VISIBLE` (80 %) of its area
in view, and its box is the box of its visible pixels. Backgrounds are crops of the sample
photos bundled with scikit-image; thin lines and small irregular blobs are clutter that is
not an object. Object colours are picked for contrast with the background beneath them.

Same arguments, same bytes: image ``i`` depends only on ``(seed, i, size)``, images are
written by OpenCV as JPEG with fixed settings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from rcnn.cache import atomic_write, write_text
from rcnn.datasets.core import Dataset, Sample
from rcnn.datasets.voc import write_voc
from rcnn.errors import ConfigError, DatasetError
from rcnn.progress import progress

CLASSES = ["circle", "rectangle", "star", "triangle"]
BACKGROUNDS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "brick", "camera", "grass", "gravel", "moon"]
MIN_VISIBLE = 0.8  # share of a shape's area that must stay in view
VERSION = 2  # bump when the generator's output changes
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
_photos: list[np.ndarray] = []


def backgrounds() -> list[np.ndarray]:
    """The scikit-image sample photos that load offline, as ``uint8 [H, W, 3]`` RGB."""
    if not _photos:
        import skimage.data

        for name in BACKGROUNDS:
            try:
                photo = np.asarray(getattr(skimage.data, name)())
            except Exception:  # noqa: BLE001 - a photo that needs a download is left out
                continue
            _photos.append(np.ascontiguousarray(np.dstack([photo] * 3) if photo.ndim == 2 else photo[:, :, :3]))
        if not _photos:
            raise DatasetError(None, "no scikit-image sample photo could be loaded for the backgrounds")
    return _photos


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = backgrounds()
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = cv2.resize(photo[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tint = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.75, 1.15)
    return np.clip(crop * tint, 0, 255).astype(np.float32)


def _clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Thin lines and small irregular blobs, drawn in place: clutter, not objects."""
    size = image.shape[0]
    for _ in range(rng.integers(0, 5)):
        p, q = rng.uniform(0, size, 2).astype(int), rng.uniform(0, size, 2).astype(int)
        colour = rng.uniform(0, 255, 3).tolist()
        cv2.line(image, tuple(p.tolist()), tuple(q.tolist()), colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 5)):
        reach = int(0.06 * size) + 8  # a blob stays within this many pixels of its centre
        cx, cy = rng.integers(reach, size - reach, 2) if size > 2 * reach else (size // 2, size // 2)
        mask = np.zeros((2 * reach, 2 * reach), np.float32)
        for _ in range(3):
            centre = (int(reach + rng.uniform(-5, 5)), int(reach + rng.uniform(-5, 5)))
            axes = tuple(np.maximum(rng.uniform(0.01, 0.035, 2) * size, 1).astype(int).tolist())
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
        alpha = cv2.GaussianBlur(mask, (0, 0), 1.5)[..., None] * rng.uniform(0.4, 0.8)
        region = image[cy - reach : cy + reach, cx - reach : cx + reach]
        region[:] = region * (1 - alpha) + alpha * np.array(rng.uniform(0, 255, 3), np.float32)


def _outline(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A shape's outline ``[K, 2]`` around the origin, before rotation and scaling."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        return np.stack([np.cos(t), np.sin(t) * rng.uniform(0.65, 1.0)], 1)
    if kind == "rectangle":
        a = rng.uniform(0.45, 1.0)
        return np.array([[-1, -a], [1, -a], [1, a], [-1, a]], float)
    if kind == "triangle":
        t = np.deg2rad([90, 210, 330]) + rng.uniform(-0.15, 0.15, 3)
        return np.stack([np.cos(t), np.sin(t) * rng.uniform(0.75, 1.1)], 1)
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)  # star: outer and inner points
    r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
    return np.stack([np.cos(t) * r, np.sin(t) * r], 1)


def _texture(rng: np.random.Generator, shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
    """A ``float32 [h, w, 3]`` fill: the colour, plain or patterned with a darker shade."""
    dark = colour * rng.uniform(0.6, 0.8)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # plain
        weight = np.zeros(shape, np.float32)
    elif kind == 1:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 14)
        weight = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 2:  # checks
        cell = int(rng.integers(4, 10))
        weight = ((x // cell + y // cell) % 2).astype(np.float32)
    else:  # gradient
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        weight = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    noise = rng.normal(0, 5, (*shape, 1)).astype(np.float32)
    return colour * (1 - weight[..., None]) + dark * weight[..., None] + noise


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """Of a few vivid random colours, the one farthest from `under` (the mean RGB beneath)."""
    hsv = np.stack([rng.integers(0, 180, 8), rng.integers(110, 256, 8), rng.integers(120, 256, 8)], 1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.float32)
    return rgb[np.argmax(np.linalg.norm(rgb - under, axis=1))]


def render(rng: np.random.Generator, size: int = 256):
    """One synthetic image ``uint8 [size, size, 3]`` RGB, its boxes ``float32 [N, 4]`` (the
    visible pixels' box) and labels ``int64 [N]`` in ``1..4`` (see `CLASSES`)."""
    image = _background(rng, size)
    _clutter(rng, image)
    masks, labels = [], []  # full masks of the shapes drawn so far, and their visible parts
    for _ in range(rng.integers(0, 6)):
        label = int(rng.integers(len(CLASSES))) + 1
        outline = _outline(rng, CLASSES[label - 1])
        for _attempt in range(20):
            angle = rng.uniform(0, 2 * np.pi)
            rotated = outline @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
            extent = rotated.max(0) - rotated.min(0)
            points = (rotated - rotated.min(0)) * (rng.uniform(0.12, 0.55) * size / extent.max())
            span = points.max(0)
            points += rng.uniform(1, size - 1 - span)
            alpha = np.zeros((size, size), np.float32)
            cv2.fillPoly(alpha, [np.round(points * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
            solid = alpha >= 0.5
            if all((m["visible"] & ~solid).sum() >= MIN_VISIBLE * m["area"] for m in masks):
                break
        else:
            continue  # no room for this shape
        colour = _contrasting_colour(rng, image[solid].mean(0))
        (x0, y0), (x1, y1) = np.floor(points.min(0)).astype(int), np.ceil(points.max(0)).astype(int) + 1
        region, a = image[y0:y1, x0:x1], alpha[y0:y1, x0:x1, None]
        region[:] = region * (1 - a) + _texture(rng, a.shape[:2], colour) * a
        for m in masks:
            m["visible"] &= ~solid
        masks.append({"visible": solid, "area": int(solid.sum())})
        labels.append(label)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m["visible"])
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def make_synthetic(out, images: int, seed: int, size: int = 256, test_fraction: float = 0.2) -> Dataset:
    """Write `images` synthetic images as a VOC root at `out` (``ImageSets/Main/`` train.txt,
    test.txt and trainval.txt, which equals train) and return the whole dataset.

    A folder already holding this exact set is reused; one holding another synthetic set
    is replaced; any other non-empty folder is refused.
    """
    if images < 1 or size < 64 or not 0 <= test_fraction < 1:
        raise ConfigError("synthetic data: need images >= 1, size >= 64 and 0 <= test fraction < 1")
    out = Path(out)
    params = {"version": VERSION, "images": images, "seed": seed, "size": size, "test_fraction": test_fraction}
    marker = out / "synthetic.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == params:
            from rcnn.datasets.voc import read_voc

            return read_voc(out, classes=CLASSES, check_images=False)
        marker.unlink()
        for sub in ("Annotations", "JPEGImages", "ImageSets"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif out.exists() and any(out.iterdir()):
        raise DatasetError(out, "folder is not empty and holds no synthetic set; choose another")
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(images - 1)))
    samples = []
    for i in progress(range(images), desc="synthetic images"):
        image, boxes, labels = render(np.random.default_rng([seed, i]), size)
        path = out / "JPEGImages" / f"{i:0{width}d}.jpg"
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), _JPEG)
        if not ok:
            raise DatasetError(path, "OpenCV could not encode the image")
        with atomic_write(path) as f:
            f.write(data.tobytes())
        samples.append(Sample(path.stem, path, size, size, boxes, labels))
    order = np.random.default_rng([seed, images]).permutation(images)
    test = set(order[: int(round(images * test_fraction))].tolist())
    dataset = Dataset(list(CLASSES), samples)
    train_ids = [s.id for i, s in enumerate(samples) if i not in test]
    write_voc(dataset.subset(train_ids), out, split="train")
    write_voc(dataset.subset([s.id for i, s in enumerate(samples) if i in test]), out, split="test")
    write_text(out / "ImageSets" / "Main" / "trainval.txt", "".join(f"{i}\n" for i in train_ids))
    write_text(marker, json.dumps(params))
    return dataset
