"""Mask R-CNN (He et al., ICCV 2017): Faster R-CNN (`rcnn.detectors.faster_rcnn`) and a mask
branch, built from torchvision's parts over the same trunk, RPN, box head and training loop.

The network is `FasterRCNN`'s (`rcnn.detectors.faster_rcnn.build_network`) with torchvision's
mask branch set on its `RoIHeads`: ``mask_roi_pool`` (`MultiScaleRoIAlign` at 14x14 over the
maps the box head pools from), ``mask_head`` (`MaskRCNNHeads`: 3x3 convolutions, ``[mask]
layers`` channels) and ``mask_predictor`` (`MaskRCNNPredictor`: a 2x up-convolution and one
28x28 mask logit per class). Training adds torchvision's ``loss_mask`` (per-pixel binary
cross-entropy of the ground-truth class's 28x28 mask on the positive RoIs, against the
object's mask RoI-aligned to the RoI) to Faster R-CNN's four losses; the objects' masks go
through each view's crop, rescale and flip (`rcnn.heads.roi_trainer.View.place_masks`). Every
training object needs a mask (`rcnn.datasets.masks`).

Detection is Faster R-CNN's (boxes, score threshold, NMS, cap; over a set, its test rule) and
then the mask head on the detections that remain: the class's 28x28 probabilities
(torchvision's `maskrcnn_inference`), pasted into the image (`paste_masks_in_image`) and cut
at ``mask_threshold`` (0.5), one COCO RLE per detection (`Detections.masks`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign

from rcnn.config import require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.masks import encode
from rcnn.detectors.base import resolve_device, timed
from rcnn.detectors.faster_rcnn import LOSSES, FasterRCNN, FasterRCNNConfig, _features, _Trainer
from rcnn.detectors.faster_rcnn import build_network as build_faster_network
from rcnn.detectors.trace import MaskProbs, Stage, Trace
from rcnn.errors import DatasetError

__all__ = ["MaskHeadConfig", "MaskRCNN", "MaskRCNNConfig", "build_network"]

MASK_POOL = 14  # the RoI-aligned features the mask head sees: 14 x 14 (the paper's, torchvision's)
PASTE_CHUNK = 32  # masks pasted into the image at a time (each a float [H, W])
MASKS_TRACED = 8  # the best detections whose m x m mask probabilities the trace keeps


@dataclass(frozen=True)
class MaskHeadConfig:
    """The ``[mask]`` table: `layers`, the channels of the mask head's 3x3 convolutions
    (torchvision's four of 256; fewer and narrower cost less on a CPU), their `dilation`, and
    `loss_weight`, the weight of the mask term in the training loss."""

    layers: tuple[int, ...] = (256, 256, 256, 256)
    dilation: int = 1
    loss_weight: float = 1.0

    def __post_init__(self):
        require(self, "layers", len(self.layers) >= 1 and all(n >= 1 for n in self.layers), "a list of integers >= 1")
        require(self, "dilation", self.dilation >= 1, "an integer >= 1")
        require(self, "loss_weight", self.loss_weight >= 0, "a number >= 0")


@dataclass(frozen=True)
class MaskRCNNConfig(FasterRCNNConfig):
    """A Mask R-CNN config (``detector = "mask_rcnn"``): a Faster R-CNN config
    (`FasterRCNNConfig`), the mask head (`mask`, `MaskHeadConfig`) and, at test time,
    `mask_threshold`: the probability a pixel of a pasted mask needs to belong to it."""

    TEST_TIME: ClassVar[tuple[str, ...]] = (*FasterRCNNConfig.TEST_TIME, "mask_threshold")

    detector: str = "mask_rcnn"
    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    mask_threshold: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        require(self, "mask_threshold", 0 < self.mask_threshold < 1, "a probability in (0, 1)")


def build_network(config: MaskRCNNConfig, num_classes: int, weights: str | None = None):
    """``(network, weights source)``: Faster R-CNN's network (`rcnn.detectors.faster_rcnn.build_network`)
    with torchvision's mask branch on its RoI heads (14x14 `MultiScaleRoIAlign` over the box
    head's maps, `MaskRCNNHeads`, `MaskRCNNPredictor`); the branch's initial weights follow
    ``train.seed``."""
    net, source = build_faster_network(config, num_classes, weights)
    heads, layers = net.roi_heads, config.mask.layers
    box_pool = heads.box_roi_pool
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        pool = MultiScaleRoIAlign(box_pool.featmap_names, MASK_POOL, box_pool.sampling_ratio)
        heads.mask_head = MaskRCNNHeads(net.backbone.out_channels, list(layers), config.mask.dilation)
        heads.mask_predictor = MaskRCNNPredictor(layers[-1], layers[-1], num_classes + 1)
    if box_pool.scales is not None:  # the pyramid's levels, fixed as the box pool's (see faster_rcnn)
        pool.scales, pool.map_levels = box_pool.scales, box_pool.map_levels
    heads.mask_roi_pool = pool
    return net.eval(), source


def check_masks_present(dataset: Dataset) -> None:
    """Refuse training data with an object (not difficult) that has no mask: `DatasetError`
    naming the first such image and how many objects lack one."""
    missing, total, first = 0, 0, None
    for s in dataset:
        masks = s.masks if s.masks is not None else [None] * len(s.labels)
        for k, (m, hard) in enumerate(zip(masks, s.difficult)):
            if hard:
                continue
            total += 1
            if m is None:
                missing += 1
                first = first or (s.image_path, k + 1)
    if missing:
        raise DatasetError(
            first[0],
            f"object {first[1]} has no mask, and mask_rcnn trains on masks: {missing} of {total} training "
            "objects have none (give the dataset masks: COCO 'segmentation', VOC SegmentationObject PNGs, "
            "YOLO polygons; or train faster_rcnn)",
        )


def masks_key(dataset: Dataset) -> str:
    """A hash of every object's mask (its RLE), for the training checkpoint's key."""
    h = hashlib.sha256()
    for s in dataset:
        for m in s.masks or []:
            h.update(b"-" if m is None else repr(list(m["size"])).encode() + bytes(m["counts"]) + b";")
        h.update(b"|")
    return h.hexdigest()


class MaskRCNN(FasterRCNN):
    """Mask R-CNN: ``MaskRCNN(config).fit(dataset)`` (every training object with a mask),
    then ``detect(image)`` / ``detect_dataset(ds)``, whose `Detections` carry one COCO RLE
    per detection (``masks``). Fitted attributes as `FasterRCNN`'s; ``net_`` has the mask
    branch (``roi_heads.mask_roi_pool``, ``mask_head``, ``mask_predictor``) and ``history_``
    the ``mask`` loss besides Faster R-CNN's."""

    kind = "mask_rcnn"
    config_class = MaskRCNNConfig
    _boxes_only = False  # set while `candidates` runs `detect`: masks only for the candidates kept

    def fit(self, dataset: Dataset, callback=None) -> MaskRCNN:
        check_masks_present(dataset)
        return super().fit(dataset, callback)

    def _training_settings(self, dataset: Dataset) -> dict:
        return {**super()._training_settings(dataset), "mask": to_dict(self.config.mask), "masks": masks_key(dataset)}

    @staticmethod
    def _network(config, num_classes: int, weights: str | None = None):
        return build_network(config, num_classes, weights)

    def _trainer(self, dataset: Dataset):
        return _MaskTrainer(self.net_, self.config, resolve_device(self.config.device), self.checkpoint_path(dataset))

    # -- detection: Faster R-CNN's, then masks for what it keeps -------------------------------------

    def _map(self, image, timings: dict | None):
        out = super()._map(image, timings)
        self._last_map = (out[0].shape[:2], *out[1:])  # (image size, map, rescaled size, factor) for the masks
        return out

    def trace(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Trace:
        """Faster R-CNN's stages (`FasterRCNN.trace`), the final one (`detect`'s) with each
        detection's mask: a COCO RLE of the image's size (`Detections.masks`), and the mask
        head's m x m probabilities of the best `MASKS_TRACED` detections (``masks``,
        `rcnn.detectors.trace.MaskProbs`); `timings` adds ``mask``."""
        t = super().trace(image, proposals, timings)
        if self._boxes_only:
            return t
        last = t.stages[-1]
        d, probs = self._masks(last.detections, timings)
        index = np.argsort(-d.scores, kind="stable")[:MASKS_TRACED].astype(np.int64)
        traced = MaskProbs(index, probs[index], self.config.mask_threshold)
        return replace(t, stages=(*t.stages[:-1], Stage(last.name, d)), masks=traced)

    def candidates(self, image, proposals=None, timings: dict | None = None) -> Detections:
        """Faster R-CNN's candidates for the set's test rule, each with its mask (computed
        for the candidates kept, not for every box scored)."""
        self._boxes_only = True
        try:
            d = super().candidates(image, proposals, timings)
        finally:
            self._boxes_only = False
        return self._masks(d, timings)[0]

    def _masks(self, d: Detections, timings: dict | None) -> tuple[Detections, np.ndarray]:
        """`d` (detections on the image `_map` saw last) with a mask each, and the mask
        head's probabilities of their class ``float32 [K, 28, 28]`` before pasting."""
        (height, width), fmap, size, factor = self._last_map
        with timed(timings, "mask"), torch.inference_mode():
            if len(d) == 0:
                empty = np.zeros((0, 2 * MASK_POOL, 2 * MASK_POOL), np.float32)
                return Detections(d.boxes, d.scores, d.labels, []), empty
            heads = self.net_.roi_heads
            boxes = torch.from_numpy(d.boxes).to(self.device_)
            labels = torch.from_numpy(d.labels).to(self.device_)
            pooled = heads.mask_roi_pool(_features(fmap), [boxes * factor], [tuple(size)])
            probs = maskrcnn_inference(heads.mask_predictor(heads.mask_head(pooled)), [labels])[0]
            masks = []
            for k in range(0, len(d), PASTE_CHUNK):
                pasted = paste_masks_in_image(probs[k : k + PASTE_CHUNK], boxes[k : k + PASTE_CHUNK], (height, width))
                cut = (pasted[:, 0] >= self.config.mask_threshold).cpu().numpy()
                masks += [encode(m) for m in cut]
        return Detections(d.boxes, d.scores, d.labels, masks), probs[:, 0].float().cpu().numpy().astype(np.float32)


class _MaskTrainer(_Trainer):
    """Faster R-CNN's training (`faster_rcnn._Trainer`) with the objects' masks in the targets
    (``uint8 [G, h, w]`` in each view's pixels, `View.place_masks`) and torchvision's mask
    loss as a fifth term (``mask``, weighted by ``[mask] loss_weight``)."""

    title = "Mask R-CNN"
    terms = (*LOSSES, "mask")
    torch_losses = (*_Trainer.torch_losses, "loss_mask")

    def __init__(self, net, config: MaskRCNNConfig, device, checkpoint):
        super().__init__(net, config, device, checkpoint)
        self.weights["loss_mask"] = config.mask.loss_weight

    def meta(self) -> dict:
        return {**super().meta(), "mask": to_dict(self.settings.mask)}

    def fit(self, dataset: Dataset, callback=None) -> _MaskTrainer:
        # an image without objects may have no mask list (None); difficult objects are left out, as their boxes
        self.masks = [
            [m for m, hard in zip(s.masks or [None] * len(s.labels), s.difficult) if not hard] for s in dataset
        ]
        return super().fit(dataset, callback)

    def _target(self, i: int, view) -> dict[str, torch.Tensor]:
        target = super()._target(i, view)
        _, keep = view.place(self.targets[i][0])
        masks = view.place_masks([m for m, kept in zip(self.masks[i], keep) if kept])
        target["masks"] = torch.from_numpy(masks).to(self.device)
        return target
