"""Rollout seeds (SPEC §3.6 B0). Golden values are computed by hand in the comments."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordexp_swift.rollout.seeds import (
    SEED_MASK,
    RolloutSeeds,
    hf_generate_seed,
    norm_seed,
    request_seed,
    seed_base,
)


def test_seed_base_goldens():
    """seed 001 1.7.5: seed_base(123,7)=7000144; (17,3000)=852525369; 0 ↦ 1."""
    # 123 + 7 · 1000003 = 7000144 (< 2^31, unchanged by the mask)
    assert seed_base(123, 7) == 7000144
    # 17 + 3000 · 1000003 = 3000009017; minus 2^31 = 2147483648 -> 852525369
    assert seed_base(17, 3000) == 852525369
    assert norm_seed(0) == 1
    # 2^31 masks to 0, which maps to 1; so does seed_base(2^31, 0)
    assert norm_seed(2**31) == 1
    assert seed_base(2**31, 0) == 1


def test_norm_seed_masks_to_31_bits():
    """seed 001 1.7.5: norm(x) = x & 0x7FFFFFFF (two's complement for negatives)."""
    assert SEED_MASK == 2**31 - 1
    assert norm_seed(5) == 5
    assert norm_seed(-1) == 2**31 - 1  # ...1111 & 0x7FFFFFFF
    assert norm_seed(2**31 + 7) == 7
    assert norm_seed(2**40 + 3) == 3


def test_request_seed_formula_by_hand():
    """seed 001 1.7.5 (request seeds): i = (micro_idx·world_size + rank)·per_device_bs + j."""
    # micro 2, world 4, rank 3, bs 5, j 1: i = (2*4+3)*5+1 = 56
    assert request_seed(1000, 2, 4, 3, 5, 1) == 1056
    # wrap: base 2^31-10, i = 10 -> 2^31 -> masked 0 -> 1
    assert request_seed(2**31 - 10, 0, 1, 0, 16, 10) == 1
    assert RolloutSeeds(1000, micro_idx=2, world_size=4, rank=3, per_device_bs=5).request_seeds(2) == [1055, 1056]
    # per_device_bs defaults to the number of samples of the call: i = (1*1+0)*3 + j
    assert RolloutSeeds(50, micro_idx=1).request_seeds(3) == [53, 54, 55]


def test_hf_seed_is_base_plus_micro_idx():
    """SPEC §3.6 B0: HF sampling seeds the global RNG with seed_base + micro_idx."""
    assert hf_generate_seed(7000144, 3) == 7000147
    assert RolloutSeeds.for_step(123, 7, micro_idx=2).hf_seed() == 7000146


@pytest.mark.parametrize("args", [
    (0, -1, 1, 0, 1, 0),  # negative micro_idx
    (0, 0, 2, 2, 1, 0),  # rank >= world_size
    (0, 0, 1, 0, 2, 2),  # j >= per_device_bs
    (0, 0, 0, 0, 1, 0),  # world_size 0
])
def test_request_seed_rejects_colliding_indices(args):
    """seed 001 1.7.5: out-of-range indices would reuse another request's seed -> ValueError."""
    with pytest.raises(ValueError):
        request_seed(*args)
    with pytest.raises(ValueError, match="step"):
        seed_base(1, -1)


@settings(max_examples=150, deadline=None)
@given(base=st.integers(1, 2**30), world=st.integers(1, 4), bs=st.integers(1, 4), micros=st.integers(1, 4))
def test_request_seeds_distinct_within_a_step(base, world, bs, micros):
    """seed 001 1.7.5 (property): all requests of one step (every micro-step, rank, j) get distinct seeds and
    equal norm(base + running index) — the index enumerates 0..micros·world·bs-1 exactly once."""
    seeds = [request_seed(base, m, world, r, bs, j)
             for m in range(micros) for r in range(world) for j in range(bs)]
    assert seeds == [norm_seed(base + i) for i in range(micros * world * bs)]
    assert len(set(seeds)) == len(seeds)
    assert all(1 <= s <= SEED_MASK for s in seeds)
