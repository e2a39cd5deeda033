"""Generic strict loader (coordexp_swift.config.strict): unknown keys, types, bounds, authored tracking."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

from coordexp_swift.config.strict import bounded, build_strict, check_unknown_keys, closest_key, to_jsonable


@dataclass(frozen=True, kw_only=True)
class _Inner:
    rate: float = bounded(0.5, ge=0, le=1)
    count: int = bounded(3, ge=1)


@dataclass(frozen=True, kw_only=True)
class _Outer:
    name: str = "x"
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    maybe: Optional[int] = None
    items: Optional[tuple[float, ...]] = bounded(None, item_bounds={"gt": 0, "lt": 1})
    inner: _Inner = field(default_factory=_Inner)
    raw: Optional[dict[str, Any]] = None

    def validate(self, path: str) -> None:
        if self.mode == "b" and self.maybe is None:
            raise ValueError(f"{path}.maybe: required when {path}.mode is 'b'")


@dataclass(frozen=True, kw_only=True)
class _Required:
    needed: int = field(metadata={"hint": "set it to 1"})


def test_unknown_key_names_dotted_path_closest_key_and_valid_keys() -> None:
    """seed 000 1.1: an unknown key fails with the full dotted path and the closest valid key."""
    with pytest.raises(ValueError) as exc:
        build_strict(_Outer, {"inner": {"rte": 0.1}}, "sec")
    msg = str(exc.value)
    assert "unknown key 'sec.inner.rte'" in msg
    assert "did you mean 'rate'?" in msg
    assert "valid keys: count, rate" in msg


def test_check_unknown_keys_reusable_for_top_level_and_without_suggestion() -> None:
    """check_unknown_keys: empty prefix = top-level keys; no suggestion when nothing is close; all unknowns named."""
    with pytest.raises(ValueError) as exc:
        check_unknown_keys(["model", "learning_rat", "zzz"], ["model", "learning_rate", "dataset"], "")
    msg = str(exc.value)
    assert msg.startswith("unknown key 'learning_rat' — did you mean 'learning_rate'?")
    assert "also unknown: 'zzz'" in msg
    with pytest.raises(ValueError) as exc2:
        check_unknown_keys(["qqqqqq"], ["model"], "top")
    assert "unknown key 'top.qqqqqq' valid keys: model" == str(exc2.value)
    check_unknown_keys(["model"], ["model", "dataset"], "")  # no error
    assert closest_key("datset", ["model", "dataset"]) == "dataset"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"flag": 1}, "sec.flag: expected bool (true/false), got int 1"),
        ({"inner": {"count": True}}, "sec.inner.count: expected int, got bool True"),
        ({"inner": {"count": 2.0}}, "sec.inner.count: expected int, got float 2.0"),
        ({"inner": {"rate": False}}, "sec.inner.rate: expected float, got bool False"),
        ({"inner": {"rate": "1e-3"}}, "sec.inner.rate: expected float, got str '1e-3' (YAML reads exponent"),
        ({"inner": {"rate": float("nan")}}, "sec.inner.rate: expected a finite float, got nan"),
        ({"name": None}, "sec.name: expected str, got None (this key is not optional)"),
        ({"name": 3}, "sec.name: expected str, got int 3"),
        ({"mode": "c"}, "sec.mode: invalid value 'c'; accepted values: 'a', 'b'"),
        ({"inner": 5}, "sec.inner: expected a mapping, got int 5"),
        ({"raw": [1]}, "sec.raw: expected a mapping, got list [1]"),
        ({"items": 0.5}, "sec.items: expected a list, got float 0.5"),
        ({"items": [0.5, 1]}, "sec.items[1] = 1.0: must be > 0 and < 1"),
        ({"inner": {"rate": 1.5}}, "sec.inner.rate = 1.5: must be >= 0 and <= 1"),
        ({"inner": {"count": 0}}, "sec.inner.count = 0: must be >= 1"),
        ({"mode": "b"}, "sec.maybe: required when sec.mode is 'b'"),
    ],
)
def test_type_range_and_validator_errors_name_the_dotted_key(data: dict, expected: str) -> None:
    """Types are strict (bool is not int; int is not float-only), bounds from metadata, validate(path) hook."""
    with pytest.raises(ValueError) as exc:
        build_strict(_Outer, data, "sec")
    assert str(exc.value).startswith(expected)


def test_values_converted_and_defaults_kept() -> None:
    """int accepted (and converted) for float; list -> tuple; raw mapping deep-copied; None where Optional."""
    raw = {"k": [1, {"a": 2}]}
    out = build_strict(_Outer, {"inner": {"rate": 1}, "items": [0.25], "raw": raw, "maybe": None}, "sec")
    assert out.inner.rate == 1.0 and type(out.inner.rate) is float
    assert out.items == (0.25,)
    assert out.raw == raw and out.raw is not raw and out.raw["k"][1] is not raw["k"][1]
    assert out.maybe is None and out.inner.count == 3 and out.name == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.name = "y"  # type: ignore[misc]


def test_authored_keys_tracked_even_when_equal_to_default() -> None:
    """Authored = dotted keys present in the input (nested sections and leaves), not inside raw mappings."""
    authored: set[str] = set()
    build_strict(_Outer, {"flag": False, "inner": {"count": 3}, "raw": {"x": 1}}, "sec", authored)
    assert authored == {"sec.flag", "sec.inner", "sec.inner.count", "sec.raw"}


def test_missing_required_key_names_path_and_hint() -> None:
    """A field without default is required."""
    with pytest.raises(ValueError, match=r"missing required key 'r\.needed' \(set it to 1\)"):
        build_strict(_Required, {}, "r")
    assert build_strict(_Required, {"needed": 1}, "r").needed == 1


def test_to_jsonable_converts_tuples_and_nested_dataclasses() -> None:
    """to_jsonable gives plain dicts/lists in field order."""
    out = build_strict(_Outer, {"items": [0.5]}, "sec")
    assert to_jsonable(out) == {
        "name": "x", "flag": False, "mode": "a", "maybe": None, "items": [0.5],
        "inner": {"rate": 0.5, "count": 3}, "raw": None,
    }
