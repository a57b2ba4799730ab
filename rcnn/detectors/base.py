"""What every detector shares: the settings common to all, the model file, post-processing,
the training-data check, and the `Detector` surface (`fit`, `detect`, `detect_dataset`,
`save`, `load`).

A model file is one ``torch.save`` of tensors and plain values, read back with
``torch.load(path, weights_only=True)``: ``format``, ``version``, ``detector`` (which kind
wrote it), ``rcnn_version``, ``config`` (the full config as plain values), ``classes``,
the detector's own state and ``content_hash``: SHA-256 of everything else (`content_hash`),
checked when the file is read, so one changed byte of a weight is an error, not other
detections. (Files written before the hash are read without that check.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rcnn import __version__
from rcnn.boxes import batched_nms, box_area, clip_boxes
from rcnn.cache import ImageStore, NotReadable, array_hash, atomic_write, check_readable, image_hash, params_key
from rcnn.config import from_dict, require, to_dict
from rcnn.datasets.core import Dataset, Detections
from rcnn.datasets.images import read_image
from rcnn.detectors.trace import Trace
from rcnn.errors import ConfigError, DatasetError, DeviceError, ImageError, ModelError
from rcnn.evaluation.recall import proposal_recall
from rcnn.progress import progress
from rcnn.proposals import ProposalsConfig, ProposalStore, SelectiveSearchConfig, make_proposer, proposals_config
from rcnn.proposals.advice import scale_advice

__all__ = [
    "CommonConfig",
    "Detector",
    "best_per_class",
    "final_losses",
    "best_per_label",
    "check_trainable",
    "clean_candidates",
    "top_candidates",
    "postprocess",
    "read_model",
    "resolve_device",
    "set_thresholds",
    "suppress",
    "take",
    "timed",
    "training_key",
]

PART = ("boxes", "scores", "labels")  # the arrays of an image's entry in `Detector.detect_dataset`'s parts
log = logging.getLogger(__name__)
MODEL_FORMAT = "rcnn-model"
MODEL_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")
TEST_RULES = ("rcnn", "threshold")


@dataclass(frozen=True)
class CommonConfig:
    """Settings every detector has. `detector`: which one the config builds (``rcnn``,
    ``fast_rcnn``). `proposals`: the ``[proposals]`` table (``method`` and that proposer's
    settings, `rcnn.proposals.PROPOSERS`). `cache_dir` holds proposals, features and
    checkpoints; `workers`: processes for proposals (0: all cores); `device`: ``auto`` (CUDA
    when torch sees a GPU), ``cpu`` or ``cuda``.

    Test time. On one image (`Detector.detect`: drawing, ``rcnn detect`` of images) boxes
    scoring under the detector's score threshold are dropped, per-class NMS at
    `nms_threshold` (IoU) follows, then the best `max_detections` are kept. Over a dataset
    (`Detector.detect_dataset`, ``rcnn detect`` of a dataset, ``rcnn report``) `test_rule`
    decides: ``"rcnn"`` (the default) is R-CNN's ``rcnn_test.m``: no fixed threshold; each
    class's best `top_per_class` boxes of each image are candidates, and each class keeps
    its best ``per_class_per_image x images`` candidates over the whole set (a per-class
    threshold), then per-class NMS and `max_detections` per image; precision-recall curves
    run on to the recall the candidates reach. `candidate_nms`: each image's boxes go through
    per-class NMS before its best `top_per_class` are taken (R-CNN's rule takes them before
    NMS: with many proposals, near-duplicates of one object then fill the 100 and a second
    object of the class is left out; Fast and Faster R-CNN set it). ``"threshold"``: every image as `detect` does.

    `TEST_TIME` names the settings read only at test time (a fitted model takes new values
    of them without refitting); subclasses add theirs.
    """

    TEST_TIME: ClassVar[tuple[str, ...]] = (
        "nms_threshold",
        "score_threshold",
        "max_detections",
        "test_rule",
        "top_per_class",
        "per_class_per_image",
        "candidate_nms",
    )

    detector: str = "rcnn"
    proposals: ProposalsConfig = field(default_factory=SelectiveSearchConfig)
    nms_threshold: float = 0.3
    score_threshold: float | None = None
    max_detections: int = 100
    test_rule: str = "rcnn"
    top_per_class: int = 100
    per_class_per_image: int = 40
    candidate_nms: bool = False
    cache_dir: str = "cache"
    workers: int = 0
    device: str = "auto"

    def __post_init__(self):
        if isinstance(self.proposals, dict):  # a plain [proposals] table, as before typed configs
            object.__setattr__(self, "proposals", proposals_config(self.proposals, type(self).__name__, "proposals"))
        require(self, "nms_threshold", 0 < self.nms_threshold <= 1, "an IoU in (0, 1]")
        require(self, "max_detections", self.max_detections >= 1, "an integer >= 1")
        require(self, "test_rule", self.test_rule in TEST_RULES, f"one of {', '.join(TEST_RULES)}")
        require(self, "top_per_class", self.top_per_class >= 1, "an integer >= 1 (boxes per class per image)")
        require(
            self, "per_class_per_image", self.per_class_per_image >= 1, "an integer >= 1 (boxes per class per image)"
        )
        require(self, "workers", self.workers >= 0, "an integer >= 0 (0: all cores)")
        require(self, "cache_dir", bool(self.cache_dir), "a folder name")
        require(self, "device", self.device in DEVICES, f"one of {', '.join(DEVICES)}")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError('device = "cuda", but torch sees no GPU here; use --device cpu (or "auto")')
    return torch.device(device)


@contextlib.contextmanager
def timed(timings: dict | None, stage: str):
    """Add the block's seconds to ``timings[stage]`` (when `timings` is given)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def postprocess(boxes, scores, labels, image_size, nms_threshold: float, max_detections: int) -> Detections:
    """Final detections from class-specific candidates: boxes ``float32 [K, 4]``, scores
    ``[K]``, labels ``int64 [K]`` in ``1..C`` on an image of ``image_size = (height, width)``:
    boxes clipped to the image, those left without area dropped, per-class NMS at
    `nms_threshold`, the best `max_detections` kept (by score)."""
    return suppress(clean_candidates(boxes, scores, labels, image_size), nms_threshold, max_detections)


def clean_candidates(boxes, scores, labels, image_size) -> Detections:
    """Candidates (boxes ``[K, 4]``, scores ``[K]``, labels ``[K]``) with the boxes clipped
    to an image of ``image_size = (height, width)`` and those left without area dropped."""
    boxes = clip_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), image_size)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    ok = box_area(boxes) > 0
    return Detections(boxes[ok], scores[ok], labels[ok])


def suppress(d: Detections, nms_threshold: float, max_detections: int) -> Detections:
    """Per-class NMS of `d` at `nms_threshold` (IoU), then its best `max_detections` by score."""
    keep = batched_nms(d.boxes, d.scores, d.labels, nms_threshold)[:max_detections]
    return take(d, keep)


def take(d: Detections, index) -> Detections:
    """The detections of `d` at `index` (indices or a boolean mask), masks included when it has them."""
    index = np.asarray(index)
    masks = None
    if d.masks is not None:
        masks = [d.masks[i] for i in (np.flatnonzero(index) if index.dtype == bool else index)]
    return Detections(d.boxes[index], d.scores[index], d.labels[index], masks)


def best_per_class(scores: np.ndarray, min_score: float = -np.inf, top: int | None = None):
    """``(rows, cols)`` of the entries of ``scores [N, C]`` reaching `min_score`, and with
    `top` only each class's best `top` of them (by class, then decreasing score)."""
    scores = np.asarray(scores)
    rows, cols = np.nonzero(scores >= min_score)
    if top is not None:
        keep = best_per_label(scores[rows, cols], cols, top)
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def top_candidates(d: Detections, config) -> Detections:
    """An image's candidates for ``test_rule = "rcnn"``: `d` (class-specific boxes, clipped)
    reduced to each class's best ``config.top_per_class``, after per-class NMS at
    ``config.nms_threshold`` when ``config.candidate_nms``."""
    if config.candidate_nms:
        d = take(d, batched_nms(d.boxes, d.scores, d.labels, config.nms_threshold))
    return take(d, best_per_label(d.scores, d.labels, config.top_per_class))


def best_per_label(scores: np.ndarray, labels: np.ndarray, top: int) -> np.ndarray:
    """Indices of each label's best `top` entries of ``scores [K]`` (``labels [K]``), by
    label, then decreasing score (ties: the earlier entry first)."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores), np.asarray(labels)))
    ordered = np.asarray(labels)[order]
    rank = np.arange(len(order)) - np.searchsorted(ordered, ordered, side="left")
    return order[rank < top]


def set_thresholds(candidates: dict[str, Detections], num_classes: int, per_image: int) -> np.ndarray:
    """Each class's score threshold over a set (R-CNN's ``rcnn_test.m``): the score of its
    ``per_image x len(candidates)``-th best candidate over all images, or -inf when it has no
    more candidates than that; ``float64 [C]`` for labels ``1..C``."""
    keep = per_image * len(candidates)
    thresholds = np.full(num_classes, -np.inf)
    scores = [d.scores for d in candidates.values()] + [np.zeros(0, np.float32)]
    labels = [d.labels for d in candidates.values()] + [np.zeros(0, np.int64)]
    scores, labels = np.concatenate(scores).astype(np.float64), np.concatenate(labels)
    for c in range(num_classes):
        mine = scores[labels == c + 1]
        if len(mine) > keep:
            thresholds[c] = np.partition(mine, len(mine) - keep)[len(mine) - keep]
    return thresholds


def check_trainable(dataset: Dataset, where=None) -> None:
    """Refuse a dataset that cannot train a detector: no images, no objects, or a class
    without a single (non-difficult) training object."""
    if len(dataset) == 0:
        raise DatasetError(where, "cannot train on an empty dataset (no images)")
    labels = np.concatenate([s.labels[~s.difficult] for s in dataset] + [np.zeros(0, np.int64)])
    if len(dataset.classes) == 0 or len(labels) == 0:
        raise DatasetError(where, f"cannot train: its {len(dataset)} image(s) have no annotated objects")
    counts = np.bincount(labels, minlength=len(dataset.classes) + 1)[1:]
    empty = [name for name, n in zip(dataset.classes, counts) if n == 0]
    if empty:
        raise DatasetError(
            where,
            f"cannot train: no training object of class(es) {', '.join(map(repr, empty))}; "
            "add examples or leave the class out of the class list",
        )


def final_losses(history: dict, last: int = 20) -> dict[str, float]:
    """Each loss term's mean over the `last` iterations of a training `history` (``{term:
    [value per iteration]}``), the terms with no values left out."""
    return {k: float(np.mean(v[-last:])) for k, v in history.items() if v}


def training_key(params: dict, dataset: Dataset) -> str:
    """The key of a training checkpoint: what it depends on, `params` (the training settings
    as plain values), and every image's content and annotations (boxes, labels, difficult
    flags) with the class list, so an edited dataset never resumes a stale checkpoint.
    Proposals follow from the images and the proposal folder (name it in `params` or in the
    checkpoint's file name)."""
    samples = [(image_hash(s.image_path), array_hash(s.boxes, s.labels, s.difficult)) for s in dataset]
    return params_key({**params, "classes": list(dataset.classes), "samples": samples})


def read_model(path) -> dict:
    """The state stored in a model file, checked for format and version; every problem
    raises `ModelError` naming the file."""
    path = Path(path)
    try:
        check_readable(path)  # a FIFO or a device would block or never end
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a folder, not a model file") from None
    except NotReadable as e:
        raise ModelError(f"{path}: {'is a folder, not a model file' if e.errno == 21 else e}") from None
    except Exception as e:  # noqa: BLE001  torch raises many kinds for a bad file
        raise ModelError(f"{path}: not a readable rcnn model ({_load_error(e)})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not an rcnn model file")
    if state.get("version") != MODEL_VERSION:
        raise ModelError(
            f"{path}: model format version {state.get('version')} (rcnn {state.get('rcnn_version')}); "
            f"this rcnn {__version__} reads version {MODEL_VERSION}: retrain the model"
        )
    stored = state.pop("content_hash", None)
    if stored is not None and stored != content_hash(state):
        raise ModelError(f"{path}: damaged model file: its content does not match the hash stored in it")
    return state


def content_hash(state) -> str:
    """Hex SHA-256 of a model file's state: every tensor's dtype, shape and bytes and every
    plain value, walked in a fixed order (dict keys sorted)."""
    h = hashlib.sha256()

    def walk(obj) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for key in sorted(obj, key=repr):
                h.update(f"K{key!r}".encode())
                walk(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(f"{type(obj).__name__}{len(obj)}".encode())
            for item in obj:
                walk(item)
        else:
            h.update(f"V{type(obj).__name__}:{obj!r}".encode())

    walk(state)
    return h.hexdigest()


def _load_error(e: Exception) -> str:
    """A short reason for a file `torch.load(weights_only=True)` refused, without PyTorch's
    advice to load it with ``weights_only=False`` (never do that with a file you did not write)."""
    text = str(e)
    if "weights_only" in text or "Unpickl" in type(e).__name__:
        return "not a PyTorch file of tensors and plain values"
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else 'truncated or corrupt'}"


def check_classes(classes) -> list[str]:
    """A model file's class list: distinct names (raises ValueError otherwise)."""
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(f"class list {classes!r} is not a list of distinct names")
    return list(classes)


class Detector(ABC):
    """The surface every detector has. Subclasses set `kind` and `config_class`, and write
    `fit`, `trace` (`detect` is its last stage), `_state` (their part of the model file) and `_from_state`.

    ``config``: the detector's config; fitted: ``classes_`` (label ``i + 1`` is
    ``classes_[i]``) and ``fit_stats_`` (counts and seconds per stage).
    """

    kind = ""
    config_class = CommonConfig
    learns_proposals = False  # True: it proposes its own regions (an RPN), no proposer is run for it
    lowest_score = -np.inf  # a score threshold that keeps every box (`candidates`)
    dask: str | None = None  # a Dask scheduler address for the per-image stages (not saved; `rcnn ... --dask`)

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(self.config).__name__}"
            )

    @property
    def draw_threshold(self) -> float:
        """The score a detection needs to be drawn by default (0.5: a class probability)."""
        return 0.5

    def use_config(self, config) -> Detector:
        """Take `config`, which may differ from the current one only in test-time settings
        (``config.TEST_TIME``: thresholds, the test rule, ...), and rebuild what detection
        derives from them (`_prepare_detection`); returns self. Anything else raises
        `ConfigError`: it would need another fit."""
        old, new = to_dict(self.config), to_dict(config)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in config.TEST_TIME)
        changed = [k for k in changed if k not in ("cache_dir", "workers", "device")]
        if type(config) is not type(self.config) or changed:
            raise ConfigError(f"{type(self).__name__}.use_config: {', '.join(changed) or 'the kind'} differ; fit again")
        self.config = config
        if hasattr(self, "classes_"):
            self._prepare_detection()
        return self

    def _prepare_detection(self) -> None:  # noqa: B027  an optional hook, not abstract
        """Rebuild what detection derives from the config (after `use_config`); nothing here."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise ModelError(f"this detector is not fitted: call fit() or {type(self).__name__}.load()")

    def proposal_store(self) -> ProposalStore:
        """The cache of this config's proposals under ``cache_dir/proposals``."""
        return ProposalStore(Path(self.config.cache_dir) / "proposals", make_proposer(self.config.proposals))

    def training_proposals(self, dataset: Dataset, stats: dict) -> ProposalStore:
        """The proposals of the training set, computed (or found) in the cache. Says first
        what the objects' sizes suggest for the proposer's settings (`scale_advice`), then
        the proposals' recall of the training objects at the configured number of boxes;
        both go into `stats` (``proposal_advice``, ``proposal_recall``, ``proposals_seconds``)."""
        start = time.perf_counter()
        advice = scale_advice(dataset, self.config.proposals)
        for line in advice:
            log.info(line)
        store = self.proposal_store()
        store.compute(dataset, workers=self.config.workers or None, dask=self.dask)
        k = int(getattr(self.config.proposals, "max_boxes", 0)) or 100000
        overall = proposal_recall(dataset, store.load, ks=[k])["overall"][0]
        recall = {name: overall[name] for name in ("boxes_per_image", "recall@0.5", "recall@0.7", "ar")}
        if recall["recall@0.5"] is not None:
            log.info(
                f"proposals cover the training objects: recall@0.5 {recall['recall@0.5']:.3f}, "
                f"recall@0.7 {recall['recall@0.7']:.3f} with {recall['boxes_per_image']:.0f} boxes per image"
            )
        stats.update(proposal_advice=advice, proposal_recall=recall, proposals_seconds=time.perf_counter() - start)
        return store

    def detect_dataset(
        self,
        dataset: Dataset,
        use_cache: bool = True,
        timings: dict | None = None,
        parts: ImageStore | None = None,
        skip_bad: bool = False,
    ) -> dict[str, Detections]:
        """Detections for every sample, ``{sample id: Detections}``, by the config's
        `test_rule` (`CommonConfig`); with `use_cache`, proposals come from (and go to) the
        cache under `cache_dir` (unless the detector `learns_proposals`).

        `parts`: a store of each image's result (`detect`'s, or `candidates` under the set
        rule; arrays `PART`): an image found there is not run again, and each new one is
        written as soon as it is found, so an interrupted run resumes (``rcnn detect``).
        `skip_bad`: an unreadable image (`ImageError`) is left out with a notice instead of
        raising."""
        self._check_fitted()
        store = None
        if use_cache and not self.learns_proposals:
            store = self.proposal_store()
            store.compute(dataset, workers=self.config.workers or None, dask=self.dask)
        run = self.candidates if self.set_rule else self.detect
        out = {}
        for sample in progress(dataset.samples, desc="detect"):
            try:
                entry = None if parts is None else parts.read(sample.image_path, require=PART)
                if entry is not None:
                    out[sample.id] = part_detections(entry)
                    continue
                proposals = None if store is None else store.load(sample)
                d = run(read_image(sample.image_path), proposals=proposals, timings=timings)
            except ImageError as e:
                if not skip_bad:
                    raise
                log.warning(f"skipped {e}")
                continue
            if parts is not None:
                parts.write(sample.image_path, **part_arrays(d))
            out[sample.id] = d
        return self.select_over_set(out, timings) if self.set_rule else out

    @property
    def set_rule(self) -> bool:
        """Whether `detect_dataset` chooses over the whole set (``test_rule = "rcnn"``):
        `candidates` per image, then `select_over_set`."""
        return self.config.test_rule == "rcnn"

    def candidates(self, image, proposals=None, timings: dict | None = None) -> Detections:
        """Each class's best `top_per_class` boxes on one image (a path or ``uint8 [H, W, 3]``
        RGB) with no score threshold and no NMS: what ``test_rule = "rcnn"`` chooses from over
        a set (class-specific boxes, clipped, none without area).

        This default runs `detect` with no score threshold, no NMS and no cap, which fits a
        detector whose `detect` follows its config's ``score_threshold`` (through
        ``min_score``), `nms_threshold` and `max_detections`; a detector that can score fewer
        boxes overrides it."""
        config = self.config
        self.config = replace(config, score_threshold=self.lowest_score, nms_threshold=1.0, max_detections=2**31 - 1)
        try:
            d = self.detect(image, proposals=proposals, timings=timings)
        finally:
            self.config = config
        return top_candidates(d, config)

    def select_over_set(self, candidates: dict[str, Detections], timings: dict | None = None) -> dict[str, Detections]:
        """``test_rule = "rcnn"`` over a set of images' `candidates` (``{sample id:
        Detections}``): each class's threshold from all of them (`set_thresholds`), then in
        every image the candidates reaching it, per-class NMS and the best `max_detections`.
        The same candidates give the same detections in any order."""
        c = self.config
        with timed(timings, "nms"):
            thresholds = set_thresholds(candidates, len(self.classes_), c.per_class_per_image)
            out = {}
            for key, d in candidates.items():
                ok = d.scores >= thresholds[d.labels - 1]
                out[key] = suppress(take(d, ok), c.nms_threshold, c.max_detections)
        return out

    def state_dict(self) -> dict:
        """The fitted model as tensors and plain values (see the module docstring)."""
        self._check_fitted()
        state = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "detector": self.kind,
            "rcnn_version": __version__,
            "config": to_dict(self.config),
            "classes": list(self.classes_),
            **self._state(),
        }
        return {**state, "content_hash": content_hash(state)}

    def save(self, path) -> Path:
        """Write the model to `path` atomically (a temporary file, then a rename)."""
        path = Path(path)
        with atomic_write(path) as f:
            torch.save(self.state_dict(), f)
        return path

    @classmethod
    def load(cls, path, device: str | None = None) -> Detector:
        """A fitted detector from a file written by `save`, to run on `device` (None: the
        config's); a corrupt file, one from another format version or of another detector
        kind raises `ModelError` naming the file."""
        state = read_model(path)
        kind = state.get("detector", "rcnn")  # files from before Fast R-CNN are R-CNN's
        if kind != cls.kind:
            raise ModelError(f"{path}: a {kind} model, not {cls.kind}; load it with rcnn.detectors.load_model")
        return cls.from_state(state, path, device)

    @classmethod
    def from_state(cls, state: dict, path, device: str | None = None) -> Detector:
        """A fitted detector from a model file's checked `state` (see `read_model`)."""
        try:
            config = from_dict(cls.config_class, state["config"], where=f"{path}: config", as_saved=True)
            if device is not None:
                config = replace(config, device=device)
            model = cls(config)
            model.classes_ = check_classes(state["classes"])
            model._from_state(state, path)
        except DeviceError:
            raise  # the file is fine; this machine lacks the device
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, ConfigError) as e:
            text = str(e).splitlines()[0][:200] if str(e) else ""  # load_state_dict's are long
            raise ModelError(f"{path}: damaged model file ({type(e).__name__}: {text})") from None
        return model

    @abstractmethod
    def fit(self, dataset: Dataset) -> Detector:
        """Train every stage on `dataset`; returns self (fitted: ``classes_``, ``fit_stats_``)."""

    def detect(self, image, proposals=None, timings: dict | None = None) -> Detections:
        """Detections on one image (a path or ``uint8 [H, W, 3]`` RGB array): the last stage
        of `trace`. `proposals` ``float32 [N, 4]`` replace the detector's own (where it has
        any); `timings`, when given, gets the seconds of each stage added."""
        return self.trace(image, proposals=proposals, timings=timings).detections

    @abstractmethod
    def trace(self, image, proposals=None, timings: dict | None = None) -> Trace:
        """Every stage of a detection on one image (a path or ``uint8 [H, W, 3]`` RGB array)
        as plain data (`rcnn.detectors.trace.Trace`); arguments as `detect`."""

    @abstractmethod
    def _state(self) -> dict:
        """This detector's part of the model file (tensors and plain values)."""

    @abstractmethod
    def _from_state(self, state: dict, path) -> None:
        """Rebuild the fitted parts from a model file's `state` (`path` names it in errors)."""


def part_arrays(d: Detections) -> dict:
    """`Detections` as the arrays of a stored entry (`PART`, and with masks their RLEs:
    ``mask_sizes int64 [K, 2]``, ``mask_lengths int64 [K]``, ``mask_counts uint8``, the
    compressed counts strings one after another)."""
    arrays = {"boxes": d.boxes, "scores": d.scores, "labels": d.labels}
    if d.masks is not None:
        counts = [bytes(m["counts"]) for m in d.masks]
        arrays["mask_sizes"] = np.array([m["size"] for m in d.masks], np.int64).reshape(-1, 2)
        arrays["mask_lengths"] = np.array([len(c) for c in counts], np.int64)
        arrays["mask_counts"] = np.frombuffer(b"".join(counts), np.uint8)
    return arrays


def part_detections(entry: dict) -> Detections:
    """The `Detections` of a stored entry (`part_arrays`)."""
    masks = None
    if "mask_counts" in entry:
        raw, ends = entry["mask_counts"].tobytes(), np.cumsum(entry["mask_lengths"])
        masks = [
            {"size": [int(v) for v in size], "counts": raw[end - n : end]}
            for size, n, end in zip(entry["mask_sizes"], entry["mask_lengths"], ends)
        ]
    return Detections(entry["boxes"], entry["scores"], entry["labels"], masks)


def net_state(detector) -> dict:
    """The model-file state of a detector with one network (`net_`, `weights_source_`,
    `history_`): Faster R-CNN's and the dense detectors'."""
    return {
        "weights_source": detector.weights_source_,
        "net": {k: v.detach().cpu().clone() for k, v in detector.net_.state_dict().items()},
        "history": {k: [float(x) for x in v] for k, v in getattr(detector, "history_", {}).items()},
    }


def restore_net(detector, net, state: dict) -> None:
    """`net` (the architecture, built for the detector's classes) with the weights of `state`
    (`net_state`'s) as the detector's `net_`, with its `weights_source_` and `history_`; a
    network that does not fit raises `ValueError` (the model file's loader names the file)."""
    try:
        net.load_state_dict(state["net"])
    except RuntimeError as e:
        raise ValueError(
            f"the network does not fit this config and its {len(detector.classes_)} classes: {str(e).splitlines()[0]}"
        ) from None
    detector.net_ = net
    detector.weights_source_ = str(state["weights_source"])
    detector.history_ = {k: list(v) for k, v in (state.get("history") or {}).items()}
