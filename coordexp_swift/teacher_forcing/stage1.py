"""Stage-1 on the registry (SPEC §2, §4 context ``gt``; seed 002 7B): the ``gt`` ``TeacherForcingContext`` of a
micro-batch, built from its labels, and the Stage-1 objective = :func:`stage1_manifest` run by ``ObjectivePipeline``.

Context layout: ``input_ids`` are the labels with −100 → 0 (at every supervised position the label IS the input
token) and ``logits[b, t]`` predicts ``labels[b, t+1]``; this also holds after ms-swift's ``logits_to_keep`` cut
both to the supervised positions (batch size 1: compacted to them; larger batches: a common suffix). Each row gets
one ``SegmentMeta`` spanning its supervised positions. A run of supervised positions that are consecutive in the
ORIGINAL row (one sample's answer; after compaction recovered from the kept-position mask) is typed on its own,
so types stay segment-local on packed rows; positions between runs are ``NONE`` (unsupervised).

Denominators (SPEC §2.3): per micro-batch by default; given the counts of a whole accumulation window (and ranks),
every mean divides by them instead, and the logged values are rescaled back to micro-batch means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from coordexp_swift.config.custom import CoordSoftCEW1Config
from coordexp_swift.coord.vocab import PieceTable, id_to_bin_lookup
from coordexp_swift.losses.token_masks import IGNORE_INDEX, Stage1Masks, stage1_masks, token_accuracies
from coordexp_swift.teacher_forcing.context import DENOMINATORS, TeacherForcingContext
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline
from coordexp_swift.teacher_forcing.meta import BBoxGroups, SegmentMeta
from coordexp_swift.teacher_forcing.manifest import stage1_manifest
from coordexp_swift.teacher_forcing.token_types import NONE, partition_token_types, scan_coordjson

__all__ = ["PieceTable", "Stage1Objective", "Stage1Step", "gt_context_from_labels", "gt_meta_from_labels",
           "supervised_runs"]

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


def gt_context_from_labels(logits: torch.Tensor, labels: torch.Tensor, meta: Sequence[SegmentMeta], *,
                           coord_ids: torch.Tensor,
                           denominators: Optional[dict[str, torch.Tensor]] = None) -> TeacherForcingContext:
    """Channel-A context ``gt`` of a Stage-1 micro-batch: ``logits [B, T, V]`` and unshifted ``labels [B, T]`` as
    the model returned / ms-swift passed them, ``meta`` from :func:`gt_meta_from_labels`; ``denominators``: global
    counts by name (:data:`DENOMINATORS`) or ``None`` (micro-batch means)."""
    return TeacherForcingContext(channel="A", input_ids=labels.clamp(min=0), logits={"gt": logits}, meta=tuple(meta),
                                 coord_ids=coord_ids, denominators=denominators)


@dataclass(frozen=True)
class Stage1Step:
    """One micro-batch of the Stage-1 objective.

    ``loss``: scalar (graph-connected) = Σ of the §8.2 contributions, each divided by the given denominators;
    ``logged``: every emitted §8.2 key (+ ``loss/coord_reg`` iff a sub-term is on) as micro-batch means, 0-d
    tensors; ``accuracies``: ``token_acc`` / ``coord_token_acc`` / ``text_token_acc`` -> (hits, count)."""

    loss: torch.Tensor
    logged: dict[str, torch.Tensor]
    accuracies: dict[str, tuple[torch.Tensor, torch.Tensor]]


class Stage1Objective:
    """``custom.coord_soft_ce_w1`` as the registry's ``token_ce`` (+ ``coord_reg``) modules on context ``gt``.

    ``coord_ids [NUM_BINS]``: id of bin k; ``vocab_size``: ≥ every label id; ``eos_id``: ``<|im_end|>``;
    ``pieces[id]``: decoded text of each token id (the token-type split)."""

    def __init__(self, soft: CoordSoftCEW1Config, *, coord_ids: torch.Tensor, vocab_size: int, eos_id: int,
                 pieces: Sequence[str]) -> None:
        self.coord_enabled = bool(soft.enabled)
        self.manifest = stage1_manifest(soft)
        self.pipeline = ObjectivePipeline(self.manifest)
        self.coord_ids = coord_ids
        self.coord_lut = id_to_bin_lookup(coord_ids, vocab_size)
        self.eos_id = eos_id
        self.pieces = PieceTable(pieces)

    def counts(self, labels: torch.Tensor) -> torch.Tensor:
        """``[3]`` long: the local count of each mean in :data:`DENOMINATORS` order for unshifted ``labels`` —
        ``token_ce`` (supervised non-coord targets, + coord targets when the coord loss is off: Σ of the gt CE
        weights, all 1 in Stage-1), ``coord`` (coord targets), ``text_gate`` (non-coord, non-``<|im_end|>``)."""
        return self._counts(self._masks(labels))

    def _masks(self, labels: torch.Tensor) -> Stage1Masks:
        return stage1_masks(labels, self.coord_lut.to(labels.device), self.eos_id)

    def _counts(self, m: Stage1Masks) -> torch.Tensor:
        n_text, n_coord = m.text.sum(), m.coord.sum()
        return torch.stack([n_text if self.coord_enabled else n_text + n_coord, n_coord, m.text_gate.sum()])

    def meta(self, labels: torch.Tensor, kept: Optional[torch.Tensor] = None) -> tuple[SegmentMeta, ...]:
        """:func:`gt_meta_from_labels` of ``labels`` (host work: call it before the forward)."""
        return gt_meta_from_labels(labels, coord_ids=self.coord_ids, eos_id=self.eos_id, pieces=self.pieces,
                                   kept=kept)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, *,
                 meta: Optional[Sequence[SegmentMeta]] = None, kept: Optional[torch.Tensor] = None,
                 window_counts: Optional[torch.Tensor] = None) -> Stage1Step:
        """``meta``: :meth:`meta` of ``labels`` (computed here from ``kept`` when omitted); ``window_counts``:
        ``[3]`` counts (:meth:`counts` summed over the accumulation window and ranks) to divide by, or ``None`` for
        micro-batch means."""
        dens = None if window_counts is None else dict(zip(DENOMINATORS, window_counts))
        meta = self.meta(labels, kept) if meta is None else meta
        ctx = gt_context_from_labels(logits, labels, meta, coord_ids=self.coord_ids, denominators=dens)
        res = self.pipeline(ctx)
        masks = self._masks(labels)
        with torch.no_grad():
            parts = {**res.terms, **res.breakdown}
            if dens is not None:  # back to micro-batch means for logging
                local = dict(zip(DENOMINATORS, self._counts(masks).to(torch.float32)))
                parts = {k: v * dens[res.denominators[k]].float().to(v.device)
                         / local[res.denominators[k]].clamp_min(1).to(v.device)
                         for k, v in parts.items() if k in res.denominators}
            reg = [v for k, v in parts.items() if k.startswith("loss/coord_reg/")]
            logged = {k: v.detach() for k, v in parts.items() if k != "loss/coord_reg"}
            if reg:
                logged["loss/coord_reg"] = torch.stack(reg).sum()
            accs = token_accuracies(logits, masks)
        return Stage1Step(loss=res.total, logged=logged, accuracies=accs)
