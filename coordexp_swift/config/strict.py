"""Generic strict loader: mapping -> frozen dataclass, with dotted-path errors.

Contract
--------
* ``build_strict(cls, data, path, authored)`` builds ``cls`` (a dataclass) from ``data`` (a mapping).
  Every field's dotted path is ``f"{path}.{field}"``. Unknown keys raise ``ValueError`` naming the full dotted path
  and the closest valid key (``difflib``); legacy keys declared in the class variable ``LEGACY_KEYS``
  (``{old_key: fix text}``) raise with their fix. A field without a default is required.
* Types come from the field annotations: ``bool`` / ``int`` / ``float`` / ``str``; ``bool`` is never accepted as a
  number and ``int`` is accepted (and converted) for ``float``; floats must be finite. ``None`` only where the
  annotation is ``Optional``. ``Literal[...]`` lists the accepted values. ``tuple[X, ...]`` accepts a list.
  ``dict[str, Any]`` / ``Mapping`` is a raw mapping (deep-copied, not recursed into). Nested dataclasses recurse.
* Field metadata (``field(metadata=...)``, see ``bounded``): ``ge``, ``gt``, ``le``, ``lt`` numeric bounds;
  ``item_bounds`` (a mapping of the same bound names) applied to each element of a tuple field; ``legacy_values``
  (``{old_value: replacement}``) for removed string values; ``hint`` appended to type/choice errors; ``doc``.
* After construction, ``instance.validate(path)`` is called if the class defines it (cross-field checks that must
  name dotted keys; a ``__post_init__`` cannot know its path).
* ``authored`` (a set) receives the dotted key of every key present in ``data`` (recursively, but not inside raw
  mappings), even when the value equals the default.

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "bounded",
    "build_strict",
    "check_unknown_keys",
    "closest_key",
    "dotted",
    "to_jsonable",
]

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def dotted(prefix: str, key: str) -> str:
    """Join a dotted path prefix (possibly empty) and a key."""
    return f"{prefix}.{key}" if prefix else key


def closest_key(key: str, valid_keys: Iterable[str]) -> str | None:
    """Closest valid key by ``difflib`` similarity (cutoff 0.6), or ``None``."""
    matches = difflib.get_close_matches(key, sorted(valid_keys), n=1, cutoff=0.6)
    return matches[0] if matches else None


#: ``check_unknown_keys`` lists every valid key up to this many (ms-swift's ~500 keys get the closest ones only).
LIST_ALL_KEYS_MAX = 40


def check_unknown_keys(given_keys: Iterable[Any], valid_keys: Iterable[str], path_prefix: str = "") -> None:
    """Raise ``ValueError`` for the first (sorted) key of ``given_keys`` not in ``valid_keys``.

    The message starts with the full dotted path (``path_prefix`` + key), then the closest valid key if one is
    close enough, then the sorted valid keys when there are at most ``LIST_ALL_KEYS_MAX`` of them, else only the
    (up to 5) closest ones, e.g.
    ``unknown key 'custom.coord_soft_ce_w1.sof_ce_weight' — did you mean 'soft_ce_weight'? valid keys: ...``.
    Non-string keys are reported as unknown too.
    """
    valid = sorted(str(k) for k in valid_keys)
    valid_set = set(valid)
    unknown = sorted((k for k in given_keys if not isinstance(k, str) or k not in valid_set), key=str)
    if not unknown:
        return
    key = unknown[0]
    msg = f"unknown key {dotted(path_prefix, str(key))!r}"
    guess = closest_key(str(key), valid)
    if guess is not None:
        msg += f" — did you mean {guess!r}?"
    if len(valid) <= LIST_ALL_KEYS_MAX:
        msg += f" valid keys: {', '.join(valid) if valid else '(none)'}"
    else:
        near = difflib.get_close_matches(str(key), valid, n=5, cutoff=0.5)
        msg += f" (closest valid keys: {', '.join(near)})" if near else " (no valid key is close)"
    if len(unknown) > 1:
        others = ", ".join(repr(dotted(path_prefix, str(k))) for k in unknown[1:])
        msg += f" (also unknown: {others})"
    raise ValueError(msg)


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, doc: str = "", **extra_metadata: Any) -> Any:
    """``dataclasses.field`` with a default and numeric bounds in its metadata (checked by ``build_strict``)."""
    meta: dict[str, Any] = {"doc": doc, **extra_metadata}
    for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if value is not None:
            meta[name] = value
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in strict config dataclasses")
    return dataclasses.field(default=default, metadata=meta)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(``True``, inner) for ``Optional[inner]`` / ``inner | None``; else (``False``, tp)."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]
            return True, inner
    return False, tp


def _type_name(tp: Any) -> str:
    if tp is float:
        return "float"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str, authored: set[str] | None) -> Any:
    """Check/convert ``value`` against annotation ``tp``; errors name ``path``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ValueError(f"{path}: expected {_type_name(inner)}, got None (this key is not optional)")
    tp = inner
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        # bool is a subclass of int: compare with type too so True never matches 1.
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{path}: invalid value {value!r}; accepted values: {accepted}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build_strict(tp, value, path, authored)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        elem_tp = args[0] if args else Any
        return tuple(_convert(v, elem_tp, f"{path}[{i}]", None) for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {_describe(value)}")
        return _deep_copy_plain(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{path}: expected bool (true/false), got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{path}: expected int, got {_describe(value)}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = (" (YAML reads exponent floats without a dot, e.g. 1e-3, as strings: write 1.0e-3 or "
                        "0.001)")
            raise ValueError(f"{path}: expected float, got {_describe(value)}{hint}")
        try:
            out = float(value)
        except OverflowError:
            raise ValueError(f"{path}: expected a finite float, got an integer with {len(str(value))} digits") from None
        if not math.isfinite(out):
            raise ValueError(f"{path}: expected a finite float, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{path}: expected str, got {_describe(value)}")
    raise TypeError(f"{path}: unsupported annotation {tp!r} in strict config dataclass")


def _deep_copy_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy_plain(v) for v in value]
    return value


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    checks = (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    )
    for name, ok, symbol in checks:
        if name in meta and not ok(value, meta[name]):
            bounds = [f"{sym} {meta[n]}" for n, _, sym in checks if n in meta]
            raise ValueError(f"{path} = {value!r}: must be {' and '.join(bounds)}")


def build_strict(cls: type[T], data: Any, path: str, authored: set[str] | None = None) -> T:
    """Build dataclass ``cls`` from mapping ``data`` located at dotted ``path``; see the module docstring.

    Raises ``ValueError`` (message starts with or contains the dotted key) for unknown/legacy keys, missing
    required keys, wrong types, out-of-range values and failed ``validate(path)`` checks.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    legacy: Mapping[str, str] = getattr(cls, "LEGACY_KEYS", {}) or {}
    legacy_hits = sorted(k for k in data if isinstance(k, str) and k in legacy and k not in fields)
    if legacy_hits:
        key = legacy_hits[0]
        raise ValueError(f"{dotted(path, key)} is a legacy key and is no longer supported; {legacy[key]}")
    check_unknown_keys(data.keys(), fields.keys(), path)
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = dotted(path, name)
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                hint = f.metadata.get("hint")
                raise ValueError(f"missing required key {key_path!r}" + (f" ({hint})" if hint else ""))
            continue
        if authored is not None:
            authored.add(key_path)
        value = data[name]
        legacy_values: Mapping[str, str] = f.metadata.get("legacy_values", {})
        if isinstance(value, str) and value in legacy_values:
            raise ValueError(
                f"{key_path}: {value!r} is a legacy name and is no longer accepted; use {legacy_values[value]!r}"
            )
        try:
            converted = _convert(value, hints[name], key_path, authored)
        except ValueError as exc:
            hint = f.metadata.get("hint")
            if hint and str(exc).startswith(f"{key_path}:"):
                raise ValueError(f"{exc} ({hint})") from None
            raise
        _check_bounds(converted, f.metadata, key_path)
        if isinstance(converted, tuple):
            for i, item in enumerate(converted):
                _check_bounds(item, f.metadata.get("item_bounds", {}), f"{key_path}[{i}]")
        kwargs[name] = converted
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a __post_init__ failure: give it the dotted location
        raise ValueError(f"{path}: {exc}") from exc
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate(path)
    return instance


def to_jsonable(value: Any) -> Any:
    """Dataclasses -> dicts (field order), tuples -> lists, mappings copied; JSON-ready plain data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
