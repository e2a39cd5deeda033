"""Stage-1 on the registry (SPEC §2, §4 context ``gt``; seed 002 7B): the ``gt`` teacher-forcing batch of a
micro-batch, built from its labels BEFORE the forward, and the Stage-1 objective = :func:`stage1_manifest` run by
``ObjectivePipeline`` on ``batch.with_logits(gt=logits)``.

Layout: the batch's ``target_ids`` are ms-swift's unshifted labels (−100 = not supervised) and ``logits[b, t − 1]``
predicts ``labels[b, t]``; this also holds after ms-swift's ``logits_to_keep`` cut both to the supervised positions
(batch size 1: compacted to them; larger batches: a common suffix). Each row gets one ``SegmentMeta`` spanning its
supervised positions. A run of supervised positions that are consecutive in the ORIGINAL row (one sample's answer;
after compaction recovered from the kept-position mask) is typed on its own, so types stay segment-local on packed
rows; positions between runs are ``NONE`` (unsupervised).

Denominators (SPEC §2.3): per micro-batch by default; given the counts of a whole accumulation window (and ranks),
every mean divides by them instead, and the logged values are rescaled back to micro-batch means (local counts are
host numbers of the batch). Accuracies are argmaxes of the rows the objective already gathered. After the forward
nothing reads the device: the caller moves the logged values to the host in one transfer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from coordexp_swift.config.custom import CoordSoftCEW1Config
from coordexp_swift.coord.vocab import PieceTable, VocabView
from coordexp_swift.losses.token_masks import IGNORE_INDEX, Stage1Masks, stage1_masks
from coordexp_swift.teacher_forcing.batch import DENOMINATORS, TeacherForcingBatch
from coordexp_swift.teacher_forcing.context import TeacherForcingContext
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline
from coordexp_swift.teacher_forcing.meta import BBoxGroups, SegmentMeta
from coordexp_swift.teacher_forcing.manifest import stage1_manifest
from coordexp_swift.teacher_forcing.token_types import NONE, partition_token_types, scan_coordjson

__all__ = ["PieceTable", "Stage1Objective", "Stage1Step", "gt_batch_from_labels", "gt_context_from_labels",
           "gt_meta_from_labels", "supervised_runs"]

_EMPTY = torch.zeros(0, dtype=torch.long)


def supervised_runs(labels_row: torch.Tensor, kept: Optional[torch.Tensor] = None) -> list[tuple[int, int]]:
    """Half-open runs ``[lo, hi)`` of supervised positions of one label row ``[T]`` that are consecutive in the
    original row. ``kept``: ms-swift's bool ``logits_to_keep`` mask over the original positions (compacted row:
    position p ≥ 1 of the row is original position ``nonzero(kept)[p − 1] + 1``); ``None`` for uncompacted rows."""
    pos = torch.nonzero(labels_row != IGNORE_INDEX).reshape(-1)
    if pos.numel() == 0:
        return []
    if int(pos[0]) < 1:
        raise RuntimeError("Stage-1: a supervised label at position 0 has no predicting logits")
    orig = pos if kept is None else torch.nonzero(kept.reshape(-1)).reshape(-1).to(pos.device)[pos - 1] + 1
    breaks = (torch.nonzero(orig[1:] - orig[:-1] != 1).reshape(-1) + 1).tolist()
    bounds = [0, *breaks, pos.numel()]
    return [(int(pos[a]), int(pos[b - 1]) + 1) for a, b in zip(bounds[:-1], bounds[1:])]


def _row_meta(labels_row: torch.Tensor, kept: Optional[torch.Tensor], pieces: PieceTable,
              coord_ids: torch.Tensor, eos_id: int) -> SegmentMeta:
    runs = supervised_runs(labels_row, kept)
    lo, hi = (runs[0][0], runs[-1][1]) if runs else (1, 1)
    types = torch.full((hi - lo,), NONE, dtype=torch.int8)
    for a, b in runs:
        ids = labels_row[a:b]
        text, offsets = pieces.render(ids.numpy())
        types[a - lo: b - lo] = partition_token_types(ids, offsets, scan_coordjson(text).desc_value_spans,
                                                      coord_ids, eos_id)
    return SegmentMeta(prompt_len=lo, prefix_len=0, train_len=hi - lo, encoded_len=labels_row.numel(),
                       prefix_struct_pos=_EMPTY, prefix_coord_pos=_EMPTY, prefix_matched_pos=_EMPTY,
                       tail_desc_pos=_EMPTY, tail_closure_pos=_EMPTY, bbox_groups_prefix=BBoxGroups(),
                       bbox_groups_fn=BBoxGroups(), n_drop_invalid=0, invalid_rollout=False, token_types=types)


def gt_meta_from_labels(labels: torch.Tensor, *, coord_ids: torch.Tensor, eos_id: int,
                        pieces: Union[PieceTable, Sequence[str]],
                        kept: Optional[torch.Tensor] = None) -> tuple[SegmentMeta, ...]:
    """One ``SegmentMeta`` per row of unshifted ``labels [B, T]`` (see the module docstring). Host work only, so a
    trainer can run it before the forward, overlapping the device.

    ``pieces``: decoded text per token id (a :class:`PieceTable`, or a sequence converted on each call); ``kept``:
    the bool ``logits_to_keep`` mask (compacted rows) or ``None``."""
    pieces = pieces if isinstance(pieces, PieceTable) else PieceTable(pieces)
    kept = kept.cpu() if isinstance(kept, torch.Tensor) and kept.dtype == torch.bool else None
    host = labels.cpu()  # one transfer; the token-type split reads ids on the host
    return tuple(_row_meta(host[b], kept, pieces, coord_ids, eos_id) for b in range(host.shape[0]))


def gt_batch_from_labels(labels: torch.Tensor, meta: Sequence[SegmentMeta], *,
                         vocab: Optional[VocabView] = None, coord_ids: Optional[torch.Tensor] = None,
                         ce_table=None, device: Optional[torch.device] = None) -> TeacherForcingBatch:
    """Channel-A ``gt`` batch of a Stage-1 micro-batch: ``target_ids`` = unshifted ``labels [B, T]`` (host or
    device), ``meta`` from :func:`gt_meta_from_labels`; built on the host, shipped to ``device`` (default: the
    labels' device) in one transfer."""
    return TeacherForcingBatch.build(channel="A", target_ids=labels, meta=meta, vocab=vocab, coord_ids=coord_ids,
                                     ce_table=ce_table, contexts=("gt",), device=device)


def gt_context_from_labels(logits: torch.Tensor, labels: torch.Tensor, meta: Sequence[SegmentMeta], *,
                           coord_ids: torch.Tensor,
                           denominators: Optional[dict[str, torch.Tensor]] = None) -> TeacherForcingContext:
    """Channel-A context ``gt`` of a Stage-1 micro-batch: ``logits [B, T, V]`` and unshifted ``labels [B, T]`` as
    the model returned / ms-swift passed them, ``meta`` from :func:`gt_meta_from_labels`; ``denominators``: global
    counts by name (:data:`DENOMINATORS`) or ``None`` (micro-batch means)."""
    batch = gt_batch_from_labels(labels, meta, coord_ids=coord_ids, device=logits.device)
    return batch.with_logits(gt=logits, denominators=None if denominators is None else {"gt": denominators})


@dataclass(frozen=True)
class Stage1Step:
    """One micro-batch of the Stage-1 objective.

    ``loss``: scalar (graph-connected) = Σ of the §8.2 contributions, each divided by the given denominators;
    ``logged``: every emitted §8.2 key (+ ``loss/coord_reg`` iff a sub-term is on) as micro-batch means, 0-d
    tensors; ``accuracies``: ``token_acc`` / ``coord_token_acc`` / ``text_token_acc`` -> (hits: 0-d tensor,
    count: host int)."""

    loss: torch.Tensor
    logged: dict[str, torch.Tensor]
    accuracies: dict[str, tuple[torch.Tensor, int]]


def _hits(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: full-vocab argmax of ``rows [N, V]`` (raw logits, one read) equals ``targets``; a row whose
    maximum is NaN counts as a miss."""
    pred = rows.argmax(-1)
    return (pred == targets) & ~torch.isnan(rows.gather(-1, pred[:, None])[:, 0])


class Stage1Objective:
    """``custom.coord_soft_ce_w1`` as the registry's ``token_ce`` (+ ``coord_reg``) modules on context ``gt``.

    ``vocab``: the run's :class:`VocabView` (coord ids, id → bin tables, pieces, ``<|im_end|>``). For tests the
    parts may be given instead: ``coord_ids [NUM_BINS]``, ``vocab_size`` (≥ every label id), ``eos_id``, ``pieces``.
    """

    def __init__(self, soft: CoordSoftCEW1Config, vocab: Optional[VocabView] = None, *,
                 coord_ids: Optional[torch.Tensor] = None, vocab_size: Optional[int] = None,
                 eos_id: Optional[int] = None, pieces: Optional[Sequence[str]] = None) -> None:
        if vocab is None:
            if coord_ids is None or eos_id is None or pieces is None:
                raise ValueError("Stage1Objective needs a VocabView (or coord_ids, eos_id and pieces)")

            def _no_encode(text: str) -> list[int]:
                raise RuntimeError("this VocabView was built without a tokenizer")

            vocab = VocabView.from_parts(coord_ids=coord_ids, pieces=pieces, eos_id=eos_id, encode=_no_encode,
                                         vocab_size=vocab_size)
        self.vocab = vocab
        self.coord_enabled = bool(soft.enabled)
        self.manifest = stage1_manifest(soft)
        self.pipeline = ObjectivePipeline(self.manifest)
        self.coord_ids = vocab.coord_ids
        self.eos_id = vocab.eos_id
        self.pieces = vocab.pieces

    def counts(self, labels: torch.Tensor) -> torch.Tensor:
        """``[3]`` long: the local count of each mean in :data:`DENOMINATORS` order for unshifted ``labels`` —
        ``token_ce`` (supervised non-coord targets, + coord targets when the coord loss is off: Σ of the gt CE
        weights, all 1 in Stage-1), ``coord`` (coord targets), ``text_gate`` (non-coord, non-``<|im_end|>``).
        Device ops only (the window sum happens before the forward)."""
        return self._counts(self._masks(labels))

    def _masks(self, labels: torch.Tensor) -> Stage1Masks:
        return stage1_masks(labels, self.vocab.id_to_bin_on(labels.device), self.eos_id)

    def _counts(self, m: Stage1Masks) -> torch.Tensor:
        n_text, n_coord = m.text.sum(), m.coord.sum()
        return torch.stack([n_text if self.coord_enabled else n_text + n_coord, n_coord, m.text_gate.sum()])

    def meta(self, labels: torch.Tensor, kept: Optional[torch.Tensor] = None) -> tuple[SegmentMeta, ...]:
        """:func:`gt_meta_from_labels` of ``labels`` (host work: call it before the forward)."""
        return gt_meta_from_labels(labels, coord_ids=self.coord_ids, eos_id=self.eos_id, pieces=self.pieces,
                                   kept=kept)

    def batch(self, labels: torch.Tensor, kept: Optional[torch.Tensor] = None, *,
              meta: Optional[Sequence[SegmentMeta]] = None,
              device: Optional[torch.device] = None) -> TeacherForcingBatch:
        """The ``gt`` batch of ``labels`` (host work + one non-blocking transfer: call it before the forward).
        ``kept``: ms-swift's bool ``logits_to_keep`` mask (compacted rows) or ``None``."""
        host = labels.cpu()
        meta = self.meta(host, kept) if meta is None else meta
        return gt_batch_from_labels(host, meta, vocab=self.vocab, ce_table=self.pipeline.ce_table,
                                    device=labels.device if device is None else device)

    def __call__(self, logits: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                 batch: Optional[TeacherForcingBatch] = None, meta: Optional[Sequence[SegmentMeta]] = None,
                 kept: Optional[torch.Tensor] = None, window_counts: Optional[torch.Tensor] = None) -> Stage1Step:
        """``batch``: :meth:`batch` of the labels (built from ``labels``/``meta``/``kept`` when omitted);
        ``window_counts``: ``[3]`` counts (:meth:`counts` summed over the accumulation window and ranks) to divide
        by, or ``None`` for micro-batch means."""
        if batch is None:
            if labels is None:
                raise ValueError("Stage1Objective: give batch= or labels")
            batch = self.batch(labels, kept, meta=meta, device=logits.device)
        dens = None if window_counts is None else dict(zip(DENOMINATORS, window_counts))
        ctx = batch.with_logits(gt=logits, denominators=None if dens is None else {"gt": dens})
        res = self.pipeline(ctx)
        idx = ctx.index("gt")
        with torch.no_grad():
            parts = {**res.terms, **res.breakdown}
            if dens is not None:  # back to micro-batch means for logging
                local = dict(zip(DENOMINATORS, (idx.ce_w_sum, idx.n_slots, idx.n_gate)))
                parts = {k: v * dens[res.denominators[k]].to(device=v.device, dtype=torch.float32)
                         / max(local[res.denominators[k]], 1)
                         for k, v in parts.items() if k in res.denominators}
            reg = [v for k, v in parts.items() if k.startswith("loss/coord_reg/")]
            logged = {k: v.detach() for k, v in parts.items() if k != "loss/coord_reg"}
            if reg:
                logged["loss/coord_reg"] = torch.stack(reg).sum()
            accs = self._accuracies(res, ctx)
        return Stage1Step(loss=res.total, logged=logged, accuracies=accs)

    def _accuracies(self, res, ctx: TeacherForcingContext) -> dict[str, tuple[torch.Tensor, int]]:
        """(hits, count) of the full-vocab argmax for ``token_acc`` (all supervised), ``coord_token_acc`` and
        ``text_token_acc``, from the rows the objective gathered (CE rows; coord-slot rows when the coord loss is
        on: the shared gather's, or gathered here under no_grad when no module read them)."""
        idx = ctx.index("gt")
        g = ctx.gathered("gt") if idx.n_ce or idx.n_slots else None
        zero = torch.zeros((), dtype=torch.long, device=ctx.target_ids.device)
        hit_ce = _hits(g.rows, idx.ce_target) if idx.n_ce else None
        if self.coord_enabled:
            text_hits = hit_ce.sum() if hit_ce is not None else zero
            n_text = idx.n_ce
            if idx.n_slots:
                rows = g.slot_rows if g.slot_rows is not None else ctx.rows_flat("gt", idx.slot_flat)
                coord_hits = _hits(rows, idx.slot_target).sum()
            else:
                coord_hits = zero
            n_coord = idx.n_slots
        else:
            if hit_ce is None:
                text_hits = coord_hits = zero
            else:
                coord_hits = (hit_ce & idx.ce_is_coord).sum()
                text_hits = hit_ce.sum() - coord_hits
            n_coord = idx.n_coord_ce
            n_text = idx.n_ce - n_coord
        return {"token_acc": (text_hits + coord_hits, n_text + n_coord), "coord_token_acc": (coord_hits, n_coord),
                "text_token_acc": (text_hits, n_text)}
