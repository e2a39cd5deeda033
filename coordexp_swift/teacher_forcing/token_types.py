"""Token-type partition of assistant targets (SPEC §4.1) and the string-aware CoordJSON scan it rests on.

Types (exclusive, deterministic) of every token in an assistant target span:
  ``struct`` (syntax, keys, quotes, punctuation, whitespace), ``desc`` (tokens overlapping a desc *value*, i.e. the
  characters strictly between its quotes; boundary-straddling tokens count as desc), ``coord`` (id ∈ V_c),
  ``eos`` (``<|im_end|>``, never also struct). Tokens outside the span are ``NONE`` (unsupervised).

Char offsets are *boundaries*: ``offsets[L+1]`` with token i covering chars ``[offsets[i], offsets[i+1])`` of the
target text (the concatenation of per-token decoded pieces: ``VocabView.pieces.render(ids)``). The string-aware
scan (desc-value spans, outermost ``}``) and the char-span → token maps are the one CoordJSON scanner,
:mod:`coordexp_swift.data.coordjson_scan`, re-exported here for the teacher-forcing callers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.data.coordjson_scan import (
    JsonScan,
    scan_coordjson,
    token_range,
    tokens_overlapping,
    tokens_overlapping_ranges,
)

__all__ = [
    "COORD",
    "DESC",
    "EOS",
    "NONE",
    "STRUCT",
    "TYPE_NAMES",
    "JsonScan",
    "partition_token_types",
    "scan_coordjson",
    "token_range",
    "tokens_overlapping",
    "tokens_overlapping_ranges",
]

NONE, STRUCT, DESC, COORD, EOS = 0, 1, 2, 3, 4
#: type code -> name (codes are stable; ``NONE`` = outside the assistant target span).
TYPE_NAMES: dict[int, str] = {NONE: "none", STRUCT: "struct", DESC: "desc", COORD: "coord", EOS: "eos"}


def partition_token_types(token_ids: torch.Tensor | Sequence[int], offsets: np.ndarray,
                          desc_value_spans: np.ndarray, coord_ids: torch.Tensor | VocabView,
                          eos_id: int) -> torch.Tensor:
    """Types ``[L]`` (int8, codes :data:`TYPE_NAMES`) of the L target tokens of one assistant span.

    Precedence (exclusivity): ``eos`` (id == ``eos_id``) > ``coord`` (id ∈ V_c: ``coord_ids [NUM_BINS]``, or the
    run's :class:`VocabView`, whose id → bin table answers without a search) > ``desc`` (overlaps a desc value
    span) > ``struct`` (everything else). Deterministic and local to the span (packing-safe).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if len(offsets) != ids.numel() + 1:
        raise ValueError(f"partition_token_types: {ids.numel()} tokens need {ids.numel() + 1} offsets, "
                         f"got {len(offsets)}")
    desc = torch.from_numpy(tokens_overlapping(offsets, desc_value_spans))
    types = torch.full((ids.numel(),), STRUCT, dtype=torch.int8)
    types[desc] = DESC
    if isinstance(coord_ids, VocabView):
        types[torch.from_numpy(coord_ids.is_coord(ids.cpu().numpy()))] = COORD
    else:
        types[torch.isin(ids, coord_ids.to(ids.device).cpu())] = COORD
    types[ids == eos_id] = EOS
    return types
