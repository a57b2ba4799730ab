"""A feature pyramid (Lin et al., CVPR 2017) over the stride-16 trunk, for Fast and Faster R-CNN.

`PyramidBackboneConfig` is their ``[backbone]`` table: `rcnn.features.roi.BackboneConfig` and
the pyramid's fields (`PYRAMID_KEYS`: off by default, and then left out of checkpoint keys by
`backbone_settings`, so the single map's keys stay those of the runs before the pyramid).

`PyramidTrunk` is MobileNetV2's ``features[:14]`` (the same layers and state-dict keys as
`rcnn.features.roi.build_trunk`'s trunk, so frozen prefixes such as ``features.0.`` mean the
same) with torchvision's `FeaturePyramidNetwork` over two of its blocks: block 6 (stride 8,
32 channels, level ``"0"``) and block 13 (stride 16, 96 channels, level ``"1"``), and
optionally torchvision's `LastLevelMaxPool` (stride 32, level ``"pool"``). Every level has
`out_channels` channels.

The trunk pads its input (an ImageNet-normalised image) with zeros on the right and bottom
to a multiple of `SIZE_DIVISIBLE` px, as torchvision's ``GeneralizedRCNNTransform`` does, so
each level's map is exactly the padded size over its stride and the anchor generator, which
infers a level's stride as ``padded size // map size``, gets 8, 16 (and 32).

`pyramid_roi_align` is torchvision's `MultiScaleRoIAlign` over levels ``"0"`` and ``"1"`` with
their scales fixed from `STRIDES` (not inferred from the first image), which pools each box
from the level its size maps to (the FPN paper's Eqn. 1: ``floor(4 + log2(sqrt(w h) / 224))``
clamped to the levels, so boxes under 224 px a side from stride 8, larger from stride 16);
`PyramidPooler` is it with `rcnn.features.roi.RoIPooler`'s call.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from rcnn.config import require, to_dict
from rcnn.errors import ConfigError
from rcnn.features.backbones import build_backbone
from rcnn.features.roi import BackboneConfig, RoIConfig

__all__ = [
    "PYRAMID_KEYS",
    "PYRAMID_TAPS",
    "SIZE_DIVISIBLE",
    "STRIDES",
    "PyramidBackboneConfig",
    "PyramidPooler",
    "PyramidTrunk",
    "backbone_settings",
    "build_pyramid_trunk",
    "pyramid_roi_align",
]

SIZE_DIVISIBLE = 32
STRIDES = {"0": 8, "1": 16, "pool": 32}  # each level's stride, by its key
PYRAMID_TAPS = {"mobilenet_v2": ((6, 32), (13, 96))}  # (block of ``features``, its channels): strides 8, 16
PYRAMID_KEYS = ("fpn", "fpn_channels", "fpn_pool")  # `PyramidBackboneConfig`'s own fields


@dataclass(frozen=True)
class PyramidBackboneConfig(BackboneConfig):
    """The ``[backbone]`` table of Fast and Faster R-CNN: `rcnn.features.roi.BackboneConfig`
    (the stride-16 trunk, its weights) and an optional feature pyramid. `fpn`: torchvision's
    `FeaturePyramidNetwork` over MobileNetV2's blocks 6 (stride 8) and 13 (stride 16), each
    level `fpn_channels` channels, `fpn_pool` adding a max-pooled stride-32 level
    (torchvision's `LastLevelMaxPool`, which only an RPN reads); RoIs are then pooled from
    levels "0" and "1" by `pyramid_roi_align`. Off: the one stride-16 map."""

    fpn: bool = False
    fpn_channels: int = 128
    fpn_pool: bool = False

    def __post_init__(self):
        super().__post_init__()
        require(self, "fpn_channels", self.fpn_channels >= 1, "an integer >= 1")
        if self.fpn:
            require(self, "name", self.name in PYRAMID_TAPS, f"one of {', '.join(PYRAMID_TAPS)} (fpn = true)")

    @property
    def levels(self) -> tuple[str, ...]:
        """The keys of the trunk's maps, finest first: ``("0",)`` without the pyramid."""
        if not self.fpn:
            return ("0",)
        return tuple(str(i) for i in range(len(PYRAMID_TAPS[self.name]))) + ("pool",) * self.fpn_pool


def backbone_settings(config: PyramidBackboneConfig) -> dict:
    """`config` as plain values for checkpoint keys (`to_dict`); without the pyramid its
    fields (`PYRAMID_KEYS`) are left out, so the single map keeps the keys of the runs
    trained before the pyramid existed."""
    values = to_dict(config)
    if not config.fpn:
        values = {k: v for k, v in values.items() if k not in PYRAMID_KEYS}
    return values


class PyramidTrunk(nn.Module):
    """``[1, 3, H, W]`` (normalised) to an ordered dict of maps ``{"0": [1, C, H'/8, W'/8],
    "1": [1, C, H'/16, W'/16]}`` (and ``"pool": [1, C, H'/32, W'/32]`` with `pool`), ``H'``
    and ``W'`` the image's sides padded up to multiples of `SIZE_DIVISIBLE`, C =
    `out_channels`. `features` (an ``nn.Sequential``) runs in order; the outputs of the
    blocks at `taps` feed the `FeaturePyramidNetwork` (``fpn``), finest first.

    `split(k)` cuts it after ``features[k - 1]`` for training's frozen-stem cache
    (`rcnn.heads.roi_trainer.RoITrainer._split`): ``stem(x)`` pads and runs the first `k`
    blocks, giving ``(x_k, [tapped maps])``; ``rest`` runs the others and the pyramid from
    there. ``rest(stem(x))`` equals ``forward(x)``."""

    def __init__(self, features: nn.Sequential, taps, in_channels, out_channels: int, pool: bool = False):
        super().__init__()
        self.features = features
        self.taps = [int(t) for t in taps]
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, LastLevelMaxPool() if pool else None)
        self.out_channels = out_channels
        self.size_divisible = SIZE_DIVISIBLE
        self.levels = [str(i) for i in range(len(self.taps))] + ["pool"] * bool(pool)

    def _run(self, x: torch.Tensor, start: int, stop: int, tapped: list[torch.Tensor]):
        i = 0
        for layer in self.features:
            if start <= i < stop:
                x = layer(x)
                if i in self.taps:
                    tapped = tapped + [x]
            i += 1
        return x, tapped

    def _pyramid(self, tapped: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.fpn(OrderedDict([(str(i), t) for i, t in enumerate(tapped)]))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """`x` ``[B, C, H, W]`` padded with zeros on the right and bottom to multiples of `SIZE_DIVISIBLE`."""
        h, w, d = x.shape[-2], x.shape[-1], self.size_divisible
        return F.pad(x, [0, (-w) % d, 0, (-h) % d])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, tapped = self._run(self.pad(x), 0, len(self.features), [])
        return self._pyramid(tapped)

    def split(self, k: int):
        """``(stem, rest)``: callables running ``features[:k]`` (after the padding) and the rest, see the class."""
        return _Stem(self, k), _Rest(self, k)


class _Stem(nn.Module):
    def __init__(self, trunk: PyramidTrunk, k: int):
        super().__init__()
        self.trunk, self.k = trunk, k

    def forward(self, x: torch.Tensor):
        return self.trunk._run(self.trunk.pad(x), 0, self.k, [])


class _Rest(nn.Module):
    def __init__(self, trunk: PyramidTrunk, k: int):
        super().__init__()
        self.trunk, self.k = trunk, k

    def forward(self, state) -> dict[str, torch.Tensor]:
        x, tapped = state
        _, tapped = self.trunk._run(x, self.k, len(self.trunk.features), list(tapped))
        return self.trunk._pyramid(tapped)


def build_pyramid_trunk(config, out_channels: int, pool: bool = False) -> tuple[PyramidTrunk, str]:
    """``(PyramidTrunk, weights source)``: the backbone of `config` (a
    `rcnn.features.roi.BackboneConfig`; weights as `build_trunk` loads them) cut after its
    last tapped block, with a pyramid of `out_channels` channels per level (new layers
    initialised by torchvision, under the caller's torch seed), in eval mode on the CPU."""
    if config.name not in PYRAMID_TAPS:
        raise ConfigError(f"no feature pyramid for {config.name}; one of {', '.join(PYRAMID_TAPS)}")
    module, _, source = build_backbone(config.name, config.weights, config.weights_file, config.seed)
    taps, channels = zip(*PYRAMID_TAPS[config.name])
    trunk = PyramidTrunk(module.features[: taps[-1] + 1], taps, channels, out_channels, pool)
    return trunk.eval(), source


def pyramid_roi_align(levels, output_size: int, sampling_ratio: int) -> MultiScaleRoIAlign:
    """torchvision's `MultiScaleRoIAlign` over the pyramid's `levels` (keys of `STRIDES`,
    finest first; ``"pool"`` is never pooled, torchvision's rule) to ``output_size x
    output_size`` cells, with the levels' scales from their strides and the box-to-level
    mapper set for them, rather than inferred from the first image's maps and size (which
    the padding can mislead on a small image)."""
    pooled = [k for k in levels if k != "pool"]
    pool = MultiScaleRoIAlign(pooled, output_size, sampling_ratio)
    pool.scales = [1.0 / STRIDES[k] for k in pooled]
    finest, coarsest = (int(math.log2(STRIDES[k])) for k in (pooled[0], pooled[-1]))
    pool.map_levels = initLevelMapper(finest, coarsest, pool.canonical_scale, pool.canonical_level)
    return pool


class PyramidPooler(nn.Module):
    """Pools regions from a pyramid's maps, as `rcnn.features.roi.RoIPooler` from one map:
    maps ``{"0": [1, C, H/8, W/8], "1": [1, C, H/16, W/16], ...}`` (`PyramidTrunk`'s) and
    boxes (a list of ``float32 [K_i, 4]`` tensors, one per image, in image pixels) to
    ``[K, C, output_size, output_size]`` in box order, each box from the level its size maps
    to (`pyramid_roi_align`). RoI align only (`config.mode` must be ``"align"``)."""

    def __init__(self, config: RoIConfig = RoIConfig(), levels=("0", "1")):
        super().__init__()
        if config.mode != "align":
            raise ConfigError(f'roi.mode = "{config.mode}": a feature pyramid pools with RoI align only')
        self.config = config
        self.align = pyramid_roi_align(levels, config.output_size, config.sampling_ratio)

    def level_of(self, boxes: torch.Tensor) -> torch.Tensor:
        """``int64 [K]``: the index, in the pooled levels, of the level each box ``[K, 4]`` is pooled from."""
        return self.align.map_levels([boxes])

    def forward(self, maps: dict[str, torch.Tensor], boxes) -> torch.Tensor:
        first = next(iter(maps.values()))
        boxes = [b.to(first.dtype) for b in boxes]
        return self.align(maps, boxes, [])  # the sizes only infer the scales, which are set
