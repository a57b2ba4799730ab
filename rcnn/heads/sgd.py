"""What every trained network shares (R-CNN's fine-tuning, Fast and Faster R-CNN's training,
the localiser): the SGD settings (`SGDConfig`: one dataclass, one set of checks) and one
guarded step (`train_step`): a non-finite loss, gradient or weight stops training with one
line (`TrainingDiverged`) instead of saving a model of NaNs."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rcnn.config import require
from rcnn.errors import TrainingDiverged

__all__ = ["SGDConfig", "check_weights", "freeze", "train_step"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SGDConfig:
    """`iterations` of SGD with `momentum` and `weight_decay`; the rate `lr` (times
    `head_lr_mult` for the new layers) is multiplied by `lr_gamma` every `lr_step` iterations
    (0: never). `flip`: images flipped left-right with probability 1/2; `frozen`: parameter-name
    prefixes left untouched (torchvision's names, e.g. ``features.0.``); `freeze_bn`:
    batch-norm layers keep their statistics (eval mode) while their affine weights still
    learn; `clip_grad_norm`: the gradient's total L2 norm is scaled down to at most this
    before each step (0: never). A checkpoint every `checkpoint_every` iterations; `seed`
    seeds every random choice."""

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
    clip_grad_norm: float = 0.0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("iterations", "lr_step", "seed"):
            require(self, name, getattr(self, name) >= 0, "an integer >= 0")
        require(self, "checkpoint_every", self.checkpoint_every >= 1, "an integer >= 1")
        for name in ("lr", "head_lr_mult", "lr_gamma"):
            require(self, name, getattr(self, name) > 0 and math.isfinite(getattr(self, name)), "a number > 0")
        require(self, "momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        require(self, "clip_grad_norm", 0 <= self.clip_grad_norm < math.inf, "a number >= 0 (0: no clipping)")


def freeze(net: nn.Module, prefixes, what: str = "frozen") -> None:
    """Set ``requires_grad`` of `net`'s parameters: False for names starting with one of
    `prefixes`, True for the rest. A prefix that matches no parameter is surely a mistake (a
    typo, or another backbone's names): each gets a one-line note naming `what` (the setting)."""
    prefixes = tuple(prefixes)
    names = [name for name, _ in net.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            layers = list(dict.fromkeys(".".join(n.split(".")[:2]) + "." for n in names))
            shown = ", ".join(layers[:4]) + (f", ... {layers[-1]}" if len(layers) > 4 else "")
            log.warning(f"note: {what} prefix {prefix!r} matches no layer, so it freezes nothing (layers: {shown})")
    for name, p in net.named_parameters():
        p.requires_grad_(not name.startswith(prefixes))


def _show(losses: Mapping[str, torch.Tensor | float]) -> str:
    return ", ".join(f"{k}={float(v.detach() if torch.is_tensor(v) else v):.4g}" for k, v in losses.items())


def _diverged(title: str, iteration: int, what: str, losses, checkpoint) -> TrainingDiverged:
    if checkpoint is not None and Path(checkpoint).is_file():
        kept = f"the last good checkpoint is kept ({checkpoint})"
    else:
        kept = "no checkpoint yet"
    return TrainingDiverged(
        f"{title} training diverged at iteration {iteration}: {what} ({_show(losses)}); {kept}, no model "
        "written; lower the learning rate (or clip the gradient: clip_grad_norm, where the trainer has it)"
    )


def train_step(
    optimizer: torch.optim.Optimizer,
    losses: Mapping[str, torch.Tensor],
    iteration: int,
    title: str,
    clip: float = 0.0,
    checkpoint=None,
) -> float:
    """One guarded optimisation step on ``losses["loss"]`` (the other entries are its terms,
    named in a failure); returns the gradient's total L2 norm before clipping. A non-finite
    loss or gradient raises `TrainingDiverged` before any weight changes, naming `title`,
    `iteration` (counted from 1), each term and `checkpoint` (the path of the last one
    written, if any); a `clip` > 0 scales the gradient down to that norm
    (`torch.nn.utils.clip_grads_with_norm_`)."""
    loss = losses["loss"]
    if not torch.isfinite(loss.detach()).all():
        raise _diverged(title, iteration, "a non-finite loss", losses, checkpoint)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = nn.utils.get_total_norm([p.grad for p in params])
    if not torch.isfinite(norm):
        raise _diverged(title, iteration, f"a non-finite gradient (norm {float(norm):g})", losses, checkpoint)
    if clip > 0:
        nn.utils.clip_grads_with_norm_(params, clip, norm)
    optimizer.step()
    return float(norm)


def check_weights(modules: Iterable[nn.Module], title: str, iteration: int, losses, checkpoint=None) -> None:
    """Raise `TrainingDiverged` when a parameter of `modules` is not finite (a step too large
    for float32): called before a checkpoint or a model is written."""
    for m in modules:
        for name, p in m.named_parameters():
            if not torch.isfinite(p.detach()).all():
                raise _diverged(title, iteration, f"non-finite weights in {name}", losses, checkpoint)
