"""Fast R-CNN's head and its training (Girshick 2015, Sec. 2).

`FastRCNNHead`: pooled RoI features ``[K, C_map, S, S]`` -> fully connected layers (fc6,
fc7, ...; ReLU, optional dropout) -> ``C + 1`` class logits (column 0 background) and
class-specific box deltas ``[K, 4C]`` (`rcnn.boxes.BoxCoder` deltas, normalised by
``stds = (0.1, 0.1, 0.2, 0.2)``). `truncated_svd` replaces one fc layer by two smaller ones
(Sec. 3.1). `fast_rcnn_loss`: cross-entropy over all RoIs plus a weighted smooth L1 over the
foreground RoIs' deltas of their own class.

`FastRCNNTrainer` trains the stride-16 trunk and the head together by SGD, in the loop
Faster R-CNN shares (`rcnn.heads.roi_trainer.RoITrainer`: seeded batches and flips,
checkpoints, resuming): per image it pools the RoIs `RoISampler` draws.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rcnn.boxes import BoxCoder
from rcnn.config import require, to_dict
from rcnn.features.pyramid import PyramidPooler
from rcnn.features.roi import RoIPooler
from rcnn.heads.roi_trainer import RoITrainConfig, RoITrainer, View, train_settings
from rcnn.heads.sampler import RoISampler

__all__ = [
    "BOX_STDS",
    "FastRCNNHead",
    "HeadConfig",
    "TrainConfig",
    "TrainImage",
    "FastRCNNTrainer",
    "fast_rcnn_loss",
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
class TrainConfig(RoITrainConfig):
    """Fast R-CNN's ``[train]`` table: the shared settings (`RoITrainConfig`; 10 epochs, the
    rate stepped after 7: each image gives 128 RoIs an iteration, so fewer passes than Faster
    R-CNN's), background RoIs from IoU [`bg_iou_low`, `fg_iou`), the first
    `train_proposals` proposals of each image as the candidates, and `box_loss_weight` on
    the smooth L1 term."""

    epochs: float = 10.0
    lr_step_epochs: float = 7.0
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


class TrainImage(NamedTuple):
    """One training image: its path, proposals ``float32 [N, 4]`` and ground truth (boxes
    ``[G, 4]``, labels ``[G]`` in ``1..C``, difficult ``bool [G]`` or None)."""

    image_path: str | os.PathLike
    proposals: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray | None = None


class FastRCNNTrainer(RoITrainer):
    """Trains a trunk (``[1, 3, H, W] -> [1, C_map, H/16, W/16]``, or a feature pyramid's dict
    of maps) and a `FastRCNNHead` together, in place (`rcnn.heads.roi_trainer.RoITrainer`):
    per image, RoIs drawn from its proposals and ground truth by `RoISampler`, pooled by
    `pooler` (`RoIPooler`, or `rcnn.features.pyramid.PyramidPooler` for a pyramid); `fast_rcnn_loss`.
    Fitted: `history_` (per iteration ``loss``, ``cls``, ``box``), `resumed_from_`, `seconds_`."""

    title = "Fast R-CNN"
    terms = ("cls", "box")

    def __init__(
        self,
        config: TrainConfig,
        pooler: RoIPooler | PyramidPooler,
        scale: int,
        max_size: int,
        checkpoint: str | os.PathLike | None = None,
        device="cpu",
    ):
        super().__init__(config, scale, max_size, checkpoint, device)
        self.pooler = pooler
        self.coder = BoxCoder(stds=BOX_STDS)

    def _prepare(self, images: Sequence[TrainImage]) -> None:
        """Keep the images' paths and, per image, its candidate boxes (proposals then ground
        truth), their labels and matches, and its objects' classes and difficult flags (for
        labelling a crop again)."""
        sampler, self.paths, self.prepared, self.objects = self.config.sampler, [], [], []
        for im in images:
            im = TrainImage(*im)
            gt = np.asarray(im.gt_boxes, np.float32).reshape(-1, 4)
            props = np.asarray(im.proposals, np.float32).reshape(-1, 4)[: self.config.train_proposals]
            boxes = np.concatenate([props, gt])
            labels, gt_index = sampler.label(boxes, gt, im.gt_labels, im.gt_difficult)
            self.paths.append(im.image_path)
            self.prepared.append((boxes, labels, gt_index, gt))
            difficult = None if im.gt_difficult is None else np.asarray(im.gt_difficult, bool).reshape(-1)
            self.objects.append((np.asarray(im.gt_labels).reshape(-1), difficult))
        if not any((lab > 0).any() for _, lab, _, _ in self.prepared):
            raise ValueError(f"Fast R-CNN training needs foreground boxes; none in {len(images)} images")

    def _example(self, i: int, rng, cache: dict, stem: nn.Module | None):
        """``(x, rois [R, 4], labels [R], targets [F, 4])`` in image `i` as `RoITrainer._view`
        gives it (rescaled, maybe flipped, cropped, colour-jittered). The RoIs are drawn before
        the view; a cropped view draws them again from the candidates left in it (`_in_crop`)."""
        boxes, labels, gt_index, gt = self.prepared[i]
        s = self.config.sampler.sample(labels, gt_index, rng)
        view = self._view(i, rng, cache, stem, gt)
        if view.window is None:
            rois, gt = view.place(boxes[s.index])[0], view.place(gt)[0]
        else:
            rois, gt, s = self._in_crop(i, view, rng)
        fg = s.labels > 0
        targets = self.coder.encode(rois[fg], gt[s.gt_index[fg]]) if fg.any() else np.zeros((0, 4), np.float32)
        return view.x, rois.astype(np.float32), s.labels, np.asarray(targets, np.float32)

    def _in_crop(self, i: int, view: View, rng):
        """``(rois [R, 4], gt [G', 4], sample)`` of a cropped view of image `i`: its candidates
        and ground truth left in the crop (`View.place`: clipped to it, those whose centre left
        it dropped), labelled there (IoU changes with clipping) and `rois_per_image` drawn."""
        sampler = self.config.sampler
        boxes, _, _, gt = self.prepared[i]
        gt_labels, difficult = self.objects[i]
        boxes = view.place(boxes)[0]
        gt, kept = view.place(gt)
        labels, gt_index = sampler.label(boxes, gt, gt_labels[kept], None if difficult is None else difficult[kept])
        s = sampler.sample(labels, gt_index, rng)
        return boxes[s.index], gt, s

    def _loss(self, batch: list, rest: nn.Module) -> dict[str, torch.Tensor]:
        pooled = [self.pooler(rest(x), [torch.from_numpy(r).to(self.device)]) for x, r, _, _ in batch]
        logits, deltas = self.head(torch.cat(pooled))
        labels = torch.from_numpy(np.concatenate([b[2] for b in batch])).to(self.device)
        targets = torch.from_numpy(np.concatenate([b[3] for b in batch])).to(self.device)
        loss, cls, box = fast_rcnn_loss(logits, deltas, labels, targets, self.config.box_loss_weight)
        return {"loss": loss, "cls": cls, "box": box}

    def fit(
        self,
        trunk: nn.Module,
        head: FastRCNNHead,
        images: Sequence[TrainImage],
        callback: Callable[[int, float], None] | None = None,
    ) -> FastRCNNTrainer:
        """Train `trunk` and `head` on `images`; both end in eval mode on the CPU. `callback(it,
        loss)` is called after each iteration (after its checkpoint)."""
        self._prepare(images)
        self.head = head
        return self.run({"trunk": trunk, "head": head}, trunk, self.config.iterations, callback)

    def meta(self) -> dict:
        return {
            "config": train_settings(self.config),
            "scale": self.scale,
            "max_size": self.max_size,
            "roi": to_dict(self.pooler.config),
        }
