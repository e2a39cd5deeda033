"""Token-type partition of assistant targets (SPEC §4.1) and the string-aware CoordJSON scan it rests on.

Types (exclusive, deterministic) of every token in an assistant target span:
  ``struct`` (syntax, keys, quotes, punctuation, whitespace), ``desc`` (tokens overlapping a desc *value*, i.e. the
  characters strictly between its quotes; boundary-straddling tokens count as desc), ``coord`` (id ∈ V_c),
  ``eos`` (``<|im_end|>``, never also struct). Tokens outside the span are ``NONE`` (unsupervised).

Char offsets are *boundaries*: ``offsets[L+1]`` with token i covering chars ``[offsets[i], offsets[i+1])`` of the
target text (the concatenation of per-token decoded pieces, see :func:`offsets_from_pieces`). Char-span → token
mapping is vectorised (``searchsorted`` + difference array); the only Python loop is the regex over strings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "COORD",
    "DESC",
    "EOS",
    "NONE",
    "STRUCT",
    "TYPE_NAMES",
    "JsonScan",
    "offsets_from_pieces",
    "partition_token_types",
    "scan_coordjson",
    "token_range",
    "tokens_overlapping",
]

NONE, STRUCT, DESC, COORD, EOS = 0, 1, 2, 3, 4
#: type code -> name (codes are stable; ``NONE`` = outside the assistant target span).
TYPE_NAMES: dict[int, str] = {NONE: "none", STRUCT: "struct", DESC: "desc", COORD: "coord", EOS: "eos"}

_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_COLON_RE = re.compile(r"[ \t\n\r]*:")


def offsets_from_pieces(pieces: Sequence[str]) -> np.ndarray:
    """Boundaries ``[L+1]`` (int64) of per-token decoded pieces in ``"".join(pieces)``."""
    out = np.zeros(len(pieces) + 1, dtype=np.int64)
    if pieces:
        np.cumsum([len(p) for p in pieces], out=out[1:])
    return out


def token_range(offsets: np.ndarray, span: tuple[int, int]) -> tuple[int, int]:
    """Half-open token index range overlapping char span ``[a, b)`` (empty for an empty span)."""
    lo, hi = tokens_overlapping_ranges(offsets, np.asarray([span], dtype=np.int64))
    return int(lo[0]), int(hi[0])


def tokens_overlapping_ranges(offsets: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For spans ``[S, 2]`` (chars, half-open) the token ranges ``lo[S], hi[S]`` of tokens overlapping them.

    Token i overlaps ``[a, b)`` iff ``start_i < b`` and ``end_i > a`` (zero-width tokens never overlap)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lo = np.searchsorted(ends, spans[:, 0], side="right")
    hi = np.searchsorted(starts, spans[:, 1], side="left")
    empty = spans[:, 1] <= spans[:, 0]
    hi = np.where(empty | (hi < lo), lo, hi)
    return lo, hi


def tokens_overlapping(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Boolean mask ``[L]`` of tokens overlapping any of ``spans [S, 2]`` (difference array, no per-token loop)."""
    n = len(offsets) - 1
    lo, hi = tokens_overlapping_ranges(offsets, spans)
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    mask = np.cumsum(diff[:-1]) > 0
    widths = np.diff(np.asarray(offsets, dtype=np.int64))
    return mask & (widths > 0)


@dataclass(frozen=True)
class JsonScan:
    """String-aware scan of a CoordJSON text.

    ``desc_value_spans [D, 2]``: char spans of desc values (strictly inside the quotes), in text order.
    ``closure_char``: index of the outermost ``}`` (the one that returns the brace/bracket depth, counted outside
    strings, to 0), or -1 if the text never closes its top-level object.
    """

    desc_value_spans: np.ndarray
    closure_char: int
    end_depth: int


def scan_coordjson(text: str, *, start_depth: int = 0) -> JsonScan:
    """Scan ``text`` (a CoordJSON document or a tail of one starting at nesting depth ``start_depth``).

    Strings are found left to right with a JSON-string regex (outside strings there are no quotes in CoordJSON),
    so keys and braces inside desc values are never mistaken for syntax. A string is a desc value iff it follows
    the key string ``"desc"`` and a colon.
    """
    strings = [(m.start(), m.end()) for m in _STRING_RE.finditer(text)]
    desc_spans: list[tuple[int, int]] = []
    for i, (a, b) in enumerate(strings[:-1]):
        if text[a:b] != '"desc"':
            continue
        colon = _COLON_RE.match(text, b)
        if colon is None:
            continue
        na, nb = strings[i + 1]
        if text[colon.end():na].strip(" \t\n\r") == "":
            desc_spans.append((na + 1, nb - 1))
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) if text else np.zeros(0, dtype=np.uint32)
    in_string = np.zeros(len(text) + 1, dtype=np.int64)
    if strings:
        s = np.asarray(strings, dtype=np.int64)
        np.add.at(in_string, s[:, 0], 1)
        np.add.at(in_string, s[:, 1], -1)
    outside = np.cumsum(in_string[:-1]) == 0
    opens = outside & ((chars == ord("{")) | (chars == ord("[")))
    closes = outside & ((chars == ord("}")) | (chars == ord("]")))
    depth = start_depth + np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
    hits = np.nonzero(closes & (chars == ord("}")) & (depth == 0))[0]
    closure = int(hits[0]) if len(hits) else -1
    spans = np.asarray(desc_spans, dtype=np.int64).reshape(-1, 2)
    end_depth = int(depth[-1]) if len(depth) else start_depth
    return JsonScan(desc_value_spans=spans, closure_char=closure, end_depth=end_depth)


def partition_token_types(token_ids: torch.Tensor | Sequence[int], offsets: np.ndarray,
                          desc_value_spans: np.ndarray, coord_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Types ``[L]`` (int8, codes :data:`TYPE_NAMES`) of the L target tokens of one assistant span.

    Precedence (exclusivity): ``eos`` (id == ``eos_id``) > ``coord`` (id ∈ ``coord_ids``) > ``desc`` (overlaps a
    desc value span) > ``struct`` (everything else). Deterministic and local to the span (packing-safe).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if len(offsets) != ids.numel() + 1:
        raise ValueError(f"partition_token_types: {ids.numel()} tokens need {ids.numel() + 1} offsets, "
                         f"got {len(offsets)}")
    desc = torch.from_numpy(tokens_overlapping(offsets, desc_value_spans))
    types = torch.full((ids.numel(),), STRUCT, dtype=torch.int8)
    types[desc] = DESC
    types[torch.isin(ids, coord_ids.to(ids.device).cpu())] = COORD
    types[ids == eos_id] = EOS
    return types
