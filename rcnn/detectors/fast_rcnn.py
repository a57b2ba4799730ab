"""The Fast R-CNN detector (Girshick, ICCV 2015), a peer of `RCNN` built from the same parts.

Training (`FastRCNN.fit`): proposals for every image (the same `ProposalStore` cache as
R-CNN) -> the stride-16 trunk (`rcnn.features.roi.build_trunk`) and a `FastRCNNHead`
trained together on mini-batches of images x sampled RoIs (`FastRCNNTrainer`, checkpointed
under ``cache_dir/fast_rcnn/``) -> optionally linear SVMs on the fc7 features (``classifier =
"svm"``, the paper's Table 8). Detection (`FastRCNN.trace`, whose last stage is `detect`'s): the image rescaled as in
training -> the trunk once -> RoI pooling of the top `test_proposals` boxes -> the fc layers
(optionally by truncated SVD, `svd_rank`) -> softmax scores (or SVM margins) and
class-specific box deltas -> score threshold -> `rcnn.detectors.base.postprocess`.

With ``[backbone] fpn = true`` (`rcnn.features.pyramid.PyramidBackboneConfig`, Faster R-CNN's
table) the trunk is a feature pyramid (`rcnn.features.pyramid.PyramidTrunk`: torchvision's
`FeaturePyramidNetwork` over MobileNetV2's stride-8 and stride-16 blocks, the image padded to
a multiple of 32 px) and each RoI is pooled by torchvision's `MultiScaleRoIAlign` from the
level its size maps to (`rcnn.features.pyramid.PyramidPooler`: under 224 px a side from
stride 8); RoI align only, no stride-32 level (only an RPN would read it). The trace then
holds the stride-16 level's map, every level listed.

The model file holds the trunk's and the head's weights (and the SVMs), so it does not depend
on where the initial weights came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rcnn.boxes import BoxCoder
from rcnn.config import FieldError, require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.detectors.base import (
    CommonConfig,
    Detector,
    best_per_class,
    check_trainable,
    clean_candidates,
    postprocess,
    resolve_device,
    timed,
    top_candidates,
    training_key,
)
from rcnn.detectors.trace import Pooled, Stage, Trace, summarize_map, summarize_pyramid, threshold_stages
from rcnn.features.extractor import freeze_for_inference, set_threads
from rcnn.features.pyramid import PyramidBackboneConfig, PyramidPooler, backbone_settings, build_pyramid_trunk
from rcnn.features.roi import RoIConfig, RoIPooler, build_trunk, image_tensor, rescale
from rcnn.heads.data import ImageData
from rcnn.heads.fast_rcnn import (
    BOX_STDS,
    FastRCNNHead,
    FastRCNNTrainer,
    HeadConfig,
    TrainConfig,
    TrainImage,
    compress_head,
)
from rcnn.heads.roi_trainer import check_image_size, fit_to_data, train_settings
from rcnn.heads.svm import SVMConfig, SVMHead
from rcnn.progress import progress
from rcnn.proposals import make_proposer

__all__ = ["FastRCNNConfig", "FastRCNN"]

CLASSIFIERS = ("softmax", "svm")


@dataclass(frozen=True)
class FastRCNNConfig(CommonConfig):
    """A Fast R-CNN's config (``detector = "fast_rcnn"``). Besides the common settings:

    `backbone` (``[backbone]``: the stride-16 trunk and its weights; ``fpn``: a feature
    pyramid, whose levels RoI align reads by box size, `rcnn.features.pyramid`), `roi`
    (``[roi]``: pool or align, output size; align only with ``fpn``), `head` (``[head]``: fc
    sizes, dropout), `train` (``[train]``: SGD, sampling, flips, frozen layers, checkpoints,
    seed). Images are rescaled so their
    shortest side is `scale` px, the longest at most `max_size` (training and test; 0: chosen
    from the training images by `rcnn.heads.roi_trainer.fit_to_data`, kept in the model). At test
    time the first `test_proposals` proposals are scored; `classifier` is ``softmax`` (the
    network's own) or ``svm`` (linear SVMs on fc7, `svm` table); `box_regression` applies the
    class-specific deltas; `svd_rank` > 0 replaces each fc layer by its truncated SVD of that
    rank at load/detect time. The score threshold (None: 0.05 for softmax probabilities,
    -1.0 for SVM margins) drops boxes before NMS.
    """

    detector: str = "fast_rcnn"
    TEST_TIME: ClassVar[tuple[str, ...]] = (*CommonConfig.TEST_TIME, "test_proposals", "svd_rank")

    backbone: PyramidBackboneConfig = field(default_factory=PyramidBackboneConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: int = 0
    max_size: int = 0
    nms_threshold: float = 0.5  # torchvision's and detectron2's; R-CNN's 0.3 merges neighbours that overlap
    candidate_nms: bool = True  # NMS before each image's best 100 per class (see CommonConfig)
    test_proposals: int = 2000
    classifier: str = "softmax"
    svm: SVMConfig = field(default_factory=SVMConfig)
    box_regression: bool = True
    svd_rank: int = 0

    def __post_init__(self):
        super().__post_init__()
        require(self, "detector", self.detector == "fast_rcnn", '"fast_rcnn" for a Fast R-CNN config')
        check_image_size(self)
        require(self, "test_proposals", self.test_proposals >= 1, "an integer >= 1")
        require(self, "classifier", self.classifier in CLASSIFIERS, f"one of {', '.join(CLASSIFIERS)}")
        require(self, "svd_rank", self.svd_rank >= 0, "an integer >= 0 (0: no truncated SVD)")
        if self.backbone.fpn and self.roi.mode != "align":
            raise FieldError("roi.mode", self.roi.mode, '"align" with a feature pyramid (MultiScaleRoIAlign)')
        if self.backbone.fpn_pool:
            raise FieldError(
                "backbone.fpn_pool", True, "false (the stride-32 level is an RPN's; Fast R-CNN pools from 8 and 16)"
            )

    @property
    def min_score(self) -> float:
        if self.score_threshold is not None:
            return self.score_threshold
        return 0.05 if self.classifier == "softmax" else -1.0


class FastRCNN(Detector):
    """Fast R-CNN: ``FastRCNN(config).fit(dataset)``, then ``detect(image)`` / ``detect_dataset(ds)``.

    Fitted attributes: ``classes_``, ``trunk_`` (the stride-16 network), ``channels_``,
    ``head_`` (`FastRCNNHead`), ``svm_`` (`SVMHead` or None), ``weights_source_`` (the trunk's
    initial weights), ``fit_stats_``, ``history_`` (training loss per iteration).
    """

    kind = "fast_rcnn"
    config_class = FastRCNNConfig

    @property
    def draw_threshold(self) -> float:
        return 0.5 if self.config.classifier == "softmax" else 0.0

    # -- training ---------------------------------------------------------------------------

    def checkpoint_path(self, dataset: Dataset, proposals) -> Path:
        """Where training on `dataset` keeps its checkpoint: ``cache_dir/fast_rcnn/<key>.pt``,
        the key from the training settings, the proposals and every image and annotation."""
        c = self.config
        params = {
            "fast_rcnn": {
                "backbone": backbone_settings(c.backbone),  # without the pyramid: the keys from before it
                **{name: to_dict(getattr(c, name)) for name in ("roi", "head")},
                "train": train_settings(c.train),
            },
            "scale": c.scale,
            "max_size": c.max_size,
            "proposals": proposals.folder.name,
        }
        return Path(c.cache_dir) / "fast_rcnn" / f"{training_key(params, dataset)}.pt"

    def fit(self, dataset: Dataset, callback=None) -> FastRCNN:
        """Train on `dataset`; returns self. `callback(iteration, loss)` follows each step."""
        check_trainable(dataset)
        self.config = c = fit_to_data(self.config, dataset)
        stats = {"images": len(dataset), "scale": c.scale, "max_size": c.max_size, "iterations": c.train.iterations}
        self.classes_ = list(dataset.classes)
        num_classes = len(self.classes_)
        device = resolve_device(c.device)
        if c.backbone.num_threads:  # process-wide: only when the config names a number
            set_threads(c.backbone.num_threads)

        proposals = self.training_proposals(dataset, stats)

        start = time.perf_counter()
        self.trunk_, self.channels_, self.weights_source_ = self._build_trunk(c.backbone)
        self.head_ = self._new_head(num_classes)
        trainer = FastRCNNTrainer(
            c.train,
            self._pooler(),
            c.scale,
            c.max_size,
            checkpoint=self.checkpoint_path(dataset, proposals),
            device=device,
        )
        images = [TrainImage(s.image_path, proposals.load(s), s.boxes, s.labels, s.difficult) for s in dataset]
        trainer.fit(self.trunk_, self.head_, images, callback=callback)
        self.history_ = trainer.history_
        stats["train_seconds"] = time.perf_counter() - start
        stats["resumed_from_iteration"] = trainer.resumed_from_
        self.svm_ = None
        self._prepare()
        if c.classifier == "svm":
            start = time.perf_counter()
            self.svm_ = self._fit_svms(dataset, images)
            stats["svm_seconds"] = time.perf_counter() - start
        self.fit_stats_ = stats
        return self

    def _build_trunk(self, backbone: PyramidBackboneConfig):
        """``(trunk, channels, weights source)``: the stride-16 trunk (`build_trunk`) or, with
        ``fpn``, the feature pyramid (`build_pyramid_trunk`; its new layers drawn from
        ``train.seed``, as the head's), in eval mode on the CPU."""
        if not backbone.fpn:
            return build_trunk(backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)
            trunk, source = build_pyramid_trunk(backbone, backbone.fpn_channels)
        return trunk, trunk.out_channels, source

    def _pooler(self) -> RoIPooler | PyramidPooler:
        """What pools the RoIs: from the one map (`RoIPooler`) or the pyramid's levels (`PyramidPooler`)."""
        c = self.config
        return PyramidPooler(c.roi, c.backbone.levels) if c.backbone.fpn else RoIPooler(c.roi)

    def _new_head(self, num_classes: int) -> FastRCNNHead:
        c = self.config
        return FastRCNNHead(
            self.channels_ * c.roi.output_size**2, num_classes, c.head.fc, c.head.dropout, seed=c.train.seed
        )

    def _fit_svms(self, dataset: Dataset, images) -> SVMHead:
        """Linear SVMs on the fc7 features of every training image's proposals and ground truth
        (computed once, kept in memory for the SVMs' passes)."""
        n_props = self.config.train.train_proposals
        data = []
        for im in progress(images, desc="fc7 features for SVMs"):
            boxes = np.concatenate(
                [np.asarray(im.proposals, np.float32)[:n_props], np.asarray(im.gt_boxes, np.float32).reshape(-1, 4)]
            )
            feats = self._network(read_image(im.image_path), boxes)[0]
            data.append(ImageData(feats, boxes, im.gt_boxes, im.gt_labels, im.gt_difficult))
        return SVMHead(len(self.classes_), self.config.svm).fit(data)

    def _prepare_detection(self) -> None:
        self._prepare()

    def _prepare(self) -> None:
        """The networks as detection runs them: on the device, eval mode, the fc layers by
        truncated SVD when `svd_rank` > 0."""
        c = self.config
        self.device_ = resolve_device(c.device)
        self.pooler_ = self._pooler()
        self.coder_ = BoxCoder(stds=BOX_STDS)
        self.trunk_.eval()
        self.head_.eval()
        head = compress_head(self.head_, c.svd_rank) if c.svd_rank else self.head_
        self.trunk_.to(self.device_)
        self.net_head_ = head.to(self.device_).eval()
        self._frozen_trunk = None

    def _run_trunk(self, x: torch.Tensor):
        """The stride-16 map of a normalised image ``[1, 3, H, W]`` (with ``fpn`` the pyramid's
        dict of maps), under inference mode."""
        if self.device_.type != "cpu" or not self.config.backbone.torchscript:
            return self.trunk_(x.to(self.device_))
        if self._frozen_trunk is None:
            self._frozen_trunk = freeze_for_inference(self.trunk_, x, torch.contiguous_format)
        return self._frozen_trunk(x)

    # -- detection --------------------------------------------------------------------------

    def _feature_map(self, image: np.ndarray):
        """``(map [1, C, h/16, w/16], factor)``: the stride-16 map of ``uint8 [H, W, 3]``
        `image` rescaled as in training (by `factor`; with ``fpn`` the pyramid's dict of maps
        in place of the map); call under inference mode."""
        c = self.config
        scaled, factor = rescale(image, c.scale, c.max_size)
        return self._run_trunk(image_tensor(scaled)), factor

    def _network(self, image: np.ndarray, boxes: np.ndarray):
        """``(fc features [N, D], probabilities [N, C + 1], deltas [N, C, 4])`` of `boxes` on
        `image`, as numpy arrays, then ``map`` (`_feature_map`'s), ``factor`` and the pooled
        blocks ``[N, C', s, s]`` (tensors)."""
        with torch.inference_mode():
            fmap, factor = self._feature_map(image)
            rois = torch.from_numpy(np.ascontiguousarray(boxes * factor, np.float32)).to(self.device_)
            pooled = self.pooler_(fmap, [rois])
            feats = self.net_head_.features(pooled)
            probs = torch.softmax(self.net_head_.cls_score(feats), dim=1)
            deltas = self.net_head_.bbox_pred(feats).view(len(boxes), -1, 4)
        return feats.cpu().numpy(), probs.cpu().numpy(), deltas.cpu().numpy(), fmap, factor, pooled

    def trace(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Trace:
        """Every stage on one image (a path or ``uint8 [H, W, 3]`` RGB array), as plain data
        (`rcnn.detectors.trace.Trace`): the proposals scored, the one stride-16 map (with
        ``fpn`` the pyramid's stride-16 level, every level listed), the
        best-scoring proposal's pooled block, every proposal's class scores, the boxes
        reaching the score threshold before and after the head's box deltas, and the
        detections after NMS (`detect`'s).

        `proposals` ``float32 [N, 4]`` replaces the configured proposer (the first
        `test_proposals` are used); `timings`, when given, is filled with seconds spent in
        ``proposals, network`` (trunk, RoI pooling, head) and ``nms`` (decoding, threshold,
        NMS), added to.
        """
        self._check_fitted()
        c, image, proposals, proposer = self.config, *self._proposals(image, proposals, timings)
        parts = {
            "image_size": tuple(image.shape[:2]),
            "proposals": proposals,
            "proposer": proposer,
            "score_name": "probability" if self.svm_ is None else "SVM margin",
            "threshold": c.min_score,
            "scored": {"proposals": len(proposals)},
        }
        if len(proposals) == 0:
            return Trace(stages=(Stage("nms", Detections()),), **parts)
        with timed(timings, "network"):
            scores, deltas, fmap, factor, pooled = self._scores(image, proposals)
            k = int(scores.max(1).argmax())
            parts.update(
                feature_map=summarize_pyramid(fmap, factor) if isinstance(fmap, dict) else summarize_map(fmap, factor),
                pooled=Pooled(k, pooled[k].float().cpu().numpy(), c.roi.mode),
                scores=scores,
            )
        with timed(timings, "nms"):
            rows, cols = best_per_class(scores, c.min_score)
            boxes = self._regress(proposals, deltas, rows, cols)
            labels = cols.astype(np.int64) + 1
            final = postprocess(boxes, scores[rows, cols], labels, image.shape[:2], c.nms_threshold, c.max_detections)
        return Trace(stages=(*threshold_stages(proposals, scores, rows, cols, boxes), Stage("nms", final)), **parts)

    def candidates(self, image, proposals: np.ndarray | None = None, timings: dict | None = None) -> Detections:
        """Each class's best `top_per_class` boxes on one image, no threshold, no NMS (what
        ``test_rule = "rcnn"`` chooses from over a set); arguments as `detect`."""
        self._check_fitted()
        c, image, proposals, _ = self.config, *self._proposals(image, proposals, timings)
        if len(proposals) == 0:
            return Detections()
        with timed(timings, "network"):
            scores, deltas, *_ = self._scores(image, proposals)
        with timed(timings, "nms"):  # every box when NMS comes first, else each class's best top_per_class
            rows, cols = best_per_class(scores, -np.inf, None if c.candidate_nms else c.top_per_class)
            boxes = self._regress(proposals, deltas, rows, cols)
            labels = cols.astype(np.int64) + 1
            return top_candidates(clean_candidates(boxes, scores[rows, cols], labels, image.shape[:2]), c)

    def _proposals(self, image, proposals, timings) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image uint8 [H, W, 3], boxes float32 [N, 4], what gave them)``: `image` (a path
        or the array) and the boxes scored on it, the first `test_proposals` of `proposals`
        (None: the configured proposer's)."""
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        proposer = "given" if proposals is not None else self.config.proposals.method
        with timed(timings, "proposals"):
            if proposals is None:
                proposals = make_proposer(self.config.proposals)(image)
            proposals = np.asarray(proposals, np.float32).reshape(-1, 4)[: self.config.test_proposals]
        return image, proposals, proposer

    def _scores(self, image: np.ndarray, proposals: np.ndarray):
        """``(scores [N, C], deltas [N, C, 4], map, factor, pooled)`` of `proposals` on
        `image`: the C object classes' softmax probabilities (or SVM margins, ``classifier =
        "svm"``), the head's class-specific box deltas, and `_network`'s map, factor and
        pooled blocks."""
        feats, probs, deltas, *rest = self._network(image, proposals)
        scores = probs[:, 1:] if self.svm_ is None else np.asarray(self.svm_.decision_function(feats), np.float32)
        return scores, deltas, *rest

    def _regress(self, proposals: np.ndarray, deltas: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The boxes ``float32 [K, 4]`` of proposals `rows` for classes `cols` (0-based object
        classes): moved by their class's deltas when `box_regression`, else as proposed."""
        boxes = proposals[rows]
        if self.config.box_regression and len(rows):
            boxes = np.asarray(self.coder_.decode(boxes, deltas[rows, cols]), np.float32)
        return boxes

    # -- the model file ---------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "weights_source": self.weights_source_,
            "trunk": {k: v.detach().cpu().clone() for k, v in self.trunk_.state_dict().items()},
            "head": {k: v.detach().cpu().clone() for k, v in self.head_.state_dict().items()},
            "svm": None if self.svm_ is None else self.svm_.state_dict(),
            "history": {k: [float(x) for x in v] for k, v in getattr(self, "history_", {}).items()},
        }

    def _from_state(self, state: dict, path) -> None:
        c = self.config
        if c.backbone.num_threads:  # process-wide: only when the config names a number
            set_threads(c.backbone.num_threads)
        # every trunk weight is in the file: build the architecture without fetching weights
        self.trunk_, self.channels_, _ = self._build_trunk(replace(c.backbone, weights="random"))
        self.weights_source_ = str(state["weights_source"])
        num_classes = len(self.classes_)
        self.head_ = self._new_head(num_classes)
        try:
            self.trunk_.load_state_dict(state["trunk"])
            self.head_.load_state_dict(state["head"])
        except RuntimeError as e:
            raise ValueError(
                f"the networks do not fit this config and its {num_classes} classes: {str(e).splitlines()[0]}"
            ) from None
        self.svm_ = None
        if c.classifier == "svm":
            if state.get("svm") is None:
                raise ValueError('classifier = "svm" but the file has no SVMs')
            self.svm_ = SVMHead.from_state_dict(state["svm"])
            if self.svm_.num_classes != num_classes:
                raise ValueError(f"the SVMs have {self.svm_.num_classes} classes, the class list {num_classes}")
            if self.svm_.weights_.shape[0] != c.head.fc[-1]:
                raise ValueError(
                    f"the SVMs take {self.svm_.weights_.shape[0]}-d features, the head gives {c.head.fc[-1]}"
                )
        self.history_ = {k: list(v) for k, v in (state.get("history") or {}).items()}
        self._prepare()
