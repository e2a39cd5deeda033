"""``TeacherForcingContext`` (SPEC §4.5): a :class:`~coordexp_swift.teacher_forcing.batch.TeacherForcingBatch`
with logits bound per context — what the pipeline modules read. Modules never run the model or parse text.

Layout: ``target_ids [B, T]`` (the token at position t, whose CE reads the logits at t − 1; see ``batch.py``);
``logits[c] [B, T, V]`` per context ``c`` ∈ {``gt``, ``self_context``, ``rollout``}; ``logits[c][b, t − 1]``
predicts ``target_ids[b, t]``. ``meta`` holds one :class:`SegmentMeta` per sample (unpacked: row i, starting at
column 0) or per segment (packed: B = 1, segments back to back, each ``encoded_len`` long). All views are
``[B, T]`` over target positions, and every supervised position is segment-local by construction.

Every index the modules gather with was built on the host by the batch; reading this context issues no host sync
(no ``nonzero``, ``.item()``, boolean-mask indexing or device-to-host copy).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional

import torch

from coordexp_swift.coord.codec import NUM_BINS
from coordexp_swift.teacher_forcing.batch import (
    CONTEXTS,
    DENOM_FLOOR,
    DENOMINATORS,
    SUBSET_NAMES,
    BoxGroupsView,
    CEWeightTable,
    ContextIndex,
    CoordSlots,
    Layout,
    TeacherForcingBatch,
    build_layout,
    ce_weights,
    debug_checks,
)
from coordexp_swift.teacher_forcing.meta import SegmentMeta
from coordexp_swift.teacher_forcing.token_types import TYPE_NAMES

__all__ = [
    "CONTEXTS",
    "DENOMINATORS",
    "DENOM_FLOOR",
    "Gathered",
    "SUBSET_NAMES",
    "BoxGroupsView",
    "CEWeightTable",
    "CoordSlots",
    "Layout",
    "TeacherForcingBatch",
    "TeacherForcingContext",
    "build_layout",
    "ce_weights",
]


class Gathered(NamedTuple):
    """One context's cached gather (:meth:`TeacherForcingContext.gathered`): ``flat_rows [N]`` (``row·T + pos − 1``
    of every position with CE weight > 0, ascending), ``rows [N, V]`` their logits, ``slot_coord [M, NUM_BINS]`` the
    coord-slice logits of ``coord_slots(context)`` and ``slot_rows [M, V]`` their full rows (``None`` unless the
    context was prepared with ``gather_slot_rows``)."""

    flat_rows: torch.Tensor
    rows: torch.Tensor
    slot_coord: torch.Tensor
    slot_rows: Optional[torch.Tensor]


class _FusedGather(torch.autograd.Function):
    """``logits [B·T·V]`` (flat) -> ``(rows [N, V], slot_rows [M', V], coord [M, NUM_BINS])`` in one node whose
    backward allocates ONE full-size gradient (``index_add_`` of every part), instead of one per consumer plus the
    full-size additions that merge them."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, row_idx: torch.Tensor, slot_idx: torch.Tensor,  # type: ignore[override]
                coord_idx: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(row_idx, slot_idx, coord_idx)
        ctx.shape, ctx.vocab = flat.shape, vocab
        table = flat.view(-1, vocab)
        coord = flat.index_select(0, coord_idx.reshape(-1)).reshape(coord_idx.shape)
        # rows by advanced indexing: on CPU, index_select of [V]-long rows is ~4x slower (torch 2.14)
        return table[row_idx], table[slot_idx], coord

    @staticmethod
    def backward(ctx, g_rows, g_slots, g_coord):  # type: ignore[override]
        row_idx, slot_idx, coord_idx = ctx.saved_tensors
        parts = [(g, i) for g, i in ((g_rows, row_idx), (g_slots, slot_idx)) if g is not None and i.numel()]
        if not parts and (g_coord is None or not coord_idx.numel()):
            return None, None, None, None, None
        ref = next(g for g in (g_rows, g_slots, g_coord) if g is not None)
        grad = torch.zeros(ctx.shape, dtype=ref.dtype, device=ref.device)
        for g, idx in parts:
            grad.view(-1, ctx.vocab).index_add_(0, idx, g)
        if g_coord is not None and coord_idx.numel():
            grad.index_add_(0, coord_idx.reshape(-1), g_coord.reshape(-1))
        return grad, None, None, None, None


def _check_logits(logits: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> None:
    for name, z in logits.items():
        if z.dim() != 3 or tuple(z.shape[:2]) != shape:
            raise RuntimeError(f"logits[{name!r}] shape {tuple(z.shape)} does not match input_ids (= target_ids) "
                               f"{shape} in [B, T] (sliced logits?)")


class TeacherForcingContext:
    """A :class:`TeacherForcingBatch` with logits bound per context (SPEC §4.5); build it with
    ``batch.with_logits(gt=..., self_context=..., rollout=...)``.

    Fields: ``batch``; ``logits`` (context name -> ``[B, T, V]``); ``coord_embeddings`` (optional ``E_c
    [NUM_BINS, H]``, for the ``st_embed_gap`` diagnostic); ``gather_slot_rows`` (also gather full-vocab rows at the
    coord slots in :meth:`gathered`; set by the executor when a module reads them); ``denominators``
    (``{context: {name: count}}`` replacing the local denominator of mean ``name`` in ``context``; ``None``: every
    mean is local to this micro-batch, SPEC §4.2). Batch fields (``channel``, ``target_ids``, ``meta``,
    ``coord_ids``, ``packed``, ``ce_table``, ``layout``) read through.

    Keyword construction without ``batch`` (``channel``, ``input_ids`` = the target ids, ``logits``, ``meta``,
    ``coord_ids``, ``packed``, ``ce_table``, ...; ``denominators`` may then be flat ``{name: count}`` with one
    context) builds the batch on the spot: for tests and tools, not for a training step.
    Raises ``RuntimeError`` when logits and ids disagree in ``[B, T]`` or meta does not fit the batch.
    """

    __slots__ = ("batch", "logits", "coord_embeddings", "gather_slot_rows", "denominators", "_cache")

    def __init__(self, channel: Optional[str] = None, input_ids: Optional[torch.Tensor] = None,
                 logits: Optional[Mapping[str, torch.Tensor]] = None, meta: Optional[Any] = None,
                 coord_ids: Optional[torch.Tensor] = None, packed: bool = False,
                 ce_table: Optional[CEWeightTable] = None, coord_embeddings: Optional[torch.Tensor] = None,
                 gather_slot_rows: bool = False, denominators: Optional[Mapping[str, Any]] = None, *,
                 batch: Optional[TeacherForcingBatch] = None) -> None:
        logits = dict(logits or {})
        if batch is None:
            if input_ids is None or meta is None or coord_ids is None:
                raise RuntimeError("TeacherForcingContext needs batch=..., or channel/input_ids/meta/coord_ids")
            _check_logits(logits, tuple(input_ids.shape))
            batch = TeacherForcingBatch.build(channel=channel, target_ids=input_ids, meta=meta, coord_ids=coord_ids,
                                              packed=packed, ce_table=ce_table, contexts=[c for c in CONTEXTS
                                                                                          if c in logits] or ["gt"])
            if denominators is not None and not all(isinstance(v, Mapping) for v in denominators.values()):
                unknown = sorted(set(denominators) - set(DENOMINATORS))
                if unknown or len(logits) != 1:
                    raise RuntimeError(f"denominators need names in {DENOMINATORS} and one logits context; got "
                                       f"{sorted(denominators)} with contexts {sorted(logits)}")
                denominators = {next(iter(logits)): dict(denominators)}
        elif any(x is not None for x in (channel, input_ids, meta, coord_ids, ce_table)):
            raise RuntimeError("TeacherForcingContext: give either batch=... or the batch fields, not both")
        unknown = sorted(set(logits) - set(CONTEXTS))
        if unknown or not logits:
            raise RuntimeError(f"logits contexts must be a non-empty subset of {CONTEXTS}, got {sorted(logits)}")
        missing = sorted(set(logits) - set(batch.contexts))
        if missing:
            raise RuntimeError(f"logits for contexts {missing} but the batch indexed only {batch.contexts}; pass them "
                               f"in TeacherForcingBatch.build(contexts=...)")
        _check_logits(logits, tuple(batch.target_ids.shape))
        if denominators is not None:
            for c, names in denominators.items():
                bad = sorted(set(names) - set(DENOMINATORS)) if isinstance(names, Mapping) else [names]
                if c not in logits or bad:
                    raise RuntimeError(f"denominators must be {{context: {{name: count}}}} with contexts in "
                                       f"{sorted(logits)} and names in {DENOMINATORS}; got {c!r}: {bad}")
        object.__setattr__(self, "batch", batch)
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "coord_embeddings", coord_embeddings)
        object.__setattr__(self, "gather_slot_rows", bool(gather_slot_rows))
        object.__setattr__(self, "denominators", denominators)
        object.__setattr__(self, "_cache", {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    # ---- batch fields --------------------------------------------------------------------------------------
    @property
    def channel(self) -> str:
        return self.batch.channel

    @property
    def target_ids(self) -> torch.Tensor:
        """``[B, T]``: the token at position t (its CE reads the logits at t − 1)."""
        return self.batch.target_ids

    @property
    def input_ids(self) -> torch.Tensor:
        """Alias of :attr:`target_ids` (the keyword-construction name; equal to the model input in Stage-2)."""
        return self.batch.target_ids

    @property
    def meta(self) -> tuple[SegmentMeta, ...]:
        return self.batch.meta

    @property
    def coord_ids(self) -> torch.Tensor:
        return self.batch.coord_ids

    @property
    def packed(self) -> bool:
        return self.batch.packed

    @property
    def ce_table(self) -> CEWeightTable:
        return self.batch.ce_table

    @property
    def layout(self) -> Layout:
        """Dense views (on the logits' device), built once by the batch."""
        return self.batch.layout

    def index(self, context: str) -> ContextIndex:
        """Host-built indices of ``context`` under the run's CE table."""
        return self.batch.index_for(context)

    # ---- derived views -------------------------------------------------------------------------------------
    def mean(self, name: str, total: torch.Tensor, local_count: torch.Tensor | int | float,
             context: Optional[str] = None) -> torch.Tensor:
        """``total / count`` for the mean ``name`` (:data:`DENOMINATORS`) of ``context`` (default: the only logits
        context): count = the caller's denominator when given, else ``local_count``; floored at
        :data:`DENOM_FLOOR` (an empty mean is 0). A host number divides without any transfer."""
        given = None
        if self.denominators is not None:
            if context is None:
                if len(self.logits) != 1:
                    raise RuntimeError("TeacherForcingContext.mean: name the context when several carry logits")
                context = next(iter(self.logits))
            given = self.denominators.get(context, {}).get(name)
        count = local_count if given is None else given
        if isinstance(count, torch.Tensor):
            return total / count.to(device=total.device, dtype=torch.float32).clamp_min(DENOM_FLOOR)
        return total / max(float(count), DENOM_FLOOR)

    def prepared(self, table: CEWeightTable, gather_slot_rows: bool = False) -> "TeacherForcingContext":
        """A context over the same logits with another CE table (the batch re-indexed on the host: off the hot
        path) and/or gather option; the batch is shared when the table is unchanged."""
        if table == self.ce_table and gather_slot_rows == self.gather_slot_rows:
            return self
        return TeacherForcingContext(batch=self.batch.with_table(table), logits=self.logits,
                                     coord_embeddings=self.coord_embeddings, gather_slot_rows=gather_slot_rows,
                                     denominators=self.denominators)

    def type_mask(self, name: str) -> torch.Tensor:
        """``[B, T]`` bool mask of token type ``name`` (``struct``/``desc``/``coord``/``eos``)."""
        codes = {v: k for k, v in TYPE_NAMES.items()}
        if name not in codes or name == "none":
            raise ValueError(f"unknown token type {name!r}; known: struct, desc, coord, eos")
        return self.layout.types == codes[name]

    def subset_mask(self, name: str) -> torch.Tensor:
        """``[B, T]`` bool mask of rollout subset ``matched`` / ``fp`` / ``fn`` (GT meta: all targets are ``fn``)."""
        codes = {v: k for k, v in SUBSET_NAMES.items()}
        if name not in codes or name == "none":
            raise ValueError(f"unknown rollout subset {name!r}; known: matched, fp, fn")
        return self.layout.subset == codes[name]

    def ce_weights(self, context: str, table: Optional[CEWeightTable] = None) -> tuple[torch.Tensor, float]:
        """``(w [B, T], scale)`` of :func:`ce_weights` for ``context`` (default table: ``self.ce_table``)."""
        return ce_weights(self.layout, context, self.ce_table if table is None else table)

    @property
    def geo_context(self) -> str:
        """Context whose logits feed ``geo`` / ``coord_reg``: ``self_context`` (Channel-A, n ≥ 2), else
        ``rollout`` (Channel-B), else ``gt`` (Stage-1, Channel-A n = 1)."""
        for name in ("self_context", "rollout", "gt"):
            if name in self.logits:
                return name
        raise RuntimeError("no logits context")  # unreachable: __init__ requires one

    @property
    def anchor_context(self) -> str:
        """The CE-anchor context (``gt`` if present, else ``rollout``): ``text_gate`` runs on its positions."""
        return "gt" if "gt" in self.logits else self.geo_context

    def bbox_groups(self) -> BoxGroupsView:
        """Supervised boxes: matched prefix groups ∪ FN/GT groups (never FP)."""
        return self.layout.groups

    def coord_slots(self, context: str) -> CoordSlots:
        """Supervised coord slots of ``context``: ``gt`` → every coord-type target (target = its own bin, so
        Stage-1 polygons are covered); ``self_context`` / ``rollout`` → the box-group slots with their GT bins."""
        return self.index(context).slots

    def gathered(self, context: str) -> Gathered:
        """Cached one-node gather for ``context`` (:class:`Gathered`; CE rows under ``ce_table``, slots in
        ``coord_slots(context)`` order). Modules that read it share one full-size gradient buffer in backward."""
        cache = self._cache
        if context not in cache:
            z = self.logits[context]
            vocab = z.shape[-1]
            idx = self.index(context)
            coord_idx = idx.slot_flat[:, None] * vocab + self.coord_ids[None, :]
            slot_idx = idx.slot_flat if self.gather_slot_rows else idx.slot_flat[:0]
            rows, slot_rows, coord = _FusedGather.apply(z.reshape(-1), idx.ce_flat, slot_idx, coord_idx, vocab)
            cache[context] = Gathered(idx.ce_flat, rows, coord, slot_rows if self.gather_slot_rows else None)
        return cache[context]

    def _flat_rows(self, context: str, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if debug_checks() and pos.numel() and int(pos.min()) < 1:
            raise RuntimeError("a supervised position 0 has no predicting logits")
        seq = self.logits[context].shape[1]
        return (row * seq + pos - 1).to(self.logits[context].device)

    def rows_flat(self, context: str, flat: torch.Tensor) -> torch.Tensor:
        """Full-vocab logits rows ``[N, V]`` at flat logits rows ``flat [N]`` (``row·T + pos − 1``); backward is
        one ``index_add_`` into a full-size gradient."""
        z = self.logits[context]
        vocab = z.shape[-1]
        empty = flat[:0]
        return _FusedGather.apply(z.reshape(-1), flat, empty, empty[:, None].expand(0, NUM_BINS), vocab)[0]

    def coord_logits_flat(self, context: str, flat: torch.Tensor) -> torch.Tensor:
        """Coord-slice logits ``[N, NUM_BINS]`` (ordered by bin) at flat logits rows ``flat [N]``, gathered from
        the flat storage without materialising the ``[N, V]`` rows."""
        z = self.logits[context]
        vocab = z.shape[-1]
        elems = flat[:, None] * vocab + self.coord_ids[None, :]
        return z.reshape(-1).index_select(0, elems.reshape(-1)).reshape(-1, NUM_BINS)

    def logits_at(self, context: str, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Full-vocab logits ``[N, V]`` predicting the tokens at target positions ``(row, pos)`` (read at pos − 1).

        Gathered by index through the fused gather (its backward is one ``index_add_``)."""
        return self.rows_flat(context, self._flat_rows(context, row, pos))

    def coord_logits_at(self, context: str, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Coord-slice logits ``[N, NUM_BINS]`` predicting the tokens at ``(row, pos)``."""
        return self.coord_logits_flat(context, self._flat_rows(context, row, pos))
