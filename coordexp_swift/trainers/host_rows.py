"""The micro-batch of the Stage-2 trainers: ms-swift-encoded rows kept on the host (SPEC §3.3 harness).

The trainers build their :class:`~coordexp_swift.teacher_forcing.batch.TeacherForcingBatch` and forward inputs on the
host from the raw rows and move them to the device in one transfer. accelerate's prepared dataloader, however, moves
every tensor of a ``list`` / ``tuple`` / ``Mapping`` batch to the device (``accelerate.utils.send_to_device``), so a
plain list of rows would reach the trainer with ``pixel_values`` on the GPU and the host-built tensors beside them
(a device mismatch on CUDA; invisible on CPU). :class:`HostRows` is a read-only ``Sequence`` that is none of those
types and has no ``.to``: ``send_to_device`` returns it unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Mapping

__all__ = ["HostRows", "host_rows_collator"]


class HostRows(Sequence):
    """The rows of one micro-batch, in sampler order; indexable, sized, iterable (no ``.to``: stays on the host)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows = list(rows)

    def __getitem__(self, i):
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"HostRows({len(self._rows)} rows)"


def host_rows_collator(features: Sequence[Mapping[str, Any]], **kwargs: Any) -> HostRows:
    """The Stage-2 data collator: no padding, no tensor stacking (the trainers encode and pack per step)."""
    return HostRows(features)
