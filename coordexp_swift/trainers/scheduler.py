"""Deterministic A/B channel scheduler of the two-channel trainer (SPEC §3.2).

``s`` is the optimizer-step counter (``TrainerState.global_step``: once per optimizer update, restored on resume),
so the channel is a pure function of ``(s, config)``: identical on every rank, constant across a
gradient-accumulation window, and the same after ``resume_from_checkpoint`` as in an uninterrupted run.

* ``b_ratio = r``: step s runs B iff ``floor((s+1)·r) > floor(s·r)`` (Bresenham: 0 → always A, 1 → always B,
  0.5 → A,B,A,B, 0.25 → A,A,A,B). ``r`` is taken as the exact decimal it is written as (``Fraction(repr(r))``), so
  ``0.29`` yields exactly 29 B steps per 100 — float products such as ``0.29·100 = 28.999…`` never shift a step.
* ``pattern = [..]``: step s runs ``pattern[s mod len(pattern)]``.

``stage2/b_ratio_realized`` is the B fraction over the last :data:`REALIZED_WINDOW` executed steps. Every optimizer
step executes exactly one channel, so after step s the executed steps are ``0..s`` and the realized ratio is a pure
function of ``(s, config)`` too: nothing to checkpoint, and it is restored on resume by construction.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Literal, Optional, Sequence

__all__ = ["CHANNELS", "REALIZED_WINDOW", "b_ratio_realized", "channel_at"]

CHANNELS: tuple[str, str] = ("A", "B")
#: Steps in the ``stage2/b_ratio_realized`` window (SPEC §3.2).
REALIZED_WINDOW = 200

Channel = Literal["A", "B"]


def _ratio(b_ratio: float) -> Fraction:
    r = Fraction(repr(float(b_ratio)))
    if not 0 <= r <= 1:
        raise ValueError(f"stage2_ab.schedule.b_ratio must be in [0, 1], got {b_ratio!r}")
    return r


def _check(step: int, b_ratio: Optional[float], pattern: Optional[Sequence[str]]) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"scheduler step must be an int >= 0 (the optimizer-step counter), got {step!r}")
    if (b_ratio is None) == (pattern is None):
        raise ValueError("exactly one of b_ratio / pattern is required (stage2_ab.schedule)")
    if pattern is not None and (not pattern or any(c not in CHANNELS for c in pattern)):
        raise ValueError(f"stage2_ab.schedule.pattern must be a non-empty list over 'A', 'B', got {list(pattern)!r}")


def channel_at(step: int, *, b_ratio: float | None = None, pattern: Sequence[str] | None = None) -> Channel:
    """Channel of optimizer step ``step`` (SPEC §3.2): ``"A"`` or ``"B"``; exactly one of ``b_ratio`` / ``pattern``."""
    _check(step, b_ratio, pattern)
    if pattern is not None:
        return pattern[step % len(pattern)]  # type: ignore[return-value]
    r = _ratio(b_ratio)  # type: ignore[arg-type]
    return "B" if (r * (step + 1)).__floor__() > (r * step).__floor__() else "A"


def _b_steps_before(stop: int, b_ratio: Optional[float], pattern: Optional[Sequence[str]]) -> int:
    """Number of B steps among ``0..stop-1`` (closed form: Bresenham telescopes to ``floor(stop·r)``)."""
    if pattern is not None:
        full, rest = divmod(stop, len(pattern))
        return full * sum(c == "B" for c in pattern) + sum(c == "B" for c in pattern[:rest])
    return int((_ratio(b_ratio) * stop).__floor__())  # type: ignore[arg-type]


def b_ratio_realized(step: int, *, b_ratio: float | None = None, pattern: Sequence[str] | None = None,
                     window: int = REALIZED_WINDOW) -> float:
    """B fraction over the executed steps ``max(0, step−window+1)..step`` (the last ``window`` steps, step
    ``step`` included)."""
    _check(step, b_ratio, pattern)
    lo = max(0, step - window + 1)
    n_b = _b_steps_before(step + 1, b_ratio, pattern) - _b_steps_before(lo, b_ratio, pattern)
    return n_b / (step + 1 - lo)
