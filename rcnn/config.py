"""Configuration: small frozen dataclasses per stage, filled from TOML and overridable.

An experiment is a TOML file whose tables name stages (``[proposals]``, ``[features]``, ...).
`from_dict` fills one dataclass from one table and rejects unknown keys with `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

from rcnn.errors import ConfigError


def load_toml(path) -> dict:
    """The parsed TOML file at `path`; a missing or malformed file raises `ConfigError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None


def from_dict(cls, values: dict | None, where: str = ""):
    """An instance of dataclass `cls` from `values`; unknown keys raise `ConfigError`.

    Nested dataclass fields are filled from nested tables; lists become tuples so the
    result stays hashable.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{name}" if where else name)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(config) -> dict:
    """A plain dict (tuples as lists) of a config dataclass, for saving and cache keys."""

    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def override(config, **changes):
    """A copy of a frozen config with some fields replaced (validated like `from_dict`)."""
    merged = {**to_dict(config), **changes}
    return from_dict(type(config), merged)
