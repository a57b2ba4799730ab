"""Region proposals: one interface for every proposer.

A proposer is called on an image (``uint8 [H, W, 3]`` RGB) and returns ranked boxes,
``float32 [N, 4]`` xyxy in the image's own pixels, best first. Each has a frozen config
dataclass (`.config`), `params()` (JSON-able, for caches) and `key()` (a short hash of them).
`ProposalStore` runs a proposer over a dataset in parallel and caches the boxes on disk.
"""

from __future__ import annotations

from rcnn.config import from_dict
from rcnn.errors import ConfigError
from rcnn.proposals.selective_search import SelectiveSearch, SelectiveSearchConfig
from rcnn.proposals.sliding_window import SlidingWindowConfig, SlidingWindows
from rcnn.proposals.store import ProposalStore

PROPOSERS = {"selective_search": (SelectiveSearch, SelectiveSearchConfig), "sliding_window": (SlidingWindows, SlidingWindowConfig)}


def make_proposer(method: str = "selective_search", **params):
    """A proposer by name (``selective_search`` or ``sliding_window``) with config `params`
    (lists are accepted for tuples, as read from TOML or JSON); unknown ones raise `ConfigError`."""
    params.pop("opencv", None)  # library versions: recorded in params() for cache keys, not settings
    params.pop("version", None)
    if method not in PROPOSERS:
        raise ConfigError(f"unknown proposal method {method!r}; known: {', '.join(PROPOSERS)}")
    cls, config_cls = PROPOSERS[method]
    return cls(from_dict(config_cls, params, where=method))


def propose(image, method: str = "selective_search", **params):
    """Ranked proposals ``float32 [N, 4]`` for one in-memory ``uint8 [H, W, 3]`` RGB image."""
    return make_proposer(method, **params)(image)


__all__ = [
    "ProposalStore",
    "SelectiveSearch",
    "SelectiveSearchConfig",
    "SlidingWindowConfig",
    "SlidingWindows",
    "make_proposer",
    "propose",
]
