"""FN fragment text (SPEC §3.6 B3) with the spans the B4 meta needs, computed while writing it (never re-scanned).

``Y_train = prefix ids + tokens(fragment) + <|im_end|>``, where the fragment is ``", "`` iff the prefix ends with
``}`` (ignoring whitespace), then the FN records in canonical form (configured field order, GT order) joined by
``", "``, then ``"]}"`` (no FN: just ``"]}"``). Records are rendered by :func:`coordexp_swift.data.coordjson.render_object`, the same
function that renders the GT assistant text, so FN records are byte-identical to their Stage-1 rendering.

The prefix the fragment continues is at depth ``{"objects": [`` (the parser cuts only after the opener or after a
top-level record), so the fragment's final ``}`` is the document's outermost ``}`` (``tail_closure_pos``) and its
``]`` the array close — by construction, checked against the one scanner in the tests.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordexp_swift.coord.codec import parse_coord_token
from coordexp_swift.data.coordjson import render_object
from coordexp_swift.data.coordjson_scan import JSON_WS
from coordexp_swift.data.records import GTObject

__all__ = ["FnFragment", "build_fn_fragment", "fn_fragment_text", "gt_object_from_payload"]


Span = tuple[int, int]


@dataclass(frozen=True)
class FnFragment:
    """The fragment ``text``; per FN record (GT order) its ``record_char_spans`` and ``desc_char_spans`` (the desc
    JSON string literal incl. quotes), all relative to ``text``. ``closure_char`` (the outermost ``}``) is the last
    character and ``array_close_char`` (the ``]`` of the objects array) the one before it."""

    text: str
    record_char_spans: tuple[Span, ...]
    desc_char_spans: tuple[Span, ...]

    @property
    def closure_char(self) -> int:
        return len(self.text) - 1

    @property
    def array_close_char(self) -> int:
        return len(self.text) - 2

    def desc_value_spans(self) -> np.ndarray:
        """``[F, 2]`` int64 char spans of the FN desc values (inside the quotes), relative to ``text``."""
        spans = np.asarray(self.desc_char_spans, dtype=np.int64).reshape(-1, 2)
        return spans + np.asarray([1, -1], dtype=np.int64)


def gt_object_from_payload(obj: GTObject | Mapping[str, Any]) -> GTObject:
    """A ``GTObject`` from an ``assistant_payload`` object ``{"desc": str, "bbox_2d": ["<|coord_k|>"] * 4}``
    (integral bins accepted too); ``GTObject`` passes through."""
    if isinstance(obj, GTObject):
        return obj
    try:
        desc = obj["desc"]
        values = obj["bbox_2d"]
    except KeyError as e:
        raise ValueError(f"assistant_payload object {dict(obj)!r} lacks {e.args[0]!r}; Stage-2 GT is bbox-only "
                         "(filter polygons upstream)") from None
    bins = tuple(v if isinstance(v, int) else parse_coord_token(v) for v in values)
    return GTObject(desc=desc, geometry="bbox_2d", bins=bins)


def build_fn_fragment(
    prefix_text: str, fn_objects: Sequence[GTObject | Mapping[str, Any]], field_order: str = "desc_first"
) -> FnFragment:
    """The FN fragment after ``prefix_text`` (SPEC §3.6 B3); ``fn_objects`` in GT order.

    Raises RuntimeError if ``prefix_text`` does not end (ignoring whitespace) in ``[`` or ``}`` (the parser
    guarantees it), ValueError for a malformed GT object.
    """
    tail = prefix_text.rstrip(JSON_WS)
    if not tail.endswith(("[", "}")):
        raise RuntimeError(f"rollout prefix must end in '[' or '}}' (ignoring whitespace), got ...{tail[-20:]!r}")
    parts: list[str] = [", "] if tail.endswith("}") and len(fn_objects) else []
    pos = len(parts[0]) if parts else 0
    spans: list[Span] = []
    desc_spans: list[Span] = []
    for k, raw in enumerate(fn_objects):
        obj = gt_object_from_payload(raw)
        if k:
            parts.append(", ")
            pos += 2
        rec = render_object(obj, field_order)  # type: ignore[arg-type]
        desc_lit = json.dumps(obj.desc, ensure_ascii=False)  # how render_object writes desc (SPEC §1.3)
        key_at = rec.find('"desc": ' + desc_lit)
        if key_at < 0:
            raise RuntimeError(f"render_object output {rec!r} lacks the desc literal {desc_lit!r}")
        d = key_at + len('"desc": ')
        spans.append((pos, pos + len(rec)))
        desc_spans.append((pos + d, pos + d + len(desc_lit)))
        parts.append(rec)
        pos += len(rec)
    parts.append("]}")
    text = "".join(parts)
    return FnFragment(text, tuple(spans), tuple(desc_spans))


def fn_fragment_text(
    prefix_text: str, fn_objects: Sequence[GTObject | Mapping[str, Any]], field_order: str = "desc_first"
) -> str:
    """Fragment text only (see :func:`build_fn_fragment`)."""
    return build_fn_fragment(prefix_text, fn_objects, field_order).text
