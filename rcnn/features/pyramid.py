"""A feature pyramid (Lin et al., CVPR 2017) over the stride-16 trunk, for Faster R-CNN.

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
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from rcnn.errors import ConfigError
from rcnn.features.backbones import build_backbone

__all__ = ["PYRAMID_TAPS", "SIZE_DIVISIBLE", "STRIDES", "PyramidTrunk", "build_pyramid_trunk"]

SIZE_DIVISIBLE = 32
STRIDES = {"0": 8, "1": 16, "pool": 32}  # each level's stride, by its key
PYRAMID_TAPS = {"mobilenet_v2": ((6, 32), (13, 96))}  # (block of ``features``, its channels): strides 8, 16


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
