"""The SGD settings every trained head shares (R-CNN's fine-tuning, Fast and Faster R-CNN's
training): one dataclass, one set of checks."""

from __future__ import annotations

from dataclasses import dataclass

from rcnn.config import require

__all__ = ["SGDConfig"]


@dataclass(frozen=True)
class SGDConfig:
    """`iterations` of SGD with `momentum` and `weight_decay`; the rate `lr` (times
    `head_lr_mult` for the new layers) is multiplied by `lr_gamma` every `lr_step` iterations
    (0: never). `flip`: images flipped left-right with probability 1/2; `frozen`: parameter-name
    prefixes left untouched (torchvision's names, e.g. ``features.0.``); `freeze_bn`:
    batch-norm layers keep their statistics (eval mode) while their affine weights still
    learn. A checkpoint every `checkpoint_every` iterations; `seed` seeds every random choice."""

    iterations: int = 1000
    lr: float = 0.001
    head_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_step: int = 0
    lr_gamma: float = 0.1
    flip: bool = True
    freeze_bn: bool = True
    frozen: tuple[str, ...] = ()
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("iterations", "lr_step", "seed"):
            require(self, name, getattr(self, name) >= 0, "an integer >= 0")
        require(self, "checkpoint_every", self.checkpoint_every >= 1, "an integer >= 1")
        for name in ("lr", "head_lr_mult", "lr_gamma"):
            require(self, name, getattr(self, name) > 0, "a number > 0")
        require(self, "momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
