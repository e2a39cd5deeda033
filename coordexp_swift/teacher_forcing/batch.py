"""The teacher-forcing batch (SPEC §4.5): everything the objective modules read EXCEPT the logits, built on the host
before the forward is queued and moved to the device in one non-blocking transfer.

Batch/context API. ``TeacherForcingBatch.build(...)`` runs on the host (numpy / CPU torch): dense ``[B, T]`` type
and subset views, the §4.3 CE weights of every requested logits context, the coord slots with their target bins,
the box groups and every flat index a module gathers with. All of it is packed into one byte buffer (pinned when
the target device is CUDA) and copied with ``non_blocking=True``; nothing in it is ever read back. After the
forward(s), ``batch.with_logits(gt=..., self_context=..., rollout=...)`` binds logits per context and returns the
:class:`~coordexp_swift.teacher_forcing.context.TeacherForcingContext` the modules read (cheap: shape checks only).

``target_ids [B, T]`` means one thing everywhere: **the token at position t, whose CE reads the logits at t − 1**
(``logits[b, t − 1]`` predicts ``target_ids[b, t]``). For Stage-2 it equals the model's ``input_ids``; for Stage-1
it is ms-swift's unshifted ``labels`` (−100 where a position is not supervised), because after ms-swift's
``logits_to_keep`` compaction the logits columns follow the labels, not the ``input_ids``. Modules read targets
only at supervised positions (inside a segment's assistant span).

Flat rows: a position ``(row, pos)`` reads logits row ``row·T + pos − 1`` of ``logits.reshape(B·T, V)``; every such
index is built here, on the host, so the step after the forward has no ``nonzero``/``.item()``/boolean indexing.
Value checks that would read the device run only with ``COORDEXP_DEBUG_CHECKS=1`` (see :func:`set_debug_checks`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from coordexp_swift.coord.codec import NUM_BINS
from coordexp_swift.coord.vocab import VocabView, id_to_bin_table
from coordexp_swift.losses import coord_dist
from coordexp_swift.teacher_forcing.meta import SegmentMeta
from coordexp_swift.teacher_forcing.token_types import COORD, DESC, EOS, NONE, STRUCT, TYPE_NAMES

__all__ = [
    "CONTEXTS", "DENOMINATORS", "DENOM_FLOOR", "SUBSET_NAMES", "BoxGroupsView", "CEWeightTable", "ContextIndex",
    "CoordSlots", "Layout", "TeacherForcingBatch", "build_layout", "ce_weights", "debug_checks", "set_debug_checks",
]

#: Context names, in the order modules visit them.
CONTEXTS: tuple[str, ...] = ("gt", "self_context", "rollout")
SUB_NONE, SUB_MATCHED, SUB_FP, SUB_FN = 0, 1, 2, 3
SUBSET_NAMES: dict[int, str] = {SUB_NONE: "none", SUB_MATCHED: "matched", SUB_FP: "fp", SUB_FN: "fn"}
#: Names of the token/slot means a caller may give global denominators for: ``token_ce`` (Σ CE weights),
#: ``coord`` (coord slots of ``coord_reg``), ``text_gate`` (text-gate positions).
DENOMINATORS: tuple[str, ...] = ("token_ce", "coord", "text_gate")
DENOM_FLOOR = 1e-6


def set_debug_checks(on: bool) -> None:
    """Turn on/off the value checks that read the device (a host sync each on GPU): bins and coord-id ranges in
    ``losses.coord_dist``, supervised positions ≥ 1 of caller-given index tensors. Default: env
    ``COORDEXP_DEBUG_CHECKS=1``."""
    coord_dist.DEBUG_CHECKS = bool(on)


def debug_checks() -> bool:
    """Whether the device-reading value checks are on."""
    return coord_dist.DEBUG_CHECKS


set_debug_checks(os.environ.get("COORDEXP_DEBUG_CHECKS", "0") not in ("", "0", "false", "False"))


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
    ``matched_struct`` / ``closure`` / ``has_drop`` (bool: the segment has ``n_drop_invalid > 0``), ``segment``
    (int64, -1 outside segments) and the box groups."""

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


def build_layout(meta: tuple[SegmentMeta, ...], packed: bool, shape: tuple[int, int]) -> Layout:
    """Scatter every segment's meta into dense ``[B, T]`` CPU views (one Python step per segment, none per token)."""
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
        return torch.cat(xs) if xs else empty

    groups = BoxGroupsView(
        row=cat(g_row, torch.zeros(0, dtype=torch.long)), pos=cat(g_pos, torch.zeros(0, 4, dtype=torch.long)),
        gt_bins=cat(g_bins, torch.zeros(0, 4, dtype=torch.long)), subset=cat(g_sub, torch.zeros(0, dtype=torch.int8)),
        segment=cat(g_seg, torch.zeros(0, dtype=torch.long)),
    )
    return Layout(types=types, subset=subset, matched_struct=matched_struct, closure=closure, has_drop=has_drop,
                  segment=segment, groups=groups)


def ce_weights(layout: Layout, context: str, table: CEWeightTable) -> tuple[torch.Tensor, float]:
    """Per-position CE weights ``w [B, T]`` (float32, input positions) and the context scale (SPEC §4.3).

    ``token_ce_c = scale · Σ w_t·CE_t / max(Σ w_t, 1e-6)``. ``gt``: struct/eos 1, desc ``desc_ce_weight``, coord
    ``coord_token_ce_weight``; scale 1. ``self_context``: struct/eos 1, scale λ_fmt (the stabilizer is
    ``λ_fmt · mean CE`` over struct+eos, §3.4.6 — a uniform weight inside the ratio would cancel). ``rollout``:
    matched-prefix struct ``rollout_matched_prefix_struct_weight·m``, fp 0, FN-tail struct m, FN-tail desc
    ``rollout_fn_desc_weight``, closure + ``<|im_end|>`` 1 (never masked), coord 0; scale 1. m applies only to
    segments with ``n_drop_invalid > 0``. Runs on whatever device ``layout`` lives on (the batch runs it on the host).
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
class ContextIndex:
    """Host-built indices of one logits context under one CE table (device tensors unless noted).

    CE rows (positions with CE weight > 0 and context scale > 0, row-major): ``ce_flat [N]`` logits rows
    ``row·T + pos − 1``; ``ce_target [N]`` target ids; ``ce_part_w [3, N]`` float32 weights split by component
    (struct+eos, desc, coord); ``ce_is_coord [N]`` bool; ``gate_sel [K]`` indices into the CE rows whose target is
    neither coord nor eos (``text_gate``). Coord slots (``gt``: every coord-type target with its own bin;
    ``self_context``/``rollout``: the box-group slots with their GT bins): ``slot_row``/``slot_pos``/``slot_bins``/
    ``slot_target`` (target id) ``[M]`` and ``slot_flat [M]``. Host numbers: ``scale``, ``ce_w_sum`` (Σ w),
    ``n_ce``, ``n_coord_ce``, ``n_slots``, ``n_gate``, ``type_counts`` (type name -> supervised tokens with w > 0).
    """

    ce_flat: torch.Tensor
    ce_target: torch.Tensor
    ce_part_w: torch.Tensor
    ce_is_coord: torch.Tensor
    gate_sel: torch.Tensor
    slot_row: torch.Tensor
    slot_pos: torch.Tensor
    slot_bins: torch.Tensor
    slot_target: torch.Tensor
    slot_flat: torch.Tensor
    scale: float
    ce_w_sum: float
    n_ce: int
    n_coord_ce: int
    n_slots: int
    n_gate: int
    type_counts: Mapping[str, int]

    @property
    def slots(self) -> CoordSlots:
        return CoordSlots(row=self.slot_row, pos=self.slot_pos, target_bins=self.slot_bins)


_INDEX_TENSORS = ("ce_flat", "ce_target", "ce_part_w", "ce_is_coord", "gate_sel", "slot_row", "slot_pos",
                  "slot_bins", "slot_target", "slot_flat")


def _host_index(host: Layout, ids: torch.Tensor, id_to_bin: np.ndarray, context: str,
                table: CEWeightTable) -> dict[str, Any]:
    """CPU tensors + host numbers of :class:`ContextIndex` for ``context``."""
    seq = host.types.shape[1]
    w, scale = ce_weights(host, context, table)
    sup = (w > 0) & (scale > 0)
    row, pos = torch.nonzero(sup, as_tuple=True)
    t = host.types[row, pos]
    wv = w[row, pos]
    is_coord = t == COORD
    part = torch.stack([wv * ((t != DESC) & ~is_coord), wv * (t == DESC), wv * is_coord]).float()
    if context == "gt":
        s_row, s_pos = torch.nonzero(host.types == COORD, as_tuple=True)
        s_target = ids[s_row, s_pos]
        s_bins = torch.from_numpy(id_to_bin[s_target.clamp(min=0).numpy()])
        if bool((s_bins < 0).any()):
            raise RuntimeError("a coord-typed target of context 'gt' is not a coord id")
    else:
        g = host.groups
        s_row, s_pos, s_bins = g.row.repeat_interleave(4), g.pos.reshape(-1), g.gt_bins.reshape(-1)
        s_target = ids[s_row, s_pos]
    for name, p in (("CE", pos), ("coord-slot", s_pos)):
        if p.numel() and int(p.min()) < 1:
            raise RuntimeError(f"context {context!r}: a supervised {name} position 0 has no predicting logits")
    counts = {name: int((sup & (host.types == code)).sum()) for code, name in TYPE_NAMES.items() if name != "none"}
    return {
        "ce_flat": row * seq + pos - 1, "ce_target": ids[row, pos].clamp(min=0), "ce_part_w": part,
        "ce_is_coord": is_coord, "gate_sel": torch.nonzero((t != COORD) & (t != EOS)).reshape(-1),
        "slot_row": s_row, "slot_pos": s_pos, "slot_bins": s_bins.long(), "slot_target": s_target.clamp(min=0),
        "slot_flat": s_row * seq + s_pos - 1,
        "scale": float(scale), "ce_w_sum": float(w[sup].sum()) if row.numel() else 0.0, "n_ce": int(row.numel()),
        "n_coord_ce": int(is_coord.sum()), "n_slots": int(s_row.numel()),
        "n_gate": int(((t != COORD) & (t != EOS)).sum()), "type_counts": counts,
    }


def _pack(tensors: Mapping[str, torch.Tensor], pin: bool) -> tuple[torch.Tensor, list[tuple]]:
    """All of ``tensors`` (CPU) in one uint8 buffer, each part 8-byte aligned; returns the buffer and the parts'
    ``(name, offset, nbytes, dtype, shape)``."""
    parts, size = [], 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        parts.append((k, size, nbytes, v.dtype, tuple(v.shape)))
        size += (nbytes + 7) // 8 * 8
    buf = torch.empty(max(size, 8), dtype=torch.uint8, pin_memory=pin)
    for (k, off, nbytes, dtype, _) in parts:
        if nbytes:
            buf[off: off + nbytes].view(dtype).copy_(tensors[k].reshape(-1))
    return buf, parts


def _unpack(buf: torch.Tensor, parts: list[tuple]) -> dict[str, torch.Tensor]:
    """Views of ``buf`` (any device) per part of :func:`_pack`."""
    return {k: buf[off: off + nbytes].view(dtype).reshape(shape) for (k, off, nbytes, dtype, shape) in parts}


def _ship(tensors: Mapping[str, torch.Tensor], device: torch.device) -> tuple[dict[str, torch.Tensor], Any]:
    """Move CPU ``tensors`` to ``device`` in ONE copy: packed into one byte buffer (:func:`_pack`; pinned for CUDA)
    and copied with ``non_blocking=True``; returns views of the device buffer and the host buffer (kept alive by
    the batch so the asynchronous copy never reads freed memory). On CPU the tensors are returned as they are."""
    if device.type == "cpu":
        return {k: v.contiguous() for k, v in tensors.items()}, None
    buf, parts = _pack(tensors, pin=device.type == "cuda" and torch.cuda.is_available())
    return _unpack(buf.to(device, non_blocking=True), parts), buf


@dataclass(frozen=True, eq=False)
class TeacherForcingBatch:
    """Host-built, device-resident teacher-forcing batch; see the module docstring. Build with :meth:`build`.

    Fields: ``channel`` (``"A"`` | ``"B"``; Stage-1 runs as A with context ``gt``), ``target_ids [B, T]`` long,
    ``meta`` (one :class:`SegmentMeta` per row, or per segment when ``packed`` ⇒ B = 1), ``coord_ids [NUM_BINS]``
    (device), ``packed``, ``ce_table`` (the run's §4.3 weights), ``contexts`` (the logits contexts indexed),
    ``layout`` (dense views on the device), ``host_layout`` (the same on the CPU), ``index`` (context ->
    :class:`ContextIndex`), ``group_flat [4G]`` (logits rows of the box-group slots, group order), ``vocab``
    (the run's :class:`VocabView`, or ``None`` when built from bare coord ids).
    """

    channel: str
    target_ids: torch.Tensor
    meta: tuple[SegmentMeta, ...]
    coord_ids: torch.Tensor
    packed: bool
    ce_table: CEWeightTable
    contexts: tuple[str, ...]
    layout: Layout
    host_layout: Layout
    index: Mapping[str, ContextIndex]
    group_flat: torch.Tensor
    vocab: Optional[VocabView] = None
    _host_ids: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    _host_buffer: Any = field(default=None, repr=False)
    _extra_index: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, *, channel: str, target_ids: torch.Tensor, meta: Sequence[SegmentMeta],
              vocab: Optional[VocabView] = None, coord_ids: Optional[torch.Tensor] = None, packed: bool = False,
              ce_table: Optional[CEWeightTable] = None, contexts: Sequence[str] = ("gt",),
              device: Optional[torch.device | str] = None) -> "TeacherForcingBatch":
        """Build on the host and ship to ``device`` (default: ``target_ids.device``) in one non-blocking copy.

        ``target_ids [B, T]``: see the module docstring (a CPU tensor avoids a device read here; a device tensor
        is read once, before the forward). ``vocab`` or bare ``coord_ids [NUM_BINS]``: the coord vocabulary.
        ``contexts``: the logits contexts the step will bind (indices are built for exactly these).
        Raises ``RuntimeError`` when the meta does not fit ``target_ids`` or a supervised position is 0.
        """
        if channel not in ("A", "B"):
            raise RuntimeError(f"TeacherForcingContext.channel must be 'A' or 'B', got {channel!r}")
        if target_ids.dim() != 2:
            raise RuntimeError(f"target_ids must be [B, T], got {tuple(target_ids.shape)}")
        contexts = tuple(contexts)
        unknown = sorted(set(contexts) - set(CONTEXTS))
        if unknown or not contexts:
            raise RuntimeError(f"logits contexts must be a non-empty subset of {CONTEXTS}, got {sorted(contexts)}")
        if vocab is not None:
            cids = vocab.coord_ids
            id_to_bin = vocab.id_to_bin
        else:
            if coord_ids is None:
                raise RuntimeError("TeacherForcingBatch.build needs vocab or coord_ids")
            cids = torch.as_tensor(coord_ids).reshape(-1).long().cpu()
            if cids.shape != (NUM_BINS,):
                raise RuntimeError(f"coord_ids must be [{NUM_BINS}], got {tuple(cids.shape)}")
            id_to_bin = None
        device = torch.device(device) if device is not None else target_ids.device
        meta = tuple(meta)
        shape = (int(target_ids.shape[0]), int(target_ids.shape[1]))
        host_ids = target_ids.detach().cpu().long()
        if id_to_bin is None:
            id_to_bin = id_to_bin_table(cids, int(host_ids.max()) + 1 if host_ids.numel() else 0)
        elif host_ids.numel() and int(host_ids.max()) >= len(id_to_bin):
            raise RuntimeError(f"target id {int(host_ids.max())} is outside the vocabulary ({len(id_to_bin)})")
        table = CEWeightTable() if ce_table is None else ce_table
        host = build_layout(meta, packed, shape)
        parts: dict[str, torch.Tensor] = {}
        lay_names = ("types", "subset", "matched_struct", "closure", "has_drop", "segment")
        for name in lay_names:
            parts[f"layout.{name}"] = getattr(host, name)
        for name in ("row", "pos", "gt_bins", "subset", "segment"):
            parts[f"groups.{name}"] = getattr(host.groups, name)
        g = host.groups
        parts["group_flat"] = (g.row[:, None] * shape[1] + g.pos - 1).reshape(-1)
        if g.pos.numel() and int(g.pos.min()) < 1:
            raise RuntimeError("a box-group slot at position 0 has no predicting logits")
        numbers: dict[str, dict[str, Any]] = {}
        for c in contexts:
            idx = _host_index(host, host_ids, id_to_bin, c, table)
            numbers[c] = {k: v for k, v in idx.items() if k not in _INDEX_TENSORS}
            for k in _INDEX_TENSORS:
                parts[f"{c}.{k}"] = idx[k]
        parts["coord_ids"] = cids
        reuse_ids = target_ids.device == device
        if not reuse_ids:
            parts["target_ids"] = host_ids
        dev, buffer = _ship(parts, device)
        groups = BoxGroupsView(**{n: dev[f"groups.{n}"] for n in ("row", "pos", "gt_bins", "subset", "segment")})
        layout = Layout(**{n: dev[f"layout.{n}"] for n in lay_names}, groups=groups)
        index = {c: ContextIndex(**{k: dev[f"{c}.{k}"] for k in _INDEX_TENSORS}, **numbers[c]) for c in contexts}
        return cls(channel=channel, target_ids=target_ids.long() if reuse_ids else dev["target_ids"], meta=meta,
                   coord_ids=dev["coord_ids"], packed=packed, ce_table=table, contexts=contexts, layout=layout,
                   host_layout=host, index=index, group_flat=dev["group_flat"], vocab=vocab, _host_ids=host_ids,
                   _host_buffer=buffer)

    @property
    def num_segments(self) -> int:
        """Number of segments (samples) in the batch."""
        return len(self.meta)

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, T)``."""
        return int(self.target_ids.shape[0]), int(self.target_ids.shape[1])

    def index_for(self, context: str, table: Optional[CEWeightTable] = None) -> ContextIndex:
        """The :class:`ContextIndex` of ``context`` under ``table`` (default: the batch's table). Another table is
        built on the host on first use and shipped on its own (off the hot path: the executor always uses the
        batch's table)."""
        if table is None or table == self.ce_table:
            if context not in self.index:
                raise RuntimeError(f"context {context!r} was not indexed by this batch (contexts: "
                                   f"{self.contexts}); pass it in TeacherForcingBatch.build(contexts=...)")
            return self.index[context]
        key = (context, table)
        if key not in self._extra_index:
            ids = self._host_ids
            id_to_bin = self.vocab.id_to_bin if self.vocab is not None else _lut(self.coord_ids.cpu(), ids)
            idx = _host_index(self.host_layout, ids, id_to_bin, context, table)
            dev, buffer = _ship({k: idx[k] for k in _INDEX_TENSORS}, self.target_ids.device)
            self._extra_index[key] = (ContextIndex(**dev, **{k: v for k, v in idx.items()
                                                              if k not in _INDEX_TENSORS}), buffer)
        return self._extra_index[key][0]

    def with_table(self, table: CEWeightTable) -> "TeacherForcingBatch":
        """The same batch indexed under another CE table (a host rebuild + one transfer)."""
        if table == self.ce_table:
            return self
        return TeacherForcingBatch.build(channel=self.channel, target_ids=self._host_ids, meta=self.meta,
                                         vocab=self.vocab, coord_ids=None if self.vocab else self.coord_ids.cpu(),
                                         packed=self.packed, ce_table=table, contexts=self.contexts,
                                         device=self.target_ids.device)

    def with_logits(self, *, gt: Optional[torch.Tensor] = None, self_context: Optional[torch.Tensor] = None,
                    rollout: Optional[torch.Tensor] = None,
                    denominators: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    coord_embeddings: Optional[torch.Tensor] = None, gather_slot_rows: bool = False):
        """Bind logits ``[B, T, V]`` per context (``logits[b, t − 1]`` predicts ``target_ids[b, t]``) and return the
        :class:`~coordexp_swift.teacher_forcing.context.TeacherForcingContext` the modules read.

        ``denominators``: ``{context: {name: count}}`` (names in :data:`DENOMINATORS`; counts are 0-d tensors
        or numbers), replacing the local denominator of that mean in that context, e.g. counts over an
        accumulation window and ranks. ``coord_embeddings``: ``E_c [NUM_BINS, H]`` (``st_embed_gap`` only)."""
        from coordexp_swift.teacher_forcing.context import TeacherForcingContext

        logits = {k: v for k, v in (("gt", gt), ("self_context", self_context), ("rollout", rollout))
                  if v is not None}
        return TeacherForcingContext(batch=self, logits=logits, denominators=denominators,
                                     coord_embeddings=coord_embeddings, gather_slot_rows=gather_slot_rows)


def _lut(coord_ids: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    size = max(int(coord_ids.max()) + 1, int(ids.max()) + 1 if ids.numel() else 0)
    lut = np.full(size, -1, dtype=np.int64)
    lut[coord_ids.numpy()] = np.arange(NUM_BINS, dtype=np.int64)
    return lut
