"""``TeacherForcingContext`` (SPEC §4.5) and its derived views: type masks, subset masks, CE weights per context
(§4.3), bbox groups and coord slots. Modules read only these views; they never run the model or parse text.

Layout: ``input_ids [B, T]``; ``logits[c] [B, T, V]`` per context ``c`` ∈ {``gt``, ``self_context``, ``rollout``};
``logits[c][b, t]`` predicts ``input_ids[b, t+1]``. ``meta`` holds one :class:`SegmentMeta` per sample (unpacked:
row i, starting at column 0) or per segment (packed: B = 1, segments laid out back to back, each ``encoded_len``
long). All views are ``[B, T]`` over INPUT positions (the token at position t, whose CE reads logits at t−1), and
every supervised position is segment-local by construction (no target crosses a segment).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, NamedTuple, Optional

import torch

from coordexp_swift.coord.codec import NUM_BINS
from coordexp_swift.teacher_forcing.meta import SegmentMeta
from coordexp_swift.teacher_forcing.token_types import COORD, DESC, EOS, NONE, STRUCT, TYPE_NAMES

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
    "TeacherForcingContext",
    "ce_weights",
]

#: Context names, in the order modules visit them.
CONTEXTS: tuple[str, ...] = ("gt", "self_context", "rollout")
SUB_NONE, SUB_MATCHED, SUB_FP, SUB_FN = 0, 1, 2, 3
SUBSET_NAMES: dict[int, str] = {SUB_NONE: "none", SUB_MATCHED: "matched", SUB_FP: "fp", SUB_FN: "fn"}
#: Names of the token/slot means a caller may give global denominators for: ``token_ce`` (Σ CE weights),
#: ``coord`` (coord slots of ``coord_reg``), ``text_gate`` (text-gate positions).
DENOMINATORS: tuple[str, ...] = ("token_ce", "coord", "text_gate")
DENOM_FLOOR = 1e-6


@dataclass(frozen=True)
class CEWeightTable:
    """The §4.3 token-CE weights (from the ``token_ce`` module config; defaults = §6.1 explicit defaults).

    ``coord_token_ce_weight`` is the Stage-1 "coord loss off" case (coord tokens kept in the base CE); it is 0 in
    both Stage-2 trainers and never part of a pipeline config.
    """

    desc_ce_weight: float = 1.0
    self_context_struct_ce_weight: float = 0.1
    rollout_fn_desc_weight: float = 1.0
    rollout_matched_prefix_struct_weight: float = 1.0
    rollout_drop_invalid_struct_ce_multiplier: float = 1.0
    coord_token_ce_weight: float = 0.0

    def component_weights(self, context: str) -> dict[str, float]:
        """Max effective weight of each CE component (``struct``, ``desc``, ``coord``) in ``context``; a key is
        emitted iff its weight is > 0 (SPEC §8.2). The ``struct`` component includes eos/closure."""
        m = self.rollout_drop_invalid_struct_ce_multiplier
        table = {
            "gt": {"struct": 1.0, "desc": self.desc_ce_weight, "coord": self.coord_token_ce_weight},
            "self_context": {"struct": self.self_context_struct_ce_weight, "desc": 0.0, "coord": 0.0},
            "rollout": {"struct": max(1.0, m, self.rollout_matched_prefix_struct_weight * m),
                        "desc": self.rollout_fn_desc_weight, "coord": 0.0},
        }
        return table[context]


@dataclass(frozen=True, eq=False)
class BoxGroupsView:
    """All supervised boxes of the batch: ``row [G]``, ``pos [G, 4]`` absolute input columns of the coord tokens
    (logits at ``pos − 1``), ``gt_bins [G, 4]``, ``subset [G]`` (``SUB_MATCHED`` prefix / ``SUB_FN`` tail),
    ``segment [G]`` index into ``meta``."""

    row: torch.Tensor
    pos: torch.Tensor
    gt_bins: torch.Tensor
    subset: torch.Tensor
    segment: torch.Tensor

    def __len__(self) -> int:
        return int(self.row.shape[0])


@dataclass(frozen=True, eq=False)
class CoordSlots:
    """Supervised coord slots: ``row [N]``, ``pos [N]`` absolute input columns (logits at ``pos − 1``),
    ``target_bins [N]`` (0..MAX_BIN)."""

    row: torch.Tensor
    pos: torch.Tensor
    target_bins: torch.Tensor

    def __len__(self) -> int:
        return int(self.row.shape[0])


@dataclass(frozen=True, eq=False)
class Layout:
    """Dense ``[B, T]`` views built once from the meta: ``types`` (int8 codes), ``subset`` (int8),
    ``matched_struct`` / ``closure`` (bool), ``multiplier`` (float32: the drop multiplier m of the segment where
    ``n_drop_invalid > 0`` else 1), ``segment`` (int64, -1 outside segments) and the box groups."""

    types: torch.Tensor
    subset: torch.Tensor
    matched_struct: torch.Tensor
    closure: torch.Tensor
    has_drop: torch.Tensor
    segment: torch.Tensor
    groups: BoxGroupsView


def _segment_starts(meta: tuple[SegmentMeta, ...], packed: bool, shape: tuple[int, int]) -> list[tuple[int, int]]:
    bsz, seq = shape
    if packed:
        if bsz != 1:
            raise RuntimeError(f"packed TeacherForcingContext needs batch size 1, got input_ids {shape}")
        starts, col = [], 0
        for m in meta:
            starts.append((0, col))
            col += m.encoded_len
        if col > seq:
            raise RuntimeError(f"packed segments need {col} columns (Σ encoded_len) but the row has {seq}")
        return starts
    if len(meta) != bsz:
        raise RuntimeError(f"unpacked TeacherForcingContext needs one meta per row: {len(meta)} metas, {bsz} rows")
    for i, m in enumerate(meta):
        if m.encoded_len > seq:
            raise RuntimeError(f"meta[{i}].encoded_len {m.encoded_len} exceeds the padded length {seq}")
    return [(i, 0) for i in range(bsz)]


def build_layout(meta: tuple[SegmentMeta, ...], packed: bool, shape: tuple[int, int],
                 device: torch.device) -> Layout:
    """Scatter every segment's meta into dense ``[B, T]`` views (one Python step per segment, none per token)."""
    bsz, seq = shape
    types = torch.full((bsz, seq), NONE, dtype=torch.int8)
    subset = torch.full((bsz, seq), SUB_NONE, dtype=torch.int8)
    matched_struct = torch.zeros(bsz, seq, dtype=torch.bool)
    closure = torch.zeros(bsz, seq, dtype=torch.bool)
    has_drop = torch.zeros(bsz, seq, dtype=torch.bool)
    segment = torch.full((bsz, seq), -1, dtype=torch.long)
    g_row, g_pos, g_bins, g_sub, g_seg = [], [], [], [], []
    for i, (m, (row, off)) in enumerate(zip(meta, _segment_starts(meta, packed, shape))):
        lo, hi = m.span
        mid = lo + m.prefix_len
        types[row, off + lo: off + hi] = m.token_types
        subset[row, off + lo: off + mid] = SUB_FP
        subset[row, off + m.prefix_matched_pos] = SUB_MATCHED
        subset[row, off + mid: off + hi] = SUB_FN
        matched_struct[row, off + m.prefix_struct_pos] = True
        closure[row, off + m.tail_closure_pos] = True
        segment[row, off: off + m.encoded_len] = i
        if m.n_drop_invalid > 0:
            has_drop[row, off: off + m.encoded_len] = True
        for groups, tag in ((m.bbox_groups_prefix, SUB_MATCHED), (m.bbox_groups_fn, SUB_FN)):
            n = len(groups)
            if n:
                g_row.append(torch.full((n,), row, dtype=torch.long))
                g_pos.append(groups.pos + off)
                g_bins.append(groups.gt_bins)
                g_sub.append(torch.full((n,), tag, dtype=torch.int8))
                g_seg.append(torch.full((n,), i, dtype=torch.long))

    def cat(xs: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
        return (torch.cat(xs) if xs else empty).to(device)

    groups = BoxGroupsView(
        row=cat(g_row, torch.zeros(0, dtype=torch.long)), pos=cat(g_pos, torch.zeros(0, 4, dtype=torch.long)),
        gt_bins=cat(g_bins, torch.zeros(0, 4, dtype=torch.long)), subset=cat(g_sub, torch.zeros(0, dtype=torch.int8)),
        segment=cat(g_seg, torch.zeros(0, dtype=torch.long)),
    )
    return Layout(types=types.to(device), subset=subset.to(device), matched_struct=matched_struct.to(device),
                  closure=closure.to(device), has_drop=has_drop.to(device), segment=segment.to(device),
                  groups=groups)


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
        return table.index_select(0, row_idx), table.index_select(0, slot_idx), coord

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


def ce_weights(layout: Layout, context: str, table: CEWeightTable) -> tuple[torch.Tensor, float]:
    """Per-position CE weights ``w [B, T]`` (float32, input positions) and the context scale (SPEC §4.3).

    ``token_ce_c = scale · Σ w_t·CE_t / max(Σ w_t, 1e-6)``. ``gt``: struct/eos 1, desc ``desc_ce_weight``, coord
    ``coord_token_ce_weight``; scale 1. ``self_context``: struct/eos 1, scale λ_fmt (the stabilizer is
    ``λ_fmt · mean CE`` over struct+eos, §3.4.6 — a uniform weight inside the ratio would cancel). ``rollout``:
    matched-prefix struct ``rollout_matched_prefix_struct_weight·m``, fp 0, FN-tail struct m, FN-tail desc
    ``rollout_fn_desc_weight``, closure + ``<|im_end|>`` 1 (never masked), coord 0; scale 1. m applies only to
    segments with ``n_drop_invalid > 0``.
    """
    types = layout.types
    struct_or_eos = (types == STRUCT) | (types == EOS)
    zeros = torch.zeros(types.shape, dtype=torch.float32, device=types.device)
    if context == "gt":
        w = (zeros + struct_or_eos.float() + (types == DESC).float() * table.desc_ce_weight
             + (types == COORD).float() * table.coord_token_ce_weight)
        return w, 1.0
    if context == "self_context":
        return zeros + struct_or_eos.float(), table.self_context_struct_ce_weight
    if context == "rollout":
        m = torch.where(layout.has_drop, table.rollout_drop_invalid_struct_ce_multiplier, 1.0).float()
        fn = layout.subset == SUB_FN
        w = torch.where(layout.matched_struct, table.rollout_matched_prefix_struct_weight * m, zeros)
        w = torch.where(fn & (types == STRUCT), m, w)
        w = torch.where(fn & (types == DESC), torch.full_like(w, table.rollout_fn_desc_weight), w)
        w = torch.where(layout.closure, torch.ones_like(w), w)
        return w, 1.0
    raise ValueError(f"unknown teacher-forcing context {context!r}; known: {', '.join(CONTEXTS)}")


@dataclass(frozen=True, eq=False)
class TeacherForcingContext:
    """Everything a pipeline module may read for one micro-batch (SPEC §4.5).

    Fields:
      channel: ``"A"`` | ``"B"`` (rollout-aligned runs as B; Stage-1 as A with context ``gt`` only).
      input_ids: ``[B, T]`` long.
      logits: context name -> ``[B, T, V]`` (``[b, t]`` predicts ``input_ids[b, t+1]``).
      meta: one :class:`SegmentMeta` per row (unpacked) or per segment (packed ⇒ B = 1).
      coord_ids: ``[NUM_BINS]`` long, vocab id of bin k.
      packed: packing flag.
      ce_table: the run's §4.3 weights (the executor sets it from the ``token_ce`` config); ``text_gate`` and
        ``token_type_diag`` use it for "positions with CE weight > 0".
      coord_embeddings: optional ``E_c [NUM_BINS, H]`` (for the ``st_embed_gap`` diagnostic only).
      gather_slot_rows: also gather full-vocab rows at the coord slots in :meth:`gathered` (set by the executor
        when a module reads them, e.g. ``coord_reg``'s ``coord_gate``).
      denominators: optional ``{name: count}`` (names in :data:`DENOMINATORS`) replacing the local denominator of
        that mean in every module (Stage-1: counts over the accumulation window and ranks, SPEC §2.3); only with a
        single logits context. ``None``: every mean is local to this micro-batch (SPEC §4.2).
    Raises ``RuntimeError`` when logits and ids disagree in ``[B, T]`` or meta does not fit the batch.
    """

    channel: str
    input_ids: torch.Tensor
    logits: Mapping[str, torch.Tensor]
    meta: tuple[SegmentMeta, ...]
    coord_ids: torch.Tensor
    packed: bool = False
    ce_table: CEWeightTable = field(default_factory=CEWeightTable)
    coord_embeddings: Optional[torch.Tensor] = None
    gather_slot_rows: bool = False
    denominators: Optional[Mapping[str, torch.Tensor]] = None

    def __post_init__(self) -> None:
        if self.channel not in ("A", "B"):
            raise RuntimeError(f"TeacherForcingContext.channel must be 'A' or 'B', got {self.channel!r}")
        if self.input_ids.dim() != 2:
            raise RuntimeError(f"input_ids must be [B, T], got {tuple(self.input_ids.shape)}")
        unknown = sorted(set(self.logits) - set(CONTEXTS))
        if unknown or not self.logits:
            raise RuntimeError(f"logits contexts must be a non-empty subset of {CONTEXTS}, got {sorted(self.logits)}")
        for name, z in self.logits.items():
            if z.dim() != 3 or tuple(z.shape[:2]) != tuple(self.input_ids.shape):
                raise RuntimeError(f"logits[{name!r}] shape {tuple(z.shape)} does not match input_ids "
                                   f"{tuple(self.input_ids.shape)} in [B, T] (sliced logits?)")
        if self.coord_ids.shape != (NUM_BINS,):
            raise RuntimeError(f"coord_ids must be [{NUM_BINS}], got {tuple(self.coord_ids.shape)}")
        if self.denominators is not None:
            unknown = sorted(set(self.denominators) - set(DENOMINATORS))
            if unknown or len(self.logits) != 1:
                raise RuntimeError(f"denominators need names in {DENOMINATORS} and one logits context; got "
                                   f"{sorted(self.denominators)} with contexts {sorted(self.logits)}")
        object.__setattr__(self, "meta", tuple(self.meta))
        _segment_starts(self.meta, self.packed, tuple(self.input_ids.shape))

    # ---- derived views -------------------------------------------------------------------------------------
    @cached_property
    def layout(self) -> Layout:
        """Dense views built once per context object."""
        return build_layout(self.meta, self.packed, tuple(self.input_ids.shape), self.input_ids.device)

    def mean(self, name: str, total: torch.Tensor, local_count: torch.Tensor | int | float) -> torch.Tensor:
        """``total / count`` for the mean ``name`` (:data:`DENOMINATORS`): count = the caller's denominator when
        given, else ``local_count``; floored at :data:`DENOM_FLOOR` (so an empty mean is 0)."""
        given = self.denominators.get(name) if self.denominators is not None else None
        count = local_count if given is None else given
        return total / torch.as_tensor(count, dtype=torch.float32, device=total.device).clamp_min(DENOM_FLOOR)

    def prepared(self, table: CEWeightTable, gather_slot_rows: bool = False) -> "TeacherForcingContext":
        """A copy with another CE table / gather option that shares the cached layout."""
        if table == self.ce_table and gather_slot_rows == self.gather_slot_rows:
            return self
        out = dataclasses.replace(self, ce_table=table, gather_slot_rows=gather_slot_rows)
        if "layout" in self.__dict__:
            out.__dict__["layout"] = self.__dict__["layout"]
        return out

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
        raise RuntimeError("no logits context")  # unreachable: __post_init__ requires one

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
        if context == "gt":
            row, pos = torch.nonzero(self.layout.types == COORD, as_tuple=True)
            lut = torch.full((int(self.coord_ids.max()) + 1,), -1, dtype=torch.long, device=self.input_ids.device)
            lut[self.coord_ids.to(lut.device)] = torch.arange(NUM_BINS, device=lut.device)
            bins = lut[self.input_ids[row, pos]]
            return CoordSlots(row=row, pos=pos, target_bins=bins)
        g = self.layout.groups
        return CoordSlots(row=g.row.repeat_interleave(4), pos=g.pos.reshape(-1), target_bins=g.gt_bins.reshape(-1))

    def gathered(self, context: str) -> Gathered:
        """Cached one-node gather for ``context`` (:class:`Gathered`; CE rows under ``ce_table``, slots in
        ``coord_slots(context)`` order). Modules that read it share one full-size gradient buffer in backward."""
        cache = self.__dict__.setdefault("_gather_cache", {})
        if context not in cache:
            z = self.logits[context]
            vocab = z.shape[-1]
            w, scale = self.ce_weights(context)
            row, pos = torch.nonzero((w > 0) & (scale > 0), as_tuple=True)
            flat_rows = self._flat_rows(context, row, pos)
            slots = self.coord_slots(context)
            slot_flat = self._flat_rows(context, slots.row, slots.pos)
            coord_idx = slot_flat[:, None] * vocab + self.coord_ids.to(z.device)[None, :]
            slot_idx = slot_flat if self.gather_slot_rows else slot_flat[:0]
            rows, slot_rows, coord = _FusedGather.apply(z.reshape(-1), flat_rows, slot_idx, coord_idx, vocab)
            cache[context] = Gathered(flat_rows, rows, coord, slot_rows if self.gather_slot_rows else None)
        return cache[context]

    def _flat_rows(self, context: str, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if pos.numel() and int(pos.min()) < 1:
            raise RuntimeError("a supervised position 0 has no predicting logits")
        seq = self.logits[context].shape[1]
        return (row * seq + pos - 1).to(self.logits[context].device)

    def logits_at(self, context: str, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Full-vocab logits ``[N, V]`` predicting the tokens at input positions ``(row, pos)`` (read at pos − 1).

        Gathered with ``index_select`` on the flattened logits (its backward is one ``index_add_``)."""
        z = self.logits[context]
        return z.reshape(-1, z.shape[-1]).index_select(0, self._flat_rows(context, row, pos))

    def coord_logits_at(self, context: str, row: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Coord-slice logits ``[N, NUM_BINS]`` (ordered by bin) predicting the tokens at ``(row, pos)``, gathered
        from the flat storage without materialising the ``[N, V]`` rows."""
        z = self.logits[context]
        vocab = z.shape[-1]
        flat = self._flat_rows(context, row, pos)[:, None] * vocab + self.coord_ids.to(z.device)[None, :]
        return z.reshape(-1).index_select(0, flat.reshape(-1)).reshape(-1, NUM_BINS)
