"""The Faster R-CNN detector (Ren et al., NIPS 2015), a peer of `FastRCNN` built from the
same parts and torchvision's own Faster R-CNN pieces.

The network is a `torchvision.models.detection.FasterRCNN` whose backbone is the project's
stride-16 trunk (`rcnn.features.roi.build_trunk`: the same cut and weight sources, offline
MobileNetV2 weights included), with an `rpn.AnchorGenerator` of one feature map (sizes and
ratios from the config; default sizes chosen from the training boxes), torchvision's
`RegionProposalNetwork` and `RoIHeads`, `MultiScaleRoIAlign` over that one map, a
fully connected head sized by ``[head] fc`` (`FastRCNNConvFCHead`) and `FastRCNNPredictor`.

With ``[backbone] fpn = true`` (`rcnn.features.pyramid.PyramidBackboneConfig`, as Fast
R-CNN's) the backbone is a feature pyramid (`rcnn.features.pyramid.PyramidTrunk`:
torchvision's `FeaturePyramidNetwork` over MobileNetV2's stride-8 and stride-16 blocks,
optionally a max-pooled stride-32 level) and the rest follows
torchvision's FPN recipe: one anchor size per level (chosen: one octave per level, the
smallest on the stride-8 map), the RPN's head shared by the levels, `MultiScaleRoIAlign`
over levels "0" and "1" (each box from the level its size maps to). The trunk pads the image
to a multiple of 32 px, so the anchor generator's strides are exact; `_image_list` gives it
the padded size and the true one.

The project drives those parts itself rather than through torchvision's ``forward``, so that
images are sized as `FastRCNN` sizes them (`rescale`: shortest side `scale`, longest at most
`max_size`; `image_tensor`), training runs in the loop Fast R-CNN's shares
(`rcnn.heads.roi_trainer.RoITrainer`: the trunk's frozen first layers run once per image and
flip), and detections go through the project's `postprocess` (score threshold, per-class
NMS, the cap) like every other detector's. ``net_`` stays a
complete torchvision model: ``model.net_.eval()([tensor])`` runs torchvision's own pipeline.

Training (`FasterRCNN.fit`): end to end (the approximate joint training of the paper's
Sec. 3.2), SGD on mini-batches of images, the four losses summed (RPN objectness, RPN box,
classifier, box), seeded, checkpointed to ``cache_dir/faster_rcnn/<key>.pt`` and resumed from
there. No external proposals: `detect_dataset` computes none, and `propose` gives the RPN's
ranked boxes (the ``rpn`` proposer, `rcnn.proposals.rpn`, caches them for any experiment).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from rcnn.config import FieldError, require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.detectors.base import (
    CommonConfig,
    Detector,
    check_trainable,
    final_losses,
    net_state,
    postprocess,
    read_model,
    resolve_device,
    restore_net,
    timed,
    training_key,
)
from rcnn.detectors.trace import Anchors, Pooled, Stage, Trace, summarize_map, summarize_pyramid, threshold_stages
from rcnn.errors import ModelError
from rcnn.features.extractor import freeze_for_inference, set_threads
from rcnn.features.pyramid import (
    STRIDES,
    PyramidBackboneConfig,
    backbone_settings,
    build_pyramid_trunk,
    pyramid_roi_align,
)
from rcnn.features.roi import STRIDE, RoIConfig, build_trunk, image_tensor, rescale
from rcnn.features.warp import IMAGENET_MEAN, IMAGENET_STD
from rcnn.heads.fast_rcnn import BOX_STDS, HeadConfig
from rcnn.heads.roi_trainer import RoITrainConfig, RoITrainer, check_image_size, fit_to_data, train_settings
from rcnn.proposals import rpn as rpn_proposals

__all__ = [
    "AnchorConfig",
    "FasterBackboneConfig",
    "FasterRCNN",
    "FasterRCNNConfig",
    "FasterTrainConfig",
    "RPNConfig",
    "anchor_generator",
    "choose_anchor_sizes",
]

log = logging.getLogger(__name__)
LOSSES = ("rpn_objectness", "rpn_box", "classifier", "box")
TEST_ONLY = ("pre_nms_top_n_test", "post_nms_top_n_test")  # [rpn] settings training never reads


def _training_settings(c) -> dict:
    """The settings a training run depends on (its checkpoint's key and check): not the
    test-time ones (the RPN's test counts, score threshold, NMS, cap)."""
    return {
        "backbone": backbone_settings(c.backbone),  # the single map: the keys of the runs before the pyramid
        "anchors": to_dict(c.anchors),
        "rpn": {k: v for k, v in to_dict(c.rpn).items() if k not in TEST_ONLY},
        "roi": to_dict(c.roi),
        "head": to_dict(c.head),
        "train": train_settings(c.train),
        "scale": c.scale,
        "max_size": c.max_size,
    }


# Faster R-CNN's ``[backbone]`` table: the stride-16 trunk and an optional feature pyramid
# (`rcnn.features.pyramid.PyramidBackboneConfig`, shared with Fast R-CNN; with it, anchors one
# size per level, or as many per level, the RPN's head shared by the levels, RoI align from
# levels "0" and "1"); the name it had when Faster R-CNN alone had the pyramid.
FasterBackboneConfig = PyramidBackboneConfig

_TORCHVISION_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@dataclass(frozen=True)
class AnchorConfig:
    """The ``[anchors]`` table: anchor `sizes` (the side of a square anchor's equal-area box,
    in pixels of the rescaled image; empty: chosen from the training boxes, `choose_anchor_sizes`)
    and `ratios` (height / width, torchvision's convention), every size at every ratio, at
    every cell of the stride-16 map. With a feature pyramid (``[backbone] fpn``) the sizes are
    split in order over its levels, as many on each (a multiple of the levels; chosen: one
    per level), the smallest on the finest level."""

    sizes: tuple[int, ...] = ()
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self):
        require(self, "sizes", all(s >= 1 for s in self.sizes), "a list of integers >= 1 (pixels; empty: chosen)")
        require(
            self,
            "ratios",
            len(self.ratios) >= 1 and all(0.01 <= r <= 100 for r in self.ratios),
            "a list of numbers in [0.01, 100] (height / width)",
        )


@dataclass(frozen=True)
class RPNConfig:
    """The ``[rpn]`` table (torchvision's and the paper's defaults, except the test-time
    count): anchors with IoU >= `fg_iou` to a ground-truth box (or the best for one) are
    positive, < `bg_iou` negative; `batch_size_per_image` anchors per image are sampled,
    `positive_fraction` of them positive at most. Proposals: the best `pre_nms_top_n_*`
    by objectness, NMS at `nms_threshold`, the best `post_nms_top_n_*` kept (training /
    test); `score_threshold`: the objectness probability a proposal needs;
    `box_loss_weight`: the weight of the RPN's box regression term in the training loss
    (torchvision: 1; 10 gave tighter proposals and +0.007 to +0.012 mAP on cards)."""

    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 300
    nms_threshold: float = 0.7
    score_threshold: float = 0.0
    box_loss_weight: float = 10.0

    def __post_init__(self):
        require(self, "fg_iou", 0 < self.fg_iou <= 1, "an IoU in (0, 1]")
        require(self, "bg_iou", 0 <= self.bg_iou <= self.fg_iou, f"an IoU in [0, fg_iou = {self.fg_iou}]")
        for name in ("batch_size_per_image", "pre_nms_top_n_train", "post_nms_top_n_train"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        for name in ("pre_nms_top_n_test", "post_nms_top_n_test"):
            require(self, name, getattr(self, name) >= 1, "an integer >= 1")
        require(self, "positive_fraction", 0 < self.positive_fraction <= 1, "a number in (0, 1]")
        require(self, "nms_threshold", 0 < self.nms_threshold <= 1, "an IoU in (0, 1]")
        require(self, "score_threshold", 0 <= self.score_threshold < 1, "a probability in [0, 1)")
        require(self, "box_loss_weight", self.box_loss_weight >= 0, "a number >= 0")


@dataclass(frozen=True)
class FasterTrainConfig(RoITrainConfig):
    """Faster R-CNN's ``[train]`` table: the settings Fast R-CNN's has
    (`rcnn.heads.roi_trainer.RoITrainConfig`; `head_lr_mult` applies to the RPN and the RoI
    head, the RoIs are drawn from the RPN's proposals) and background RoIs below IoU
    `bg_iou`. Difficult objects are left out of the targets."""

    weight_decay: float = 0.0001
    bg_iou: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        require(self, "bg_iou", 0 < self.bg_iou <= self.fg_iou, f"an IoU in (0, fg_iou = {self.fg_iou}]")


@dataclass(frozen=True)
class FasterRCNNConfig(CommonConfig):
    """A Faster R-CNN config (``detector = "faster_rcnn"``). Besides the common settings
    (`rcnn.detectors.base.CommonConfig`; its ``[proposals]`` table is not used: the RPN
    proposes): `backbone` (the stride-16 trunk, as Fast R-CNN's), `anchors`, `rpn`, `roi`
    (``mode = "align"`` only: `MultiScaleRoIAlign`), `head` (the fc sizes; no dropout),
    `train`; images are rescaled to shortest side `scale` px, longest at most `max_size` (0:
    chosen from the training images, `rcnn.heads.roi_trainer.fit_to_data`; the model keeps
    the sizes chosen).
    The score threshold (None: 0.05, a class probability) drops boxes before NMS."""

    detector: str = "faster_rcnn"
    backbone: FasterBackboneConfig = field(default_factory=FasterBackboneConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: FasterTrainConfig = field(default_factory=FasterTrainConfig)
    scale: int = 0
    max_size: int = 0
    nms_threshold: float = 0.5  # torchvision's and detectron2's; R-CNN's 0.3 merges neighbours that overlap
    candidate_nms: bool = True  # NMS before each image's best 100 per class (see CommonConfig)

    def __post_init__(self):
        super().__post_init__()
        kind = type(self).__dataclass_fields__["detector"].default  # "faster_rcnn", or a subclass's own
        require(self, "detector", self.detector == kind, f'"{kind}" for a {type(self).__name__}')
        check_image_size(self)
        if self.roi.mode != "align":
            raise FieldError("roi.mode", self.roi.mode, '"align" (Faster R-CNN pools with MultiScaleRoIAlign)')
        if self.head.dropout:
            raise FieldError("head.dropout", self.head.dropout, "0 (torchvision's fc head has no dropout)")
        if self.score_threshold is not None:
            require(self, "score_threshold", 0 <= self.score_threshold <= 1, "a class probability in [0, 1]")
        levels = len(self.backbone.levels)
        if len(self.anchors.sizes) % levels:
            raise FieldError(
                "anchors.sizes",
                list(self.anchors.sizes),
                f"as many sizes on each of the pyramid's {levels} levels (a multiple of {levels}; empty: chosen)",
            )

    @property
    def min_score(self) -> float:
        return 0.05 if self.score_threshold is None else self.score_threshold


def choose_anchor_sizes(
    dataset: Dataset, scale: int, max_size: int, count: int | None = None
) -> tuple[tuple[int, ...], str]:
    """Anchor sizes for `dataset`'s objects once images are rescaled (`scale`, `max_size`):
    octaves (each twice the last) centred on the geometric mean of the 5th and 95th
    percentiles of the objects' ``sqrt(width * height)``, as many as cover that range (1 to
    6) or, given, `count` of them (one per level of a feature pyramid); and a line saying so."""
    sides = []
    for s in dataset:
        if len(s.boxes) == 0:
            continue
        h, w = (s.height, s.width) if s.height and s.width else read_image(s.image_path).shape[:2]
        factor = min(scale / min(h, w), max_size / max(h, w))
        wh = (s.boxes[:, 2:] - s.boxes[:, :2]).clip(min=1e-3)
        sides.append(np.sqrt(wh[:, 0] * wh[:, 1]) * factor)
    sides = np.concatenate(sides) if sides else np.zeros(0)
    if len(sides) == 0:
        sizes = (32, 64, 128, 256, 512) if count is None else tuple(32 * 2**k for k in range(count))
        return sizes, f"anchors: no training boxes, sizes {sizes[0]}-{sizes[-1]} px"
    lo, mid, hi = np.percentile(sides, [5, 50, 95])
    n = int(np.clip(math.ceil(math.log2(hi / lo) - 1e-9) + 1, 1, 6)) if count is None else count
    centre = math.sqrt(lo * hi)
    sizes = tuple(sorted({max(1, round(centre * 2 ** (k - (n - 1) / 2))) for k in range(n)}))
    if count is not None and len(sizes) < count:  # tiny objects: octaves that round to the same pixel count
        sizes = tuple(range(sizes[0], sizes[0] + count))
    line = (
        f"anchors: sizes {', '.join(map(str, sizes))} px chosen from the training objects "
        f"(sqrt(w*h) after rescaling: 5th percentile {lo:.0f}, median {mid:.0f}, 95th {hi:.0f} px)"
    )
    return sizes, line


def anchor_groups(sizes, levels: int = 1) -> tuple[tuple[int, ...], ...]:
    """`sizes` split in order into `levels` groups of as many (the first for the finest map)."""
    sizes = tuple(int(s) for s in sizes)
    k = len(sizes) // levels
    return tuple(sizes[i * k : (i + 1) * k] for i in range(levels))


def anchor_generator(sizes, ratios, levels: int = 1) -> AnchorGenerator:
    """torchvision's `AnchorGenerator` for `levels` feature maps (`anchor_groups`: `sizes`
    split in order over them, the smallest on the finest): every size of a map's group at
    every ratio (height / width); a map's anchors ``[H * W * A, 4]`` are the base boxes (side
    ``size * sqrt(1 / ratio)`` wide and ``size * sqrt(ratio)`` high, centred on 0, rounded)
    shifted by the stride times each cell's index, cell by cell (row-major), all A at a cell;
    the maps' anchors follow each other, finest first."""
    ratios = tuple(float(r) for r in ratios)
    return AnchorGenerator(sizes=anchor_groups(sizes, levels), aspect_ratios=(ratios,) * levels)


def build_network(config: FasterRCNNConfig, num_classes: int, weights: str | None = None):
    """``(torchvision FasterRCNN, weights source)`` for `config` (whose anchor sizes must be
    set) and `num_classes` object classes; `weights` overrides the trunk's weight source
    (``random`` when a model file brings every weight). The new layers' initial weights
    follow ``train.seed``."""
    c = config
    backbone = c.backbone if weights is None else replace(c.backbone, weights=weights)
    if not backbone.fpn:
        trunk, channels, source = build_trunk(backbone)
        trunk.out_channels = channels
    s = c.roi.output_size
    levels = backbone.levels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.train.seed)
        if backbone.fpn:  # its new layers drawn from train.seed, as the heads' (the trunk's own seed is its own)
            trunk, source = build_pyramid_trunk(backbone, backbone.fpn_channels, backbone.fpn_pool)
            channels = trunk.out_channels
        anchors = anchor_generator(c.anchors.sizes, c.anchors.ratios, len(levels))
        pooled = [k for k in levels if k != "pool"]  # torchvision's rule: the extra max-pooled level only proposes
        net = TorchvisionFasterRCNN(
            trunk,
            num_classes=None,
            min_size=c.scale,
            max_size=c.max_size,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_train=c.rpn.pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=c.rpn.pre_nms_top_n_test,
            rpn_post_nms_top_n_train=c.rpn.post_nms_top_n_train,
            rpn_post_nms_top_n_test=c.rpn.post_nms_top_n_test,
            rpn_nms_thresh=c.rpn.nms_threshold,
            rpn_fg_iou_thresh=c.rpn.fg_iou,
            rpn_bg_iou_thresh=c.rpn.bg_iou,
            rpn_batch_size_per_image=c.rpn.batch_size_per_image,
            rpn_positive_fraction=c.rpn.positive_fraction,
            rpn_score_thresh=c.rpn.score_threshold,
            # the pyramid's levels at their strides (`pyramid_roi_align`); the one map's inferred by torchvision
            box_roi_pool=(pyramid_roi_align if backbone.fpn else MultiScaleRoIAlign)(pooled, s, c.roi.sampling_ratio),
            box_head=FastRCNNConvFCHead((channels, s, s), [], list(c.head.fc)),
            box_predictor=FastRCNNPredictor(c.head.fc[-1], num_classes + 1),
            box_score_thresh=c.min_score,
            box_nms_thresh=c.nms_threshold,
            box_detections_per_img=c.max_detections,
            box_fg_iou_thresh=c.train.fg_iou,
            box_bg_iou_thresh=c.train.bg_iou,
            box_batch_size_per_image=c.train.rois_per_image,
            box_positive_fraction=c.train.fg_fraction,
            bbox_reg_weights=tuple(1.0 / s_ for s_ in BOX_STDS),
        )
    return net.eval(), source


def _features(fmap) -> dict[str, torch.Tensor]:
    """The trunk's output as the RPN and RoI heads take it: the pyramid's maps in their
    order, or ``{"0": fmap}`` for the one stride-16 map."""
    if isinstance(fmap, dict):
        return OrderedDict((k, fmap[k]) for k in STRIDES if k in fmap)
    return {"0": fmap}


def _image_list(fmap, size) -> ImageList:
    """The `ImageList` the RPN and RoI pooling need for one image of ``size = (h, w)`` whose
    map is `fmap` (or whose pyramid's maps are, a dict: the trunk's output as it is, not
    `_features`'): its tensor only gives the anchor
    generator the image size it divides by each map's size for that map's stride (the
    stride-16 map's size x 16; the pyramid's finest map's size x 8, the padded image's, a
    multiple of 32), so it has no channels (no memory); ``image_sizes`` is the true size."""
    first, stride = (fmap["0"], STRIDES["0"]) if isinstance(fmap, dict) else (fmap, STRIDE)
    h, w = first.shape[-2:]
    return ImageList(first.new_empty((1, 0, h * stride, w * stride)), [(int(size[0]), int(size[1]))])


class FasterRCNN(Detector):
    """Faster R-CNN: ``FasterRCNN(config).fit(dataset)``, then ``detect(image)`` /
    ``detect_dataset(ds)`` / ``propose(image)``.

    Fitted attributes: ``classes_``, ``net_`` (the torchvision `FasterRCNN`: ``backbone``
    the stride-16 trunk or the feature pyramid, ``rpn``, ``roi_heads``), ``weights_source_``, ``fit_stats_``,
    ``history_`` (per iteration: ``loss`` and the four losses, `LOSSES`). After `fit` the
    config's anchor sizes are the ones used (chosen ones included), so the model file
    rebuilds the same network.
    """

    kind = "faster_rcnn"
    config_class = FasterRCNNConfig
    learns_proposals = True
    lowest_score = 0.0  # scores are class probabilities

    # -- no external proposals ----------------------------------------------------------------

    def proposal_store(self):
        raise ModelError(
            "Faster R-CNN has no external proposals: its RPN proposes "
            "(`rcnn propose DATASET --method rpn --model MODEL.pt` caches them for other detectors)"
        )

    def training_proposals(self, dataset: Dataset, stats: dict):
        return self.proposal_store()

    # -- training ---------------------------------------------------------------------------

    def checkpoint_path(self, dataset: Dataset) -> Path:
        """Where training on `dataset` keeps its checkpoint: ``cache_dir/faster_rcnn/<key>.pt``,
        the key from the training settings (anchor sizes as chosen; not the test-time ones)
        and every image and annotation."""
        params = {self.kind: self._training_settings(dataset)}
        return Path(self.config.cache_dir) / self.kind / f"{training_key(params, dataset)}.pt"

    def _training_settings(self, dataset: Dataset) -> dict:
        """What a training run's checkpoint key holds besides the images and boxes."""
        return _training_settings(self.config)

    @staticmethod
    def _network(config, num_classes: int, weights: str | None = None):
        return build_network(config, num_classes, weights)

    def _trainer(self, dataset: Dataset):
        return _Trainer(self.net_, self.config, resolve_device(self.config.device), self.checkpoint_path(dataset))

    def fit(self, dataset: Dataset, callback=None) -> FasterRCNN:
        """Train on `dataset`; returns self. `callback(iteration, loss)` follows each step
        (after its checkpoint)."""
        check_trainable(dataset)
        self.config = c = fit_to_data(self.config, dataset)
        self.classes_ = list(dataset.classes)
        stats = {"images": len(dataset), "scale": c.scale, "max_size": c.max_size, "iterations": c.train.iterations}
        if c.backbone.num_threads:  # process-wide: only when the config names a number
            set_threads(c.backbone.num_threads)
        if not c.anchors.sizes:
            count = len(c.backbone.levels) if c.backbone.fpn else None
            sizes, line = choose_anchor_sizes(dataset, c.scale, c.max_size, count)
            log.info(line)
            self.config = c = replace(c, anchors=replace(c.anchors, sizes=sizes))
            stats["anchor_sizes_chosen"] = True
        stats["anchor_sizes"] = list(c.anchors.sizes)
        stats["anchor_ratios"] = list(c.anchors.ratios)
        start = time.perf_counter()
        self.net_, self.weights_source_ = self._network(c, len(self.classes_))
        trainer = self._trainer(dataset).fit(dataset, callback)
        self.history_ = trainer.history_
        stats["train_seconds"] = time.perf_counter() - start
        stats["resumed_from_iteration"] = trainer.resumed_from_
        trained = (c.train.iterations - trainer.resumed_from_) * c.train.images_per_batch
        stats["train_images_per_second"] = trained / trainer.seconds_ if trainer.seconds_ > 0 and trained else None
        stats["final_losses"] = final_losses(self.history_)
        self.fit_stats_ = stats
        self._prepare()
        return self

    # -- detection --------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.device_ = resolve_device(self.config.device)
        self.net_.to(self.device_).eval()
        self._frozen_trunk = None

    def _trunk(self, image: np.ndarray):
        """``(map [1, C, h/16, w/16], rescaled size (h, w), factor)`` of ``uint8 [H, W, 3]``
        `image` (with ``backbone.fpn`` the pyramid's dict of maps in place of the map), under
        inference mode (on the CPU a TorchScript-frozen copy of the trunk when
        ``backbone.torchscript``; the pyramid's scripts too)."""
        c = self.config
        scaled, factor = rescale(image, c.scale, c.max_size)
        x = image_tensor(scaled).to(self.device_)
        if self.device_.type != "cpu" or not c.backbone.torchscript:
            return self.net_.backbone(x), scaled.shape[:2], factor
        if self._frozen_trunk is None:
            self._frozen_trunk = freeze_for_inference(self.net_.backbone, x, torch.contiguous_format)
        return self._frozen_trunk(x), scaled.shape[:2], factor

    def _map(self, image, timings: dict | None):
        """``(image uint8 [H, W, 3], map, rescaled size, factor)`` of `image` (a path or the
        array) through the trunk (`_trunk`), timed as ``trunk``; call under inference mode."""
        self._check_fitted()
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        with timed(timings, "trunk"):
            return (image, *self._trunk(image))

    def propose(
        self, image, max_boxes: int | None = None, nms_threshold: float | None = None, timings: dict | None = None
    ) -> np.ndarray:
        """The RPN's ranked proposals ``float32 [N, 4]`` (best objectness first, after its
        NMS) in `image`'s own pixels: a path or ``uint8 [H, W, 3]`` RGB array. `max_boxes`
        (None: ``rpn.post_nms_top_n_test``) replaces the count kept after NMS (and raises
        the count before it to at least as many); `nms_threshold` (None: ``rpn.nms_threshold``)
        the NMS IoU."""
        with torch.inference_mode():
            _, fmap, size, factor = self._map(image, timings)
            with timed(timings, "rpn"):
                boxes = self._propose(self.rpn_with(max_boxes, nms_threshold), fmap, size)[0][0]
        return (boxes.cpu().numpy() / factor).astype(np.float32).reshape(-1, 4)

    def rpn_with(self, max_boxes: int | None = None, nms_threshold: float | None = None) -> RegionProposalNetwork:
        """The RPN detection runs: ``net_.rpn``, or with `max_boxes` (the count kept after
        its NMS; the count before it raised to at least as many) or `nms_threshold` another
        torchvision `RegionProposalNetwork` built with those test-time settings, sharing the
        anchor generator and the head (no weight is copied)."""
        rpn, r = self.net_.rpn, self.config.rpn
        if max_boxes is None and nms_threshold is None:
            return rpn
        post = r.post_nms_top_n_test if max_boxes is None else int(max_boxes)
        pre = r.pre_nms_top_n_test if max_boxes is None else max(int(max_boxes), r.pre_nms_top_n_test)
        return RegionProposalNetwork(
            rpn.anchor_generator,
            rpn.head,
            r.fg_iou,
            r.bg_iou,
            r.batch_size_per_image,
            r.positive_fraction,
            pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": pre},
            post_nms_top_n={"training": r.post_nms_top_n_train, "testing": post},
            nms_thresh=r.nms_threshold if nms_threshold is None else float(nms_threshold),
            score_thresh=r.score_threshold,
        ).eval()

    def _propose(self, rpn, fmap, size, watch: bool = False) -> tuple[list[torch.Tensor], Anchors | None]:
        """``([proposals [N, 4]]`` in the rescaled image's pixels, best first, ``anchors)``:
        `rpn` on `fmap` (`_trunk`'s) of an image rescaled to ``size = (h, w)``; with `watch`,
        what its head and anchor generator gave (forward hooks: nothing is computed twice)
        as the stride-16 level's `Anchors`, else None. Call under inference mode."""
        seen = {}
        hooks = []
        if watch:
            hooks = [
                rpn.head.register_forward_hook(lambda m, i, out: seen.update(head=out)),
                rpn.anchor_generator.register_forward_hook(lambda m, i, out: seen.update(anchors=out[0])),
            ]
        try:
            rois = rpn(_image_list(fmap, size), _features(fmap))[0]
        finally:
            for hook in hooks:
                hook.remove()
        if not watch:
            return rois, None
        maps = _features(fmap)
        levels = list(maps)
        index = levels.index("1") if isinstance(fmap, dict) else 0  # the stride-16 level
        per_cell = rpn.anchor_generator.num_anchors_per_location()
        counts = [m.shape[-2] * m.shape[-1] * per_cell[i] for i, m in enumerate(maps.values())]
        h, w = list(maps.values())[index].shape[-2:]
        boxes = seen["anchors"][sum(counts[:index]) : sum(counts[: index + 1])].cpu().numpy().reshape(h, w, -1, 4)
        c = self.config
        anchors = Anchors(
            boxes=boxes.astype(np.float32),
            objectness=torch.sigmoid(seen["head"][0][index][0]).cpu().numpy().astype(np.float32),
            sizes=anchor_groups(c.anchors.sizes, len(levels))[index],
            ratios=tuple(float(r) for r in c.anchors.ratios),
            total=int(len(seen["anchors"])),
            pre_nms_top_n=int(rpn.pre_nms_top_n()),
            post_nms_top_n=int(rpn.post_nms_top_n()),
            nms_threshold=float(rpn.nms_thresh),
            score_threshold=float(rpn.score_thresh),
        )
        return rois, anchors

    def _head(self, fmap: torch.Tensor, size, rois: list[torch.Tensor], factor: float):
        """The RoI head on `rois` (one ``[N, 4]`` tensor in the rescaled image's pixels) over
        `fmap` (or the pyramid's maps, `_features`; of an image rescaled to ``size = (h, w)``
        by `factor`): ``(boxes float32 [N, C, 4]`` in the image's own pixels, each proposal
        moved by each class's deltas, ``class probabilities [N, C]``, background dropped,
        ``pooled [N, C', s, s])`` (a tensor); call under inference mode."""
        heads = self.net_.roi_heads
        pooled = heads.box_roi_pool(_features(fmap), rois, [tuple(size)])
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        boxes = heads.box_coder.decode(regression, rois)[:, 1:]
        scores = torch.softmax(logits, -1)[:, 1:]
        return boxes.cpu().numpy() / factor, scores.cpu().numpy(), pooled

    def _summary(self, fmap, factor: float):
        """The trace's `FeatureMap` of `fmap` (`_trunk`'s): the stride-16 map, or the
        pyramid's stride-16 level with every level listed."""
        return summarize_pyramid(fmap, factor) if isinstance(fmap, dict) else summarize_map(fmap, factor, STRIDE)

    def trace(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Trace:
        """Every stage on one image (a path or ``uint8 [H, W, 3]`` RGB array), as plain data
        (`rcnn.detectors.trace.Trace`): the feature map, the RPN's anchors and objectness on
        its stride-16 level, its proposals (`propose`'s), the best-scoring proposal's pooled
        block, every proposal's class probabilities, the boxes reaching the score threshold
        before and after the head's box deltas, and the detections after NMS (`detect`'s).

        `proposals` ``float32 [N, 4]`` (image pixels), when given, replace the RPN's (the RoI
        head then scores them as Fast R-CNN would; the trace has no anchors). `timings`, when
        given, is filled with seconds spent in ``trunk``, ``rpn``, ``head`` (RoI pooling, fc
        layers, decoding) and ``nms`` (threshold, per-class NMS, the cap), added to.
        """
        c = self.config
        with torch.inference_mode():
            image, fmap, size, factor = self._map(image, timings)
            parts = {
                "image_size": tuple(image.shape[:2]),
                "feature_map": self._summary(fmap, factor),
                "score_name": "probability",
                "threshold": c.min_score,
                "proposer": "rpn" if proposals is None else "given",
            }
            with timed(timings, "rpn"):
                if proposals is None:
                    rois, parts["anchors"] = self._propose(self.net_.rpn, fmap, size, watch=True)
                else:
                    given = np.asarray(proposals, np.float32).reshape(-1, 4) * factor
                    rois = [torch.from_numpy(np.ascontiguousarray(given)).to(self.device_)]
            parts["proposals"] = (rois[0].cpu().numpy() / factor).astype(np.float32).reshape(-1, 4)
            anchors = {"anchors": parts["anchors"].total} if proposals is None else {}
            parts["scored"] = {**anchors, "proposals": len(parts["proposals"])}
            if len(rois[0]) == 0:
                return Trace(stages=(Stage("nms", Detections()),), **parts)
            with timed(timings, "head"):
                boxes, scores, pooled = self._head(fmap, size, rois, factor)
                k = int(scores.max(1).argmax())
                parts.update(scores=scores, pooled=Pooled(k, pooled[k].float().cpu().numpy(), c.roi.mode))
        with timed(timings, "nms"):
            rows, cols = np.nonzero(scores >= c.min_score)
            moved = boxes[rows, cols]
            labels = cols.astype(np.int64) + 1
            final = postprocess(moved, scores[rows, cols], labels, image.shape[:2], c.nms_threshold, c.max_detections)
        stages = (*threshold_stages(parts["proposals"], scores, rows, cols, moved), Stage("nms", final))
        return Trace(stages=stages, **parts)

    # -- the model file ---------------------------------------------------------------------

    def _state(self) -> dict:
        return net_state(self)

    def _from_state(self, state: dict, path) -> None:
        c = self.config
        if not c.anchors.sizes:
            raise ValueError("the config names no anchor sizes")
        if c.backbone.num_threads:
            set_threads(c.backbone.num_threads)
        # every weight is in the file: build the architecture without fetching weights
        restore_net(self, self._network(c, len(self.classes_), weights="random")[0], state)
        self._prepare()


class _Trainer(RoITrainer):
    """End-to-end training of a torchvision `FasterRCNN` (`build_network`) in place, in the
    loop Fast R-CNN shares (`rcnn.heads.roi_trainer.RoITrainer`; the rate warmed up, see
    `FasterTrainConfig`): per image the trunk, the RPN and the RoI head with their targets
    (difficult objects left out); the four losses averaged over the images, the RPN's box
    term weighted by ``rpn.box_loss_weight``, and summed. Fitted: ``history_`` (``loss``
    and `LOSSES` per iteration), ``resumed_from_``, ``seconds_``."""

    title = "Faster R-CNN"
    terms = LOSSES
    torch_losses = _TORCHVISION_LOSSES  # torchvision's names of `terms`, in order

    def __init__(self, net, config: FasterRCNNConfig, device: torch.device, checkpoint: Path | None):
        super().__init__(config.train, config.scale, config.max_size, checkpoint, device)
        self.net, self.settings = net, config
        self.weights = dict.fromkeys(self.torch_losses, 1.0)
        self.weights["loss_rpn_box_reg"] = config.rpn.box_loss_weight

    def meta(self) -> dict:
        return _training_settings(self.settings)

    def fit(self, dataset: Dataset, callback=None) -> _Trainer:
        self.paths = [s.image_path for s in dataset]
        self.targets = [
            (s.boxes[~s.difficult].astype(np.float32), s.labels[~s.difficult].astype(np.int64)) for s in dataset
        ]
        return self.run({"net": self.net}, self.net.backbone, self.config.iterations, callback)

    def _example(self, i: int, rng, cache: dict, stem):
        """``(x, (h, w), target)``: image `i` as `RoITrainer._view` gives it (rescaled, maybe
        flipped, cropped, colour-jittered), its size and its targets in its pixels."""
        view = self._view(i, rng, cache, stem, self.targets[i][0])
        return view.x, view.size, self._target(i, view)

    def _target(self, i: int, view) -> dict[str, torch.Tensor]:
        """Image `i`'s targets as torchvision's heads take them, in `view`'s pixels."""
        boxes, labels = self.targets[i]
        boxes, keep = view.place(boxes)
        return {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).to(self.device),
            "labels": torch.from_numpy(labels[keep]).to(self.device),
        }

    def _loss(self, batch: list, rest: nn.Module) -> dict[str, torch.Tensor]:
        net, parts = self.net, {k: 0.0 for k in self.torch_losses}
        for x, size, target in batch:
            fmap = rest(x)  # the map, or the pyramid's dict of maps
            feats = _features(fmap)
            image_list = _image_list(fmap, size)
            proposals, rpn_losses = net.rpn(image_list, feats, [target])
            _, head_losses = net.roi_heads(feats, proposals, image_list.image_sizes, [target])
            for k, v in {**rpn_losses, **head_losses}.items():
                parts[k] = parts[k] + v / len(batch)
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return {"loss": loss, **{name: parts[k] for name, k in zip(self.terms, self.torch_losses)}}


# -- the RPN as a proposer (rcnn.proposals.rpn) --------------------------------------------------


def _check_rpn_model(path) -> None:
    """Raise `ModelError` naming `path` unless it is a Faster R-CNN model file."""
    kind = read_model(path).get("detector", "rcnn")  # missing, unreadable, foreign: ModelError
    if kind != FasterRCNN.kind:
        raise ModelError(
            f"{path}: a {kind} model, not a Faster R-CNN; RPN proposals need one trained with "
            f'detector = "{FasterRCNN.kind}"'
        )


def _load_rpn_model(path) -> FasterRCNN:
    return FasterRCNN.from_state(read_model(path), path)


rpn_proposals.register(_check_rpn_model, _load_rpn_model)
