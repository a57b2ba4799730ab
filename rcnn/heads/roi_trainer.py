"""End-to-end training of a stride-16 trunk and the heads on its map (Fast and Faster R-CNN).

`RoITrainConfig`: the settings their ``[train]`` tables share. `RoITrainer`: what they share
on top of the package's one loop (`rcnn.heads.trainer.Trainer`: SGD with the head's rate
times `head_lr_mult`, warm-up and steps, guarded steps, checkpoints and resume). Each
iteration draws `images_per_batch` images (seeded by ``[seed, iteration]``), flips each
left-right with probability 1/2, rescales it (shortest side `scale`, longest at most
`max_size`) and optionally augments it (`RoITrainer._view`: scale jitter, random crops,
colour jitter; `rcnn.heads.augment`). The trunk's leading frozen layers run once per image,
flip and scale (`_split`), unless the image is cropped or its colours jittered.

A detector's trainer supplies `title`, `terms`, `meta` (what its checkpoint must match),
`_example` (one image's inputs and targets for one iteration, from `_view`) and `_loss` (the
losses of a batch of examples).
"""

from __future__ import annotations

import logging
import math
import os
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch import nn

from rcnn.config import require, to_dict
from rcnn.datasets.images import read_image
from rcnn.datasets.masks import decode as decode_masks
from rcnn.features.roi import choose_scale, image_tensor, rescale
from rcnn.heads.augment import adjust_colour, crop_boxes, crop_image, draw_colour, draw_crop, draw_scale
from rcnn.heads.sgd import SGDConfig
from rcnn.heads.trainer import Trainer

__all__ = [
    "FROZEN_STEM",
    "RoITrainConfig",
    "RoITrainer",
    "View",
    "check_image_size",
    "fit_to_data",
    "flip_boxes",
    "train_settings",
]

log = logging.getLogger(__name__)


DETECTIONS_PER_OBJECT = 3  # detections kept per image at least this x the most training objects in one image
PROPOSALS_PER_OBJECT = 10  # RPN proposals per image at test time likewise
FROZEN_STEM = tuple(f"features.{i}." for i in range(11))  # MobileNetV2's blocks 0-10: run once per image, flip, scale


@dataclass(frozen=True)
class RoITrainConfig(SGDConfig):
    """What the ``[train]`` tables of the detectors with a RoI head share: SGD
    (`rcnn.heads.sgd.SGDConfig`) over mini-batches of `images_per_batch` images x
    `rois_per_image` RoIs, `fg_fraction` of them foreground (IoU >= `fg_iou`, ground-truth
    boxes included). `cache_frozen`: the trunk's frozen leading layers run once per image,
    flip and scale, their output kept in memory (the same numbers, a fraction of the time; see
    `RoITrainer._split`).

    The length: `iterations` when > 0, else `epochs` passes over the training images (the
    rate stepped down after `lr_step_epochs`; `for_images` turns both into iterations, so a
    recipe carries to a dataset of another size). `warmup`: the rate rises linearly from
    `warmup_factor` x `lr` over the first `warmup` iterations. The defaults are the recipe
    measured to carry across datasets (cards, raccoon, the dense preset): lr 0.01, 20 epochs, the
    step at 14, 100 warm-up iterations from 1/1000, the gradient clipped to norm 10, blocks
    0-10 of MobileNetV2 frozen.

    Augmentation (`RoITrainer._view`, `rcnn.heads.augment`; all off by default, and off gives
    the numbers of the runs before it existed, bit for bit), each drawn per image and
    iteration from the iteration's seeded generator, after the flip, in this order:
    `scales`: the shortest side drawn from these pixel sizes (Fast R-CNN's multi-scale
    training; the longest still at most `max_size`; empty: `scale` only; test time uses
    `scale`), the frozen stem's output then kept per image, flip and scale. `crop`: the
    probability of a random crop of 0.3 to 1 of each side holding at least one object's
    centre, then rescaled as a whole image is (a zoom); boxes and proposals are clipped to it
    and those whose centre falls outside dropped (no crop when 10 tries find no window).
    `photometric`: strength s in [0, 1] of a colour jitter, brightness, contrast and
    saturation factors each uniform in [1 - s, 1 + s]. `scale_jitter` j: when `scales` is empty,
    `fit_to_data` sets it to the five sides ``scale x (1 - j, 1 - j/2, 1, 1 + j/2, 1 + j)`` (a
    relative form that carries to any image size; YOLO's and CenterNet's random scaling), the
    longest side's cap `max_size` scaled alike. A cropped or colour-jittered image is new every
    time: the frozen stem runs on it each time (not cached), so training is slower."""

    iterations: int = 0
    epochs: float = 20.0
    lr_step_epochs: float = 14.0
    lr: float = 0.01
    warmup: int = 100
    warmup_factor: float = 0.001
    clip_grad_norm: float = 10.0
    frozen: tuple[str, ...] = FROZEN_STEM
    checkpoint_every: int = 200
    images_per_batch: int = 2
    rois_per_image: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    cache_frozen: bool = True
    scales: tuple[int, ...] = ()
    photometric: float = 0.0
    crop: float = 0.0
    scale_jitter: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        require(self, "scales", all(s >= 32 for s in self.scales), "a list of integers >= 32 (pixels; empty: scale)")
        require(self, "photometric", 0 <= self.photometric <= 1, "a number in [0, 1] (0: no colour jitter)")
        require(self, "crop", 0 <= self.crop <= 1, "a probability in [0, 1] (0: no crops)")
        require(self, "scale_jitter", 0 <= self.scale_jitter < 1, "a share in [0, 1) (0: no scale jitter)")
        for name in ("images_per_batch", "rois_per_image"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        require(self, "fg_fraction", 0 < self.fg_fraction <= 1, "a number in (0, 1]")
        require(self, "fg_iou", 0 < self.fg_iou <= 1, "an IoU in (0, 1]")
        require(self, "epochs", self.epochs > 0 or self.iterations > 0, "a number > 0 (when iterations = 0)")
        require(self, "lr_step_epochs", self.lr_step_epochs >= 0, "a number >= 0 (0: lr_step counts)")
        require(self, "warmup", self.warmup >= 0, "an integer >= 0")
        require(self, "warmup_factor", 0 < self.warmup_factor <= 1, "a number in (0, 1]")

    def for_images(self, n: int) -> RoITrainConfig:
        """This config for `n` training images: unchanged when `iterations` is set, else with
        ``iterations = ceil(epochs x n / images_per_batch)`` and `lr_step` from `lr_step_epochs`."""
        if self.iterations:
            return self
        per_epoch = n / min(self.images_per_batch, max(n, 1))
        step = round(self.lr_step_epochs * per_epoch) if self.lr_step_epochs else self.lr_step
        return replace(self, iterations=max(1, math.ceil(self.epochs * per_epoch)), lr_step=step)


AUGMENT_OFF = {
    "scales": [],
    "photometric": 0.0,
    "crop": 0.0,
    "scale_jitter": 0.0,
}  # `RoITrainConfig`'s augmentation, off


def train_settings(config: RoITrainConfig) -> dict:
    """`config` as plain values for checkpoint keys and checks (`to_dict`), the augmentation
    fields left out while they are off (`AUGMENT_OFF`): a run without augmentation keeps the
    checkpoint of the same run before those fields existed."""
    values = to_dict(config)
    return {k: v for k, v in values.items() if not (k in AUGMENT_OFF and v == AUGMENT_OFF[k])}


def check_image_size(config) -> None:
    """Check a Fast or Faster R-CNN config's ``scale`` and ``max_size`` (0: chosen by `fit_to_data`)."""
    require(
        config, "scale", config.scale == 0 or config.scale >= 32, "an integer >= 32 (pixels; 0: chosen from the data)"
    )
    require(
        config,
        "max_size",
        config.max_size == 0 or config.max_size >= config.scale,
        f"an integer >= scale ({config.scale}; 0: scale x 5 / 3)",
    )


def fit_to_data(config, dataset):
    """`config` (a Fast or Faster R-CNN config: ``scale``, ``max_size``, ``train``) with what
    it leaves to the data chosen from `dataset`: the image size when ``scale = 0``
    (`rcnn.features.roi.choose_scale`; ``max_size = 0``: ``scale x 5 / 3``) and the
    iterations when they are given in epochs, and test-time caps (``max_detections``, the RPN's
    ``post_nms_top_n_test``) raised where the training images hold more objects than they
    allow for (`DETECTIONS_PER_OBJECT`, `PROPOSALS_PER_OBJECT` per object); each choice is said
    in one line."""
    scale, max_size = config.scale, config.max_size
    if not scale:
        scale, chosen_max, line = choose_scale(dataset)
        max_size = max_size or chosen_max
        log.info(line)
    elif not max_size:
        max_size = round(scale * 5 / 3)
    train = config.train.for_images(len(dataset))
    if train is not config.train:
        log.info(
            f"schedule: {train.iterations} iterations ({config.train.epochs:g} epochs of {len(dataset)} images, "
            f"{train.images_per_batch} per batch), the rate x{train.lr_gamma:g} after {train.lr_step}"
        )
    if train.scale_jitter and not train.scales:
        j = train.scale_jitter
        train = replace(train, scales=tuple(max(32, round(scale * (1 + f * j))) for f in (-1, -0.5, 0, 0.5, 1)))
        log.info(f"scale jitter: training images' shortest side drawn from {', '.join(map(str, train.scales))} px")
    config = replace(config, scale=scale, max_size=max(max_size, scale), train=train)
    most = max((len(s.boxes) for s in dataset), default=0)
    changes = {}
    if DETECTIONS_PER_OBJECT * most > config.max_detections:
        changes["max_detections"] = DETECTIONS_PER_OBJECT * most
    rpn = getattr(config, "rpn", None)
    if rpn is not None and PROPOSALS_PER_OBJECT * most > rpn.post_nms_top_n_test:
        n = PROPOSALS_PER_OBJECT * most
        changes["rpn"] = replace(rpn, post_nms_top_n_test=n, pre_nms_top_n_test=max(rpn.pre_nms_top_n_test, 2 * n))
    if changes:
        log.info(
            f"test-time caps raised for up to {most} training objects per image: "
            + ", ".join(f"{k} {v if k != 'rpn' else v.post_nms_top_n_test}" for k, v in changes.items())
        )
    return replace(config, **changes)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes ``[N, 4]`` mirrored left-right in an image `width` px wide: ``x1' = W - x2``,
    ``x2' = W - x1``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


class View(NamedTuple):
    """One image as one iteration trains on it (`RoITrainer._view`): `x` (``[1, 3, h, w]`` on
    the device, or the frozen stem's output), `size` ``(h, w)``, the rescaling `factor`,
    `flip`, and the crop `window` (``float32 [4]`` in the image's own pixels; None: uncropped)."""

    x: Any
    size: tuple[int, int]
    factor: float
    flip: bool
    window: np.ndarray | None = None

    def place(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(placed [M, 4], keep bool [N])``: `boxes` ``float32 [N, 4]`` (pixels of the image
        file) as they lie in this view: cropped (`rcnn.heads.augment.crop_boxes`: those whose
        centre leaves the window dropped, the rest clipped to it), rescaled by `factor`, maybe
        flipped. Uncropped, every box is kept."""
        keep = np.ones(len(boxes), bool)
        if self.window is not None:
            boxes, keep = crop_boxes(boxes, self.window)
        boxes = boxes * self.factor
        return (flip_boxes(boxes, self.size[1]) if self.flip else boxes), keep

    def place_masks(self, masks: list) -> np.ndarray:
        """``uint8 [N, h, w]`` (0 / 1): `masks` (one COCO RLE per object, in the image file's
        pixels; `rcnn.datasets.masks`) as they lie in this view, as `place` places boxes: cut to
        the crop window, resized to the view's ``size`` (bilinear, then >= 1/2), maybe flipped.
        Every mask is returned: index them with `place`'s ``keep``."""
        h, w = self.size
        if not masks:
            return np.zeros((0, h, w), np.uint8)
        full = decode_masks(list(masks))  # [H, W, N]
        if self.window is not None:
            full = crop_image(full, self.window)
        out = np.empty((full.shape[2], h, w), np.uint8)
        for k in range(full.shape[2]):
            resized = cv2.resize(full[:, :, k].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            out[k] = resized >= 0.5
        return np.ascontiguousarray(out[:, :, ::-1]) if self.flip else out


class RoITrainer(Trainer):
    """Trains a trunk (``[1, 3, H, W] -> [1, C_map, H/16, W/16]``, or a dict of maps: a feature
    pyramid's) and the heads on its map together, in place, on the images at `paths` (set by
    the detector's trainer before `run`), with the package's one loop
    (`rcnn.heads.trainer.Trainer`: schedule, frozen layers, guarded steps, checkpoints). Fitted:
    `history_` (per iteration ``loss``, the total trained on, and each of `terms`),
    `resumed_from_` (the iteration a checkpoint gave, 0 when fresh), `seconds_`."""

    title = "RoI"  # the detector's name, in the progress bar and notices

    def __init__(
        self,
        config: RoITrainConfig,
        scale: int,
        max_size: int,
        checkpoint: str | os.PathLike | None = None,
        device="cpu",
    ):
        super().__init__(config, checkpoint, device)
        self.scale = scale
        self.max_size = max_size
        self.paths: Sequence[str | os.PathLike] = ()

    # -- what a detector supplies ----------------------------------------------------------------
    @abstractmethod
    def _example(self, i: int, rng: np.random.Generator, cache: dict, stem: nn.Module | None):
        """Image `i`'s inputs and targets for one iteration, drawing from `rng` (the image as
        trained on by `_view`, its boxes placed by `View.place`)."""
        raise NotImplementedError

    @abstractmethod
    def _loss(self, batch: list, rest: nn.Module) -> dict[str, torch.Tensor]:
        """``{"loss": total, **terms}`` (the terms named by `terms`) of a batch of
        `_example` outputs, the trunk after the stem being `rest`."""
        raise NotImplementedError

    # -- the loop's hooks (`rcnn.heads.trainer.Trainer`) ------------------------------------------
    def prepare(self, trunk: nn.Module) -> None:
        self._cache: dict = {}
        self._stem, self._rest = self._split(trunk)

    def loss(self, batch: list) -> dict[str, torch.Tensor]:
        return self._loss(batch, self._rest)

    # -- the parts of an example -------------------------------------------------------------------
    def _flip(self, rng: np.random.Generator) -> bool:
        return bool(self.config.flip and rng.random() < 0.5)

    def _view(self, i: int, rng: np.random.Generator, cache: dict, stem: nn.Module | None, objects) -> View:
        """Image `i` as this iteration trains on it (`View`), with its objects' boxes `objects`
        ``[G, 4]`` (pixels of the file; a crop holds the centre of one). Drawn from `rng` in
        this order, each only when the config asks for it (so that augmentation off draws as
        before it existed): the flip, the shortest side (`scales`), whether to crop (`crop`)
        and the window, the colour factors (`photometric`)."""
        cfg = self.config
        flip = self._flip(rng)
        scale = draw_scale(rng, cfg.scales) if cfg.scales else self.scale
        window = original = None
        if cfg.crop and rng.random() < cfg.crop and len(objects):
            original = read_image(self.paths[i])
            window = draw_crop(rng, objects, *original.shape[:2])
        colour = draw_colour(rng, cfg.photometric) if cfg.photometric else None
        crop = None if window is None else (window, original)
        x, size, factor = self._image(i, flip, cache, stem, scale, crop, colour)
        return View(x, size, factor, flip, window)

    def _longest(self, scale: int) -> int:
        """The longest side allowed at shortest side `scale`: `max_size`, scaled with it under
        ``scale_jitter`` (a relative jitter moves both sides, so an image at the cap still
        changes size; explicit `scales` keep the one cap, as Fast R-CNN's multi-scale training)."""
        if not self.config.scale_jitter or scale == self.scale:
            return self.max_size
        return max(scale, round(self.max_size * scale / self.scale))

    def _image(
        self,
        i: int,
        flip: bool,
        cache: dict,
        stem: nn.Module | None,
        scale: int | None = None,
        crop: tuple[np.ndarray, np.ndarray] | None = None,
        colour: np.ndarray | None = None,
    ):
        """``(x, (h, w), factor)``: image `i` rescaled by `factor` to ``h x w`` (shortest side
        `scale`, default the trainer's; kept in `cache` after the first read), maybe flipped,
        as a tensor ``[1, 3, h, w]`` on the device or, with `stem` (see `_split`), the stem's
        output, computed once per image, flip and scale and kept in `cache`. `crop`:
        ``(window, the image as read)``: that window of it is rescaled instead; `colour`:
        factors for `rcnn.heads.augment.adjust_colour`, applied last. Neither is cached."""
        scale = scale or self.scale
        limit = self._longest(scale)
        if crop is not None:
            window, original = crop
            image, factor = rescale(crop_image(original, window), scale, limit)
        else:
            if (i, scale) not in cache:
                cache[i, scale] = rescale(read_image(self.paths[i]), scale, limit)
            image, factor = cache[i, scale]
        if flip:
            image = image[:, ::-1]
        if colour is not None:
            image = adjust_colour(image, colour)
        if stem is None:
            return image_tensor(image).to(self.device), image.shape[:2], factor
        if crop is not None or colour is not None:
            # a cropped or colour-jittered image is new every iteration: its stem output cannot be
            # reused, so the stem runs on it here each time (the whole trunk, as without the cache)
            with torch.no_grad():
                return stem(image_tensor(image).to(self.device)), image.shape[:2], factor
        if (i, flip, scale) not in cache:
            with torch.no_grad():
                cache[i, flip, scale] = stem(image_tensor(image).to(self.device))
        return cache[i, flip, scale], image.shape[:2], factor

    def batch(self, it: int, cache: dict | None = None, stem: nn.Module | None = None) -> list:
        """Iteration `it`'s mini-batch: the `_example` of each image it draws (with `cache`
        and `stem`; None: the running loop's, see `prepare`)."""
        if cache is None:
            cache, stem = self._cache, self._stem
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, it])
        chosen = rng.choice(len(self.paths), min(cfg.images_per_batch, len(self.paths)), replace=False)
        return [self._example(int(i), rng, cache, stem) for i in chosen]

    def _split(self, trunk: nn.Module) -> tuple[nn.Module | None, nn.Module]:
        """``(stem, rest)``: a trunk made of ``features`` layers (MobileNetV2, VGG16) whose first
        layers are all frozen, with frozen batch norm, computes the same map for an image every
        time it sees it: those layers (the stem) run once per image, flip and scale, their output is
        kept in memory, and each step runs only the rest. A trunk with a ``split(k)`` method (the
        feature pyramid's, `rcnn.features.pyramid.PyramidTrunk`, whose rest needs a map from inside
        the stem) cuts itself there. Otherwise ``(None, trunk)``."""
        layers = getattr(trunk, "features", None)
        if not self.config.freeze_bn or not isinstance(layers, nn.Sequential) or not self.config.cache_frozen:
            return None, trunk
        k = 0
        for layer in layers:
            params = list(layer.parameters())
            if any(p.requires_grad for p in params) or any(isinstance(m, nn.Dropout) for m in layer.modules()):
                break
            k += 1
        if k == 0:
            return None, trunk
        if callable(getattr(trunk, "split", None)):
            return trunk.split(k)
        return layers[:k], layers[k:]
