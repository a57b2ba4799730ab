"""Learned proposals: the Region Proposal Network of a trained Faster R-CNN model file
(`rcnn.detectors.faster_rcnn.FasterRCNN.propose`), as a proposer like Selective Search.

``[proposals] method = "rpn", model = "faster.pt"`` (or ``rcnn propose DATASET --method rpn
--model faster.pt --out DIR``): each image's boxes are the RPN's after its NMS, best
objectness first, the first `max_boxes` kept. They are cached by `ProposalStore` under a key
that includes the model file's path and content hash (`model_hash`, filled in from the file
when empty and recorded in the store's ``params.json``), so another model gives another
folder and `rcnn recall` reads a store without the model file.

The proposer needs a trained detector, which sits to the right of proposals in the
pipeline: rather than import it (a cycle), `rcnn.detectors.faster_rcnn` registers how to check
and load its model files (`register`) when it is imported, as ``import rcnn.detectors`` does.
The store runs the proposer in its own process (`in_process`): one model, torch's threads, no
worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from rcnn.cache import file_hash
from rcnn.config import require, to_dict
from rcnn.errors import ModelError, RcnnError
from rcnn.proposals.base import Proposer, ProposerConfig

VERSION = 1  # bump when the boxes change for the same model and parameters: cache keys follow it
_MODELS: dict = {}  # "check" and "load", registered by rcnn.detectors.faster_rcnn


def register(check, load) -> None:
    """How to use Faster R-CNN model files: ``check(path)`` raises `ModelError` naming a file
    that is not one; ``load(path)`` returns the detector (with ``propose(image, max_boxes,
    nms_threshold)``)."""
    _MODELS.update(check=check, load=load)


def _models(name: str):
    if name not in _MODELS:
        raise RcnnError("RPN proposals need the Faster R-CNN detector: import rcnn.detectors first")
    return _MODELS[name]


@dataclass(frozen=True)
class RPNProposalsConfig(ProposerConfig):
    """`model`: a Faster R-CNN model file (``detector = "faster_rcnn"``); `model_hash`: its
    content hash (leave empty: read from the file; a mismatch with the file is an error);
    `max_boxes`: boxes kept per image after the RPN's NMS (the RPN keeps at least as many
    before it); `nms_threshold`: that NMS's IoU (0: the model's ``rpn.nms_threshold``; a
    higher one keeps more near-duplicates, which raises recall at high IoU). `method` is
    always ``rpn``."""

    method: Literal["rpn"] = field(default="rpn", repr=False, kw_only=True)
    model: str = ""
    model_hash: str = ""
    max_boxes: int = 300
    nms_threshold: float = 0.0

    def __post_init__(self):
        require(self, "method", self.method == "rpn", '"rpn"')
        require(self, "model", bool(self.model), 'the path of a Faster R-CNN model file (detector = "faster_rcnn")')
        require(self, "max_boxes", self.max_boxes >= 1, "an integer >= 1")
        require(self, "nms_threshold", 0 <= self.nms_threshold <= 1, "an IoU in [0, 1] (0: the model's)")


def check_model(path) -> str:
    """The content hash of `path` after checking that it is a Faster R-CNN model file;
    anything else raises `ModelError` naming the file."""
    _models("check")(path)
    return file_hash(path)


class RPNProposals(Proposer):
    """``RPNProposals(model="faster.pt")(image)`` -> the RPN's ranked boxes ``float32 [N, 4]``
    in the image's pixels (N <= `max_boxes`)."""

    method = "rpn"
    config_class = RPNProposalsConfig
    version = VERSION
    in_process = True  # `ProposalStore` runs it here: a torch model, not one copy per worker

    def __init__(self, config: RPNProposalsConfig | None = None, **params):
        super().__init__(config, **params)
        self._model = None
        if not self.config.model_hash:  # checked and hashed once, before any work
            self.config = replace(self.config, model_hash=check_model(self.config.model))

    def params(self) -> dict:
        return {"method": self.method, **to_dict(self.config), "version": self.version}

    def load(self):
        """The Faster R-CNN of `model` (loaded once), checked against `model_hash`."""
        if self._model is None:
            path = self.config.model
            found = check_model(path)
            if found != self.config.model_hash:
                raise ModelError(
                    f"{path}: the file changed (hash {found}, proposals keyed by {self.config.model_hash}); "
                    "propose again without model_hash"
                )
            self._model = _models("load")(path)
        return self._model

    def __call__(self, image) -> np.ndarray:
        return self.load().propose(image, self.config.max_boxes, self.config.nms_threshold or None)
