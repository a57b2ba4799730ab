"""Region proposals: one interface for every proposer.

A proposer is called on an image (``uint8 [H, W, 3]`` RGB) and returns ranked boxes,
``float32 [N, 4]`` xyxy in the image's own pixels, best first. Each derives from `Proposer`
and has a frozen, typed config dataclass (`.config`, deriving from `ProposerConfig`),
`params()` (JSON-able, for caches) and `key()` (a short hash of them).

`PROPOSERS` is the registry: method name -> ``(config class, proposer class)``.
`ProposalsConfig` is the type of a ``[proposals]`` table (`DetectorConfig.proposals`): the
union of the registered configs, told apart by their ``method`` field (`rcnn.config`'s
tagged unions; no ``method``: ``selective_search``). `ProposalStore` runs a proposer over a
dataset in parallel and caches the boxes on disk.
"""

from __future__ import annotations

import typing

from rcnn.config import from_dict
from rcnn.proposals.base import Proposer, ProposerConfig
from rcnn.proposals.selective_search import SelectiveSearch, SelectiveSearchConfig
from rcnn.proposals.sliding_window import SlidingWindowConfig, SlidingWindows
from rcnn.proposals.store import ProposalStore

# the registry; the first is the default method. A new proposer: a `Proposer` subclass with
# its `ProposerConfig` dataclass (``method: Literal["name"]``), added here.
PROPOSERS: dict[str, tuple[type[ProposerConfig], type[Proposer]]] = {
    cls.method: (cls.config_class, cls) for cls in (SelectiveSearch, SlidingWindows)
}
ProposalsConfig = typing.Union[tuple(config for config, _ in PROPOSERS.values())]  # noqa: UP007


def proposals_config(values: dict | ProposerConfig | None = None, where: str = "proposals", table: str = ""):
    """The config of the proposer that ``values["method"]`` names (default ``selective_search``)
    from a ``[proposals]`` table, checked like every config (`rcnn.config.from_dict`): unknown
    methods or keys and bad values raise `ConfigError` naming `where` and `table`."""
    if isinstance(values, ProposerConfig):
        return values
    return from_dict(ProposalsConfig, values, where=where, table=table)


def make_proposer(method: str | ProposerConfig = "selective_search", **params) -> Proposer:
    """A proposer by name (``selective_search`` or ``sliding_window``) with config `params`
    (lists are accepted for tuples, as read from TOML or JSON), or from a config; unknown
    methods or parameters and bad values raise `ConfigError`."""
    if isinstance(method, ProposerConfig):
        if params:
            raise TypeError("make_proposer: give a config or parameters, not both")
        config = method
    else:
        params.pop("opencv", None)  # library versions: recorded in params() for cache keys, not settings
        params.pop("version", None)
        config = proposals_config({**params, "method": method}, where=str(method))
    return PROPOSERS[config.method][1](config)


def propose(image, method: str = "selective_search", **params):
    """Ranked proposals ``float32 [N, 4]`` for one in-memory ``uint8 [H, W, 3]`` RGB image."""
    return make_proposer(method, **params)(image)


__all__ = [
    "PROPOSERS",
    "ProposalStore",
    "ProposalsConfig",
    "Proposer",
    "ProposerConfig",
    "SelectiveSearch",
    "SelectiveSearchConfig",
    "SlidingWindowConfig",
    "SlidingWindows",
    "make_proposer",
    "proposals_config",
    "propose",
]
