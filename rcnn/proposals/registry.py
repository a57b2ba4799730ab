"""The proposer registry: method name -> ``(config class, proposer class)``, and the
functions that build a proposer from a name or a config. (Apart from the package's
``__init__`` so that `rcnn.proposals.store` can build proposers without importing the package
that imports it.)"""

from __future__ import annotations

import typing

from rcnn.config import from_dict
from rcnn.proposals.base import Proposer, ProposerConfig
from rcnn.proposals.rpn import RPNProposals
from rcnn.proposals.selective_search import SelectiveSearch
from rcnn.proposals.sliding_window import SlidingWindows

__all__ = ["PROPOSERS", "ProposalsConfig", "make_proposer", "proposals_config", "propose"]

# the registry; the first is the default method. A new proposer: a `Proposer` subclass with
# its `ProposerConfig` dataclass (``method: Literal["name"]``), added here.
PROPOSERS: dict[str, tuple[type[ProposerConfig], type[Proposer]]] = {
    cls.method: (cls.config_class, cls) for cls in (SelectiveSearch, SlidingWindows, RPNProposals)
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
    """A proposer by name (``selective_search``, ``sliding_window`` or ``rpn``) with config `params`
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
