"""A/B scheduler (SPEC §3.2): the public ``channel_at`` and ``b_ratio_realized``."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordexp_swift.trainers.scheduler import REALIZED_WINDOW, b_ratio_realized, channel_at


def test_spec_examples():
    """seed 001 1.2: the SPEC §3.2 sequences, written out by hand from the spec text."""
    seq = lambda n, **kw: "".join(channel_at(s, **kw) for s in range(n))  # noqa: E731
    assert seq(8, b_ratio=0.0) == "AAAAAAAA"
    assert seq(8, b_ratio=1.0) == "BBBBBBBB"
    assert seq(6, b_ratio=0.5) == "ABABAB"
    assert seq(8, b_ratio=0.25) == "AAABAAAB"
    assert seq(5, pattern=["A", "A", "B"]) == "AABAA"
    assert seq(4, pattern=("B",)) == "BBBB"


@settings(max_examples=200, deadline=None)
@given(num=st.integers(0, 1000), steps=st.integers(1, 3000))
def test_b_ratio_counts_are_exact_decimals(num, steps):
    """seed 001 1.2: over any prefix 0..n-1 the number of B steps is floor(n·r) with r the exact decimal
    (reference: a loop over exact Fractions, independent of the closed form), so 0.29 gives 29 per 100."""
    exact = Fraction(num, 10**3)  # a ratio with three decimals, not a coordinate
    r = float(exact)
    got = sum(channel_at(s, b_ratio=r) == "B" for s in range(steps))
    assert got == (exact * steps).__floor__()


def test_b_ratio_float_products_do_not_shift_steps():
    """seed 001 1.2: 0.29·100 = 28.999… in floats; the schedule still routes 29 of the first 100 steps to B
    (a float-based formula gives 28; checked here so a float rewrite fails)."""
    assert int(0.29 * 100) == 28  # the trap
    assert sum(channel_at(s, b_ratio=0.29) == "B" for s in range(100)) == 29


@settings(max_examples=150, deadline=None)
@given(step=st.integers(0, 5000), num=st.integers(0, 100),
       pattern=st.lists(st.sampled_from("AB"), min_size=1, max_size=7), use_pattern=st.booleans())
def test_realized_ratio_equals_window_count(step, num, pattern, use_pattern):
    """seed 001 1.2 (``stage2/b_ratio_realized``): equals the B fraction of the last 200 executed steps counted
    one by one with ``channel_at`` (the closed form must agree with brute force, also for the first < 200 steps)."""
    kw = {"pattern": pattern} if use_pattern else {"b_ratio": num / 100}
    lo = max(0, step - REALIZED_WINDOW + 1)
    brute = sum(channel_at(s, **kw) == "B" for s in range(lo, step + 1)) / (step + 1 - lo)
    assert b_ratio_realized(step, **kw) == pytest.approx(brute, abs=1e-12)


def test_pure_function_of_step():
    """seed 001 1.2: same step -> same channel, whatever was asked before (a resumed run asks from step k)."""
    full = [channel_at(s, b_ratio=0.37) for s in range(300)]
    resumed = [channel_at(s, b_ratio=0.37) for s in range(150, 300)]
    assert resumed == full[150:]


@pytest.mark.parametrize("kw, msg", [
    ({}, "exactly one"), ({"b_ratio": 0.5, "pattern": ["A"]}, "exactly one"), ({"b_ratio": 1.5}, r"\[0, 1\]"),
    ({"b_ratio": -0.1}, r"\[0, 1\]"), ({"pattern": []}, "non-empty"), ({"pattern": ["A", "C"]}, "non-empty"),
])
def test_bad_arguments_raise(kw, msg):
    """seed 001 1.2: bad schedules fail with a message naming the key."""
    with pytest.raises(ValueError, match=msg):
        channel_at(0, **kw)


@pytest.mark.parametrize("step", [-1, 1.0, True])
def test_bad_step_raises(step):
    """seed 001 1.2: the step is the optimizer-step counter, an int >= 0."""
    with pytest.raises(ValueError, match="optimizer-step"):
        channel_at(step, b_ratio=0.5)
