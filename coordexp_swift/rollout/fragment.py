"""FN fragment text (SPEC §3.6 B3) and the string-aware closure scan used for ``tail_closure_pos`` (B4).

``Y_train = prefix ids + tokens(fragment) + <|im_end|>``, where the fragment is ``", "`` iff the prefix ends with
``}`` (ignoring whitespace), then the FN records in canonical form (configured field order, GT order) joined by
``", "``, then ``"]}"`` (no FN: just ``"]}"``). Records are rendered by :func:`coordexp_swift.data.coordjson.render_object`, the same
function that renders the GT assistant text, so FN records are byte-identical to their Stage-1 rendering.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordexp_swift.coord.codec import parse_coord_token
from coordexp_swift.data.coordjson import render_object
from coordexp_swift.data.records import GTObject

__all__ = ["ClosureOffsets", "FnFragment", "build_fn_fragment", "closure_char_offsets", "fn_fragment_text",
           "gt_object_from_payload"]

_WS = " \t\n\r"
Span = tuple[int, int]


@dataclass(frozen=True)
class ClosureOffsets:
    """Char offsets found by :func:`closure_char_offsets` (None when absent).

    ``object_close``: the outermost ``}`` (brace depth returns to 0); ``array_close``: the ``]`` that closes the
    outermost array (bracket depth returns to 0) before it.
    """

    array_close: int | None
    object_close: int | None


@dataclass(frozen=True)
class FnFragment:
    """The fragment ``text``; per FN record (GT order) its ``record_char_spans`` and ``desc_char_spans`` (the desc
    JSON string literal incl. quotes), and the closure offsets — all relative to ``text``."""

    text: str
    record_char_spans: tuple[Span, ...]
    desc_char_spans: tuple[Span, ...]
    closure: ClosureOffsets


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


def closure_char_offsets(text: str, *, brace_depth: int = 0, bracket_depth: int = 0) -> ClosureOffsets:
    """String-aware depth scan of ``text`` (never "the last ``}``").

    Scanning starts with the given depths (defaults: ``text`` is a whole assistant text; for a fragment that
    continues ``{"objects": [...``, pass ``brace_depth=1, bracket_depth=1``). Braces and brackets inside JSON
    strings (escape-aware) are ignored. Returns the offset of the first ``}`` that brings the brace depth from 1
    to 0 and of the last ``]`` before it that brought the bracket depth from 1 to 0.
    """
    array_close: int | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            brace_depth += 1
        elif c == "[":
            bracket_depth += 1
        elif c == "]":
            bracket_depth -= 1
            if bracket_depth == 0:
                array_close = i
        elif c == "}":
            brace_depth -= 1
            if brace_depth == 0:
                return ClosureOffsets(array_close, i)
        i += 1
    return ClosureOffsets(array_close, None)


def build_fn_fragment(
    prefix_text: str, fn_objects: Sequence[GTObject | Mapping[str, Any]], field_order: str = "desc_first"
) -> FnFragment:
    """The FN fragment after ``prefix_text`` (SPEC §3.6 B3); ``fn_objects`` in GT order.

    Raises RuntimeError if ``prefix_text`` does not end (ignoring whitespace) in ``[`` or ``}`` (the parser
    guarantees it), ValueError for a malformed GT object.
    """
    tail = prefix_text.rstrip(_WS)
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
    return FnFragment(text, tuple(spans), tuple(desc_spans),
                      closure_char_offsets(text, brace_depth=1, bracket_depth=1))


def fn_fragment_text(
    prefix_text: str, fn_objects: Sequence[GTObject | Mapping[str, Any]], field_order: str = "desc_first"
) -> str:
    """Fragment text only (see :func:`build_fn_fragment`)."""
    return build_fn_fragment(prefix_text, fn_objects, field_order).text
