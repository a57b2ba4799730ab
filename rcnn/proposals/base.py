"""What every proposer shares: the base of their config dataclasses and of the proposers.

A proposer's config is a frozen dataclass deriving from `ProposerConfig`, with a field
``method: Literal["<name>"]`` (the tag `rcnn.config` uses to pick the right class for a
``[proposals]`` table) and its typed parameters. A proposer derives from `Proposer`, names
its `method`, `config_class` and `version` and implements ``__call__(image)``; the base gives
it `params()`, `key()` and the repr.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from rcnn.cache import params_key
from rcnn.config import from_dict, to_dict
from rcnn.errors import ConfigError


class ProposerConfig(Mapping):
    """Base of the proposers' frozen config dataclasses (not a dataclass itself).

    It also reads like the ``[proposals]`` table it was filled from (a read-only mapping of
    field names, ``method`` included, to values), so code written when that table was a
    plain dict keeps working: ``config.proposals["max_boxes"]``, ``.get(...)``,
    ``dict(config.proposals)``, ``make_proposer(**config.proposals)``.
    """

    __slots__ = ()

    def _names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def __getitem__(self, key: str):
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


class Proposer(ABC):
    """Base of the proposers: ``proposer(image)`` -> ranked ``float32 [N, 4]`` xyxy boxes (best
    first) in the image's own pixels, for a ``uint8 [H, W, 3]`` RGB image.

    ``Proposer(config)`` or ``Proposer(**params)`` (the config's fields, checked like a TOML
    table). `method`: the registry's name; `config_class`: its config dataclass; `version`:
    bumped when the boxes change for the same parameters (cache keys follow it).
    """

    method: ClassVar[str]
    config_class: ClassVar[type]
    version: ClassVar[int]
    # the parameter that caps the number of boxes, when the cap is applied last (the first k
    # of a larger cap's boxes are then exactly this proposer's with cap k), else None
    prefix_param: ClassVar[str | None] = None

    def __init__(self, config: ProposerConfig | None = None, **params):
        if config is None:
            config = from_dict(self.config_class, params, where=self.method)
        elif params:
            raise TypeError(f"{type(self).__name__}: give a config or parameters, not both")
        elif not isinstance(config, self.config_class):
            raise ConfigError(f"{self.method}: expected a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def params(self) -> dict:
        """Everything that determines the boxes (JSON-able; the material of `key`)."""
        return {"method": self.method, **to_dict(self.config), "version": self.version}

    def key(self) -> str:
        """A short hash of `params()`: the proposal cache folder is ``<method>-<key>``."""
        return params_key(self.params())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    @abstractmethod
    def __call__(self, image) -> np.ndarray:
        """Ranked boxes ``float32 [N, 4]`` (best first) of a ``uint8 [H, W, 3]`` RGB image."""
