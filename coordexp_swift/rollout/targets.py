"""Rollout → training targets (SPEC §3.6 B3/B4), shared by both Stage-2 trainers, and the GT target of Channel-A.

One path builds every target: ``Y_train`` = prefix ids + ``tokens(tail)`` + ``<|im_end|>``, where

* rollout target (:func:`build_rollout_target`): prefix = the parser's kept ids (the empty-opener ids for an
  invalid rollout), tail = the FN fragment of the unmatched GT (``", "`` iff the prefix ends with ``}``, FN records
  in GT order, ``"]}"``);
* GT target (:func:`build_gt_target`, Channel-A): no prefix (``prefix_len = 0``), tail = ``{"objects": [`` + the
  fragment of every GT object, i.e. the canonical assistant text.

Nothing is re-scanned: the prefix's char offsets and desc-value spans come from the parser, the tail's desc spans
and closure from the fragment builder (the tail's final ``}`` is the outermost one). The one exception: when the
tail's per-token text differs from the fragment text (a byte-level BPE split a multi-byte character of a desc, so
pieces hold U+FFFD), the tail's desc spans are found by the one scanner on the per-token text.

Positions in the meta are segment-local: the segment is ``prompt_ids + y_train_ids`` (``input_ids``), the token at
position p is predicted by the logits at p − 1. :func:`collate_targets` assembles targets into the host-built
:class:`~coordexp_swift.teacher_forcing.batch.TeacherForcingBatch` (padded rows or one packed row).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.data.coordjson_scan import lex
from coordexp_swift.rollout.fragment import build_fn_fragment, gt_object_from_payload
from coordexp_swift.rollout.match import MatchResult, match_predictions
from coordexp_swift.rollout.parse import EMPTY_OPENER_TEXT, ParsedRollout, parse_rollout
from coordexp_swift.teacher_forcing.batch import CEWeightTable, TeacherForcingBatch
from coordexp_swift.teacher_forcing.meta import PrefixRecord, SegmentMeta, build_rollout_meta

__all__ = ["COUNT_KEYS", "RolloutTarget", "build_gt_target", "build_rollout_target", "collate_targets",
           "rollout_target"]

#: Keys of :attr:`RolloutTarget.counts` (rollout statistics for logging; all 0 for a GT target).
COUNT_KEYS: tuple[str, ...] = ("matched", "fp", "fn", "dropped", "truncated", "invalid_rollout",
                               "gating_rejections")
_EMPTY_SPANS = np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class RolloutTarget:
    """One teacher-forced segment.

    ``prompt_ids [P]`` (the generation prompt, MUST equal the training prompt), ``y_train_ids [L]`` int64,
    ``meta`` (B4 schema, positions into ``input_ids``), ``counts`` (:data:`COUNT_KEYS` -> int), ``drop_counts``
    (parser reasons -> count), ``fn_gt_idx`` (GT indices appended in the tail, in order), ``matched`` ((pred, gt)
    pairs).
    """

    prompt_ids: np.ndarray
    y_train_ids: np.ndarray
    meta: SegmentMeta
    counts: Mapping[str, int]
    drop_counts: Mapping[str, int]
    fn_gt_idx: tuple[int, ...]
    matched: tuple[tuple[int, int], ...]

    @property
    def input_ids(self) -> np.ndarray:
        """``[P + L]`` the segment's ids (prompt, then ``Y_train``)."""
        return np.concatenate([self.prompt_ids, self.y_train_ids])


def _gt_objects(assistant_payload: Mapping[str, Any]) -> list:
    try:
        objects = assistant_payload["objects"]
    except (KeyError, TypeError):
        raise ValueError(f"assistant_payload must be {{'objects': [...]}} (SPEC §1.4), got {assistant_payload!r:.200}"
                         ) from None
    return [gt_object_from_payload(o) for o in objects]


def _assemble(*, prompt_ids: Sequence[int], prefix_ids: Sequence[int], prefix_offsets: np.ndarray,
              prefix_desc_spans: np.ndarray, tail_text: str, tail_desc_spans: np.ndarray,
              records: Sequence[PrefixRecord], fn_gt_bins: Sequence[Sequence[int]], vocab: VocabView,
              n_drop_invalid: int, invalid_rollout: bool) -> tuple[np.ndarray, np.ndarray, SegmentMeta]:
    """``(prompt_ids, y_train_ids, meta)`` from a prefix (ids, offsets, desc spans) and a tail text whose desc
    spans are known; the tail is tokenised on its own and ends with ``}``."""
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    prefix = np.asarray(prefix_ids, dtype=np.int64).reshape(-1)
    tail = np.asarray(list(vocab.encode(tail_text)) + [vocab.eos_id], dtype=np.int64)
    rendered, tail_offsets = vocab.pieces.render(tail)
    frag_len = int(tail_offsets[-2])
    if rendered[:frag_len] != tail_text:  # per-token text holds U+FFFD halves: spans by the one scanner
        tail_desc_spans = lex(rendered[:frag_len]).desc_value_spans()
    prefix_chars = int(prefix_offsets[-1])
    offsets = np.concatenate([prefix_offsets, tail_offsets[1:] + prefix_chars])
    desc = np.concatenate([np.asarray(prefix_desc_spans, dtype=np.int64).reshape(-1, 2),
                           np.asarray(tail_desc_spans, dtype=np.int64).reshape(-1, 2) + prefix_chars])
    y_train = np.concatenate([prefix, tail])
    meta = build_rollout_meta(
        prompt_len=len(prompt), train_ids=y_train, offsets=offsets, desc_value_spans=desc,
        closure_token=len(prefix) + len(tail) - 2,  # the last fragment token holds its final '}'
        prefix_len=len(prefix), records=records, fn_gt_bins=fn_gt_bins, vocab=vocab,
        n_drop_invalid=n_drop_invalid, invalid_rollout=invalid_rollout)
    return prompt, y_train, meta


def build_rollout_target(*, prompt_ids: Sequence[int], parsed: ParsedRollout, match: MatchResult,
                         assistant_payload: Mapping[str, Any], vocab: VocabView,
                         object_field_order: str = "desc_first") -> RolloutTarget:
    """Channel-B target of one rollout: ``parsed`` (:func:`~coordexp_swift.rollout.parse.parse_rollout` of the
    generated ids), ``match`` (:func:`~coordexp_swift.rollout.match.match_predictions` of ``parsed.pred_bins``
    against the payload's GT) and the sample's GT ``assistant_payload``. An invalid rollout takes the same path
    (its prefix is the empty opener, every GT is FN).

    Raises RuntimeError when ``match`` does not fit ``parsed`` / the GT (every prediction must be matched or FP,
    every GT matched or FN, each once), ValueError for a malformed payload.
    """
    gt = _gt_objects(assistant_payload)
    n_pred = len(parsed.objects)
    preds = sorted([p for p, _ in match.matched] + list(match.fp))
    gts = sorted([g for _, g in match.matched] + list(match.fn))
    if preds != list(range(n_pred)) or gts != list(range(len(gt))):
        raise RuntimeError(f"match does not fit the rollout: predictions {preds} vs {n_pred} parsed, GT {gts} vs "
                           f"{len(gt)} in the payload (every one matched/FP resp. matched/FN exactly once)")
    records = [PrefixRecord(char_span=parsed.objects[p].char_span, slot_token_idx=parsed.objects[p].slot_token_idx,
                            gt_bins=tuple(gt[g].bins)) for p, g in match.matched]
    fn_objects = [gt[g] for g in match.fn]
    frag = build_fn_fragment(parsed.prefix_text, fn_objects, object_field_order)
    prompt, y_train, meta = _assemble(
        prompt_ids=prompt_ids, prefix_ids=parsed.prefix_token_ids, prefix_offsets=parsed.token_char_offsets,
        prefix_desc_spans=parsed.desc_value_spans, tail_text=frag.text, tail_desc_spans=frag.desc_value_spans(),
        records=records, fn_gt_bins=[o.bins for o in fn_objects], vocab=vocab,
        n_drop_invalid=parsed.n_drop_invalid, invalid_rollout=parsed.invalid_rollout)
    counts = {"matched": len(match.matched), "fp": len(match.fp), "fn": len(match.fn),
              "dropped": parsed.n_drop_invalid, "truncated": int(parsed.truncated),
              "invalid_rollout": int(parsed.invalid_rollout), "gating_rejections": int(match.gating_rejections)}
    return RolloutTarget(prompt, y_train, meta, counts, dict(parsed.drop_counts), tuple(match.fn),
                         tuple(match.matched))


def rollout_target(*, prompt_ids: Sequence[int], response_ids: Sequence[int], assistant_payload: Mapping[str, Any],
                   vocab: VocabView, object_field_order: str = "desc_first", candidate_top_k: int = 10,
                   iou_gate: float = 0.3, fp_cost: float = 1.0, fn_cost: float = 1.0) -> RolloutTarget:
    """Parse (B1), match (B2) and build (B3/B4) the target of one generated response in one call."""
    parsed = parse_rollout(response_ids, vocab, object_field_order=object_field_order)
    gt = _gt_objects(assistant_payload)
    match = match_predictions(parsed.pred_bins, [o.bins for o in gt], candidate_top_k=candidate_top_k,
                              iou_gate=iou_gate, fp_cost=fp_cost, fn_cost=fn_cost)
    return build_rollout_target(prompt_ids=prompt_ids, parsed=parsed, match=match,
                                assistant_payload=assistant_payload, vocab=vocab,
                                object_field_order=object_field_order)


def build_gt_target(*, prompt_ids: Sequence[int], assistant_payload: Mapping[str, Any], vocab: VocabView,
                    object_field_order: str = "desc_first") -> RolloutTarget:
    """Channel-A target: ``Y_train`` = tokens of the canonical assistant text + ``<|im_end|>``, ``prefix_len`` 0,
    every GT box in ``bbox_groups_fn`` — the rollout path with an empty prefix and the opener in the tail."""
    gt = _gt_objects(assistant_payload)
    frag = build_fn_fragment(EMPTY_OPENER_TEXT, gt, object_field_order)
    prompt, y_train, meta = _assemble(
        prompt_ids=prompt_ids, prefix_ids=(), prefix_offsets=np.zeros(1, dtype=np.int64),
        prefix_desc_spans=_EMPTY_SPANS, tail_text=EMPTY_OPENER_TEXT + frag.text,
        tail_desc_spans=frag.desc_value_spans() + len(EMPTY_OPENER_TEXT), records=(),
        fn_gt_bins=[o.bins for o in gt], vocab=vocab, n_drop_invalid=0, invalid_rollout=False)
    return RolloutTarget(prompt, y_train, meta, dict.fromkeys(COUNT_KEYS, 0), {}, tuple(range(len(gt))), ())


def collate_targets(targets: Sequence[RolloutTarget], *, vocab: VocabView, packed: bool = False,
                    channel: str = "B", contexts: Sequence[str] = ("rollout",),
                    ce_table: Optional[CEWeightTable] = None, pad_id: Optional[int] = None,
                    max_length: Optional[int] = None,
                    device: Optional[torch.device | str] = None) -> TeacherForcingBatch:
    """The host-built :class:`TeacherForcingBatch` of ``targets`` (``target_ids`` = the model's ``input_ids``).

    ``packed``: all segments in one padding-free row ``[1, Σ len]`` (meta positions stay segment-local);
    otherwise one right-padded row per target (``pad_id``, default ``<|im_end|>``; padding is outside every
    segment, so unsupervised). ``max_length``: a packed row or padded width above it raises ValueError (fail fast,
    SPEC §3.3). ``device``: where the batch is shipped (default CPU).
    """
    if not targets:
        raise ValueError("collate_targets: no targets")
    rows = [t.input_ids for t in targets]
    width = sum(map(len, rows)) if packed else max(map(len, rows))
    if max_length is not None and width > max_length:
        raise ValueError(f"collate_targets: {'packed row' if packed else 'longest segment'} has {width} tokens > "
                         f"max_length {max_length}; lower decode/packing sizes or raise max_length")
    if packed:
        ids = torch.from_numpy(np.concatenate(rows))[None]
    else:
        pad = vocab.eos_id if pad_id is None else int(pad_id)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.from_numpy(r)
    return TeacherForcingBatch.build(channel=channel, target_ids=ids, meta=[t.meta for t in targets], vocab=vocab,
                                     packed=packed, ce_table=ce_table, contexts=contexts,
                                     device=device if device is not None else "cpu")
