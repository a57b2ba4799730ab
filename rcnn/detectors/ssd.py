"""SSD (Liu et al., ECCV 2016, "SSD: Single Shot MultiBox Detector") on the project's trunk,
from torchvision's SSD parts.

The image (sized as Fast R-CNN's, `rcnn.detectors.dense`) goes through the stride-16 trunk;
`extra_layers` more maps halve it again and again, so the maps run at strides 16, 32, 64, ...:
extra blocks (a 1x1 convolution to 128 channels, a 3x3 stride-2 convolution to 256, each with a
ReLU, as torchvision's SSDlite extras), the first of them optionally the backbone's own
pretrained stride-32 stage (``stage32 = true``, as the paper's VGG16 keeps its pretrained layers
to fc7 for its first maps; off by default: on cards it scored 0.732 against 0.851 without). A
`torchvision.models.detection.ssd.SSD` holds the rest: `DefaultBoxGenerator` (at every cell of
every map, boxes of scale ``s_k`` (spread evenly from `min_ratio` to `max_ratio` of the image,
the paper's rule), the paper's extra square of scale ``sqrt(s_k s_k+1)``, and each of `ratios`
and their inverses; the scales are shares of the image's width and of its height), `SSDHead`
(3x3 convolutions giving each default box ``C + 1`` class logits and four deltas), its
`SSDMatcher` (each default box to the object it overlaps with IoU >= `iou_threshold`, each
object to its best box) and its box coder. The loss (`ssd_loss`, torchvision's `compute_loss`
with a deterministic choice among equal losses): smooth L1 on the matched boxes' deltas,
cross-entropy on the matched boxes and on the hardest negatives, three per positive (hard
negative mining 3:1), both divided by the number of positives.
Detection: softmax class probabilities of every default box, its deltas decoded, then
per-class NMS (`postprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD as TorchvisionSSD
from torchvision.models.detection.ssd import SSDHead
from torchvision.ops import box_iou

from rcnn.config import require
from rcnn.detectors.dense import DenseConfig, DenseDetector, DenseTrainConfig, numpy32
from rcnn.detectors.trace import Grid

__all__ = ["SSD", "SSDConfig", "SSDTrainConfig"]

TRUNK_STRIDE = 16  # the first map's; each extra block halves it
NEGATIVES_PER_POSITIVE = 3  # the paper's hard negative mining
EXTRA_CHANNELS = (128, 256)  # an extra block's 1x1 and 3x3 convolutions


@dataclass(frozen=True)
class SSDTrainConfig(DenseTrainConfig):
    """SSD's ``[train]`` table: the dense detectors' (`DenseTrainConfig`) without scale jitter
    by default. Over the 20-epoch schedule SSD scored lower with each augmentation tried, on
    cards (VOC mAP@0.5): 0.893 with flips only, 0.851 with ``scale_jitter = 0.2``, 0.722 with
    random crops as well (``crop = 0.5``; the paper's sampled patches, which it trains for
    120k iterations)."""

    scale_jitter: float = 0.0


@dataclass(frozen=True)
class SSDConfig(DenseConfig):
    """An SSD config (``detector = "ssd"``): the dense settings (`DenseConfig`) and
    `extra_layers` (maps after the trunk's: strides 32, 64, ...; with ``stage32``, off by
    default, the first is the backbone's stride-32 stage; the others stride-2 blocks), default boxes
    from `min_ratio` to `max_ratio` of the image (`DefaultBoxGenerator`), `ratios` (width /
    height, each with its inverse, on every map), matching at IoU `iou_threshold`; `train`:
    `SSDTrainConfig` (no scale jitter by default)."""

    detector: str = "ssd"
    train: SSDTrainConfig = field(default_factory=SSDTrainConfig)
    extra_layers: int = 3
    min_ratio: float = 0.1
    max_ratio: float = 0.9
    ratios: tuple[int, ...] = (2, 3)
    iou_threshold: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        require(self, "detector", self.detector == "ssd", '"ssd" for an SSD config')
        require(self, "extra_layers", self.extra_layers >= 0, "an integer >= 0")
        require(self, "min_ratio", 0 < self.min_ratio < 1, "a share of the image in (0, 1)")
        require(self, "max_ratio", self.min_ratio < self.max_ratio <= 1, f"a share in ({self.min_ratio}, 1]")
        require(self, "ratios", all(r >= 1 for r in self.ratios), "a list of integers >= 1 (width / height)")
        require(self, "iou_threshold", 0 < self.iou_threshold <= 1, "an IoU in (0, 1]")


class Extras(nn.Module):
    """The trunk's map ``[1, C, h, w]`` -> a list of `maps` maps: it, then (with `stage32`, the
    backbone's pretrained stride-32 stage and its channels) the stage's output, then each extra
    block's (256 channels), each half the size of the one before."""

    def __init__(self, channels: int, maps: int, stage32: tuple[nn.Module, int] | None = None):
        super().__init__()
        a, b = EXTRA_CHANNELS
        self.stage, self.out_channels = None, [channels]
        if stage32 is not None and maps > 1:
            self.stage = stage32[0]
            self.out_channels.append(stage32[1])
        blocks = []
        while len(self.out_channels) < maps:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(self.out_channels[-1], a, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(a, b, 3, stride=2, padding=1),
                    nn.ReLU(inplace=True),
                )
            )
            self.out_channels.append(b)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [x] if self.stage is None else [x, self.stage(x)]
        for block in self.blocks:
            maps.append(block(maps[-1]))
        return maps


def ssd_loss(ssd, head: dict, anchors, matched, boxes, labels) -> dict[str, torch.Tensor]:
    """One image's SSD loss, torchvision's `SSD.compute_loss` with ties broken by index: the
    default boxes `anchors` ``[A, 4]`` matched to the objects (`matched` ``[A]``: an object's
    index, or < 0) with their `boxes` ``[G, 4]`` and `labels` ``[G]``; the head's outputs
    ``bbox_regression [1, A, 4]``, ``cls_logits [1, A, C + 1]``. ``box``: smooth L1 (sum) of the
    matched boxes' deltas (`ssd.box_coder`); ``classification``: cross-entropy of the matched
    boxes and of the `NEGATIVES_PER_POSITIVE` x as many unmatched ones with the highest
    cross-entropy (hard negative mining; equal losses: the lower index first, where
    torchvision's unstable sort picks any, so a resumed run would not repeat a whole one);
    both divided by the number of matched boxes (at least 1)."""
    fg = torch.where(matched >= 0)[0]
    target = ssd.box_coder.encode_single(boxes[matched[fg]], anchors[fg])
    box = nn.functional.smooth_l1_loss(head["bbox_regression"][0, fg], target, reduction="sum")
    classes = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
    classes[fg] = labels[matched[fg]]
    ce = nn.functional.cross_entropy(head["cls_logits"][0], classes, reduction="none")
    negatives = torch.where(matched < 0)[0]
    order = torch.sort(ce[negatives].detach(), descending=True, stable=True).indices
    hard = negatives[order[: NEGATIVES_PER_POSITIVE * len(fg)]]
    n = max(1, len(fg))
    cls = (ce[fg].sum() + ce[hard].sum()) / n
    return {"loss": box / n + cls, "box": box / n, "classification": cls}


class SSD(DenseDetector):
    """SSD on the project's trunk: ``SSD(config).fit(dataset)``, then ``detect(image)`` or
    ``detect_dataset(ds)`` (see the module docstring and `DenseDetector`)."""

    kind = "ssd"
    config_class = SSDConfig
    title = "SSD"
    terms = ("box", "classification")

    def _head(self, channels: int, num_classes: int, stage32) -> nn.Module:
        c = self.config
        extras = Extras(channels, 1 + c.extra_layers, stage32)
        maps = len(extras.out_channels)
        boxes = DefaultBoxGenerator([list(c.ratios)] * maps, c.min_ratio, c.max_ratio)
        head = SSDHead(extras.out_channels, boxes.num_anchors_per_location(), num_classes + 1)
        return TorchvisionSSD(
            extras,
            boxes,
            (c.scale or 300,) * 2,  # its transform is not used: images are sized as every detector's
            num_classes + 1,
            head=head,
            iou_thresh=c.iou_threshold,
            positive_fraction=1 / (1 + NEGATIVES_PER_POSITIVE),
        )

    def _forward(self, ssd: nn.Module, fmap: torch.Tensor):
        """``(head outputs {"bbox_regression": [1, A, 4], "cls_logits": [1, A, C + 1]}, maps)``."""
        maps = ssd.backbone(fmap)
        return ssd.head(maps), maps

    def default_boxes(self, ssd: nn.Module, maps: list[torch.Tensor], size) -> torch.Tensor:
        """The default boxes ``[A, 4]`` of `maps` on an image of ``size = (h, w)`` (its pixels)."""
        image = ImageList(maps[0].new_empty((1, 0, int(size[0]), int(size[1]))), [tuple(size)])
        return ssd.anchor_generator(image, maps)[0]

    def _loss(self, out, boxes, labels, size):
        ssd = self.net_.head
        head, maps = out
        anchors = self.default_boxes(ssd, maps, size)
        if len(boxes):
            matched = ssd.proposal_matcher(box_iou(boxes, anchors))
        else:
            matched = torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
        return ssd_loss(ssd, head, anchors, matched, boxes, labels)

    def _decode(self, out, size):
        ssd = self.net_.head
        head, maps = out
        anchors = self.default_boxes(ssd, maps, size)
        boxes = ssd.box_coder.decode_single(head["bbox_regression"][0], anchors)
        scores = torch.softmax(head["cls_logits"][0], -1)[:, 1:]
        box, label = torch.nonzero(scores >= self.config.min_score, as_tuple=True)
        return boxes[box], scores[box, label], label + 1

    def _grids(self, out, size, factor):
        """One `Grid` per map (strides 16, 32, ...): each cell's default boxes (image pixels)
        with their best class probability, the cell's heat the highest of them; ``default
        boxes``: every map's, as the head scored them (torchvision's order: map, row, column, box)."""
        ssd = self.net_.head
        head, maps = out
        anchors = self.default_boxes(ssd, maps, size) / factor
        best = torch.softmax(head["cls_logits"][0], -1)[:, 1:].amax(-1)  # [A]
        grids, start = [], 0
        for k, (m, b) in enumerate(zip(maps, ssd.anchor_generator.num_anchors_per_location())):
            h, w = m.shape[-2:]
            end = start + h * w * b
            scores = best[start:end].view(h, w, b)
            boxes = anchors[start:end].view(h, w, b, 4)
            heat = "best class probability over its default boxes"
            grids.append(
                Grid(
                    TRUNK_STRIDE * 2**k,
                    factor,
                    numpy32(scores.amax(-1)),
                    heat,
                    numpy32(boxes),
                    numpy32(scores),
                    "default",
                )
            )
            start = end
        return tuple(grids), {"default boxes": int(len(anchors))}
