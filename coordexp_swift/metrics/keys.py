"""Metric key classes and rate recomputation (SPEC §8.1).

Every logged key belongs to exactly one class, decided from its name alone:

- ``internal``: any ``/``-separated path segment starts with ``_`` (e.g. ``stage2/_log_weight``). Used during
  reduction only, never emitted. Checked first, so ``x/_tokens_sum`` is internal, not a counter.
- ``counter``: the key ends with ``_total``, ``_count``, ``_sum``, ``_num`` or ``_den``. Summed over micro-batches
  and ranks.
- ``rate``: the key ends with ``_rate`` or ``_frac``, or is ``rollout/{precision,recall,f1}``. Never averaged:
  recomputed after reduction from summed counters by the rule in :func:`rate_rule`.
- ``mean``: everything else (``loss/*``, ``*_mean``, accuracies, ``coord_diag/*``, ``time/*_s``,
  ``rollout/{gt,pred}_per_sample``, ``stage2/b_ratio_realized``). Weighted mean over the micro-batches that
  observed the key.

Rates declare their counters next to them: the named rollout rates are in :data:`RATE_RULES`; any other
``<stem>_rate`` / ``<stem>_frac`` key is recomputed as ``<key>_num / <key>_den`` (both counters, emitted by the
same code that emits the rate, e.g. ``rollout/parse_ok_rate`` with ``rollout/parse_ok_rate_num`` and
``rollout/parse_ok_rate_den``). A ratio with a zero denominator is 0.0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Union

KeyClass = Literal["counter", "rate", "mean", "internal"]

COUNTER_SUFFIXES: tuple[str, ...] = ("_total", "_count", "_sum", "_num", "_den")
RATE_SUFFIXES: tuple[str, ...] = ("_rate", "_frac")
NAMED_RATES: frozenset[str] = frozenset({"rollout/precision", "rollout/recall", "rollout/f1"})
LOG_WEIGHT_SEGMENT = "_log_weight"

# SPEC §8.1 rollout counters (all `_total`): the names that a rollout step emits.
ROLLOUT_COUNTER_KEYS: tuple[str, ...] = tuple(
    f"rollout/{stem}_total"
    for stem in ("gt_objects", "valid_pred_objects", "matched", "fp", "fn", "fn_appended", "invalid_rollout",
                 "drop_invalid", "gating_rejections", "truncated")
) + ("stage2/raw_rollouts_total",)

# SPEC §8.2: alias names that must never be logged.
FORBIDDEN_ALIASES: frozenset[str] = frozenset({"loss/ce", "loss/coord", "loss/token_ce_obj"})
# Bare helper segments that must carry a counter suffix or a leading `_` (SPEC §8.1, 002 7C.4).
_BARE_HELPER_SEGMENTS: frozenset[str] = frozenset(
    {"sum", "count", "total", "num", "den", "numerator", "denominator"})


def _is_internal(key: str) -> bool:
    return any(seg.startswith("_") for seg in key.split("/"))


def classify(key: str) -> KeyClass:
    """Return the SPEC §8.1 class of ``key`` (precedence: internal, counter, rate, mean).

    Raises ValueError for an empty key or an empty path segment (``a//b``, trailing ``/``), which no emitter
    may produce.
    """
    if not isinstance(key, str) or not key or any(seg == "" for seg in key.split("/")):
        raise ValueError(f"metric key {key!r} is not a non-empty '/'-separated name without empty segments")
    if _is_internal(key):
        return "internal"
    if key.endswith(COUNTER_SUFFIXES):
        return "counter"
    if key.endswith(RATE_SUFFIXES) or key in NAMED_RATES:
        return "rate"
    return "mean"


@dataclass(frozen=True)
class RatioRule:
    """``rate = Σ numerator / Σ denominator`` over reduced counters; 0.0 when the denominator is 0 or absent."""

    numerator: str
    denominator: str

    def counters(self) -> tuple[str, ...]:
        return (self.numerator, self.denominator)

    def compute(self, sums: Mapping[str, float]) -> float:
        den = float(sums.get(self.denominator, 0.0))
        return float(sums.get(self.numerator, 0.0)) / den if den != 0.0 else 0.0


@dataclass(frozen=True)
class F1Rule:
    """``f1 = 2PR/(P+R)`` from two ratio rules; 0.0 when ``P+R = 0``."""

    precision: RatioRule
    recall: RatioRule

    def counters(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.precision.counters() + self.recall.counters()))

    def compute(self, sums: Mapping[str, float]) -> float:
        p, r = self.precision.compute(sums), self.recall.compute(sums)
        return 2.0 * p * r / (p + r) if (p + r) > 0.0 else 0.0


RateRule = Union[RatioRule, F1Rule]

_PRECISION = RatioRule("rollout/matched_total", "rollout/valid_pred_objects_total")
_RECALL = RatioRule("rollout/matched_total", "rollout/gt_objects_total")
RATE_RULES: dict[str, RateRule] = {
    "rollout/precision": _PRECISION,
    "rollout/recall": _RECALL,
    "rollout/f1": F1Rule(_PRECISION, _RECALL),
}


def rate_rule(key: str) -> RateRule:
    """The recomputation rule of a rate key: :data:`RATE_RULES` or the ``<key>_num / <key>_den`` convention."""
    if classify(key) != "rate":
        raise ValueError(f"metric key {key!r} is {classify(key)}-like, not a rate (SPEC §8.1)")
    return RATE_RULES.get(key) or RatioRule(f"{key}_num", f"{key}_den")


def is_log_weight(key: str) -> bool:
    """True for the per-micro-batch weight key (last segment ``_log_weight``, e.g. ``stage2/_log_weight``)."""
    return key.split("/")[-1] == LOG_WEIGHT_SEGMENT


def naming_violations(key: str) -> list[str]:
    """Reasons why ``key`` breaks the SPEC §8.1/§8.2 naming contract (empty list = fine).

    Flags: the §8.2 aliases (``loss/ce``, ``loss/coord``, ``loss/token_ce_obj``, ``loss_*``); bare sum/count
    helpers (a last segment such as ``sum``/``count``/``total`` that is neither ``_``-prefixed nor a suffixed
    counter); rollout counters logged without ``_total`` (``rollout/matched`` instead of
    ``rollout/matched_total``).
    """
    out: list[str] = []
    if key in FORBIDDEN_ALIASES or key.startswith("loss_"):
        out.append(f"{key!r} is a forbidden alias; use the canonical loss/<component> name (SPEC §8.2)")
    last = key.split("/")[-1]
    if last.lower() in _BARE_HELPER_SEGMENTS:
        out.append(f"{key!r} is an unsuffixed sum/count helper; name it `_{last}` (internal) or suffix it "
                   f"with one of {COUNTER_SUFFIXES} (SPEC §8.1)")
    if f"{key}_total" in ROLLOUT_COUNTER_KEYS:
        out.append(f"{key!r} is a rollout counter; log it as {key + '_total'!r} (SPEC §8.1)")
    return out
