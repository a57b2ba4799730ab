"""Region proposals: one interface for every proposer.

A proposer is called on an image (``uint8 [H, W, 3]`` RGB) and returns ranked boxes,
``float32 [N, 4]`` xyxy in the image's own pixels, best first. Each derives from `Proposer`
and has a frozen, typed config dataclass (`.config`, deriving from `ProposerConfig`),
`params()` (JSON-able, for caches) and `key()` (a short hash of them).

`PROPOSERS` is the registry (`rcnn.proposals.registry`): method name -> ``(config class, proposer class)``.
Methods: ``selective_search``, ``sliding_window`` and ``rpn`` (a trained Faster R-CNN's
Region Proposal Network, `rcnn.proposals.rpn`).
`ProposalsConfig` is the type of a ``[proposals]`` table (`DetectorConfig.proposals`): the
union of the registered configs, told apart by their ``method`` field (`rcnn.config`'s
tagged unions; no ``method``: ``selective_search``). `ProposalStore` runs a proposer over a
dataset in parallel and caches the boxes on disk.
"""

from __future__ import annotations

from rcnn.proposals.base import Proposer, ProposerConfig
from rcnn.proposals.registry import PROPOSERS, ProposalsConfig, make_proposer, proposals_config, propose
from rcnn.proposals.rpn import RPNProposals, RPNProposalsConfig
from rcnn.proposals.selective_search import SelectiveSearch, SelectiveSearchConfig
from rcnn.proposals.sliding_window import SlidingWindowConfig, SlidingWindows
from rcnn.proposals.store import ProposalStore

__all__ = [
    "PROPOSERS",
    "ProposalStore",
    "ProposalsConfig",
    "Proposer",
    "RPNProposals",
    "RPNProposalsConfig",
    "ProposerConfig",
    "SelectiveSearch",
    "SelectiveSearchConfig",
    "SlidingWindowConfig",
    "SlidingWindows",
    "make_proposer",
    "proposals_config",
    "propose",
]
