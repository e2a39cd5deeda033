"""Per-rank metric buffer with a DDP-safe reduction (SPEC §8.3).

Usage in a trainer: ``buf.add(step_metrics)`` after every micro-batch (any rank may emit any subset of keys);
``logs = buf.reduce()`` inside ``Trainer.log`` on *every* rank. ``reduce`` runs exactly two collectives, in the
same order, on every rank, whatever keys each rank observed:

1. ``all_gather_object`` of the rank's sorted key list → the sorted key union (identical on all ranks);
2. one SUM ``all_reduce`` of a float64 ``[n_keys, 2]`` tensor, row ``i`` = key ``i`` of the union:
   mean-like ``(Σ w·v, Σ w)``, counter ``(Σ v, #observations)``, rate ``(0, #observations)`` (presence only);
   zeros for keys this rank never saw.

After the reduction: means = ``Σ w·v / Σ w`` (omitted when ``Σ w = 0``), counters = sums, rates recomputed from the
summed counters (:func:`coordexp_swift.metrics.keys.rate_rule`), internal keys never appear. The buffer is
cleared. Without an initialised process group the same arithmetic runs locally.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from coordexp_swift.metrics.keys import classify, is_log_weight, rate_rule


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metric {key!r} has non-numeric value {value!r} ({type(value).__name__}); "
                         "emit a Python number or a 0-d tensor") from exc


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _reduce_device(group: Any) -> torch.device:
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class MetricsBuffer:
    """Accumulates micro-batch metrics on one rank until :meth:`reduce` (see module docstring)."""

    def __init__(self) -> None:
        # key -> [column 0, column 1] as described in the module docstring
        self._acc: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._acc)

    def keys(self) -> list[str]:
        """Sorted keys observed on this rank since the last :meth:`reduce` (internal keys excluded)."""
        return sorted(self._acc)

    def add(self, metrics: Mapping[str, Any], weight: float = 1.0) -> None:
        """Buffer one micro-batch's metrics.

        ``weight`` (finite, ≥ 0) weights the mean-like keys; a ``*/_log_weight`` key in ``metrics`` (e.g. the
        segment count ``stage2/_log_weight``) takes precedence over it. Counters are summed unweighted. A rate key
        must arrive together with the counters it is recomputed from (RuntimeError otherwise). Internal keys are
        consumed here and never buffered. Values may be numbers or 0-d tensors.
        """
        lw = {k: _as_float(k, v) for k, v in metrics.items() if is_log_weight(k)}
        if len(set(lw.values())) > 1:
            raise ValueError(f"conflicting log weights in one micro-batch: {lw}; emit a single `_log_weight`")
        w = next(iter(lw.values())) if lw else float(weight)
        if not math.isfinite(w) or w < 0.0:
            raise ValueError(f"metric weight must be finite and >= 0, got {w!r} (keys {sorted(lw) or 'weight='})")
        for key, raw in metrics.items():
            cls = classify(key)
            if cls == "internal":
                continue
            row = self._acc.setdefault(key, [0.0, 0.0])
            if cls == "counter":
                row[0] += _as_float(key, raw)
                row[1] += 1.0
            elif cls == "mean":
                row[0] += w * _as_float(key, raw)
                row[1] += w
            else:  # rate: presence only, the value is recomputed from counters after reduction
                missing = [c for c in rate_rule(key).counters() if c not in metrics]
                if missing:
                    raise RuntimeError(f"rate {key!r} was emitted without its counters {missing}; a rate is "
                                       "recomputed from summed counters and must be logged with them (SPEC §8.1)")
                row[1] += 1.0

    def reduce(self, group: Any = None) -> dict[str, float]:
        """Reduce over micro-batches (and ranks, if a process group is initialised); clear; return the log dict.

        Collective-safe: every rank must call this at the same point; the collectives do not depend on rank or
        on which keys a rank observed. Returns keys sorted, values Python floats.
        """
        local = sorted(self._acc)
        if _dist_active():
            gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
            torch.distributed.all_gather_object(gathered, local, group=group)
            keys = sorted(set().union(*(set(g) for g in gathered)))
            table = torch.tensor([self._acc.get(k, [0.0, 0.0]) for k in keys], dtype=torch.float64,
                                 device=_reduce_device(group)).reshape(len(keys), 2)
            torch.distributed.all_reduce(table, op=torch.distributed.ReduceOp.SUM, group=group)
            rows = table.cpu().tolist()
        else:
            keys, rows = local, [list(self._acc[k]) for k in local]
        self._acc.clear()

        classes = {k: classify(k) for k in keys}
        counters = {k: r[0] for k, r in zip(keys, rows) if classes[k] == "counter"}
        out: dict[str, float] = {}
        for key, (a, b) in zip(keys, rows):
            cls = classes[key]
            if cls == "counter":
                out[key] = float(a)
            elif cls == "mean":
                if b > 0.0:
                    out[key] = float(a / b)
            elif cls == "rate":
                out[key] = float(rate_rule(key).compute(counters))
        return out
