"""Rich per-segment meta (SPEC §3.6 B4) and the shared builders for GT-rendered and rollout (prefix + FN tail)
teacher-forcing targets. No trainer parses text for losses: it calls :func:`build_gt_meta` /
:func:`build_rollout_meta` with plain inputs and hands the result to ``TeacherForcingContext``.

Positions are **segment-local input positions**: index into the segment's encoded ids (prompt included), so the
token at position p is ``input_ids[seg_start + p]`` and its logits are read at ``seg_start + p − 1``. The assistant
target span is ``[prompt_len, prompt_len + train_len)``; ``Y_train`` = prefix (``prefix_len`` tokens) + tail
(FN fragment, closure, ``<|im_end|>``). Channel-A / Stage-1 use the same schema with ``prefix_len = 0`` and the GT
groups in ``bbox_groups_fn``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.teacher_forcing.token_types import (
    COORD,
    DESC,
    offsets_from_pieces,
    partition_token_types,
    scan_coordjson,
    tokens_overlapping,
)

__all__ = ["BBoxGroups", "PrefixRecord", "SegmentMeta", "build_gt_meta", "build_rollout_meta",
           "offsets_from_pieces"]

_EMPTY = torch.zeros(0, dtype=torch.long)


def _long(x: object) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.int64)).reshape(-1)


@dataclass(frozen=True, eq=False)
class BBoxGroups:
    """``G`` supervised boxes: ``pos [G, 4]`` input positions of the x1,y1,x2,y2 coord tokens (segment-local; logits
    at ``pos − 1``) and ``gt_bins [G, 4]`` their GT bins (0..MAX_BIN). Both int64."""

    pos: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    gt_bins: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))

    def __post_init__(self) -> None:
        if self.pos.dim() != 2 or self.pos.shape[1] != 4 or self.gt_bins.shape != self.pos.shape:
            raise RuntimeError(f"BBoxGroups: pos and gt_bins must both be [G, 4], got {tuple(self.pos.shape)} and "
                               f"{tuple(self.gt_bins.shape)}")
        if self.gt_bins.numel() and (int(self.gt_bins.min()) < 0 or int(self.gt_bins.max()) > MAX_BIN):
            raise RuntimeError(f"BBoxGroups: gt_bins outside 0..{MAX_BIN}: {self.gt_bins.tolist()}")

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        for p, b in zip(self.pos.tolist(), self.gt_bins.tolist()):
            yield {"pos": p, "gt_bins": b}


@dataclass(frozen=True, eq=False)
class SegmentMeta:
    """Meta of one teacher-forced segment (SPEC §3.6 B4); int64 1-D position tensors, segment-local.

    Fields:
      prompt_len, prefix_len, train_len, encoded_len: token counts (``encoded_len`` ≥ prompt + train; trailing
        template tokens after ``<|im_end|>`` are unsupervised).
      prefix_struct_pos: prefix tokens overlapping matched record spans, minus desc-value and coord tokens.
      prefix_coord_pos: coord slots of matched prefix records (flattened ``bbox_groups_prefix.pos``).
      tail_desc_pos: desc-value tokens of the tail (FN records; all GT desc for GT meta).
      tail_closure_pos: the token holding the outermost ``}`` (string-aware depth scan) plus ``<|im_end|>``.
      bbox_groups_prefix: matched prefix records (slots → matched GT bins); bbox_groups_fn: FN / GT records.
      n_drop_invalid: dropped invalid predicted records; invalid_rollout: the empty-opener fallback was used.
      token_types: ``[train_len]`` int8 type codes of ``Y_train`` (``token_types.TYPE_NAMES``).
      prefix_matched_pos: every prefix token overlapping a matched record span (the ``matched`` subset).
    Raises ``RuntimeError`` if any supervised position lies outside the assistant span.
    """

    prompt_len: int
    prefix_len: int
    train_len: int
    encoded_len: int
    prefix_struct_pos: torch.Tensor
    prefix_coord_pos: torch.Tensor
    tail_desc_pos: torch.Tensor
    tail_closure_pos: torch.Tensor
    bbox_groups_prefix: BBoxGroups
    bbox_groups_fn: BBoxGroups
    n_drop_invalid: int
    invalid_rollout: bool
    token_types: torch.Tensor
    prefix_matched_pos: torch.Tensor

    def __post_init__(self) -> None:
        if self.prompt_len < 1:
            raise RuntimeError(f"SegmentMeta: prompt_len must be >= 1 (the first target needs a predicting "
                               f"position), got {self.prompt_len}")
        if not 0 <= self.prefix_len <= self.train_len:
            raise RuntimeError(f"SegmentMeta: need 0 <= prefix_len ({self.prefix_len}) <= train_len "
                               f"({self.train_len})")
        if self.prompt_len + self.train_len > self.encoded_len:
            raise RuntimeError(f"SegmentMeta: prompt_len + train_len = {self.prompt_len + self.train_len} exceeds "
                               f"encoded_len {self.encoded_len}")
        if self.token_types.shape != (self.train_len,):
            raise RuntimeError(f"SegmentMeta: token_types must be [{self.train_len}], got "
                               f"{tuple(self.token_types.shape)}")
        lo, mid, hi = self.prompt_len, self.prompt_len + self.prefix_len, self.prompt_len + self.train_len
        ranges = {
            "prefix_struct_pos": (lo, mid), "prefix_coord_pos": (lo, mid), "prefix_matched_pos": (lo, mid),
            "tail_desc_pos": (mid, hi), "tail_closure_pos": (mid, hi),
            "bbox_groups_prefix.pos": (lo, mid), "bbox_groups_fn.pos": (mid, hi),
        }
        for name, (a, b) in ranges.items():
            obj = self
            for part in name.split("."):
                obj = getattr(obj, part)
            pos = obj
            if pos.numel() and (int(pos.min()) < a or int(pos.max()) >= b):
                raise RuntimeError(
                    f"SegmentMeta.{name}: supervised positions {sorted(set(pos.reshape(-1).tolist()))} fall outside "
                    f"the assistant span [{a}, {b}) (prompt_len={self.prompt_len}, prefix_len={self.prefix_len}, "
                    f"train_len={self.train_len})")

    @property
    def span(self) -> tuple[int, int]:
        """Assistant target span ``[prompt_len, prompt_len + train_len)`` (segment-local)."""
        return self.prompt_len, self.prompt_len + self.train_len


@dataclass(frozen=True)
class PrefixRecord:
    """A valid predicted record in the rollout prefix (plain input from the caller's parser/matcher).

    ``char_span``: the record's ``{`` .. ``}`` in the train text (half-open); ``slot_token_idx``: its 4 coord token
    indices into ``train_ids``; ``gt_bins``: the matched GT's 4 bins, or ``None`` for an FP record.
    """

    char_span: tuple[int, int]
    slot_token_idx: tuple[int, int, int, int]
    gt_bins: Optional[tuple[int, int, int, int]] = None


def _check_offsets(n_tokens: int, offsets: np.ndarray, text: str) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.shape != (n_tokens + 1,) or offsets[0] != 0 or offsets[-1] != len(text) or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must be {n_tokens + 1} non-decreasing char boundaries from 0 to len(text) = "
                         f"{len(text)}; got shape {offsets.shape} ending at {offsets[-1] if offsets.size else None}")
    return offsets


def _closure_positions(ids: torch.Tensor, offsets: np.ndarray, closure_char: int, eos_id: int,
                       lo_tok: int, what: str) -> torch.Tensor:
    if closure_char < 0:
        raise RuntimeError(f"{what}: the target never closes its top-level object (no outermost '}}' found by the "
                           f"string-aware depth scan)")
    tok = int(np.searchsorted(offsets[1:], closure_char, side="right"))
    eos = torch.nonzero(ids[lo_tok:] == eos_id).reshape(-1) + lo_tok
    if eos.numel() == 0:
        raise RuntimeError(f"{what}: no <|im_end|> (id {eos_id}) in the target tail")
    return torch.unique(torch.cat([torch.tensor([tok]), eos]))


def _group_tail(ids: torch.Tensor, types: torch.Tensor, lo_tok: int, gt_bins: Optional[Sequence[Sequence[int]]],
                coord_ids: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    slots = torch.nonzero(types[lo_tok:] == COORD).reshape(-1) + lo_tok
    if gt_bins is None:
        return torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long)
    bins = _long(gt_bins).reshape(-1, 4) if len(gt_bins) else torch.zeros(0, 4, dtype=torch.long)
    if slots.numel() != bins.numel():
        raise ValueError(f"{what}: coord-token count {slots.numel()} in the target != 4 x {bins.shape[0]} "
                         f"objects = {bins.numel()}")
    lut = torch.full((int(coord_ids.max()) + 1,), -1, dtype=torch.long)
    lut[coord_ids.long().cpu()] = torch.arange(NUM_BINS)
    token_bins = lut[ids[slots]]
    if not torch.equal(token_bins, bins.reshape(-1)):
        raise RuntimeError(f"{what}: coord tokens of the tail encode bins {token_bins.tolist()} but the GT bins are "
                           f"{bins.reshape(-1).tolist()} (tail must be rendered from the same GT, in order)")
    return slots.reshape(-1, 4), bins


def build_gt_meta(*, prompt_len: int, train_ids: Sequence[int] | torch.Tensor, offsets: np.ndarray, text: str,
                  coord_ids: torch.Tensor, eos_id: int, gt_bins: Optional[Sequence[Sequence[int]]] = None,
                  encoded_len: Optional[int] = None) -> SegmentMeta:
    """Meta of a GT-rendered target (contexts ``gt`` / ``self_context``): ``Y_train`` = CoordJSON + ``<|im_end|>``.

    Args:
      prompt_len: prompt tokens before the assistant target in the encoded segment.
      train_ids: ``[L]`` target ids; ``text``: their concatenated per-token decoded text; ``offsets``: ``[L+1]``
        char boundaries (``offsets_from_pieces``).
      coord_ids: ``[NUM_BINS]`` id of bin k; eos_id: ``<|im_end|>`` id.
      gt_bins: ``[G][4]`` GT bins in object order (Stage-2: required; Stage-1 polygons: ``None`` = no box groups).
      encoded_len: segment length (default ``prompt_len + L``).
    """
    ids = torch.as_tensor(train_ids, dtype=torch.long).reshape(-1)
    offsets = _check_offsets(ids.numel(), offsets, text)
    scan = scan_coordjson(text)
    types = partition_token_types(ids, offsets, scan.desc_value_spans, coord_ids, eos_id)
    closure = _closure_positions(ids, offsets, scan.closure_char, eos_id, 0, "build_gt_meta")
    pos_fn, bins_fn = _group_tail(ids, types, 0, gt_bins, coord_ids, "build_gt_meta")
    desc = torch.nonzero(types == DESC).reshape(-1)
    return SegmentMeta(
        prompt_len=prompt_len, prefix_len=0, train_len=ids.numel(),
        encoded_len=prompt_len + ids.numel() if encoded_len is None else encoded_len,
        prefix_struct_pos=_EMPTY, prefix_coord_pos=_EMPTY, prefix_matched_pos=_EMPTY,
        tail_desc_pos=desc + prompt_len, tail_closure_pos=closure + prompt_len,
        bbox_groups_prefix=BBoxGroups(), bbox_groups_fn=BBoxGroups(pos_fn + prompt_len, bins_fn),
        n_drop_invalid=0, invalid_rollout=False, token_types=types,
    )


def build_rollout_meta(*, prompt_len: int, train_ids: Sequence[int] | torch.Tensor, offsets: np.ndarray, text: str,
                       prefix_len: int, records: Sequence[PrefixRecord], fn_gt_bins: Sequence[Sequence[int]],
                       coord_ids: torch.Tensor, eos_id: int, n_drop_invalid: int = 0, invalid_rollout: bool = False,
                       encoded_len: Optional[int] = None) -> SegmentMeta:
    """Meta of a rollout target ``Y_train`` = prefix ids + FN fragment tokens + ``<|im_end|>`` (context ``rollout``).

    Args:
      train_ids / offsets / text: as in :func:`build_gt_meta`, over the whole ``Y_train``.
      prefix_len: number of prefix tokens (the tail starts at token ``prefix_len``).
      records: the valid prefix records (matched ones carry ``gt_bins``; FP ones ``None``). Dropped records,
        the opener and separators need no entry: every prefix token outside matched spans is ``fp``.
      fn_gt_bins: ``[F][4]`` bins of the FN GT objects in tail order (must equal the tail's coord tokens).
      n_drop_invalid / invalid_rollout: from the parser.
    """
    ids = torch.as_tensor(train_ids, dtype=torch.long).reshape(-1)
    offsets = _check_offsets(ids.numel(), offsets, text)
    if not 0 <= prefix_len <= ids.numel():
        raise RuntimeError(f"build_rollout_meta: prefix_len {prefix_len} outside [0, {ids.numel()}]")
    cut = int(offsets[prefix_len])
    prefix_scan = scan_coordjson(text[:cut])
    tail_scan = scan_coordjson(text[cut:], start_depth=prefix_scan.end_depth)
    desc_spans = np.concatenate([prefix_scan.desc_value_spans, tail_scan.desc_value_spans + cut])
    types = partition_token_types(ids, offsets, desc_spans, coord_ids, eos_id)
    closure_char = tail_scan.closure_char + cut if tail_scan.closure_char >= 0 else -1
    closure = _closure_positions(ids, offsets, closure_char, eos_id, prefix_len, "build_rollout_meta")
    pos_fn, bins_fn = _group_tail(ids, types, prefix_len, fn_gt_bins, coord_ids, "build_rollout_meta")

    matched = [r for r in records if r.gt_bins is not None]
    prefix_offsets = offsets[: prefix_len + 1]
    spans = np.asarray([r.char_span for r in matched], dtype=np.int64).reshape(-1, 2)
    matched_mask = torch.from_numpy(tokens_overlapping(prefix_offsets, spans))
    prefix_types = types[:prefix_len]
    struct_mask = matched_mask & (prefix_types != DESC) & (prefix_types != COORD)
    slot_idx = _long([r.slot_token_idx for r in matched]).reshape(-1, 4)
    if slot_idx.numel() and (int(slot_idx.max()) >= prefix_len or bool((prefix_types[slot_idx] != COORD).any())):
        raise RuntimeError(f"build_rollout_meta: matched slot_token_idx {slot_idx.tolist()} must index coord tokens "
                           f"of the prefix (prefix_len {prefix_len})")
    bins_prefix = _long([r.gt_bins for r in matched]).reshape(-1, 4)
    return SegmentMeta(
        prompt_len=prompt_len, prefix_len=prefix_len, train_len=ids.numel(),
        encoded_len=prompt_len + ids.numel() if encoded_len is None else encoded_len,
        prefix_struct_pos=torch.nonzero(struct_mask).reshape(-1) + prompt_len,
        prefix_coord_pos=slot_idx.reshape(-1) + prompt_len,
        prefix_matched_pos=torch.nonzero(matched_mask).reshape(-1) + prompt_len,
        tail_desc_pos=torch.nonzero(types[prefix_len:] == DESC).reshape(-1) + prefix_len + prompt_len,
        tail_closure_pos=closure + prompt_len,
        bbox_groups_prefix=BBoxGroups(slot_idx + prompt_len, bins_prefix),
        bbox_groups_fn=BBoxGroups(pos_fn + prompt_len, bins_fn),
        n_drop_invalid=int(n_drop_invalid), invalid_rollout=bool(invalid_rollout), token_types=types,
    )

