"""YOLO (Redmon et al., CVPR 2016, "You Only Look Once"), its original form, on the project's
trunk: the localiser's one-box regression grown to a grid.

The image (sized as Fast R-CNN's, `rcnn.detectors.dense`) goes through the stride-16 trunk
and one 3x3 convolution (stride 2 when ``stride = 32``; with ``stage32 = true``, off by default,
the backbone's pretrained stride-32 stage before it instead) with the paper's leaky ReLU (0.1);
a 1x1 convolution then gives each cell of the ``S_h x S_w`` grid (one cell per `stride`
pixels) ``B x (x, y, w, h, confidence)`` and the cell's ``C`` class probabilities (softmax).
``x, y`` (sigmoid) place a box's centre inside its cell, ``w, h`` (sigmoid) are shares of the
image's width and height, the confidence (sigmoid) is the box's IoU with the object it claims.
The paper's fully connected layers, which fix the input to 448 x 448 and the grid to 7 x 7,
are replaced by that convolution (the paper's dropout after it is an option, off), so
any image size works; the rest is the paper's, its augmentation as far as the stem cache allows:
random scaling of up to 20 % (`train.scale_jitter`, every dense detector's) and flips; not its
translations and colour changes, which would run the frozen stem on every image every time.

The loss (`yolo_loss`, Eq. 3 of the paper, summed over the image): an object belongs to the
cell holding its centre (two centres in one cell: the smaller object); of that cell's B
boxes the one with the highest IoU with it is "responsible" ::

    lambda_coord * sum_resp [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
  + sum_resp (conf - IoU)^2 + lambda_noobj * sum_other conf^2
  + sum_object_cells sum_c (p(c) - p^(c))^2

with lambda_coord 5 and lambda_noobj 0.5. Detection: each box's class-specific score is
``confidence x p(class)`` (the paper's test-time product), then per-class NMS.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from rcnn.config import require
from rcnn.detectors.dense import DenseConfig, DenseDetector, numpy32
from rcnn.detectors.trace import Grid
from rcnn.features.roi import object_sides

__all__ = ["YOLO", "YOLOConfig", "choose_stride", "yolo_loss"]

log = logging.getLogger(__name__)

TRUNK_STRIDE = 16
CONFIDENCE_PRIOR = 0.01  # the confidences' start (the output bias); the paper starts from ImageNet-trained fc layers


@dataclass(frozen=True)
class YOLOConfig(DenseConfig):
    """A YOLO config (``detector = "yolo"``): the dense settings (`DenseConfig`) and
    `boxes_per_cell` (B, the paper's 2), `stride` (a grid cell's side in pixels: 16, the
    trunk's map, or 32, one more stride-2 convolution or the stride-32 stage; 0: chosen from the training objects,
    `choose_stride`), `hidden` (channels of the 3x3
    convolution), `lambda_coord` and `lambda_noobj` (the loss's weights, 5 and 0.5), `dropout`
    (after the 3x3 convolution; the paper has 0.5 after its first fully connected layer, but on
    this convolution it slowed learning: 150 iterations on a small synthetic set gave VOC mAP
    0.19 with it, 0.61 without; off by default)."""

    detector: str = "yolo"
    boxes_per_cell: int = 2
    stride: int = 0
    hidden: int = 256
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        require(self, "detector", self.detector == "yolo", '"yolo" for a YOLO config')
        require(self, "boxes_per_cell", self.boxes_per_cell >= 1, "an integer >= 1")
        require(self, "stride", self.stride in (0, 16, 32), "16 or 32 (pixels per grid cell; 0: chosen from the data)")
        require(self, "hidden", self.hidden >= 1, "an integer >= 1")
        for name in ("lambda_coord", "lambda_noobj"):
            require(self, name, getattr(self, name) >= 0, "a number >= 0")
        require(self, "dropout", 0 <= self.dropout < 1, "a probability in [0, 1)")


SMALL_FOR_CELLS = 2  # objects under this many 32 px cells (10th percentile) get 16 px cells


def choose_stride(dataset, scale: int) -> tuple[int, str]:
    """``(stride, line)``: 16 px cells when the 10th percentile of the training objects'
    ``sqrt(w * h)`` at the shortest side `scale` is under `SMALL_FOR_CELLS` cells of 32 px
    (one cell regresses one box of each of its objects, and small neighbours need more,
    finer cells), else the paper's coarser 32."""
    _, sides = object_sides(dataset)
    small = float(np.percentile(sides, 10)) * scale if len(sides) else float("inf")
    stride = 16 if small < SMALL_FOR_CELLS * 32 else 32
    return stride, f"grid: {stride} px cells (the 10th percentile of the training objects is {small:.0f} px)"


def decode_grid(boxes: torch.Tensor, stride: int, size) -> torch.Tensor:
    """Boxes ``[h, w, B, 4]`` as ``(x, y, w, h)`` in [0, 1] (centre in its cell, size as shares
    of an image of ``size = (height, width)``) to ``x1, y1, x2, y2`` pixels."""
    gh, gw = boxes.shape[:2]
    rows = torch.arange(gh, dtype=boxes.dtype, device=boxes.device).view(gh, 1, 1)
    cols = torch.arange(gw, dtype=boxes.dtype, device=boxes.device).view(1, gw, 1)
    cx, cy = (cols + boxes[..., 0]) * stride, (rows + boxes[..., 1]) * stride
    w, h = boxes[..., 2] * size[1], boxes[..., 3] * size[0]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def grid_targets(boxes: torch.Tensor, labels: torch.Tensor, grid, stride: int, size):
    """Each object in the cell holding its centre: ``(cell rows [M], cell cols [M], targets
    [M, 4] (x, y, w, h) as `decode_grid` reads them, labels [M], boxes [M, 4])``; of objects
    sharing a cell, the smaller one."""
    gh, gw = grid
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx / stride).floor().clamp(0, gw - 1).long()
    row = (cy / stride).floor().clamp(0, gh - 1).long()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    chosen = {}
    for k in torch.argsort(area, descending=True).tolist():  # the smaller object overwrites
        chosen[int(row[k]), int(col[k])] = k
    keep = torch.tensor(sorted(chosen.values()), dtype=torch.long, device=boxes.device)
    b = boxes[keep]
    t = torch.stack(
        [
            cx[keep] / stride - col[keep],
            cy[keep] / stride - row[keep],
            (b[:, 2] - b[:, 0]) / size[1],
            (b[:, 3] - b[:, 1]) / size[0],
        ],
        1,
    ).clamp(0, 1)
    return row[keep], col[keep], t, labels[keep], b


def yolo_loss(out, boxes, labels, stride: int, size, lambda_coord: float = 5.0, lambda_noobj: float = 0.5):
    """The paper's sum-squared loss of one image (see the module docstring): `out` =
    ``(boxes [h, w, B, 4], confidence [h, w, B], class probabilities [h, w, C])`` from
    `YOLO._forward`, the objects' `boxes` ``[G, 4]`` (pixels of an image of ``size = (h, w)``)
    and `labels` ``[G]`` in ``1..C``. ``{"loss", "coord", "object", "no_object", "class"}``."""
    pred, conf, probs = out
    responsible = torch.zeros_like(conf, dtype=torch.bool)
    zero = conf.sum() * 0.0
    coord = obj = cls = zero
    if len(boxes):
        row, col, t, lab, gt = grid_targets(boxes, labels, conf.shape[:2], stride, size)
        cell_pred = pred[row, col]  # [M, B, 4]
        with torch.no_grad():
            decoded = decode_grid(pred, stride, size)[row, col]  # [M, B, 4]
            ious = torch.stack([box_iou(d, g[None])[:, 0] for d, g in zip(decoded, gt)])  # [M, B]
            best = ious.argmax(1)
        m = torch.arange(len(row), device=pred.device)
        responsible[row, col, best] = True
        p = cell_pred[m, best]  # [M, 4]
        coord = ((p[:, :2] - t[:, :2]) ** 2).sum() + ((p[:, 2:].sqrt() - t[:, 2:].sqrt()) ** 2).sum()
        obj = ((conf[row, col, best] - ious[m, best]) ** 2).sum()
        onehot = nn.functional.one_hot(lab - 1, probs.shape[-1]).to(probs.dtype)
        cls = ((probs[row, col] - onehot) ** 2).sum()
    noobj = (conf[~responsible] ** 2).sum()
    total = lambda_coord * coord + obj + lambda_noobj * noobj + cls
    return {"loss": total, "coord": coord, "object": obj, "no_object": noobj, "class": cls}


class YOLO(DenseDetector):
    """YOLO v1 on the project's trunk: ``YOLO(config).fit(dataset)``, then ``detect(image)``
    or ``detect_dataset(ds)`` (see the module docstring and `DenseDetector`)."""

    kind = "yolo"
    config_class = YOLOConfig
    title = "YOLO"
    terms = ("coord", "object", "no_object", "class")

    @classmethod
    def fit_config(cls, config: YOLOConfig, dataset) -> YOLOConfig:
        """The dense detectors' choices (`DenseDetector.fit_config`), then the cells' size when
        ``stride = 0`` (`choose_stride`)."""
        config = super().fit_config(config, dataset)
        if config.stride:
            return config
        stride, line = choose_stride(dataset, config.scale)
        log.info(line)
        return replace(config, stride=stride)

    def _head(self, channels: int, num_classes: int, stage32) -> nn.Module:
        """For 32 px cells the backbone's pretrained stride-32 stage (`stage32`; without it the
        3x3 convolution has stride 2), then the 3x3 convolution, the leaky ReLU, dropout and the
        1x1 output."""
        c = self.config
        out = nn.Conv2d(c.hidden, c.boxes_per_cell * 5 + num_classes, 1)
        with torch.no_grad():  # confidences start at CONFIDENCE_PRIOR: no_object's first steps do not crush them
            out.bias[4 : 5 * c.boxes_per_cell : 5] = math.log(CONFIDENCE_PRIOR / (1 - CONFIDENCE_PRIOR))
        stride, layers = c.stride // TRUNK_STRIDE, []
        if stride == 2 and stage32 is not None:
            layers, (channels, stride) = [stage32[0]], (stage32[1], 1)
        conv = nn.Conv2d(channels, c.hidden, 3, stride=stride, padding=1)
        return nn.Sequential(*layers, conv, nn.LeakyReLU(0.1), nn.Dropout(c.dropout), out)

    def _forward(self, head: nn.Module, fmap: torch.Tensor):
        """``(boxes [h, w, B, 4] (x, y, w, h) in [0, 1], confidence [h, w, B], class
        probabilities [h, w, C])`` of one image's map ``[1, C_map, H/16, W/16]``."""
        y = head(fmap)[0].permute(1, 2, 0)  # [h, w, B*5 + C]
        B = self.config.boxes_per_cell
        per_box = torch.sigmoid(y[..., : 5 * B]).unflatten(-1, (B, 5))
        return per_box[..., :4], per_box[..., 4], torch.softmax(y[..., 5 * B :], -1)

    def _loss(self, out, boxes, labels, size):
        c = self.config
        return yolo_loss(out, boxes, labels, c.stride, size, c.lambda_coord, c.lambda_noobj)

    def _decode(self, out, size):
        pred, conf, probs = out
        boxes = decode_grid(pred, self.config.stride, size)  # [h, w, B, 4]
        scores = conf[..., None] * probs[:, :, None, :]  # [h, w, B, C]
        cell, label = torch.nonzero(scores.flatten(0, 2) >= self.config.min_score, as_tuple=True)
        return boxes.flatten(0, 2)[cell], scores.flatten(0, 2)[cell, label], label + 1

    def _grids(self, out, size, factor):
        """Two views of the ``S_h x S_w`` grid: each cell's best box confidence with its B
        predicted boxes (image pixels) and their confidences, and each cell's best class-specific
        score (confidence x class probability); ``grid boxes``: ``S_h x S_w x B``."""
        pred, conf, probs = out
        s = self.config.stride
        boxes = decode_grid(pred, s, size) / factor  # [h, w, B, 4]
        best = (conf[..., None] * probs[:, :, None, :]).amax((2, 3))
        grids = (
            Grid(s, factor, numpy32(conf.amax(-1)), "best box confidence", numpy32(boxes), numpy32(conf), "predicted"),
            Grid(s, factor, numpy32(best), "best confidence x class probability"),
        )
        return grids, {"grid boxes": int(conf.numel())}
