"""Rollout seeds (SPEC §3.6 B0): pure integer arithmetic, no RNG state is touched here.

* ``norm_seed(x) = x & 0x7FFFFFFF``, with 0 mapped to 1 (a 31-bit positive seed every backend accepts);
* ``seed_base(training_seed, step) = norm_seed(training_seed + step · 1000003)`` — one base per optimizer step ``s``;
* vLLM request seed ``norm_seed(seed_base + i)`` with ``i = (micro_idx · world_size + rank) · per_device_bs + j``
  (``j`` = index of the request in this rank's micro-batch), so every request of a step has a distinct seed;
* HF sampling seeds the global torch RNG once per generate call with ``seed_base + micro_idx``.

Greedy / beam decoding never reads a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SEED_MASK",
    "STEP_STRIDE",
    "RolloutSeeds",
    "hf_generate_seed",
    "norm_seed",
    "request_seed",
    "seed_base",
]

#: 31-bit mask applied to every seed.
SEED_MASK: int = 0x7FFFFFFF
#: Per-step stride of ``seed_base`` (a prime, so consecutive steps land far apart).
STEP_STRIDE: int = 1000003


def norm_seed(x: int) -> int:
    """``x & 0x7FFFFFFF``, then 0 -> 1. Works for negative ``x`` (two's-complement masking)."""
    v = int(x) & SEED_MASK
    return v if v != 0 else 1


def seed_base(training_seed: int, step: int) -> int:
    """``norm_seed(training_seed + step · 1000003)`` (``step`` = optimizer step ``s`` ≥ 0)."""
    if step < 0:
        raise ValueError(f"seed_base: step = {step} must be >= 0 (the optimizer step counter)")
    return norm_seed(int(training_seed) + int(step) * STEP_STRIDE)


def request_seed(base: int, micro_idx: int, world_size: int, rank: int, per_device_bs: int, j: int) -> int:
    """vLLM per-request seed ``norm_seed(base + ((micro_idx · world_size + rank) · per_device_bs + j))``.

    ``micro_idx`` ≥ 0 is the micro-step within the optimizer step, ``0 ≤ rank < world_size``,
    ``0 ≤ j < per_device_bs`` the request's index in this rank's micro-batch. Out-of-range values would make
    two requests of one step share a seed, so they raise ``ValueError``.
    """
    if micro_idx < 0:
        raise ValueError(f"request_seed: micro_idx = {micro_idx} must be >= 0")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"request_seed: rank = {rank} must satisfy 0 <= rank < world_size = {world_size}")
    if per_device_bs < 1 or not 0 <= j < per_device_bs:
        raise ValueError(
            f"request_seed: j = {j} must satisfy 0 <= j < per_device_bs = {per_device_bs} "
            "(a micro-batch larger than per_device_bs would reuse another rank's seeds)"
        )
    i = (micro_idx * world_size + rank) * per_device_bs + j
    return norm_seed(base + i)


def hf_generate_seed(base: int, micro_idx: int) -> int:
    """Seed of the global torch RNG for one HF sampling generate call: ``seed_base + micro_idx`` (SPEC §3.6 B0)."""
    if micro_idx < 0:
        raise ValueError(f"hf_generate_seed: micro_idx = {micro_idx} must be >= 0")
    return int(base) + int(micro_idx)


@dataclass(frozen=True)
class RolloutSeeds:
    """The seed context of one backend ``generate`` call (one rank, one micro-step).

    ``base``: :func:`seed_base` of the current optimizer step. ``per_device_bs``: the rank's micro-batch size used
    in the request-seed formula; ``None`` means "the number of samples of this call".
    """

    base: int
    micro_idx: int = 0
    world_size: int = 1
    rank: int = 0
    per_device_bs: int | None = None

    @classmethod
    def for_step(cls, training_seed: int, step: int, **kwargs: int | None) -> "RolloutSeeds":
        """``RolloutSeeds(seed_base(training_seed, step), **kwargs)``."""
        return cls(seed_base(training_seed, step), **kwargs)  # type: ignore[arg-type]

    def hf_seed(self) -> int:
        """:func:`hf_generate_seed` of this call."""
        return hf_generate_seed(self.base, self.micro_idx)

    def request_seeds(self, n: int) -> list[int]:
        """Per-request seeds of the ``n`` samples of this call (``j = 0..n-1``)."""
        bs = n if self.per_device_bs is None else self.per_device_bs
        return [request_seed(self.base, self.micro_idx, self.world_size, self.rank, bs, j) for j in range(n)]
