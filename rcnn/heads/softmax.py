"""R-CNN's domain-specific fine-tuning: the CNN plus an (C+1)-way softmax head on warped crops.

Each proposal (and each ground-truth box) of a training image is labelled by its best IoU
with the non-difficult ground truth: IoU >= `positive_iou` (0.5) is that box's class, IoU <
`background_iou` (0.5) background (0), anything near a difficult box ignored. Every SGD
batch holds `batch_positives` (32) positives and `batch_negatives` (96) background crops
drawn at random (seeded), warped by `rcnn.features.warp.warp_crops` with the feature
extractor's crop size and context padding, optionally flipped left-right.

Crops are warped an "epoch" at a time: the boxes of the next `epoch_iterations` batches
are drawn together, grouped by image so each image is decoded once, and kept in memory as
``uint8`` (``epoch_iterations * 128 * S * S * 3`` bytes). A checkpoint (plain state dicts,
written atomically) is saved every `checkpoint_every` iterations and at the end; a run
given the same checkpoint path resumes from it and draws the same batches it would have.

The result, `Finetuner`, holds the fine-tuned backbone (its state dict re-extracts features
for the SVMs) and a `SoftmaxHead`, usable as the classifier itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rcnn.config import require, to_dict
from rcnn.datasets.images import read_image
from rcnn.errors import ModelError
from rcnn.features.warp import normalize, warp_crops
from rcnn.heads.labeling import IGNORE, NEGATIVE, POSITIVE, Matcher, label_proposals
from rcnn.heads.sampler import BalancedSampler
from rcnn.heads.sgd import SGDConfig
from rcnn.heads.trainer import Trainer
from rcnn.progress import progress

__all__ = ["FinetuneConfig", "FinetuneImage", "Finetuner", "SoftmaxHead"]


@dataclass(frozen=True)
class FinetuneConfig(SGDConfig):
    """Fine-tuning by SGD with momentum (`rcnn.heads.sgd.SGDConfig`; defaults: R-CNN's,
    except the length): `head_lr_mult` multiplies the rate of the new softmax layer (R-CNN:
    10); batches of `batch_positives` regions with IoU >= `positive_iou` and
    `batch_negatives` below `background_iou`, drawn `epoch_iterations` batches at a time;
    `frozen` spares e.g. MobileNetV2's stem (cheaper backward passes)."""

    iterations: int = 500
    head_lr_mult: float = 10.0
    batch_positives: int = 32
    batch_negatives: int = 96
    positive_iou: float = 0.5
    background_iou: float = 0.5
    epoch_iterations: int = 20

    def __post_init__(self):
        super().__post_init__()
        require(self, "batch_negatives", self.batch_negatives >= 0, "an integer >= 0")
        for name in ("batch_positives", "epoch_iterations"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        require(self, "positive_iou", 0 < self.positive_iou <= 1, "an IoU in (0, 1]")
        require(
            self,
            "background_iou",
            0 < self.background_iou <= self.positive_iou,
            f"an IoU in (0, positive_iou] (positive_iou = {self.positive_iou})",
        )

    @property
    def matcher(self) -> Matcher:
        if self.background_iou < self.positive_iou:
            return Matcher([self.background_iou, self.positive_iou], [NEGATIVE, IGNORE, POSITIVE])
        return Matcher([self.positive_iou], [NEGATIVE, POSITIVE])

    @property
    def batch_size(self) -> int:
        return self.batch_positives + self.batch_negatives


class FinetuneImage(NamedTuple):
    """One training image: its path, proposals ``float32 [N, 4]`` and ground truth (boxes
    ``[G, 4]``, labels ``[G]`` in ``1..C``, difficult ``bool [G]`` or None)."""

    image_path: str | os.PathLike
    proposals: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray | None = None


class SoftmaxHead:
    """A linear layer ``D -> C + 1`` (column 0 background) on backbone features; as a
    classifier it scores ``[N, C]`` softmax probabilities of labels ``1..C``."""

    def __init__(self, num_classes: int, feature_dim: int):
        self.num_classes = num_classes
        self.feature_dim = feature_dim

    def init(self, seed: int = 0) -> SoftmaxHead:
        """Fresh weights: normal (std 0.01) weights, zero bias, as R-CNN's new fc8."""
        g = torch.Generator().manual_seed(seed)
        self.weight_ = torch.randn(self.num_classes + 1, self.feature_dim, generator=g) * 0.01
        self.bias_ = torch.zeros(self.num_classes + 1)
        return self

    def logits(self, features) -> torch.Tensor:
        """Logits ``float32 [N, C + 1]`` of features ``[N, D]``."""
        x = torch.as_tensor(features, dtype=torch.float32)
        return x @ self.weight_.to(x.device).T + self.bias_.to(x.device)

    def decision_function(self, features):
        """Probabilities ``float32 [N, C]`` of labels ``1..C`` (numpy in, numpy out)."""
        p = torch.softmax(self.logits(features), dim=1)[:, 1:]
        return p.cpu().numpy() if isinstance(features, np.ndarray) else p

    def state_dict(self) -> dict:
        return {
            "kind": "softmax",
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "weight": self.weight_.detach().cpu().clone(),
            "bias": self.bias_.detach().cpu().clone(),
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> SoftmaxHead:
        try:
            head = cls(int(d["num_classes"]), int(d["feature_dim"]))
            head.weight_ = torch.as_tensor(d["weight"], dtype=torch.float32)
            head.bias_ = torch.as_tensor(d["bias"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"softmax head state: {e!r}") from None
        if head.weight_.shape != (head.num_classes + 1, head.feature_dim) or head.bias_.shape != (
            head.num_classes + 1,
        ):
            raise ModelError(
                f"softmax head state: weight {tuple(head.weight_.shape)} does not fit "
                f"{head.num_classes} classes x {head.feature_dim} features"
            )
        return head


class Finetuner(Trainer):
    """Fine-tunes a backbone (``[B, 3, S, S]`` normalised crops -> ``[B, D]``) with a softmax
    head, in the package's one loop (`rcnn.heads.trainer.Trainer`).

    Fitted: `backbone_` (the same module, trained, back in eval mode on the CPU), `head_`
    (`SoftmaxHead`), `history_` (per iteration: ``loss``, batch ``accuracy``), `pool_`
    (positives and background boxes available), `resumed_from_` (iteration, 0 when fresh).
    """

    title = "R-CNN fine-tuning"
    terms = ("accuracy",)
    frozen_setting = "finetune.frozen"
    unit = "crop"

    def __init__(
        self,
        num_classes: int,
        config: FinetuneConfig = FinetuneConfig(),
        crop_size: int = 224,
        padding: int = 16,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        super().__init__(config, checkpoint, device)
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.padding = padding

    # -- the box pool ------------------------------------------------------------------------------
    def _pool(self, images: Sequence[FinetuneImage]):
        """Labelled boxes of every image: image index ``[P]``, boxes ``[P, 4]``, labels ``[P]``."""
        idx, boxes, labels = [], [], []
        for i, im in enumerate(progress(images, desc="fine-tuning pool", total=len(images))):
            im = FinetuneImage(*im)
            gt = np.asarray(im.gt_boxes, np.float32).reshape(-1, 4)
            b = np.concatenate([np.asarray(im.proposals, np.float32).reshape(-1, 4), gt])
            lab, _, _ = label_proposals(b, gt, im.gt_labels, im.gt_difficult, self.config.matcher)
            keep = lab != IGNORE
            idx.append(np.full(keep.sum(), i, np.int64))
            boxes.append(b[keep])
            labels.append(lab[keep])
        idx, boxes, labels = np.concatenate(idx), np.concatenate(boxes), np.concatenate(labels)
        if not (labels > 0).any() or not (labels == 0).any():
            raise ValueError(
                f"fine-tuning needs positive and background boxes; found {(labels > 0).sum()} "
                f"and {(labels == 0).sum()} in {len(images)} images"
            )
        return idx, boxes, labels

    def _epoch(self, epoch: int, images, pool):
        """Crops ``uint8 [E * B, S, S, 3]`` and labels of epoch `epoch`'s batches, batch-major."""
        cfg, (idx, boxes, labels) = self.config, pool
        rng = np.random.default_rng([cfg.seed, epoch])
        E, P, N = cfg.epoch_iterations, cfg.batch_positives, cfg.batch_negatives
        pos, neg = BalancedSampler(E * P, E * N, short="repeat")(labels, rng)
        pos, neg = pos.reshape(E, P), neg.reshape(E, N)
        sel = np.concatenate([pos, neg], axis=1).reshape(-1)  # batch b: rows b*B .. (b+1)*B
        S = self.crop_size
        crops = np.empty((len(sel), S, S, 3), np.uint8)
        for i in progress(np.unique(idx[sel]), desc=f"warping crops (epoch {epoch + 1})", unit="img"):
            rows = np.flatnonzero(idx[sel] == i)
            image = read_image(FinetuneImage(*images[i]).image_path)
            crops[rows] = warp_crops(image, boxes[sel[rows]], S, self.padding)
        return crops, labels[sel]

    # -- training ----------------------------------------------------------------------------------
    def fit(self, backbone: nn.Module, feature_dim: int, images: Sequence[FinetuneImage]):
        """Fine-tune `backbone` (in place) and a new softmax head on `images`; returns self."""
        cfg = self.config
        self._images, self._pool_boxes = images, self._pool(images)
        labels = self._pool_boxes[2]
        self.pool_ = {"positives": int((labels > 0).sum()), "background": int((labels == 0).sum())}
        self.feature_dim = feature_dim
        head = SoftmaxHead(self.num_classes, feature_dim).init(cfg.seed)
        linear = self._linear = nn.Linear(feature_dim, self.num_classes + 1)
        with torch.no_grad():
            linear.weight.copy_(head.weight_)
            linear.bias.copy_(head.bias_)
        self._backbone, self._crops = backbone, (-1, None, None)
        self.run({"backbone": backbone, "head": linear}, backbone, cfg.iterations)
        self._crops = None
        head.weight_, head.bias_ = linear.weight.detach().clone(), linear.bias.detach().clone()
        self.head_, self.backbone_ = head, backbone
        return self

    # -- the loop's hooks (`rcnn.heads.trainer.Trainer`) ---------------------------------------------
    def work(self, iterations: int) -> int:
        return iterations * self.config.batch_size

    def items(self, batch) -> int:
        return len(batch[1])

    def batch(self, it: int):
        """``(crops [B, 3, S, S] normalised, labels [B])`` of iteration `it`: its epoch's crops
        warped once per epoch (`_epoch`), flipped left-right at random (seeded)."""
        cfg, B = self.config, self.config.batch_size
        e, b = divmod(it, cfg.epoch_iterations)
        if self._crops[0] != e:
            self._crops = (e, *self._epoch(e, self._images, self._pool_boxes))
        _, crops, crop_labels = self._crops
        batch = crops[b * B : (b + 1) * B]
        if cfg.flip:
            flip = np.random.default_rng([cfg.seed, e, b, 1]).random(B) < 0.5
            batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        x = normalize(batch).to(self.device)
        return x, torch.as_tensor(crop_labels[b * B : (b + 1) * B]).to(self.device)

    def loss(self, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self._linear(self._backbone(x))
        accuracy = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": nn.functional.cross_entropy(logits, y), "accuracy": accuracy}

    def meta(self) -> dict:
        cfg = {k: v for k, v in to_dict(self.config).items() if k not in ("iterations", "checkpoint_every")}
        return {
            "config": cfg,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "crop_size": self.crop_size,
            "padding": self.padding,
        }
