"""The built-in dataset: textured shapes on photographic backgrounds, in the VOC layout.

Four classes told apart by shape: ``circle`` (ellipses), ``rectangle``, ``star`` (five
points) and ``triangle``; each of varied size (about 12 to 55 % of the image side), aspect,
rotation, colour and texture (plain, stripes, checks, gradient), 0 to 5 per image. Later
shapes may cover earlier ones, but every shape keeps at least `MIN_VISIBLE` (80 %) of its area
in view, and its box is the box of its visible pixels. Backgrounds are crops of the sample
photos bundled with scikit-image; thin lines and small irregular blobs are clutter that is
not an object. Object colours are picked for contrast with the background beneath them.

Presets (`PRESETS`, ``rcnn data synth --preset NAME``) walk the road to R-CNN one
difficulty at a time, each built from the same parts (`_background`, `_clutter`,
`_outline`, `_pose`, `_paint`): ``rectangle`` (one white axis-aligned box on black),
``object`` (one textured star of a fixed size on a plain background), ``sizes``,
``transforms`` (rotation, flips, brightness and contrast), ``backgrounds`` (photos with
clutter), ``absent`` (about a third of the images without an object), ``classes`` (one
object of four classes) and ``multi``, the scene described above and the default; beside the
road, ``dense``: many small objects of three classes, neighbours touching (small, dense
objects stress the proposals, the stride-16 map, NMS and the per-image caps).

Same arguments, same bytes: image ``i`` depends only on ``(preset, seed, i, size)``, images
are written by OpenCV as JPEG with fixed settings (PNG for ``rectangle``, whose pixels must
stay exactly 0 and 255).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rcnn.cache import atomic_write, write_text
from rcnn.datasets.core import Dataset, Sample
from rcnn.datasets.masks import encode
from rcnn.datasets.voc import write_voc
from rcnn.errors import ConfigError, DatasetError
from rcnn.progress import progress

CLASSES = ["circle", "rectangle", "star", "triangle"]
BACKGROUNDS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "brick",
    "camera",
    "grass",
    "gravel",
    "moon",
]
MIN_VISIBLE = 0.8  # share of a shape's area that must stay in view
VERSION = 3  # bump when the generator's output changes (3: masks)
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


def _pose(
    rng: np.random.Generator, outline: np.ndarray, size: int, scale=(0.12, 0.55), rotate: bool = True, beside=None
):
    """`outline` turned (a random angle, or none), scaled so that its longer side is a random
    share in `scale` of the image side, and placed at random inside the image (`beside`, a
    box ``[x1, y1, x2, y2]``: touching that box on a random side, kept inside the image): its
    points ``[K, 2]`` and its anti-aliased coverage ``float32 [size, size]`` (1 inside)."""
    angle = rng.uniform(0, 2 * np.pi) if rotate else 0.0
    rotated = outline @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    extent = rotated.max(0) - rotated.min(0)
    points = (rotated - rotated.min(0)) * (rng.uniform(*scale) * size / extent.max())
    span = points.max(0)
    if beside is None:
        points += rng.uniform(1, size - 1 - span)
    else:
        (x1, y1, x2, y2), gap = beside, rng.uniform(-0.1, 0.05, 2) * span  # a little overlap or a hairline gap
        side = rng.integers(4)
        corner = np.array(
            [
                (x2 + gap[0], rng.uniform(y1 - span[1], y2)),  # right of it
                (x1 - span[0] - gap[0], rng.uniform(y1 - span[1], y2)),  # left
                (rng.uniform(x1 - span[0], x2), y2 + gap[1]),  # below
                (rng.uniform(x1 - span[0], x2), y1 - span[1] - gap[1]),  # above
            ][side]
        )
        points += np.clip(corner, 1, size - 1 - span)
    alpha = np.zeros((size, size), np.float32)
    cv2.fillPoly(alpha, [np.round(points * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return points, alpha


def _paint(
    rng: np.random.Generator, image: np.ndarray, points: np.ndarray, alpha: np.ndarray, solid: np.ndarray
) -> None:
    """Paint a shape (its `points`, coverage `alpha` and `solid` mask from `_pose`) into
    `image` in place: a textured fill in a colour that contrasts with the pixels beneath."""
    colour = _contrasting_colour(rng, image[solid].mean(0))
    (x0, y0), (x1, y1) = np.floor(points.min(0)).astype(int), np.ceil(points.max(0)).astype(int) + 1
    region, a = image[y0:y1, x0:x1], alpha[y0:y1, x0:x1, None]
    region[:] = region * (1 - a) + _texture(rng, a.shape[:2], colour) * a


def _mask_box(mask: np.ndarray) -> list[int]:
    """The box ``[x1, y1, x2, y2]`` of a mask's pixels (pixel edges, continuous coordinates)."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _finish(image: np.ndarray, boxes, labels, masks) -> tuple:
    """``uint8`` image, ``float32 [N, 4]`` boxes, ``int64 [N]`` labels and the objects' masks
    (a list of ``bool [H, W]``, each object's visible pixels)."""
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    masks = [np.ascontiguousarray(m, bool) for m in masks]
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), masks


def _place_shapes(rng, image, size: int, classes, count: int, scale=(0.12, 0.55), touching: float = 0.0):
    """Paint `count` shapes of `classes` (``_outline`` kinds) into `image` in place, each
    where it leaves every shape drawn before at least `MIN_VISIBLE` of its area (20 tries,
    else it is left out), a share `touching` of them placed against one drawn before (see
    `_pose`); returns the labels ``1..C`` and the visible-pixel masks of the shapes drawn."""
    masks, labels, boxes = [], [], []  # full masks of the shapes drawn so far, and their visible parts
    for _ in range(count):
        label = int(rng.integers(len(classes))) + 1
        outline = _outline(rng, classes[label - 1])
        for _attempt in range(20):
            beside = boxes[rng.integers(len(boxes))] if touching and boxes and rng.random() < touching else None
            points, alpha = _pose(rng, outline, size, scale, True, beside)
            solid = alpha >= 0.5
            if solid.any() and all((m["visible"] & ~solid).sum() >= MIN_VISIBLE * m["area"] for m in masks):
                break
        else:
            continue  # no room for this shape
        _paint(rng, image, points, alpha, solid)
        for m in masks:
            m["visible"] &= ~solid
        masks.append({"visible": solid, "area": int(solid.sum())})
        labels.append(label)
        boxes.append(_mask_box(solid))
    return labels, [m["visible"] for m in masks]


def _render_multi(rng: np.random.Generator, size: int):
    """The ``multi`` scene (the generator's original one): a photo with clutter and 0 to 5
    shapes of the four classes; returns `_finish`'s four values."""
    image = _background(rng, size)
    _clutter(rng, image)
    labels, visible = _place_shapes(rng, image, size, CLASSES, rng.integers(0, 6))
    return _finish(image, [_mask_box(m) for m in visible], labels, visible)


def _render_dense(rng: np.random.Generator, size: int):
    """The ``dense`` scene: a photo with clutter and 6 to 24 small shapes (5 to 20 % of the
    side) of three classes, 80 % of them placed touching one drawn before; returns `_finish`'s
    four values."""
    image = _background(rng, size)
    _clutter(rng, image)
    labels, visible = _place_shapes(rng, image, size, PRESETS["dense"].classes, rng.integers(6, 25), (0.05, 0.2), 0.8)
    return _finish(image, [_mask_box(m) for m in visible], labels, visible)


def render(rng: np.random.Generator, size: int = 256):
    """One synthetic image ``uint8 [size, size, 3]`` RGB, its boxes ``float32 [N, 4]`` (the
    visible pixels' box) and labels ``int64 [N]`` in ``1..4`` (see `CLASSES`): the ``multi``
    preset, the generator's default."""
    return _render_multi(rng, size)[:3]


# -- presets: the road to R-CNN, one difficulty at a time ------------------------------------


@dataclass(frozen=True)
class Preset:
    """One step of the road to R-CNN (``rcnn data synth --preset NAME``): each adds one
    difficulty to the one before. `classes`: the class list; `scale`: the range of an
    object's longer side as a share of the image side; `background`: ``black``, ``plain``
    (one flat colour) or ``photo`` (a crop of a sample photo, with clutter); `rotate`, `flip`,
    `jitter` (brightness and contrast): the transforms; `absent`: the share of images drawn
    without an object; `suffix`: the image format (PNG where pixels must stay exact)."""

    name: str
    text: str
    classes: tuple[str, ...] = ("star",)
    scale: tuple[float, float] = (0.45, 0.45)
    background: str = "plain"
    rotate: bool = False
    flip: bool = False
    jitter: bool = False
    absent: float = 0.0
    suffix: str = ".jpg"


_TRANSFORMS = dict(scale=(0.2, 0.6), rotate=True, flip=True, jitter=True)
PRESETS = {
    p.name: p
    for p in [
        Preset(
            "rectangle",
            "one white axis-aligned rectangle on black",
            ("rectangle",),
            (0.15, 0.6),
            "black",
            suffix=".png",
        ),
        Preset("object", "one textured star of a fixed size on a plain background"),
        Preset("sizes", "one star of any size (20 to 60 % of the side) on a plain background", scale=(0.2, 0.6)),
        Preset("transforms", "one star, rotated, flipped, brighter or darker, more or less contrast", **_TRANSFORMS),
        Preset("backgrounds", "the same on photographs with clutter", background="photo", **_TRANSFORMS),
        Preset(
            "absent",
            "the same, but about a third of the images hold no object",
            background="photo",
            absent=1 / 3,
            **_TRANSFORMS,
        ),
        Preset(
            "classes",
            "one object per image of four classes (circle, rectangle, star, triangle)",
            tuple(CLASSES),
            background="photo",
            **_TRANSFORMS,
        ),
        Preset(
            "multi",
            "0 to 5 objects per image of four classes (the default set)",
            tuple(CLASSES),
            (0.12, 0.55),
            "photo",
            rotate=True,
        ),
        Preset(
            "dense",
            "6 to 24 small objects per image (5 to 20 % of the side) of three classes, neighbours touching",
            ("circle", "rectangle", "triangle"),
            (0.05, 0.2),
            "photo",
            rotate=True,
        ),
    ]
}


def _render_rectangle(rng: np.random.Generator, size: int):
    """The ``rectangle`` scene: pixels 255 inside one axis-aligned box, 0 outside."""
    image = np.zeros((size, size, 3), np.float32)
    w, h = (rng.uniform(0.15, 0.6, 2) * size).astype(int)
    x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    image[y : y + h, x : x + w] = 255
    mask = np.zeros((size, size), bool)
    mask[y : y + h, x : x + w] = True
    return _finish(image, [[x, y, x + w, y + h]], [1], [mask])


def _render_single(rng: np.random.Generator, size: int, preset: Preset):
    """A scene of at most one object, as `preset` says (see `Preset`)."""
    if preset.background == "photo":
        image = _background(rng, size)
        _clutter(rng, image)
    else:
        image = np.empty((size, size, 3), np.float32)
        image[:] = rng.uniform(30, 225, 3) if preset.background == "plain" else 0
    present = rng.random() >= preset.absent
    labels, masks = [], []
    if present:
        label = int(rng.integers(len(preset.classes))) + 1 if len(preset.classes) > 1 else 1
        outline = _outline(rng, preset.classes[label - 1])
        points, alpha = _pose(rng, outline, size, preset.scale, preset.rotate)
        solid = alpha >= 0.5
        _paint(rng, image, points, alpha, solid)
        masks, labels = [solid], [label]
    if preset.flip:
        lr, ud = rng.random(2) < 0.5
        axes = [a for a, f in ((1, lr), (0, ud)) if f]
        if axes:
            image = np.ascontiguousarray(np.flip(image, axes))
            masks = [np.flip(m, axes) for m in masks]
    if preset.jitter:
        contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-40, 40)
        image = (image - 128) * contrast + 128 + brightness
    return _finish(image, [_mask_box(m) for m in masks], labels, masks)


def render_preset(rng: np.random.Generator, preset: str = "multi", size: int = 256):
    """One image of preset `preset` (see `PRESETS`): ``uint8 [size, size, 3]`` RGB, boxes
    ``float32 [N, 4]``, labels ``int64 [N]`` in ``1..C`` of the preset's classes, and the
    object mask ``bool [size, size]`` (the visible pixels of every object)."""
    image, boxes, labels, masks = render_objects(rng, preset, size)
    union = np.zeros((size, size), bool)
    for m in masks:
        union |= m
    return image, boxes, labels, union


def render_objects(rng: np.random.Generator, preset: str = "multi", size: int = 256):
    """As `render_preset`, with each object's own mask: a list of ``bool [size, size]`` (its
    visible pixels; objects' masks do not overlap, and each box is its mask's box)."""
    if preset not in PRESETS:
        raise ConfigError(f"synthetic data: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if preset == "multi":
        return _render_multi(rng, size)
    if preset == "rectangle":
        return _render_rectangle(rng, size)
    if preset == "dense":
        return _render_dense(rng, size)
    return _render_single(rng, size, PRESETS[preset])


def make_synthetic(
    out, images: int, seed: int, size: int = 256, test_fraction: float = 0.2, preset: str | None = None
) -> Dataset:
    """Write `images` synthetic images as a VOC root at `out` (``ImageSets/Main/`` train.txt,
    test.txt and trainval.txt, which equals train) and return the whole dataset. `preset`:
    one of `PRESETS` (None: ``multi``, the default set).

    A folder already holding this exact set is reused; one holding another synthetic set
    is replaced; any other non-empty folder is refused.
    """
    if images < 1 or size < 64 or not 0 <= test_fraction < 1:
        raise ConfigError("synthetic data: need images >= 1, size >= 64 and 0 <= test fraction < 1")
    preset = preset or "multi"
    if preset not in PRESETS:
        raise ConfigError(f"synthetic data: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    out = Path(out)
    params = {"version": VERSION, "images": images, "seed": seed, "size": size, "test_fraction": test_fraction}
    if preset != "multi":  # the default set keeps the marker it always had
        params["preset"] = preset
    marker = out / "synthetic.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == params:
            from rcnn.datasets.voc import read_voc

            return read_voc(out, classes=list(spec.classes), check_images=False)
        marker.unlink()
        for sub in ("Annotations", "JPEGImages", "ImageSets", "SegmentationObject", "SegmentationClass"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif out.exists() and any(out.iterdir()):
        raise DatasetError(out, "folder is not empty and holds no synthetic set; choose another")
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(images - 1)))
    samples = []
    for i in progress(range(images), desc="synthetic images"):
        image, boxes, labels, masks = render_objects(np.random.default_rng([seed, i]), preset, size)
        path = out / "JPEGImages" / f"{i:0{width}d}{spec.suffix}"
        ok, data = cv2.imencode(
            spec.suffix, np.ascontiguousarray(image[:, :, ::-1]), _JPEG if spec.suffix == ".jpg" else []
        )
        if not ok:
            raise DatasetError(path, "OpenCV could not encode the image")
        with atomic_write(path) as f:
            f.write(data.tobytes())
        samples.append(Sample(path.stem, path, size, size, boxes, labels, masks=[encode(m) for m in masks]))
    order = np.random.default_rng([seed, images]).permutation(images)
    test = set(order[: int(round(images * test_fraction))].tolist())
    dataset = Dataset(list(spec.classes), samples)
    train_ids = [s.id for i, s in enumerate(samples) if i not in test]
    write_voc(dataset.subset(train_ids), out, split="train")
    write_voc(dataset.subset([s.id for i, s in enumerate(samples) if i in test]), out, split="test")
    write_text(out / "ImageSets" / "Main" / "trainval.txt", "".join(f"{i}\n" for i in train_ids))
    write_text(marker, json.dumps(params))
    return dataset
