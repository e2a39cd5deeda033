"""Rich per-segment meta (SPEC §3.6 B4) and its ONE builder, :func:`build_rollout_meta`, for rollout targets
(prefix + FN tail) and GT targets alike (a GT target is the same thing with ``prefix_len = 0``). Its inputs are
what the parser and the FN-fragment builder already know (offsets, desc-value spans, the closure token, matched
records): it scans no text. :func:`build_gt_meta` is the front door for a GT target given only its ids: it
renders them through the vocab view's piece table and runs the one scanner once. No trainer parses text for
losses; ``rollout/targets.py`` builds whole targets.

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

from coordexp_swift.coord.codec import MAX_BIN
from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.teacher_forcing.token_types import (
    COORD,
    DESC,
    partition_token_types,
    scan_coordjson,
    tokens_overlapping,
)

__all__ = ["BBoxGroups", "PrefixRecord", "SegmentMeta", "build_gt_meta", "build_rollout_meta"]


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


def _check_offsets(n_tokens: int, offsets: np.ndarray) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.shape != (n_tokens + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must be {n_tokens + 1} non-decreasing char boundaries starting at 0; got shape "
                         f"{offsets.shape}")
    return offsets


def _pos(x: np.ndarray, shift: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.int64).reshape(-1) + shift)


def build_rollout_meta(*, prompt_len: int, train_ids: Sequence[int] | np.ndarray | torch.Tensor,
                       offsets: np.ndarray, desc_value_spans: np.ndarray, closure_token: int, prefix_len: int,
                       records: Sequence[PrefixRecord], fn_gt_bins: Optional[Sequence[Sequence[int]]],
                       vocab: VocabView, n_drop_invalid: int = 0, invalid_rollout: bool = False,
                       encoded_len: Optional[int] = None) -> SegmentMeta:
    """Meta of ``Y_train`` = prefix (``prefix_len`` tokens) + tail (FN fragment, closure, ``<|im_end|>``).

    Args:
      prompt_len: prompt tokens before ``Y_train`` in the encoded segment (positions are segment-local).
      train_ids: ``[L]`` ids of ``Y_train``; offsets: ``[L+1]`` char boundaries of their per-token text.
      desc_value_spans: ``[D, 2]`` desc values (inside the quotes) in that text — the parser's and the fragment
        builder's, or the scanner's for a GT target.
      closure_token: index into ``train_ids`` of the token holding the outermost ``}`` (in the tail).
      records: the matched prefix records (``gt_bins`` set); records with ``gt_bins=None`` (FP) are ignored —
        every prefix token outside matched spans is ``fp``.
      fn_gt_bins: ``[F][4]`` bins of the tail's GT objects in tail order (checked against the tail's coord
        tokens); ``None``: no box groups (Stage-1 polygons).
      vocab: the run's vocab view (coord ids → bins, ``<|im_end|>``).
      n_drop_invalid / invalid_rollout: from the parser. encoded_len: default ``prompt_len + L``.
    Raises ValueError when the tail's coord-token count is not 4·F, RuntimeError when its bins differ from
    ``fn_gt_bins``, a slot is not a coord token of the prefix, the closure is not in the tail, or a supervised
    position leaves the assistant span.
    """
    ids = np.asarray(torch.as_tensor(train_ids).cpu(), dtype=np.int64).reshape(-1)
    n = len(ids)
    offsets = _check_offsets(n, offsets)
    if not 0 <= prefix_len <= n:
        raise RuntimeError(f"build_rollout_meta: prefix_len {prefix_len} outside [0, {n}]")
    if not prefix_len <= closure_token < n:
        raise RuntimeError(f"build_rollout_meta: the outermost '}}' (token {closure_token}) must lie in the tail "
                           f"[{prefix_len}, {n})")
    types = partition_token_types(ids, offsets, desc_value_spans, vocab, vocab.eos_id)
    tnp = types.numpy()
    eos = np.flatnonzero(ids[prefix_len:] == vocab.eos_id) + prefix_len
    if not len(eos):
        raise RuntimeError(f"build_rollout_meta: no <|im_end|> (id {vocab.eos_id}) in the target tail")
    closure = np.unique(np.concatenate([[closure_token], eos]))

    tail_slots = np.flatnonzero(tnp[prefix_len:] == COORD) + prefix_len
    if fn_gt_bins is None:
        pos_fn, bins_fn = np.zeros((0, 4), dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
    else:
        bins_fn = np.asarray(fn_gt_bins, dtype=np.int64).reshape(-1, 4)
        if len(tail_slots) != bins_fn.size:
            raise ValueError(f"build_rollout_meta: coord-token count {len(tail_slots)} in the target tail != 4 x "
                             f"{len(bins_fn)} objects = {bins_fn.size}")
        got = vocab.bins(ids[tail_slots])
        if not np.array_equal(got, bins_fn.reshape(-1)):
            raise RuntimeError(f"build_rollout_meta: coord tokens of the tail encode bins {got.tolist()} but the GT "
                               f"bins are {bins_fn.reshape(-1).tolist()} (tail must be rendered from the same GT, "
                               "in order)")
        pos_fn = tail_slots.reshape(-1, 4)

    matched = [r for r in records if r.gt_bins is not None]
    spans = np.asarray([r.char_span for r in matched], dtype=np.int64).reshape(-1, 2)
    matched_mask = tokens_overlapping(offsets[: prefix_len + 1], spans)
    prefix_types = tnp[:prefix_len]
    struct_mask = matched_mask & (prefix_types != DESC) & (prefix_types != COORD)
    slot_idx = np.asarray([r.slot_token_idx for r in matched], dtype=np.int64).reshape(-1, 4)
    if slot_idx.size and (slot_idx.max() >= prefix_len or slot_idx.min() < 0
                          or bool((prefix_types[slot_idx] != COORD).any())):
        raise RuntimeError(f"build_rollout_meta: matched slot_token_idx {slot_idx.tolist()} must index coord tokens "
                           f"of the prefix (prefix_len {prefix_len})")
    bins_prefix = np.asarray([r.gt_bins for r in matched], dtype=np.int64).reshape(-1, 4)
    return SegmentMeta(
        prompt_len=prompt_len, prefix_len=prefix_len, train_len=n,
        encoded_len=prompt_len + n if encoded_len is None else encoded_len,
        prefix_struct_pos=_pos(np.flatnonzero(struct_mask), prompt_len),
        prefix_coord_pos=_pos(slot_idx, prompt_len),
        prefix_matched_pos=_pos(np.flatnonzero(matched_mask), prompt_len),
        tail_desc_pos=_pos(np.flatnonzero(tnp[prefix_len:] == DESC) + prefix_len, prompt_len),
        tail_closure_pos=_pos(closure, prompt_len),
        bbox_groups_prefix=BBoxGroups(_pos(slot_idx, prompt_len).reshape(-1, 4), torch.from_numpy(bins_prefix)),
        bbox_groups_fn=BBoxGroups(_pos(pos_fn, prompt_len).reshape(-1, 4), torch.from_numpy(bins_fn)),
        n_drop_invalid=int(n_drop_invalid), invalid_rollout=bool(invalid_rollout), token_types=types,
    )


def build_gt_meta(*, prompt_len: int, train_ids: Sequence[int] | np.ndarray | torch.Tensor, vocab: VocabView,
                  gt_bins: Optional[Sequence[Sequence[int]]] = None, encoded_len: Optional[int] = None,
                  text: Optional[str] = None, offsets: Optional[np.ndarray] = None) -> SegmentMeta:
    """Meta of a GT target given only its ids (contexts ``gt`` / ``self_context``): ``Y_train`` = CoordJSON +
    ``<|im_end|>``, ``prefix_len = 0``, GT groups in ``bbox_groups_fn``.

    The per-token ``text`` / ``offsets`` default to ``vocab.pieces.render(train_ids)``; the one scanner finds the
    desc values and the outermost ``}`` once, then :func:`build_rollout_meta` builds the meta. ``gt_bins``:
    ``[G][4]`` in object order (Stage-2: required; Stage-1 polygons: ``None`` = no box groups).
    """
    ids = np.asarray(torch.as_tensor(train_ids).cpu(), dtype=np.int64).reshape(-1)
    if text is None or offsets is None:
        text, offsets = vocab.pieces.render(ids)
    offsets = _check_offsets(len(ids), offsets)
    if offsets[-1] != len(text):
        raise ValueError(f"offsets end at {offsets[-1]} but the text has {len(text)} chars")
    scan = scan_coordjson(text)
    if scan.closure_char < 0:
        raise RuntimeError("build_gt_meta: the target never closes its top-level object (no outermost '}' found by "
                           "the string-aware depth scan)")
    closure_token = int(np.searchsorted(offsets[1:], scan.closure_char, side="right"))
    return build_rollout_meta(prompt_len=prompt_len, train_ids=ids, offsets=offsets,
                              desc_value_spans=scan.desc_value_spans, closure_token=closure_token, prefix_len=0,
                              records=(), fn_gt_bins=gt_bins, vocab=vocab, encoded_len=encoded_len)
