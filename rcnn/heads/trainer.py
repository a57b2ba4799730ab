"""The one training loop every network of the package runs (R-CNN's fine-tuning, Fast and
Faster R-CNN, the localiser): `Trainer`.

It owns what they share: the layers left frozen (parameter-name prefixes) and batch norm kept
in eval mode, the optimiser (SGD or Adam; the new layers' rate times `head_lr_mult`), the
rate of each iteration (stepped by `lr_gamma` every `lr_step` iterations, warmed up linearly
from `warmup_factor` over `warmup` iterations where the config has them), a torch seed per
iteration (dropout and samplers draw the same on resume), the guarded step
(`rcnn.heads.sgd.train_step`: a non-finite loss or gradient stops with one line), the
per-iteration history, the progress bar, and the checkpoint (`Checkpoint`): written
atomically every `checkpoint_every` iterations and at the end after the weights are checked,
resumed from by a run given the same path.

A detector's trainer subclasses it and supplies `title`, `terms` (the history's entries
besides the total ``loss``), `meta` (the settings a checkpoint must match), `batch(it)` (the
inputs of iteration `it`, drawn outside the torch seed) and `loss(batch)` (``{"loss": total,
**terms}``), and may `prepare` (once the frozen layers are known).
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rcnn.cache import atomic_write
from rcnn.errors import ModelError
from rcnn.heads.sgd import check_weights, freeze, train_step
from rcnn.progress import progress

__all__ = ["Checkpoint", "Trainer", "freeze_batch_norm"]

log = logging.getLogger(__name__)


def freeze_batch_norm(module: nn.Module) -> None:
    """Put every batch-norm layer of `module` in eval mode (statistics kept; affine weights
    still learn)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Checkpoint:
    """A training checkpoint at `path` (None: none kept): every module's state dict, the
    optimiser's, the history and the iteration reached, with `meta`, the settings it was
    written under. One rule on reading: no file, start at 0; a file that cannot be read or
    loaded (truncated, foreign, damaged) is reported in one line and training starts over
    from the initial weights; a readable checkpoint of other settings (`meta` differs) is an
    error (`ModelError`), since silently overwriting it could lose a finished run."""

    def __init__(self, path: str | os.PathLike | None, meta: dict, title: str):
        self.path = None if path is None else Path(path)
        self.meta = meta
        self.title = title

    def save(self, iteration: int, modules: dict[str, nn.Module], optimizer, history: dict) -> None:
        if self.path is None:
            return
        state = {
            "iteration": iteration,
            "meta": self.meta,
            **{name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "history": history,
        }
        with atomic_write(self.path) as f:  # makes the folder
            torch.save(state, f)

    def load(self, modules: dict[str, nn.Module], optimizer, history: dict) -> int:
        """Load the checkpoint into `modules`, `optimizer` and `history` (its keys) when there
        is one; the iteration to go on from (0: from the start, everything as it was)."""
        path = self.path
        if path is None or not path.is_file():
            return 0
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  truncated or foreign files of every kind
            log.warning(f"{path}: unreadable {self.title} checkpoint ({type(e).__name__}), starting over")
            return 0
        if not isinstance(state, dict) or "meta" not in state:
            log.warning(f"{path}: not a {self.title} checkpoint, starting over")
            return 0
        if state["meta"] != self.meta:
            raise ModelError(f"{path}: checkpoint of another {self.title} setup; delete it or choose another path")
        initial = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
        try:
            for name, m in modules.items():
                m.load_state_dict(state[name])
            optimizer.load_state_dict(state["optimizer"])
            loaded = {k: [float(x) for x in state["history"][k]] for k in history}
            iteration = int(state["iteration"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            log.warning(f"{path}: damaged {self.title} checkpoint ({type(e).__name__}), starting over")
            for name, m in modules.items():
                m.load_state_dict(initial[name])
            return 0
        history.update(loaded)
        return iteration


class Trainer(ABC):
    """Trains `modules` (by checkpoint entry) in place with `config` (an
    `rcnn.heads.sgd.SGDConfig`-like object: ``lr``, ``momentum``, ``weight_decay``,
    ``lr_step``, ``lr_gamma``, ``frozen``, ``freeze_bn``, ``clip_grad_norm``,
    ``checkpoint_every``, ``seed``; optional ``head_lr_mult``, ``warmup``, ``warmup_factor``,
    ``optimizer`` = ``"sgd"`` or ``"adam"``). Fitted: `history_` (per iteration: ``loss`` and
    each of `terms`), `resumed_from_` (the iteration a checkpoint gave, 0 when fresh),
    `seconds_` (wall seconds of the loop)."""

    title = "network"  # in the progress bar, notices and errors
    terms: tuple[str, ...] = ()  # the entries `loss` gives besides the total, kept in `history_`
    unit = "img"  # what `batch` returns a sequence of, for the progress bar
    frozen_setting = "train.frozen"  # the setting `config.frozen` comes from, named in a note

    def __init__(self, config, checkpoint: str | os.PathLike | None = None, device="cpu"):
        self.config = config
        self.checkpoint = checkpoint
        self.device = torch.device(device)

    # -- what a detector supplies ------------------------------------------------------------------
    @abstractmethod
    def meta(self) -> dict:
        """The settings a checkpoint must have been written under to be resumed."""
        raise NotImplementedError

    @abstractmethod
    def batch(self, it: int):
        """Iteration `it`'s inputs (drawn from seeded generators of their own; `items` counts
        the progress bar's units in it)."""
        raise NotImplementedError

    @abstractmethod
    def loss(self, batch) -> dict[str, torch.Tensor]:
        """``{"loss": total, **terms}`` of `batch` (run under the iteration's torch seed)."""
        raise NotImplementedError

    def prepare(self, trunk: nn.Module) -> None:
        """Called once the frozen layers are set, before the first iteration (by default,
        nothing to do)."""
        return None

    def work(self, iterations: int) -> int:
        """The progress bar's total for `iterations` (units of `unit`)."""
        return iterations * getattr(self.config, "images_per_batch", 1)

    def items(self, batch) -> int:
        """How many of `unit` `batch` holds."""
        return len(batch)

    def torch_seed(self, it: int) -> int:
        return self.config.seed * 1_000_003 + it

    def lr(self, it: int) -> float:
        """The rate of iteration `it` (from 0): stepped, then warmed up."""
        cfg = self.config
        lr = cfg.lr * (cfg.lr_gamma ** (it // cfg.lr_step) if cfg.lr_step else 1.0)
        warmup = getattr(cfg, "warmup", 0)
        if it < warmup:
            lr *= cfg.warmup_factor + (1 - cfg.warmup_factor) * it / warmup
        return lr

    def checkpoint_due(self, iteration: int, iterations: int) -> bool:
        """Whether a checkpoint follows iteration `iteration` (counted from 1)."""
        return iteration % self.config.checkpoint_every == 0 or iteration == iterations

    # -- the loop ------------------------------------------------------------------------------------
    def run(
        self,
        modules: dict[str, nn.Module],
        trunk: nn.Module,
        iterations: int,
        callback: Callable[[int, float], None] | None = None,
    ) -> Trainer:
        """Train `modules` for `iterations` (`trunk`: one of them or part of one, whose
        parameters named by ``config.frozen`` stay fixed, the rest being the head's; with
        ``freeze_bn`` every batch norm of `modules` stays in eval mode). They end in eval
        mode on the CPU with every parameter trainable again. `callback(it, loss)` follows
        each iteration (after its checkpoint)."""
        cfg = self.config
        for m in modules.values():
            m.to(self.device)
        freeze(trunk, cfg.frozen, self.frozen_setting)
        optimizer = self._optimizer(modules, trunk)
        checkpoint = Checkpoint(self.checkpoint, self.meta(), self.title)
        self.history_ = {k: [] for k in ("loss", *self.terms)}
        start = self.resumed_from_ = checkpoint.load(modules, optimizer, self.history_)
        self.prepare(trunk)
        t0 = time.perf_counter()
        bar = progress(
            total=self.work(iterations), initial=self.work(start), desc=f"{self.title} training", unit=self.unit
        )
        try:
            for it in range(start, iterations):
                for group in optimizer.param_groups:
                    group["lr"] = self.lr(it) * group["lr_mult"]
                for m in modules.values():
                    m.train()
                if cfg.freeze_bn:  # every pretrained batch norm (a dense head may hold the backbone's next stage)
                    for m in modules.values():
                        freeze_batch_norm(m)
                batch = self.batch(it)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.torch_seed(it))
                    losses = self.loss(batch)
                    clip = getattr(cfg, "clip_grad_norm", 0.0)
                    train_step(optimizer, losses, it + 1, self.title, clip, self.checkpoint)
                for k in self.history_:
                    v = losses[k]
                    self.history_[k].append(v.item() if torch.is_tensor(v) else float(v))
                bar.update(self.items(batch))
                bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in self.history_.items()})
                if self.checkpoint_due(it + 1, iterations):
                    check_weights(modules.values(), self.title, it + 1, losses, self.checkpoint)
                    checkpoint.save(it + 1, modules, optimizer, self.history_)
                if callback is not None:
                    callback(it, self.history_["loss"][-1])
        finally:
            bar.close()
            for m in modules.values():
                m.cpu().eval()
                for p in m.parameters():
                    p.requires_grad_(True)
        self.seconds_ = time.perf_counter() - t0
        return self

    def _optimizer(self, modules: dict[str, nn.Module], trunk: nn.Module) -> torch.optim.Optimizer:
        """Two parameter groups: the head's (every parameter outside `trunk`; rate times
        ``head_lr_mult``) and the trunk's trainable ones (when there are any)."""
        cfg = self.config
        in_trunk = {id(p) for p in trunk.parameters()}
        head = [p for m in modules.values() for p in m.parameters() if id(p) not in in_trunk]
        trainable = [p for p in trunk.parameters() if p.requires_grad]
        groups = [{"params": head, "lr_mult": getattr(cfg, "head_lr_mult", 1.0)}]
        groups += [{"params": trainable, "lr_mult": 1.0}] * bool(trainable)
        if getattr(cfg, "optimizer", "sgd") == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
