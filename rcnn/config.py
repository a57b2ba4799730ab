"""Configuration: small frozen dataclasses per stage, filled from TOML and overridable.

An experiment is a TOML file whose tables name stages (``[proposals]``, ``[features]``, ...).
`from_dict` fills one dataclass from one table, checking every value against its field's
type annotation before anything is built, and `merge` lays overrides (``--set``, an
experiment's arms) over a table by the one rule every caller shares. Errors are
`ConfigError`s of one line naming the source, the key, the value and what was expected::

    experiments/x.toml: features.crop_size = 64.7: expected an integer

Types understood (`from_dict`, from the annotations via `typing.get_type_hints`):
``int`` (not ``bool``), ``float`` (an int or a float, finite; not ``bool``; ints are kept as
ints so that cache keys of existing settings do not change), ``bool``, ``str``, ``dict``,
``X | None``, unions, ``Literal[...]``, ``tuple`` (bare: any list, nested lists become
tuples), ``tuple[X, ...]``, ``tuple[X, Y]``, nested dataclasses (a table), and *tagged
unions*: a union of dataclasses each with a ``Literal`` field of the same name (the tag,
e.g. ``method``), filled as the member the table's tag names (no tag: the first member).
Ranges are the dataclasses' own business (`__post_init__`, raising `FieldError` through
`require` so that the message can name the key), except the upper bounds in `UPPER`, which
`from_dict` applies to a field of that name in every table: a setting past them would
exhaust memory inside an allocator, or never finish, long after the work began.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import tomllib
import types
import typing
from pathlib import Path

from rcnn.errors import ConfigError

__all__ = ["UPPER", "FieldError", "from_dict", "load_toml", "merge", "require", "to_dict"]

_SIDE = 8192  # pixels: an image side (rcnn.datasets.images.MAX_PIXELS is about 9459 squared)
_COUNT = 100_000  # boxes, RoIs, detections per image
# The largest value of a numeric field of this name, in every table (each number of a list).
UPPER = {
    **dict.fromkeys(["scale", "max_size", "longest_side", "input_size", "scales", "sizes"], _SIDE),
    "crop_size": 1024,
    "padding": 512,
    "fc": 16384,
    "fpn_channels": 4096,
    "svd_rank": 16384,
    **dict.fromkeys(["output_size", "sampling_ratio", "pool"], 64),
    **dict.fromkeys(["num_threads", "workers", "images_per_batch"], 1024),
    "batch_size": 65536,
    **dict.fromkeys(["iterations", "warmup", "checkpoint_every", "lr_step", "max_iter"], 10_000_000),
    "epochs": 100_000,
    **dict.fromkeys(
        [
            "max_boxes",
            "test_proposals",
            "train_proposals",
            "rois_per_image",
            "max_detections",
            "top_per_class",
            "per_class_per_image",
            "pre_nms_top_n_train",
            "pre_nms_top_n_test",
            "post_nms_top_n_train",
            "post_nms_top_n_test",
        ],
        _COUNT,
    ),
}


class FieldError(ConfigError, ValueError):
    """A config field's value is out of range: `name` (the field), `value`, `expected`.

    Raised by the dataclasses' `__post_init__` (through `require`); `from_dict` re-raises
    it as a `ConfigError` naming the file and the table. A `ValueError` too, as the range
    checks raised before."""

    def __init__(self, name: str, value, expected: str):
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"{name} = {show(value)}: expected {expected}")


def require(config, name: str, ok: bool, expected: str) -> None:
    """Raise `FieldError` for field `name` of `config` (its value and `expected`) unless `ok`."""
    if not ok:
        raise FieldError(name, getattr(config, name), expected)


def show(value) -> str:
    """A value as TOML would spell it (near enough: JSON), cut to one short line."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_toml(path) -> dict:
    """The parsed TOML file at `path`; a missing or malformed file raises `ConfigError`."""
    from rcnn.cache import read_text

    path = Path(path)
    try:
        return tomllib.loads(read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    except OSError as e:  # a folder, a FIFO (which would block), no permission
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None


def from_dict(cls, values: dict | None, where: str = "", table: str = "", *, as_saved: bool = False):
    """An instance of dataclass `cls` (or of a member of a tagged union of dataclasses) from
    `values`, every value checked against its field's annotation first.

    `where` names the source in messages (a file; default the class name) and `table` the
    dotted path of `values` within it (``features``). Unknown keys, values of the wrong type
    and values out of range raise `ConfigError`. Nested dataclass fields are filled from
    nested tables, each laid over the field's default (a table changes only the keys it
    names); lists become tuples so the result stays hashable. `as_saved`: `values` is a
    config a model file stored (in full, by `to_dict`; older files may lack keys added
    since), so a table's missing keys take its own class's defaults, as when it was written.
    """
    where = where or getattr(cls, "__name__", "config")
    if _tagged(cls) is not None:
        return _convert({} if values is None else values, cls, where, table)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {table or 'config'} = {show(values)}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: {table + ': ' if table else ''}unknown key(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(fields)}"
        )
    hints = _hints(cls)
    if not as_saved:
        values = {name: _over_default(fields[name], value, hints.get(name)) for name, value in values.items()}
    kwargs = {name: _convert(value, hints.get(name), where, _join(table, name)) for name, value in values.items()}
    for name, value in kwargs.items():
        _check_upper(name, value, where, table)
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise ConfigError(f"{where}: {_join(table, e.name)} = {show(e.value)}: expected {e.expected}") from None
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {table + ': ' if table else ''}{e}") from None


def _check_upper(name: str, value, where: str, table: str) -> None:
    """`ConfigError` when field `name`'s number (or a number of its list) is over `UPPER`."""
    limit = UPPER.get(name)
    numbers = value if isinstance(value, tuple) else (value,)
    if limit is not None and any(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit for v in numbers
    ):
        raise ConfigError(
            f"{where}: {_join(table, name)} = {show(value)}: expected at most {limit} (rcnn.config.UPPER)"
        )


def _over_default(f: dataclasses.Field, value, hint):
    """A table given for a field whose default is a config instance (``DetectorConfig``'s
    ``features``, ``finetune``, ...) laid over that default's values by `merge`'s rule, so a
    table changes only the keys it names: ``[finetune] lr = 0.01`` keeps the detector's own
    ``iterations``. Anything else is returned as it is."""
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default) or isinstance(default, type):
        return value
    return _merge(to_dict(default), value, hint)


def merge(values: dict | None, *changes: dict | None, cls=None) -> dict:
    """A new dict: `values` with each of `changes` laid over it in turn (inputs untouched).

    Tables (dicts on both sides) merge key by key; anything else replaces. The one rule
    for tagged tables (`cls`'s fields whose type is a tagged union, such as
    ``[proposals]``, told apart by ``method``): a change whose tag differs from the tag of
    the table it lands on (a table without the tag has the union's first member's, e.g.
    ``selective_search``) *replaces* the table. Every setting of the old method is
    dropped, shared names such as ``max_boxes`` included, so the new method starts from
    its own defaults plus the change's settings; a change with the same tag, or none,
    merges key by key. Without `cls` no table is tagged.
    """
    out = copy.deepcopy(dict(values or {}))
    for change in changes:
        if change is not None:
            out = _merge(out, change, cls)
    return out


def _merge(base, change, hint):
    tagged = _tagged(hint)
    if tagged is not None and isinstance(base, dict) and isinstance(change, dict):
        tag, variants = tagged
        old = base.get(tag, next(iter(variants)))
        if change.get(tag, old) != old:
            return copy.deepcopy(change)
        hint = variants.get(old)
    if not (isinstance(base, dict) and isinstance(change, dict)):
        return copy.deepcopy(change)
    hints = _hints(hint) if dataclasses.is_dataclass(hint) else {}
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = _merge(out[key], value, hints.get(key)) if isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def to_dict(config) -> dict:
    """A plain dict (tuples as lists) of a config dataclass, for saving and cache keys."""

    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


# -- type checking ------------------------------------------------------------------------------

_NOUNS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings", dict: "tables"}


def _join(table: str, name) -> str:
    return f"{table}.{name}" if table else str(name)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


@functools.cache
def _tagged(hint) -> tuple[str, dict] | None:
    """``(tag, {tag value: dataclass})`` when `hint` is a union of dataclasses that each have
    a ``Literal`` field named `tag` with one value (members in the union's order), else None."""
    if not _is_union(hint):
        return None
    members = typing.get_args(hint)
    if not all(isinstance(m, type) and dataclasses.is_dataclass(m) for m in members):
        return None
    tags = None
    for m in members:
        own = {
            name: typing.get_args(h)[0]
            for name, h in _hints(m).items()
            if typing.get_origin(h) is typing.Literal and len(typing.get_args(h)) == 1
        }
        tags = own if tags is None else {k: v for k, v in tags.items() if k in own}
    for tag in tags or {}:
        variants = {}
        for m in members:
            variants[typing.get_args(_hints(m)[tag])[0]] = m
        if len(variants) == len(members):
            return tag, variants
    return None


def _describe(hint) -> str:
    """What a value of type `hint` is, in words (``an integer``, ``a list of strings``)."""
    if hint in _NOUNS:
        return _NOUNS[hint]
    if hint is type(None):
        return "nothing"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return show(args[0]) if len(args) == 1 else "one of " + ", ".join(show(a) for a in args)
    if _is_union(hint):
        return " or ".join(_describe(a) for a in args if a is not type(None)) or "nothing"
    if hint is tuple or origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
            return f"a list of {_PLURALS[item]}" if item in _PLURALS else f"a list, each item {_describe(item)}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})" if args else "a list"
    if dataclasses.is_dataclass(hint) or origin is dict:
        return "a table"
    return getattr(hint, "__name__", str(hint))


def _convert(value, hint, where: str, path: str):
    """`value` checked against `hint` (lists become tuples, tables dataclasses), or `ConfigError`."""

    def fail(expected: str | None = None):
        raise ConfigError(f"{where}: {path} = {show(value)}: expected {expected or _describe(hint)}")

    if hint is None or hint is typing.Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            fail()
        return value if math.isfinite(value) else fail("a finite number")
    if hint is str:
        return value if isinstance(value, str) else fail()
    if hint is type(None):
        return value if value is None else fail()
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        fail()
    tagged = _tagged(hint)
    if tagged is not None:
        tag, variants = tagged
        if isinstance(value, tuple(variants.values())):
            return value
        if not isinstance(value, dict):
            fail("a table")
        name = value.get(tag, next(iter(variants)))
        if not isinstance(name, str) or name not in variants:
            raise ConfigError(
                f"{where}: {_join(path, tag)} = {show(name)}: expected one of {', '.join(show(v) for v in variants)}"
            )
        return from_dict(variants[name], value, where, path)
    if _is_union(hint):
        if value is None and type(None) in args:
            return None
        for member in args:
            if member is type(None):
                continue
            try:
                return _convert(value, member, where, path)
            except ConfigError:
                continue
        fail()
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        if not args:
            return _tuples(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            fail()
        return tuple(_convert(v, a, where, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return from_dict(hint, value, where, path) if isinstance(value, dict) else fail()
    if hint is dict or origin is dict:
        return value if isinstance(value, dict) else fail()
    if isinstance(hint, type):
        return value if isinstance(value, hint) else fail()
    return value


def _tuples(value):
    return tuple(_tuples(v) if isinstance(v, (list, tuple)) else v for v in value)
