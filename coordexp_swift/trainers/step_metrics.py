"""Per-step metric aggregation of the Stage-2 trainers (SPEC §8.3), shared by Channel-A, Channel-B and the
rollout-aligned trainer.

A trainer calls :meth:`StepMetrics.observe` once per micro-batch with that micro-batch's host metrics and its weight
(the segment count), and :meth:`StepMetrics.logs` inside ``Trainer.log``, on every rank, unconditionally: the
:class:`~coordexp_swift.metrics.buffer.MetricsBuffer` of the current mode (train / eval) then runs its two
collectives (key union, one SUM all-reduce) whatever keys each rank observed, and returns counters summed, means
weighted over the micro-batches that observed them, rates recomputed; internal keys never appear. Eval keys get
ms-swift's ``eval_`` prefix.
"""
from __future__ import annotations

from typing import Any, Mapping

from coordexp_swift.metrics.buffer import MetricsBuffer

__all__ = ["LOG_WEIGHT_KEY", "StepMetrics"]

#: Internal key carrying a micro-batch's weight (its segment count); consumed by the buffer, never logged.
LOG_WEIGHT_KEY = "stage2/_log_weight"


class StepMetrics:
    """One :class:`MetricsBuffer` per mode (``"train"`` / ``"eval"``)."""

    def __init__(self) -> None:
        self.buffers: dict[str, MetricsBuffer] = {"train": MetricsBuffer(), "eval": MetricsBuffer()}

    def observe(self, metrics: Mapping[str, Any], *, weight: float, mode: str = "train") -> None:
        """Buffer one micro-batch: ``metrics`` (key -> Python number or 0-d tensor), ``weight`` = its segment
        count (mean-like keys are weighted by it)."""
        self.buffers[mode].add({**metrics, LOG_WEIGHT_KEY: float(weight)})

    def logs(self, mode: str = "train") -> dict[str, float]:
        """Reduce the ``mode`` buffer over micro-batches and ranks (collective: call on every rank) and clear it;
        keys prefixed ``eval_`` in eval mode."""
        prefix = "eval_" if mode == "eval" else ""
        return {prefix + k: v for k, v in self.buffers[mode].reduce().items()}
