"""Fast R-CNN's head and its training (Girshick 2015, Sec. 2).

`FastRCNNHead`: pooled RoI features ``[K, C_map, S, S]`` -> fully connected layers (fc6,
fc7, ...; ReLU, optional dropout) -> ``C + 1`` class logits (column 0 background) and
class-specific box deltas ``[K, 4C]`` (`rcnn.boxes.BoxCoder` deltas, normalised by
``stds = (0.1, 0.1, 0.2, 0.2)``). `truncated_svd` replaces one fc layer by two smaller ones
(Sec. 3.1). `fast_rcnn_loss`: cross-entropy over all RoIs plus a weighted smooth L1 over the
foreground RoIs' deltas of their own class.

`FastRCNNTrainer` trains the stride-16 trunk and the head together by SGD: each iteration
takes `images_per_batch` images (seeded), flips each left-right with probability 1/2,
rescales it (shortest side `scale`, longest at most `max_size`), runs the trunk once per
image and pools the RoIs `RoISampler` draws. A checkpoint (state dicts and plain values,
written atomically) is saved every `checkpoint_every` iterations and at the end; a run given
the same checkpoint path resumes from it and draws the same batches it would have.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rcnn.boxes import BoxCoder
from rcnn.cache import atomic_write
from rcnn.config import require, to_dict
from rcnn.datasets.images import read_image
from rcnn.errors import ModelError
from rcnn.features.roi import RoIPooler, image_tensor, rescale
from rcnn.heads.sampler import RoISampler
from rcnn.heads.sgd import SGDConfig
from rcnn.progress import notice, progress

__all__ = [
    "BOX_STDS",
    "FastRCNNHead",
    "HeadConfig",
    "TrainConfig",
    "TrainImage",
    "FastRCNNTrainer",
    "fast_rcnn_loss",
    "flip_boxes",
    "truncated_svd",
]

BOX_STDS = (0.1, 0.1, 0.2, 0.2)  # the paper's target normalisation


@dataclass(frozen=True)
class HeadConfig:
    """The ``[head]`` table: sizes of the fully connected layers after RoI pooling (fc6,
    fc7, ...) and the dropout after each (0: none)."""

    fc: tuple[int, ...] = (1024, 1024)
    dropout: float = 0.0

    def __post_init__(self):
        require(self, "fc", len(self.fc) >= 1 and all(n >= 1 for n in self.fc), "a list of integers >= 1")
        require(self, "dropout", 0 <= self.dropout < 1, "a number in [0, 1)")


@dataclass(frozen=True)
class RoITrainConfig(SGDConfig):
    """What the ``[train]`` tables of the detectors with a RoI head share: SGD
    (`rcnn.heads.sgd.SGDConfig`) over mini-batches of `images_per_batch` images x
    `rois_per_image` RoIs, `fg_fraction` of them foreground (IoU >= `fg_iou`, ground-truth
    boxes included). `cache_frozen`: the trunk's frozen leading layers run once per image and
    flip, their output kept in memory (the same numbers, a fraction of the time; see
    `FastRCNNTrainer._split`)."""

    images_per_batch: int = 2
    rois_per_image: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    cache_frozen: bool = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("images_per_batch", "rois_per_image"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        require(self, "fg_fraction", 0 < self.fg_fraction <= 1, "a number in (0, 1]")
        require(self, "fg_iou", 0 < self.fg_iou <= 1, "an IoU in (0, 1]")


@dataclass(frozen=True)
class TrainConfig(RoITrainConfig):
    """Fast R-CNN's ``[train]`` table (defaults: the paper's, except the length): the shared
    settings (`RoITrainConfig`), background RoIs from IoU [`bg_iou_low`, `fg_iou`), the first
    `train_proposals` proposals of each image as the candidates, and `box_loss_weight` on
    the smooth L1 term."""

    bg_iou_low: float = 0.1
    train_proposals: int = 2000
    box_loss_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        require(self, "train_proposals", self.train_proposals >= 1, "an integer >= 1")
        require(self, "bg_iou_low", 0 <= self.bg_iou_low < self.fg_iou, f"an IoU in [0, fg_iou = {self.fg_iou})")
        require(self, "box_loss_weight", self.box_loss_weight >= 0, "a number >= 0")

    @property
    def sampler(self) -> RoISampler:
        return RoISampler(self.rois_per_image, self.fg_fraction, self.fg_iou, self.bg_iou_low)


class FastRCNNHead(nn.Module):
    """Pooled features ``[K, C_map, S, S]`` -> ``(logits [K, C + 1], deltas [K, 4C])``;
    `features` gives the last fc layer's output ``[K, fc[-1]]`` (fc7, for SVMs)."""

    def __init__(
        self, in_features: int, num_classes: int, fc: Sequence[int] = (1024, 1024), dropout: float = 0.0, seed: int = 0
    ):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for n in fc:
                layers += [nn.Linear(in_features, n), nn.ReLU(inplace=True)]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                in_features = n
            self.fc = nn.Sequential(*layers)
            self.cls_score = nn.Linear(in_features, num_classes + 1)
            self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
            nn.init.normal_(self.cls_score.weight, std=0.01)  # the paper's initialisation
            nn.init.normal_(self.bbox_pred.weight, std=0.001)
            nn.init.zeros_(self.cls_score.bias)
            nn.init.zeros_(self.bbox_pred.bias)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled.flatten(1))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(pooled)
        return self.cls_score(x), self.bbox_pred(x)


def truncated_svd(linear: nn.Linear, rank: int) -> nn.Module:
    """`linear` ``W [out, in]`` as two layers ``in -> rank -> out`` from its truncated SVD
    ``W ~ U_t S_t V_t^T`` (the first without bias: ``S_t V_t^T``, the second ``U_t`` with the
    bias): ``rank * (in + out)`` weights instead of ``in * out``. A rank >= min(in, out)
    returns `linear` itself."""
    out_f, in_f = linear.weight.shape
    if rank >= min(out_f, in_f):
        return linear
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    first = nn.Linear(in_f, rank, bias=False)
    second = nn.Linear(rank, out_f)
    with torch.no_grad():
        first.weight.copy_((s[:rank, None] * vh[:rank]).float())
        second.weight.copy_(u[:, :rank].float())
        second.bias.copy_(linear.bias.detach())
    return nn.Sequential(first, second)


def compress_head(head: FastRCNNHead, rank: int) -> FastRCNNHead:
    """A copy of `head` whose fc layers are replaced by `truncated_svd` of rank `rank`."""
    import copy

    out = copy.deepcopy(head)
    out.fc = nn.Sequential(*[truncated_svd(m, rank) if isinstance(m, nn.Linear) else m for m in out.fc])
    return out


def fast_rcnn_loss(
    logits: torch.Tensor,
    deltas: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    box_loss_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, classification, box)`` for logits ``[K, C + 1]``, deltas ``[K, 4C]``, labels
    ``int64 [K]`` (0 background) and the foreground RoIs' targets ``[F, 4]`` (in the order of
    ``labels > 0``): cross-entropy averaged over the K RoIs, smooth L1 (beta 1, the paper's)
    summed over the foreground deltas of their own class and divided by K."""
    if len(labels) == 0:  # no RoI in the batch: no loss (cross-entropy of nothing is NaN)
        zero = logits.sum() * 0.0 + deltas.sum() * 0.0
        return zero, zero, zero
    cls = nn.functional.cross_entropy(logits, labels)
    fg = torch.nonzero(labels > 0).squeeze(1)
    if len(fg):
        own = deltas.view(len(deltas), -1, 4)[fg, labels[fg] - 1]
        box = nn.functional.smooth_l1_loss(own, targets, beta=1.0, reduction="sum") / max(len(labels), 1)
    else:
        box = deltas.sum() * 0.0
    return cls + box_loss_weight * box, cls, box


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes ``[N, 4]`` mirrored left-right in an image `width` px wide: ``x1' = W - x2``,
    ``x2' = W - x1``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


class TrainImage(NamedTuple):
    """One training image: its path, proposals ``float32 [N, 4]`` and ground truth (boxes
    ``[G, 4]``, labels ``[G]`` in ``1..C``, difficult ``bool [G]`` or None)."""

    image_path: str | os.PathLike
    proposals: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray | None = None


class FastRCNNTrainer:
    """Trains a trunk (``[1, 3, H, W] -> [1, C_map, H/16, W/16]``) and a `FastRCNNHead`
    together, in place. Fitted: `history_` (per iteration ``loss``, ``cls``, ``box``),
    `resumed_from_` (the iteration a checkpoint gave, 0 when fresh), `seconds_`."""

    def __init__(
        self,
        config: TrainConfig,
        pooler: RoIPooler,
        scale: int,
        max_size: int,
        checkpoint: str | os.PathLike | None = None,
        device="cpu",
    ):
        self.config = config
        self.pooler = pooler
        self.scale = scale
        self.max_size = max_size
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.coder = BoxCoder(stds=BOX_STDS)

    def _prepare(self, images: Sequence[TrainImage]):
        """Per image: candidate boxes (proposals then ground truth), their labels and matches."""
        sampler, out = self.config.sampler, []
        for im in images:
            im = TrainImage(*im)
            gt = np.asarray(im.gt_boxes, np.float32).reshape(-1, 4)
            props = np.asarray(im.proposals, np.float32).reshape(-1, 4)[: self.config.train_proposals]
            boxes = np.concatenate([props, gt])
            labels, gt_index = sampler.label(boxes, gt, im.gt_labels, im.gt_difficult)
            out.append((boxes, labels, gt_index, gt))
        if not any((lab > 0).any() for _, lab, _, _ in out):
            raise ValueError(f"Fast R-CNN training needs foreground boxes; none in {len(images)} images")
        return out

    def _image(self, images, i: int, cache: dict):
        """Image `i` rescaled (kept in memory after the first read) and its factor."""
        if i not in cache:
            cache[i] = rescale(read_image(TrainImage(*images[i]).image_path), self.scale, self.max_size)
        return cache[i]

    def batch(self, it: int, images, prepared, cache: dict, stem: nn.Module | None = None):
        """Iteration `it`'s mini-batch: per image ``(tensor [1, 3, H, W], rois [R, 4],
        labels [R], targets [F, 4])`` in the rescaled (and maybe flipped) image. With `stem`
        (the trunk's frozen first layers, see `_split`) the tensor is the stem's output
        instead, computed once per image and flip and kept in `cache`."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, it])
        chosen = rng.choice(len(images), min(cfg.images_per_batch, len(images)), replace=False)
        out = []
        for i in chosen:
            image, factor = self._image(images, int(i), cache)
            boxes, labels, gt_index, gt = prepared[i]
            s = cfg.sampler.sample(labels, gt_index, rng)
            rois = boxes[s.index] * factor
            gt = gt * factor
            flip = bool(cfg.flip and rng.random() < 0.5)
            if flip:
                width = image.shape[1]
                image = image[:, ::-1]
                rois, gt = flip_boxes(rois, width), flip_boxes(gt, width)
            fg = s.labels > 0
            targets = self.coder.encode(rois[fg], gt[s.gt_index[fg]]) if fg.any() else np.zeros((0, 4), np.float32)
            if stem is None:
                x = image_tensor(image).to(self.device)
            else:
                if (int(i), flip) not in cache:
                    with torch.no_grad():
                        cache[int(i), flip] = stem(image_tensor(image).to(self.device))
                x = cache[int(i), flip]
            out.append((x, rois.astype(np.float32), s.labels, np.asarray(targets, np.float32)))
        return out

    def fit(
        self,
        trunk: nn.Module,
        head: FastRCNNHead,
        images: Sequence[TrainImage],
        callback: Callable[[int, float], None] | None = None,
    ) -> FastRCNNTrainer:
        """Train `trunk` and `head` on `images`; both end in eval mode on the CPU. `callback(it,
        loss)` is called after each iteration (after its checkpoint)."""
        cfg = self.config
        prepared = self._prepare(images)
        trunk.to(self.device)
        head.to(self.device)
        for name, p in trunk.named_parameters():
            p.requires_grad_(not name.startswith(tuple(cfg.frozen)))
        trainable = [p for p in trunk.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            [{"params": list(head.parameters()), "lr_mult": cfg.head_lr_mult}]
            + [{"params": trainable, "lr_mult": 1.0}] * bool(trainable),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.history_ = {"loss": [], "cls": [], "box": []}
        start = self.resumed_from_ = self._resume(trunk, head, optimizer)
        cache: dict = {}
        stem, rest = self._split(trunk)
        t0 = time.perf_counter()
        bar = progress(
            total=cfg.iterations * cfg.images_per_batch,
            initial=start * cfg.images_per_batch,
            desc="Fast R-CNN training",
            unit="img",
        )
        try:
            for it in range(start, cfg.iterations):
                batch = self.batch(it, images, prepared, cache, stem)
                for group in optimizer.param_groups:
                    group["lr"] = self._lr(it) * group["lr_mult"]
                self._train_mode(trunk, head)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed * 1_000_003 + it)  # dropout: the same on resume
                    pooled = [self.pooler(rest(x), [torch.from_numpy(r).to(self.device)]) for x, r, _, _ in batch]
                    logits, deltas = head(torch.cat(pooled))
                    labels = torch.from_numpy(np.concatenate([b[2] for b in batch])).to(self.device)
                    targets = torch.from_numpy(np.concatenate([b[3] for b in batch])).to(self.device)
                    loss, cls, box = fast_rcnn_loss(logits, deltas, labels, targets, cfg.box_loss_weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                for k, v in (("loss", loss), ("cls", cls), ("box", box)):
                    self.history_[k].append(v.item())
                bar.update(len(batch))
                bar.set_postfix(loss=f"{self.history_['loss'][-1]:.3f}")
                if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                    self._save(it + 1, trunk, head, optimizer)
                if callback is not None:
                    callback(it, self.history_["loss"][-1])
        finally:
            bar.close()
            trunk.cpu().eval()
            head.cpu().eval()
            for p in trunk.parameters():
                p.requires_grad_(True)
        self.seconds_ = time.perf_counter() - t0
        return self

    def _split(self, trunk: nn.Module) -> tuple[nn.Module | None, nn.Module]:
        """``(stem, rest)``: a trunk made of ``features`` layers (MobileNetV2, VGG16) whose first
        layers are all frozen, with frozen batch norm, computes the same map for an image every
        time it sees it: those layers (the stem) run once per image and flip, their output is
        kept in memory, and each step runs only the rest. Otherwise ``(None, trunk)``."""
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
        return layers[:k], layers[k:]

    def _lr(self, it: int) -> float:
        cfg = self.config
        return cfg.lr * (cfg.lr_gamma ** (it // cfg.lr_step) if cfg.lr_step else 1.0)

    def _train_mode(self, trunk: nn.Module, head: nn.Module) -> None:
        trunk.train()
        head.train()
        if self.config.freeze_bn:
            for m in trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # -- checkpoints -------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "config": to_dict(self.config),
            "scale": self.scale,
            "max_size": self.max_size,
            "roi": to_dict(self.pooler.config),
        }

    def _save(self, iteration: int, trunk, head, optimizer) -> None:
        if self.checkpoint is None:
            return
        path = Path(self.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "iteration": iteration,
            "meta": self._meta(),
            "trunk": {k: v.detach().cpu() for k, v in trunk.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "history": self.history_,
        }
        with atomic_write(path) as f:
            torch.save(state, f)

    def _resume(self, trunk, head, optimizer) -> int:
        """Load the checkpoint when there is one; the iteration to go on from. A damaged
        checkpoint is reported and training starts over."""
        if self.checkpoint is None or not Path(self.checkpoint).is_file():
            return 0
        path = self.checkpoint
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  truncated or foreign files of every kind
            notice(f"{path}: unreadable Fast R-CNN checkpoint ({type(e).__name__}), starting over")
            return 0
        if not isinstance(state, dict) or state.get("meta") != self._meta():
            raise ModelError(f"{path}: checkpoint of another training setup; delete it or choose another path")
        initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in (trunk, head)]
        try:
            trunk.load_state_dict(state["trunk"])
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            self.history_ = {k: list(v) for k, v in state["history"].items()}
            return int(state["iteration"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            notice(f"{path}: damaged Fast R-CNN checkpoint ({type(e).__name__}), starting over")
            trunk.load_state_dict(initial[0])
            head.load_state_dict(initial[1])
            self.history_ = {"loss": [], "cls": [], "box": []}
            return 0
