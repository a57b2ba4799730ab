"""What the dense (one-stage) detectors share: YOLO, SSD and CenterNet score every position of
a map in one pass, with no proposals and no RoI pooling.

`DenseConfig`: the settings they share (the stride-16 trunk of `rcnn.features.roi`, its
weights, the ``[train]`` table of Fast and Faster R-CNN, the image size; the RoI fields of that
table are not read). `DenseDetector`: ``fit`` / ``detect`` / the model file around a network
of two parts, ``net_.trunk`` (``[1, 3, H, W] -> [1, C, H/16, W/16]``) and ``net_.head`` (the
detector's own layers, applied by its `_forward`), each detector supplying `_head` (the new
layers, built under ``train.seed``), `_forward` (head outputs from the trunk's map),
`_loss` (``{"loss": total, **terms}`` of one image), `_decode` (candidate boxes, scores,
labels) and `_grids` (its maps cell by cell, and how many boxes it scored, for the trace).
Training is the loop Fast and Faster R-CNN share (`rcnn.heads.roi_trainer.RoITrainer`:
the frozen stem run once per image and flip, warm-up, guarded steps, checkpoints under
``cache_dir/<kind>/``); images are sized as theirs (`rescale`: shortest side `scale`, longest
at most `max_size`, both chosen from the data when 0, `fit_to_data`); detections go through
the project's `postprocess` (score threshold, per-class NMS, the cap) or the test rule.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rcnn.config import require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.detectors.base import (
    CommonConfig,
    Detector,
    check_trainable,
    final_losses,
    net_state,
    postprocess,
    resolve_device,
    restore_net,
    timed,
    training_key,
)
from rcnn.detectors.trace import Grid, Stage, Trace
from rcnn.errors import ModelError
from rcnn.features.backbones import build_backbone, cut_at_stride16, cut_stride32_stage
from rcnn.features.extractor import freeze_for_inference, set_threads
from rcnn.features.roi import BackboneConfig, image_tensor, rescale
from rcnn.heads.roi_trainer import RoITrainConfig, RoITrainer, check_image_size, fit_to_data, train_settings

__all__ = ["DenseConfig", "DenseDetector", "DenseNet", "DenseTrainConfig", "numpy32"]


def numpy32(t: torch.Tensor) -> np.ndarray:
    """A tensor as a ``float32`` numpy array (on the CPU)."""
    return t.detach().float().cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class DenseTrainConfig(RoITrainConfig):
    """A dense detector's ``[train]`` table: Fast and Faster R-CNN's
    (`rcnn.heads.roi_trainer.RoITrainConfig`: 20 epochs, the step at 14, warm-up, the
    gradient clipped to norm 10, blocks 0-10 frozen, flips) at `lr` 0.005 (measured on the synthetic
    set; 0.01, before YOLO's confidences started at a prior, sent its summed squared errors into
    saturated sigmoids) and with random scaling: each training image's shortest side drawn from
    ``scale x (0.8 ... 1.2)`` (``scale_jitter = 0.2``; the single-shot papers' own augmentation, YOLO's
    "random scaling of up to 20 %", SSD's zooms, CenterNet's random scales, as far as the cached
    frozen stem allows: no crops or colour changes by default); ``rois_per_image``,
    ``fg_fraction`` and ``fg_iou`` are not read (no RoIs)."""

    lr: float = 0.005
    scale_jitter: float = 0.2


@dataclass(frozen=True)
class DenseConfig(CommonConfig):
    """A dense detector's config. Besides the common settings (its ``[proposals]`` table is
    not used): `backbone` (the stride-16 trunk and its weights, `rcnn.features.roi.BackboneConfig`),
    `train` (`DenseTrainConfig`), `scale` and
    `max_size` (as Fast R-CNN's; 0: chosen from the training images), `stage32` (true: the
    backbone's own pretrained layers after the trunk, to stride 32, MobileNetV2's blocks 14-17,
    `rcnn.features.backbones.cut_stride32_stage`, trained with the head where a detector reads a
    stride-32 map: YOLO's 32 px cells, SSD's second map, CenterNet's upsampling path; false, the
    default: new layers there. Measured on cards, 20 epochs, VOC mAP@0.5 with and without:
    YOLO 0.000 (its features collapsed to near zero under the summed squared loss) and 0.846,
    SSD 0.732 and 0.851, CenterNet 0.922 and 0.937, each training slower). The score threshold
    (None: 0.05, a probability) drops boxes before NMS at `nms_threshold`."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: DenseTrainConfig = field(default_factory=DenseTrainConfig)
    scale: int = 0
    max_size: int = 0
    stage32: bool = False
    nms_threshold: float = 0.5
    candidate_nms: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_image_size(self)
        if self.score_threshold is not None:
            require(self, "score_threshold", 0 <= self.score_threshold <= 1, "a probability in [0, 1]")

    @property
    def min_score(self) -> float:
        return 0.05 if self.score_threshold is None else self.score_threshold


class DenseNet(nn.Module):
    """The trunk (``[1, 3, H, W] -> [1, C, H/16, W/16]``) and a detector's head (its layers;
    what they compute from the map is the detector's `_forward`)."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head


class DenseDetector(Detector):
    """``fit(dataset)``, ``detect(image)``, the model file for a dense detector (see the
    module docstring). Fitted: ``classes_``, ``net_`` (`DenseNet`), ``weights_source_``,
    ``history_`` (per iteration ``loss`` and `terms`), ``fit_stats_``."""

    config_class = DenseConfig
    learns_proposals = True  # no external proposals: every position of the map is a candidate
    lowest_score = 0.0  # scores are probabilities
    title = "dense"
    terms: tuple[str, ...] = ()

    # -- what a detector supplies ---------------------------------------------------------------
    @abstractmethod
    def _head(self, channels: int, num_classes: int, stage32: tuple[nn.Module, int] | None) -> nn.Module:
        """The detector's layers on the trunk's ``channels``-channel map (the new ones drawn under
        ``train.seed``); `stage32`: the backbone's pretrained stride-32 stage and its channels
        (``config.stage32``), or None."""

    @abstractmethod
    def _forward(self, head: nn.Module, fmap: torch.Tensor):
        """The head's raw outputs for the map ``[1, C, h, w]`` of one image."""

    @abstractmethod
    def _loss(self, out, boxes: torch.Tensor, labels: torch.Tensor, size) -> dict[str, torch.Tensor]:
        """``{"loss": total, **terms}`` of one image's raw outputs `out`, its objects' boxes
        ``float32 [G, 4]`` (pixels of the image of ``size = (h, w)`` trained on) and labels
        ``int64 [G]`` in ``1..C``."""

    @abstractmethod
    def _decode(self, out, size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates ``(boxes [K, 4], scores [K], labels [K] in 1..C)`` from raw outputs on an
        image of ``size = (h, w)`` (its pixels), scores at least ``config.min_score``."""

    @abstractmethod
    def _grids(self, out, size, factor: float) -> tuple[tuple[Grid, ...], dict[str, int]]:
        """The trace's view of raw outputs `out` on an image rescaled by `factor` to ``size =
        (h, w)``: its maps (`rcnn.detectors.trace.Grid`, boxes in the image's own pixels) and
        ``{what: count}``, the boxes it scored (`Trace.scored`), from the outputs' shapes."""

    @classmethod
    def fit_config(cls, config: DenseConfig, dataset: Dataset) -> DenseConfig:
        """`config` with what it leaves to the data chosen from `dataset`: the image size and
        the schedule (`fit_to_data`), then whatever the detector chooses itself."""
        return fit_to_data(config, dataset)

    # -- no external proposals -------------------------------------------------------------------
    def proposal_store(self):
        raise ModelError(f"{self.title} scores a dense grid of boxes: it has no proposals")

    def training_proposals(self, dataset: Dataset, stats: dict):
        return self.proposal_store()

    # -- training --------------------------------------------------------------------------------
    def _settings(self) -> dict:
        """The settings training depends on (its checkpoint's key and check)."""
        skip = (*self.config.TEST_TIME, "cache_dir", "workers", "device", "proposals")
        values = {k: v for k, v in to_dict(self.config).items() if k not in skip}
        values["train"] = train_settings(self.config.train)
        return values

    def checkpoint_path(self, dataset: Dataset) -> Path:
        """``cache_dir/<kind>/<key>.pt``: the key from the training settings and every image
        and annotation of `dataset`."""
        key = training_key({self.kind: self._settings()}, dataset)
        return Path(self.config.cache_dir) / self.kind / f"{key}.pt"

    def _build(self, num_classes: int, weights: str | None = None) -> tuple[DenseNet, str]:
        c = self.config
        b = c.backbone if weights is None else replace(c.backbone, weights=weights)
        module, _, source = build_backbone(b.name, b.weights, b.weights_file, b.seed)
        trunk, channels = cut_at_stride16(b.name, module)
        stage32 = cut_stride32_stage(b.name, module) if c.stage32 else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.train.seed)
            head = self._head(channels, num_classes, stage32)
        return DenseNet(trunk, head).eval(), source

    def fit(self, dataset: Dataset, callback=None) -> DenseDetector:
        """Train on `dataset`; returns self. `callback(iteration, loss)` follows each step."""
        check_trainable(dataset)
        self.config = c = self.fit_config(self.config, dataset)
        self.classes_ = list(dataset.classes)
        if c.backbone.num_threads:
            set_threads(c.backbone.num_threads)
        start = time.perf_counter()
        self.net_, self.weights_source_ = self._build(len(self.classes_))
        trainer = _Trainer(self, resolve_device(c.device), self.checkpoint_path(dataset)).fit(dataset, callback)
        self.history_ = trainer.history_
        self.fit_stats_ = {
            "images": len(dataset),
            "scale": c.scale,
            "max_size": c.max_size,
            "iterations": c.train.iterations,
            "train_seconds": time.perf_counter() - start,
            "resumed_from_iteration": trainer.resumed_from_,
            "final_losses": final_losses(self.history_),
        }
        self._prepare()
        return self

    # -- detection -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.device_ = resolve_device(self.config.device)
        self.net_.to(self.device_).eval()
        self._frozen_trunk = None

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's map of `x` (on the CPU a TorchScript-frozen copy with ``backbone.torchscript``)."""
        if self.device_.type != "cpu" or not self.config.backbone.torchscript:
            return self.net_.trunk(x)
        if self._frozen_trunk is None:
            self._frozen_trunk = freeze_for_inference(self.net_.trunk, x, torch.contiguous_format)
        return self._frozen_trunk(x)

    def raw(self, image, timings: dict | None = None):
        """``(image uint8 [H, W, 3], raw head outputs, rescaled size (h, w), factor)`` of
        `image` (a path or the array), under inference mode."""
        self._check_fitted()
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        c = self.config
        with torch.inference_mode():
            with timed(timings, "trunk"):
                scaled, factor = rescale(image, c.scale, c.max_size)
                fmap = self._trunk(image_tensor(scaled).to(self.device_))
            with timed(timings, "head"):
                out = self._forward(self.net_.head, fmap)
        return image, out, scaled.shape[:2], factor

    def detect(self, image, proposals=None, timings: dict | None = None) -> Detections:
        """`trace`'s last stage, without the maps cell by cell that only pictures use."""
        return self.trace(image, proposals, timings, grids=False).detections

    def trace(self, image, proposals=None, timings: dict | None = None, grids: bool = True) -> Trace:
        """Every stage on one image (a path or ``uint8 [H, W, 3]`` RGB) as plain data
        (`rcnn.detectors.trace.Trace`): the head's decoded boxes reaching the score threshold
        (``regression``: every position of the map scores its boxes, no proposals), then after
        per-class NMS and the cap (``nms``, `detect`'s); the detector's maps cell by cell
        (``grids``, left out with ``grids=False``) and the count of boxes it scored
        (``scored``). `proposals` are not used."""
        c = self.config
        image, out, size, factor = self.raw(image, timings)
        with timed(timings, "nms"):
            with torch.inference_mode():
                boxes, scores, labels = self._decode(out, size)
            boxes, scores, labels = boxes.cpu().numpy() / factor, scores.cpu().numpy(), labels.cpu().numpy()
            final = postprocess(boxes, scores, labels, image.shape[:2], c.nms_threshold, c.max_detections)
        with timed(timings, "head"), torch.inference_mode():
            maps, scored = self._grids(out, size, factor) if grids else ((), {})
        candidates = Detections(boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64))
        return Trace(
            image_size=tuple(image.shape[:2]),
            stages=(Stage("regression", candidates), Stage("nms", final)),
            proposer="none (dense)",
            threshold=c.min_score,
            grids=maps,
            scored=scored,
        )

    # -- the model file --------------------------------------------------------------------------
    def _state(self) -> dict:
        return net_state(self)

    def _from_state(self, state: dict, path) -> None:
        if self.config.backbone.num_threads:
            set_threads(self.config.backbone.num_threads)
        restore_net(self, self._build(len(self.classes_), weights="random")[0], state)  # every weight is in the file
        self._prepare()


class _Trainer(RoITrainer):
    """A dense detector's network trained end to end in the loop Fast and Faster R-CNN share
    (`rcnn.heads.roi_trainer.RoITrainer`): per image the trunk (after its cached frozen stem),
    the head, the detector's `_loss` on the image's non-difficult objects; the terms averaged
    over the batch's images."""

    def __init__(self, detector: DenseDetector, device, checkpoint: Path | None):
        c = detector.config
        super().__init__(c.train, c.scale, c.max_size, checkpoint, device)
        self.detector, self.net = detector, detector.net_
        self.title, self.terms = detector.title, detector.terms

    def meta(self) -> dict:
        return self.detector._settings()

    def fit(self, dataset: Dataset, callback=None) -> _Trainer:
        self.paths = [s.image_path for s in dataset]
        self.targets = [
            (s.boxes[~s.difficult].astype(np.float32), s.labels[~s.difficult].astype(np.int64)) for s in dataset
        ]
        return self.run({"net": self.net}, self.net.trunk, self.config.iterations, callback)

    def _example(self, i: int, rng, cache: dict, stem):
        boxes, labels = self.targets[i]
        view = self._view(i, rng, cache, stem, boxes)
        placed, keep = view.place(boxes)
        boxes = torch.from_numpy(np.ascontiguousarray(placed, np.float32)).to(self.device)
        return view.x, view.size, boxes, torch.from_numpy(labels[keep]).to(self.device)

    def _loss(self, batch: list, rest: nn.Module) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        for x, size, boxes, labels in batch:
            out = self.detector._forward(self.net.head, rest(x))
            for k, v in self.detector._loss(out, boxes, labels, size).items():
                total[k] = total.get(k, 0.0) + v / len(batch)
        return total
