"""The localiser: single-object localisation by regression, the step before R-CNN.

One CNN looks at the whole image once (resized to a fixed square, `input_size`) and its
global-pooled feature ``[B, D]`` feeds three heads:

- presence: one logit, sigmoid -> the probability that the image holds an object;
- class: ``C`` logits, softmax -> which class the object is;
- box: four numbers, sigmoid -> ``cx, cy, w, h`` as shares of the image side, turned into
  ``x1, y1, x2, y2`` (normalised, so the box is the same for any image size).

Training minimises ``BCE(presence) + CE(class) + lambda * box_loss(box)``, where
``box_loss`` is smooth L1 (``beta`` 0.1, in normalised units) or L2, summed over the four
coordinates; the class and box terms are averaged over the images that hold an object only
(an empty image has no class and no box to learn). An image with several objects is taught
its largest (the localiser can give one box). Detection (`Localizer.trace`, whose last stage
is `detect`'s): one box when the presence reaches the score threshold (default 0.5), with
score ``presence * class probability``; none otherwise. No proposals, no NMS: that is what R-CNN adds.

Everything random takes `seed` (head init, batch order, flips), so a CPU run is repeatable
bit for bit. Checkpoints (every `checkpoint_every` epochs, atomically written, under
``cache_dir/localizer/``) let an interrupted `fit` resume where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from rcnn.config import require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.detectors.base import CommonConfig, Detector, check_trainable, resolve_device, timed, training_key
from rcnn.detectors.trace import Stage, Trace
from rcnn.errors import ModelError
from rcnn.features.backbones import ARCHITECTURES, WEIGHTS_EXPECTED, build_backbone, is_weights
from rcnn.features.warp import normalize
from rcnn.heads.trainer import Trainer
from rcnn.progress import progress

__all__ = ["Localizer", "LocalizerConfig", "LocalizerNet", "localizer_loss"]

OPTIMIZERS = ("sgd", "adam")
BOX_LOSSES = ("smooth_l1", "l2")
SMOOTH_L1_BETA = 0.1  # in units of the image side: quadratic below 10 % error, linear above


@dataclass(frozen=True)
class LocalizerConfig(CommonConfig):
    """A localiser's config (``detector = "localizer"``). Besides the common settings
    (`rcnn.detectors.base.CommonConfig`; its ``proposals`` table is not used):

    `backbone`, `weights`, `weights_file`, `pool`: the CNN, as in ``[features]`` (`pool` 1: one
    global average, ``g``: a ``g x g`` grid of them, which keeps some layout for the box).
    `input_size`: the square side images are resized to. Training: `epochs` over the data in
    batches of `batch_size`, `optimizer` ``adam`` or ``sgd`` (with `momentum`) at `lr`,
    multiplied by `lr_gamma` every `lr_step` epochs (0: never), `weight_decay`; `box_loss`
    ``smooth_l1`` or ``l2`` weighted by `box_weight` (lambda); `flip`: random left-right
    flips; `frozen`: backbone parameter-name prefixes left untouched; `freeze_bn`: batch-norm
    layers keep their statistics. `score_threshold`: the presence a box needs (None: 0.5).
    """

    detector: str = "localizer"
    backbone: str = "mobilenet_v2"
    weights: str = "auto"
    weights_file: str = ""
    pool: int = 1
    input_size: int = 128
    epochs: int = 15
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0001
    lr_step: int = 0
    lr_gamma: float = 0.1
    box_loss: str = "smooth_l1"
    box_weight: float = 1.0
    flip: bool = True
    frozen: tuple[str, ...] = ()
    freeze_bn: bool = False
    seed: int = 0
    checkpoint_every: int = 5

    def __post_init__(self):
        super().__post_init__()
        require(self, "detector", self.detector == "localizer", '"localizer" for a localiser config')
        require(self, "backbone", self.backbone in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}")
        require(self, "weights", is_weights(self.weights), WEIGHTS_EXPECTED)
        require(self, "pool", self.pool >= 1, "an integer >= 1")
        require(self, "input_size", self.input_size >= 32, "an integer >= 32")
        require(self, "epochs", self.epochs >= 1, "an integer >= 1 (0 would write an untrained model)")
        for name in ("lr_step", "seed"):
            require(self, name, getattr(self, name) >= 0, "an integer >= 0")
        for name in ("batch_size", "checkpoint_every"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        require(self, "optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
        require(self, "lr", self.lr > 0, "a number > 0")
        require(self, "lr_gamma", self.lr_gamma > 0, "a number > 0")
        require(self, "momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        require(self, "box_loss", self.box_loss in BOX_LOSSES, f"one of {', '.join(BOX_LOSSES)}")
        require(self, "box_weight", self.box_weight >= 0, "a number >= 0")
        if self.score_threshold is not None:
            require(self, "score_threshold", 0 <= self.score_threshold <= 1, "a presence probability in [0, 1]")

    @property
    def presence_threshold(self) -> float:
        return 0.5 if self.score_threshold is None else self.score_threshold


class LocalizerNet(nn.Module):
    """Backbone ``[B, 3, S, S] -> [B, D]`` and three linear heads. ``forward`` returns
    presence logits ``[B]``, class logits ``[B, C]`` and boxes ``[B, 4]`` (``x1, y1, x2, y2``
    as shares of the image side, in [0, 1])."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.presence = nn.Linear(feature_dim, 1)
        self.classes = nn.Linear(feature_dim, num_classes)
        self.box = nn.Linear(feature_dim, 4)

    def forward(self, x: torch.Tensor):
        f = self.backbone(x)
        cx, cy, w, h = torch.sigmoid(self.box(f)).unbind(1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        return self.presence(f).squeeze(1), self.classes(f), boxes


def localizer_loss(
    presence_logits,
    class_logits,
    boxes,
    present,
    labels,
    target_boxes,
    box_weight: float = 1.0,
    box_loss: str = "smooth_l1",
) -> dict[str, torch.Tensor]:
    """The three terms and their total for a batch: presence logits ``[B]``, class logits
    ``[B, C]``, boxes ``[B, 4]`` (normalised), and the targets: `present` ``bool [B]``, labels
    ``int64 [B]`` in ``1..C`` and normalised boxes ``[B, 4]`` (both ignored where not present).

    ``presence``: binary cross-entropy over every image; ``class`` (cross-entropy) and ``box``
    (smooth L1 or squared error, summed over the four coordinates) averaged over the present
    images only, 0 when there are none; ``total = presence + class + box_weight * box``."""
    present = torch.as_tensor(present, dtype=torch.bool, device=presence_logits.device)
    presence = nn.functional.binary_cross_entropy_with_logits(presence_logits, present.float())
    if present.any():
        cls = nn.functional.cross_entropy(
            class_logits[present], torch.as_tensor(labels)[present].to(class_logits.device) - 1
        )
        diff_pred, diff_true = (
            boxes[present],
            torch.as_tensor(target_boxes, dtype=boxes.dtype).to(boxes.device)[present],
        )
        if box_loss == "l2":
            per = (diff_pred - diff_true) ** 2
        else:
            per = nn.functional.smooth_l1_loss(diff_pred, diff_true, reduction="none", beta=SMOOTH_L1_BETA)
        box = per.sum(1).mean()
    else:
        cls = box = presence_logits.sum() * 0.0  # no object in the batch: nothing to learn here
    return {"presence": presence, "class": cls, "box": box, "total": presence + cls + box_weight * box}


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``uint8 [size, size, 3]`` (anisotropic, like R-CNN's warp)."""
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)


def targets(sample) -> tuple[bool, int, np.ndarray]:
    """What the localiser learns from a sample: ``(present, label, normalised box)`` of its
    largest non-difficult object (``(False, 0, zeros)`` for an image without one)."""
    keep = ~sample.difficult
    boxes, labels = sample.boxes[keep], sample.labels[keep]
    if len(boxes) == 0:
        return False, 0, np.zeros(4, np.float32)
    i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    scale = np.array([sample.width, sample.height] * 2, np.float32)
    return True, int(labels[i]), (boxes[i] / scale).astype(np.float32)


class Localizer(Detector):
    """``Localizer(config).fit(dataset)``, then ``detect(image)`` (0 or 1 box) or
    ``predict(images)`` (every head's raw output).

    Fitted attributes: ``classes_``, ``net_`` (`LocalizerNet`, eval mode), ``weights_source``
    (where the backbone's starting weights came from), ``history_`` (mean loss terms per
    epoch), ``fit_stats_``.
    """

    kind = "localizer"
    config_class = LocalizerConfig

    @property
    def draw_threshold(self) -> float:
        """0: every box it gives has already passed the presence threshold."""
        return 0.0

    def _build(self, num_classes: int) -> LocalizerNet:
        c = self.config
        backbone, dim, self.weights_source = build_backbone(c.backbone, c.weights, c.weights_file, c.seed, c.pool)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            return LocalizerNet(backbone, dim, num_classes)

    # -- training ---------------------------------------------------------------------------

    def fit(self, dataset: Dataset) -> Localizer:
        """Train the CNN and its three heads on `dataset`; returns self."""
        c = self.config
        check_trainable(dataset)
        start = time.perf_counter()
        self.classes_ = list(dataset.classes)
        device = resolve_device(c.device)
        net = self._build(len(self.classes_))
        images = np.stack(
            [
                resize_square(read_image(s.image_path), c.input_size)
                for s in progress(dataset.samples, desc="loading images")
            ]
        )
        settings = _training_settings(c)
        checkpoint = Path(c.cache_dir) / "localizer" / f"{training_key({'localizer': settings}, dataset)}.pt"
        trainer = _Trainer(c, net, images, [targets(s) for s in dataset], settings, checkpoint, device)
        trainer.run({"net": net}, net.backbone, c.epochs * trainer.per_epoch)
        self.history_ = trainer.epoch_means()
        self.net_ = net.to(device).eval()
        self.fit_stats_ = {
            "images": len(images),
            "with_object": int(trainer.present.sum()),
            "epochs": c.epochs,
            "resumed_from_epoch": trainer.resumed_from_ // trainer.per_epoch,
            "final_loss": self.history_["total"][-1] if self.history_["total"] else None,
            "fit_seconds": time.perf_counter() - start,
        }
        return self

    # -- detection --------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, images, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Every head's output for a list of images (paths or ``uint8 [H, W, 3]`` arrays):
        ``presence [N]`` (probabilities), ``class_probs [N, C]``, ``boxes [N, 4]`` in each
        image's pixels (whatever the presence says)."""
        self._check_fitted()
        device = next(self.net_.parameters()).device
        out = {"presence": [], "class_probs": [], "boxes": []}
        for b in range(0, len(images), batch_size):
            batch = [im if isinstance(im, np.ndarray) else read_image(im) for im in images[b : b + batch_size]]
            x = normalize(np.stack([resize_square(im, self.config.input_size) for im in batch])).to(device)
            presence, logits, boxes = self.net_(x)
            sizes = torch.tensor([[im.shape[1], im.shape[0]] * 2 for im in batch], dtype=torch.float32)
            out["presence"].append(torch.sigmoid(presence).cpu())
            out["class_probs"].append(torch.softmax(logits, 1).cpu())
            out["boxes"].append(boxes.cpu() * sizes)
        if not out["boxes"]:
            return {
                "presence": np.zeros(0, np.float32),
                "class_probs": np.zeros((0, len(self.classes_)), np.float32),
                "boxes": np.zeros((0, 4), np.float32),
            }
        return {k: torch.cat(v).numpy().astype(np.float32) for k, v in out.items()}

    def _detections(
        self, presence: float, class_probs: np.ndarray, box: np.ndarray, image_size, candidates: bool = False
    ) -> Detections:
        if not candidates and presence < self.config.presence_threshold:
            return Detections()
        h, w = image_size
        box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
        if box[2] <= box[0] or box[3] <= box[1]:
            return Detections()
        label = int(np.argmax(class_probs))
        return Detections(
            box[None], np.array([presence * class_probs[label]], np.float32), np.array([label + 1], np.int64)
        )

    def trace(self, image, proposals=None, timings: dict | None = None) -> Trace:
        """Its one look at `image` (a path or ``uint8 [H, W, 3]`` RGB), as plain data
        (`rcnn.detectors.trace.Trace`): the heads' outputs (``presence``, ``class_probs
        [C]``, ``box [4]`` in the image's pixels), the ``box`` stage (the box clipped,
        labelled with the likeliest class and scored ``presence * class probability``,
        whatever the presence) and the detection (`detect`'s: that box when the presence
        reaches the threshold). No proposals, no NMS; `proposals` are not used."""
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        with timed(timings, "cnn"):
            p = self.predict([image])
        presence, probs, box = p["presence"][0], p["class_probs"][0], p["boxes"][0]
        final = self._detections(presence, probs, box, image.shape[:2])
        return Trace(
            image_size=tuple(image.shape[:2]),
            stages=(
                Stage("box", self._detections(presence, probs, box, image.shape[:2], True)),
                Stage("presence", final),
            ),
            score_name="presence",
            threshold=self.config.presence_threshold,
            outputs={"presence": float(presence), "class_probs": probs, "box": box},
            scored={"box": 1},
        )

    def candidates(self, image, proposals=None, timings: dict | None = None) -> Detections:
        """The one box on `image` whatever its presence (what ``test_rule = "rcnn"`` chooses
        from over a set: there it drops the presence threshold)."""
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        with timed(timings, "cnn"):
            p = self.predict([image])
        return self._detections(p["presence"][0], p["class_probs"][0], p["boxes"][0], image.shape[:2], True)

    def detect_dataset(
        self,
        dataset: Dataset,
        use_cache: bool = True,
        timings: dict | None = None,
        parts=None,
        skip_bad: bool = False,
    ) -> dict[str, Detections]:
        """Detections for every sample, in batches, by the config's `test_rule` (``rcnn``:
        every image's box whatever its presence, then `select_over_set`); no proposals are
        computed (`use_cache` has nothing to cache). With `parts` or `skip_bad` image by
        image, as `Detector.detect_dataset`."""
        if parts is not None or skip_bad:
            return super().detect_dataset(dataset, False, timings, parts, skip_bad)
        self._check_fitted()
        out = {}
        samples = dataset.samples
        for b in progress(range(0, len(samples), 32), desc="detect", unit="batch"):
            chunk = samples[b : b + 32]
            images = [read_image(s.image_path) for s in chunk]
            with timed(timings, "cnn"):
                p = self.predict(images)
            for i, (s, im) in enumerate(zip(chunk, images)):
                out[s.id] = self._detections(
                    p["presence"][i], p["class_probs"][i], p["boxes"][i], im.shape[:2], self.set_rule
                )
        return self.select_over_set(out, timings) if self.set_rule else out

    # -- the model file ---------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "weights_source": self.weights_source,
            "history": self.history_,
            "net": {k: v.detach().cpu().clone() for k, v in self.net_.state_dict().items()},
        }

    def _from_state(self, state: dict, path) -> None:
        c = self.config
        # the architecture only: the trained weights replace the starting ones
        backbone, dim, _ = build_backbone(c.backbone, "random", "", c.seed, c.pool)
        net = LocalizerNet(backbone, dim, len(self.classes_))
        try:
            net.load_state_dict(state["net"])
        except RuntimeError as e:
            raise ModelError(
                f"{path}: the localiser's weights do not fit its config ({str(e).splitlines()[0]})"
            ) from None
        self.weights_source = state["weights_source"]
        self.history_ = state.get("history", {})
        self.net_ = net.to(resolve_device(c.device)).eval()


def _training_settings(config: LocalizerConfig) -> dict:
    """The config as plain values, less what does not change the weights (test-time settings,
    where checkpoints and caches go, how often checkpoints are written)."""
    skip = (*config.TEST_TIME, "checkpoint_every", "cache_dir", "workers", "proposals")
    return {k: v for k, v in to_dict(config).items() if k not in skip}


class _Trainer(Trainer):
    """The localiser in the package's one loop (`rcnn.heads.trainer.Trainer`): epochs over
    `images` (``uint8 [N, S, S, 3]``, resized) in a seeded order, batches of ``batch_size``
    (the last one smaller), each image flipped left-right with probability 1/2; the rate
    stepped every ``lr_step`` epochs; a checkpoint every ``checkpoint_every`` epochs."""

    title = "localiser"
    terms = ("presence", "class", "box")
    frozen_setting = "frozen"

    def __init__(self, config: LocalizerConfig, net: LocalizerNet, images, targets, settings, checkpoint, device):
        super().__init__(config, checkpoint, device)
        self.net, self.images, self.settings = net, images, settings
        self.present, self.labels, self.boxes = map(np.asarray, zip(*targets))
        self.per_epoch = -(-len(images) // config.batch_size)  # batches
        self._epoch = (-1, None, None)

    def meta(self) -> dict:
        return {"config": self.settings, "classes": self.net.classes.out_features}

    def work(self, iterations: int) -> int:
        epochs, b = divmod(iterations, self.per_epoch)
        return epochs * len(self.images) + b * self.config.batch_size

    def items(self, batch) -> int:
        return len(batch[1])

    def lr(self, it: int) -> float:
        c = self.config
        return c.lr * (c.lr_gamma ** (it // self.per_epoch // c.lr_step) if c.lr_step else 1.0)

    def torch_seed(self, it: int) -> int:
        epoch, b = divmod(it, self.per_epoch)
        return self.config.seed * 1_000_003 + epoch * len(self.images) + b * self.config.batch_size

    def checkpoint_due(self, iteration: int, iterations: int) -> bool:
        epoch, b = divmod(iteration, self.per_epoch)
        return b == 0 and (epoch % self.config.checkpoint_every == 0 or iteration == iterations)

    def batch(self, it: int):
        """``(x [B, 3, S, S], image indices [B], target boxes [B, 4])`` of iteration `it`."""
        c, n = self.config, len(self.images)
        epoch, b = divmod(it, self.per_epoch)
        if self._epoch[0] != epoch:
            rng = np.random.default_rng([c.seed, epoch])
            order = rng.permutation(n)
            self._epoch = (epoch, order, rng.random(n) < 0.5 if c.flip else np.zeros(n, bool))
        _, order, flips = self._epoch
        idx = order[b * c.batch_size : (b + 1) * c.batch_size]
        batch, target, flip = self.images[idx], self.boxes[idx].copy(), flips[idx]
        batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        target[flip] = np.stack([1 - target[flip, 2], target[flip, 1], 1 - target[flip, 0], target[flip, 3]], 1)
        return normalize(batch).to(self.device), idx, torch.from_numpy(target)

    def loss(self, batch) -> dict[str, torch.Tensor]:
        x, idx, target = batch
        c = self.config
        terms = localizer_loss(*self.net(x), self.present[idx], self.labels[idx], target, c.box_weight, c.box_loss)
        return {"loss": terms.pop("total"), **terms}

    def epoch_means(self) -> dict[str, list[float]]:
        """``history_`` as the mean of each term per epoch (weighted by batch size), ``total``
        for the loss."""
        n, B = len(self.images), self.config.batch_size
        out = {"presence": [], "class": [], "box": [], "total": []}
        names = {"presence": "presence", "class": "class", "box": "box", "total": "loss"}
        for start in range(0, len(self.history_["loss"]), self.per_epoch):
            for k, name in names.items():
                total = 0.0
                for j, v in enumerate(self.history_[name][start : start + self.per_epoch]):
                    total += v * len(range(j * B, min((j + 1) * B, n)))
                out[k].append(total / n)
        return out
