"""Strict rollout parser (SPEC §1.3, §3.6 B1): salvage valid CoordJSON records, never repair, never raise.

Two views share one text scanner (:func:`scan_text`):

* :func:`parse_rollout` — the token-aligned view used by Channel-B. Each generated id is decoded on its own,
  the pieces are concatenated (per-token char offsets kept) and cut at the first ``<|im_end|>`` id. Valid records
  become predictions with their coord-slot token indices; the kept prefix ids are the model's own ids, except that
  a cut falling inside a token replaces only that token by the tokenisation of its needed leading piece.
* :func:`parse_text` — the text view used by tools (offline eval, visualisation): same scanner on a string.

Grammar accepted after the opener ``{ "objects" : [`` (whitespace-tolerant, must be the first non-whitespace text):
balanced ``{...}`` records (string- and escape-aware brace matching) separated by anything; the array ends at the
first top-level ``]``. A record's text is parsed as JSON extended with one value type, the **bare** coord literal
``<|coord_k|>``. Classification (one reason per record, first matching rule wins):

====================  ============================================================================================
``malformed``         text is not one JSON-with-bare-coords object; a top-level non-record item between records
                      (e.g. ``"x"`` or ``7``, or a stray ``}``) also counts as one ``malformed`` drop
``poly``              a ``poly`` / ``poly_points`` key is present
``unknown_geom``      another array-valued key besides ``desc`` / ``bbox_2d`` is present (``bbox``, ``line``, ...)
``unexpected_keys``   any other key besides ``desc`` / ``bbox_2d``, or a duplicated key
``missing_desc``      no ``desc``, or it is not a string that is non-empty after ``strip()``
``malformed``         no ``bbox_2d`` key, or its value is not an array
``order_violation``   the two keys are not in the configured ``object_field_order``
``non_coord_token``   an array element is not a bare coord literal with k in 0..999 (quoted tokens, numbers,
                      nested arrays, ``<|coord_1000|>``)
``wrong_arity``       not exactly 4 elements; token view: not exactly 4 ids of V_c inside the geometry span
``bbox_invalid``      ``x2 < x1`` or ``y2 < y1`` (equality allowed)
====================  ============================================================================================

A ``{`` whose matching ``}`` never comes is a truncated last record: ``truncated=True``, cut off, not a drop.
Dropped records stay in the prefix text (they are FP context), only valid ones are predictions.

**Prefix cut** = max(end of the opener ``[``, end of the last complete record, valid or dropped); the prefix then
ends (ignoring whitespace) in ``[`` or ``}`` by construction (checked anyway). **Invalid rollout** (no opener, or
a cut token whose leading piece does not re-tokenise to exactly that text): prefix = the ids of the empty opener
``{"objects": [``, zero predictions, empty drop counts.

**Non-ASCII text.** Byte-level BPE ids can carry part of a multi-byte UTF-8 character; decoding such an id alone
yields U+FFFD. JSON structure is ASCII, and ASCII bytes always decode to themselves, so structure, offsets and cuts
are exact on the per-token text. Only a ``desc`` can contain U+FFFD: if ``decode_ids`` (joint decode of several
ids) is given, the desc of a valid record is re-decoded from its tokens jointly; otherwise it keeps U+FFFD. A cut
piece that contains U+FFFD is never re-encoded (its bytes are unknown): that rollout is invalid.
"""
from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordexp_swift.coord.codec import COORD_TOKEN_RE, MAX_BIN  # accepts \d{1,4}; range-checked below
from coordexp_swift.data.coordjson import field_slots

__all__ = [
    "DROP_REASONS",
    "EMPTY_OPENER_TEXT",
    "IM_END_TEXT",
    "DroppedRecord",
    "ParsedRollout",
    "RolloutObject",
    "ScanResult",
    "ScannedRecord",
    "TextParse",
    "parse_rollout",
    "parse_text",
    "scan_text",
]

#: Drop reasons, in the order used for logging (counts are always reported for all of them).
DROP_REASONS: tuple[str, ...] = (
    "missing_desc",
    "wrong_arity",
    "non_coord_token",
    "unexpected_keys",
    "order_violation",
    "poly",
    "unknown_geom",
    "bbox_invalid",
    "malformed",
)
#: The fallback prefix text of an invalid rollout (SPEC §10.1).
EMPTY_OPENER_TEXT = '{"objects": ['
IM_END_TEXT = "<|im_end|>"
_OPENER_RE = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"objects"[ \t\n\r]*:[ \t\n\r]*\[')
_WS = " \t\n\r"
_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_POLY_KEYS = frozenset({"poly", "poly_points"})
_MAX_DEPTH = 32

Span = tuple[int, int]


def _check_field_order(object_field_order: str) -> tuple[str, str]:
    """Key order of a valid (bbox-only) record for ``custom.object_field_order``."""
    return tuple("bbox_2d" if slot == "geometry" else slot for slot in field_slots(object_field_order))


# --------------------------------------------------------------------------------------------------------------
# Record value parser: JSON + bare coord literals. Internal; _Malformed never escapes this module.
# --------------------------------------------------------------------------------------------------------------


class _Malformed(Exception):
    """Internal control flow: the record text is not JSON-with-bare-coords."""


@dataclass(frozen=True)
class _Value:
    kind: str  # "string" | "number" | "literal" | "coord" | "array" | "object"
    span: Span  # char span of the whole value
    value: Any = None  # decoded string, coord bin (int, unchecked range), or None
    items: tuple["_Value", ...] = ()  # array elements
    members: tuple[tuple[str, "_Value"], ...] = ()  # object (key, value) in text order


def _skip_ws(text: str, pos: int, end: int) -> int:
    while pos < end and text[pos] in _WS:
        pos += 1
    return pos


def _string_end(text: str, pos: int, end: int) -> int:
    """``text[pos] == '"'``; index just past the closing quote, or -1 if unterminated before ``end``."""
    i = pos + 1
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return -1


def _parse_value(text: str, pos: int, end: int, depth: int) -> _Value:
    pos = _skip_ws(text, pos, end)
    if pos >= end or depth > _MAX_DEPTH:
        raise _Malformed
    c = text[pos]
    if c == '"':
        stop = _string_end(text, pos, end)
        if stop < 0:
            raise _Malformed
        try:
            s = json.loads(text[pos:stop])
        except ValueError:
            raise _Malformed from None
        return _Value("string", (pos, stop), s)
    if c == "{":
        return _parse_object(text, pos, end, depth + 1)
    if c == "[":
        items: list[_Value] = []
        i = _skip_ws(text, pos + 1, end)
        if i < end and text[i] == "]":
            return _Value("array", (pos, i + 1))
        while True:
            v = _parse_value(text, i, end, depth + 1)
            items.append(v)
            i = _skip_ws(text, v.span[1], end)
            if i < end and text[i] == ",":
                i += 1
                continue
            if i < end and text[i] == "]":
                return _Value("array", (pos, i + 1), items=tuple(items))
            raise _Malformed
    if c == "<":
        m = COORD_TOKEN_RE.match(text, pos, end)
        if m is None:
            raise _Malformed
        return _Value("coord", m.span(), int(m.group(1)))
    for lit in ("true", "false", "null"):
        if text.startswith(lit, pos, end):
            return _Value("literal", (pos, pos + len(lit)))
    m = _NUMBER_RE.match(text, pos, end)
    if m is None:
        raise _Malformed
    return _Value("number", m.span())


def _parse_object(text: str, pos: int, end: int, depth: int) -> _Value:
    members: list[tuple[str, _Value]] = []
    i = _skip_ws(text, pos + 1, end)
    if i < end and text[i] == "}":
        return _Value("object", (pos, i + 1))
    while True:
        key = _parse_value(text, i, end, depth)
        if key.kind != "string":
            raise _Malformed
        i = _skip_ws(text, key.span[1], end)
        if i >= end or text[i] != ":":
            raise _Malformed
        val = _parse_value(text, i + 1, end, depth)
        members.append((key.value, val))
        i = _skip_ws(text, val.span[1], end)
        if i < end and text[i] == ",":
            i = _skip_ws(text, i + 1, end)
            continue
        if i < end and text[i] == "}":
            return _Value("object", (pos, i + 1), members=tuple(members))
        raise _Malformed


# --------------------------------------------------------------------------------------------------------------
# Shared scanner
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScannedRecord:
    """One balanced ``{...}`` item of the objects array (text level).

    ``reason`` is None for a valid record. For valid records ``desc``, ``bins`` (4 text-level bins x1,y1,x2,y2),
    ``desc_char_span`` (the desc JSON string literal, quotes included) and ``geometry_char_span`` (``[`` .. ``]``)
    are set. ``is_record`` is False for a top-level non-record item (counted as ``malformed``).
    """

    char_span: Span
    reason: str | None
    is_record: bool = True
    desc: str | None = None
    bins: tuple[int, int, int, int] | None = None
    desc_char_span: Span | None = None
    geometry_char_span: Span | None = None


@dataclass(frozen=True)
class ScanResult:
    """Scanner output on a text already cut at the first ``<|im_end|>`` literal.

    ``opener_end`` is the index just past the opener ``[`` (None: no opener → invalid rollout). ``cut`` is the
    prefix cut (0 when invalid). ``items`` are records and non-record items in text order.
    """

    text: str
    opener_end: int | None
    items: tuple[ScannedRecord, ...]
    truncated: bool
    cut: int

    @property
    def invalid_rollout(self) -> bool:
        return self.opener_end is None


def _classify(text: str, span: Span, key_order: tuple[str, str]) -> ScannedRecord:
    start, stop = span
    try:
        obj = _parse_object(text, start, stop, 1)
    except _Malformed:
        return ScannedRecord(span, "malformed")
    if obj.span[1] != stop:
        return ScannedRecord(span, "malformed")
    keys = [k for k, _ in obj.members]
    values = dict(obj.members)
    extra = [k for k in keys if k not in ("desc", "bbox_2d")]
    if any(k in _POLY_KEYS for k in keys):
        return ScannedRecord(span, "poly")
    if any(values[k].kind == "array" for k in extra):
        return ScannedRecord(span, "unknown_geom")
    if extra or len(set(keys)) != len(keys):
        return ScannedRecord(span, "unexpected_keys")
    desc = values.get("desc")
    if desc is None or desc.kind != "string" or not desc.value.strip():
        return ScannedRecord(span, "missing_desc")
    geom = values.get("bbox_2d")
    if geom is None or geom.kind != "array":
        return ScannedRecord(span, "malformed")
    if tuple(keys) != key_order:
        return ScannedRecord(span, "order_violation")
    if any(v.kind != "coord" or not 0 <= v.value <= MAX_BIN for v in geom.items):
        return ScannedRecord(span, "non_coord_token")
    if len(geom.items) != 4:
        return ScannedRecord(span, "wrong_arity")
    x1, y1, x2, y2 = (int(v.value) for v in geom.items)
    if x2 < x1 or y2 < y1:
        return ScannedRecord(span, "bbox_invalid")
    return ScannedRecord(span, None, True, desc.value, (x1, y1, x2, y2), desc.span, geom.span)


def _record_end(text: str, pos: int) -> int:
    """``text[pos] == '{'``; index just past its matching ``}`` (string/escape aware), or -1 if unterminated."""
    depth = 0
    i, n = pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = _string_end(text, i, n)
            if i < 0:
                return -1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _junk_end(text: str, pos: int) -> int:
    """End of a top-level non-record item starting at ``pos``: the next ``{``, ``,`` or ``]`` outside strings."""
    i, n = pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = _string_end(text, i, n)
            if i < 0:
                return n
            continue
        if c in "{,]":
            return i
        i += 1
    return n


def scan_text(text: str, object_field_order: str = "desc_first") -> ScanResult:
    """Scan a rollout text: cut at the first ``<|im_end|>`` literal, find the opener, classify every item.

    Never raises on any ``text`` (only on an unknown ``object_field_order``).
    """
    key_order = _check_field_order(object_field_order)
    stop = text.find(IM_END_TEXT)
    if stop >= 0:
        text = text[:stop]
    m = _OPENER_RE.match(text)
    if m is None:
        return ScanResult(text, None, (), False, 0)
    opener_end = m.end()
    items: list[ScannedRecord] = []
    truncated = False
    cut = opener_end
    pos, n = opener_end, len(text)
    while True:
        pos = _skip_ws(text, pos, n)
        if pos >= n or text[pos] == "]":
            break
        c = text[pos]
        if c == ",":
            pos += 1
        elif c == "{":
            end = _record_end(text, pos)
            if end < 0:
                truncated = True
                break
            items.append(_classify(text, (pos, end), key_order))
            cut = pos = end
        else:
            end = _junk_end(text, pos)
            items.append(ScannedRecord((pos, end), "malformed", is_record=False))
            pos = end
    return ScanResult(text, opener_end, tuple(items), truncated, cut)


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(DROP_REASONS, 0)


def _count(reasons: Sequence[str]) -> dict[str, int]:
    counts = _zero_counts()
    for r in reasons:
        counts[r] += 1
    return counts


# --------------------------------------------------------------------------------------------------------------
# Text view
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextParse:
    """Text-level parse. ``objects``: ``[{"desc": str, "bbox_2d": [x1, y1, x2, y2]}]`` (bins, appearance order);
    ``drop_counts``: every reason of :data:`DROP_REASONS` -> count; ``prefix_text``: text up to the prefix cut
    (``'{"objects": ['`` when invalid)."""

    objects: list[dict[str, Any]]
    invalid_rollout: bool
    truncated: bool
    drop_counts: dict[str, int]
    prefix_text: str


def parse_text(text: str, object_field_order: str = "desc_first") -> TextParse:
    """Parse a decoded rollout text (same scanner and rules as :func:`parse_rollout`, without the token view)."""
    scan = scan_text(text, object_field_order)
    if scan.invalid_rollout:
        return TextParse([], True, False, _zero_counts(), EMPTY_OPENER_TEXT)
    objects = [{"desc": r.desc, "bbox_2d": list(r.bins)} for r in scan.items if r.reason is None]
    counts = _count([r.reason for r in scan.items if r.reason is not None])
    return TextParse(objects, False, scan.truncated, counts, scan.text[: scan.cut])


# --------------------------------------------------------------------------------------------------------------
# Token view
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutObject:
    """A valid predicted record. Token indices index ``ParsedRollout.prefix_token_ids``; char spans index
    ``ParsedRollout.prefix_text``; spans are half-open.

    ``bins``: (x1, y1, x2, y2) norm1000 bins read from the slot ids. ``slot_token_idx``: the 4 token indices whose
    id is in V_c inside the geometry span, in order. ``token_span``: tokens overlapping ``char_span`` (the record's
    ``{`` .. ``}``). ``desc_char_span``: the desc string literal incl. quotes; ``geometry_char_span``: ``[`` .. ``]``.
    """

    desc: str
    bins: tuple[int, int, int, int]
    slot_token_idx: tuple[int, int, int, int]
    char_span: Span
    token_span: Span
    desc_char_span: Span
    geometry_char_span: Span


@dataclass(frozen=True)
class DroppedRecord:
    """A dropped item (reason from :data:`DROP_REASONS`); ``char_span`` in the cut response text. Items after the
    prefix cut (junk after the last complete record) are listed too, with ``char_span[1] > len(prefix_text)``."""

    reason: str
    char_span: Span


@dataclass(frozen=True)
class ParsedRollout:
    """Result of :func:`parse_rollout` (SPEC §3.6 B1).

    ``prefix_token_ids``: kept ids (the model's own ids; only a token containing the cut is replaced by the
    tokenisation of its leading piece); ``prefix_text``: their per-token decoded text; ``token_char_offsets``:
    ``len(prefix_token_ids) + 1`` offsets into ``prefix_text`` (token i covers ``[off[i], off[i+1])``).
    ``objects``: valid predictions in appearance order. ``drop_counts``: every reason of :data:`DROP_REASONS`
    -> count (do not mutate). ``response_len``: number of generated ids before the first ``<|im_end|>`` id.
    ``invalid_reason``: None, ``"no_opener"`` or ``"cut_token"`` (leading piece did not re-tokenise exactly).
    """

    prefix_token_ids: tuple[int, ...]
    prefix_text: str
    token_char_offsets: tuple[int, ...]
    objects: tuple[RolloutObject, ...]
    dropped: tuple[DroppedRecord, ...]
    drop_counts: dict[str, int] = field(hash=False)
    truncated: bool
    invalid_rollout: bool
    invalid_reason: str | None
    response_len: int

    @property
    def n_drop_invalid(self) -> int:
        """Total dropped items (all reasons; truncation excluded)."""
        return sum(self.drop_counts.values())

    @property
    def pred_bins(self) -> list[tuple[int, int, int, int]]:
        """[P] boxes (x1, y1, x2, y2) in bins, prediction order (input of :func:`match_predictions`)."""
        return [o.bins for o in self.objects]

    def token_range(self, char_span: Span) -> Span:
        """Half-open range of prefix token indices overlapping ``char_span`` (empty range for an empty span)."""
        return _token_range(self.token_char_offsets, char_span)


def _token_range(offsets: Sequence[int], char_span: Span) -> Span:
    a, b = char_span
    if b <= a:
        i = bisect.bisect_right(offsets, a) - 1
        return (max(i, 0), max(i, 0))
    first = bisect.bisect_right(offsets, a) - 1
    last = bisect.bisect_left(offsets, b)  # first offset >= b -> tokens [first, last) overlap
    return (max(first, 0), min(last, len(offsets) - 1))


def _offsets(pieces: Sequence[str]) -> list[int]:
    out = [0]
    for p in pieces:
        out.append(out[-1] + len(p))
    return out


def _invalid(fallback_ids: Sequence[int], decode_token: Callable[[int], str], reason: str, n: int) -> ParsedRollout:
    pieces = [decode_token(i) for i in fallback_ids]
    return ParsedRollout(
        prefix_token_ids=tuple(fallback_ids),
        prefix_text="".join(pieces),
        token_char_offsets=tuple(_offsets(pieces)),
        objects=(),
        dropped=(),
        drop_counts=_zero_counts(),
        truncated=False,
        invalid_rollout=True,
        invalid_reason=reason,
        response_len=n,
    )


def _recover_desc(
    rec: ScannedRecord, text: str, ids: Sequence[int], offsets: Sequence[int],
    decode_ids: Callable[[Sequence[int]], str] | None,
) -> str:
    """The desc of a valid record; re-decoded jointly when the per-token text has U+FFFD (see module doc)."""
    if rec.desc is None or rec.desc_char_span is None:
        return ""
    if "\ufffd" not in rec.desc or decode_ids is None:
        return rec.desc
    qa, qb = rec.desc_char_span
    ta, tb = _token_range(offsets, (qa, qb))
    joint = decode_ids(list(ids[ta:tb]))
    lead, trail = text[offsets[ta]:qa], text[qb:offsets[tb]]
    if len(joint) < len(lead) + len(trail) or not joint.startswith(lead) or not joint.endswith(trail):
        return rec.desc
    literal = joint[len(lead): len(joint) - len(trail)]
    if len(literal) < 2 or _string_end(literal, 0, len(literal)) != len(literal):
        return rec.desc
    try:
        value = json.loads(literal)
    except ValueError:
        return rec.desc
    return value if isinstance(value, str) and value.strip() else rec.desc


def parse_rollout(
    token_ids: Sequence[int],
    *,
    decode_token: Callable[[int], str],
    encode: Callable[[str], list[int]],
    coord_id_to_bin: Mapping[int, int],
    im_end_id: int,
    object_field_order: str = "desc_first",
    fallback_prefix_ids: Sequence[int] | None = None,
    decode_ids: Callable[[Sequence[int]], str] | None = None,
) -> ParsedRollout:
    """Strict token-aligned parse of one rollout (SPEC §3.6 B1). Never raises on any model output.

    ``token_ids``: generated ids (response only, no prompt; may include ``<|im_end|>`` and anything after it).
    ``decode_token(id) -> str``: one id's text with special tokens kept and no clean-up, e.g.
    ``lambda i: tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)``.
    ``encode(text) -> list[int]``: tokenisation without special-token additions (``add_special_tokens=False``),
    used for the cut token's leading piece and, when ``fallback_prefix_ids`` is None, for the fallback opener.
    ``coord_id_to_bin``: id -> bin for V_c. ``decode_ids(ids) -> str`` (optional): joint decode, used only to
    recover non-ASCII descs split inside UTF-8 characters.
    """
    _check_field_order(object_field_order)
    ids = [int(i) for i in token_ids]
    n_resp = ids.index(im_end_id) if im_end_id in ids else len(ids)
    ids = ids[:n_resp]
    fallback = list(fallback_prefix_ids) if fallback_prefix_ids is not None else list(encode(EMPTY_OPENER_TEXT))

    pieces = [decode_token(i) for i in ids]
    offsets = _offsets(pieces)
    scan = scan_text("".join(pieces), object_field_order)
    if scan.invalid_rollout:
        return _invalid(fallback, decode_token, "no_opener", n_resp)
    text, cut = scan.text, scan.cut

    # Prefix ids: tokens fully before the cut are kept; a token straddling the cut is re-tokenised.
    j = bisect.bisect_right(offsets, cut) - 1  # token containing char `cut` (or starting at it)
    prefix_ids = ids[:j]
    prefix_offsets = offsets[: j + 1]
    if offsets[j] < cut:
        piece = text[offsets[j]:cut]
        new_ids = [int(i) for i in encode(piece)]
        new_pieces = [decode_token(i) for i in new_ids]
        if "\ufffd" in piece or "".join(new_pieces) != piece or im_end_id in new_ids:
            return _invalid(fallback, decode_token, "cut_token", n_resp)
        prefix_ids += new_ids
        for p in new_pieces:
            prefix_offsets.append(prefix_offsets[-1] + len(p))
    prefix_text = text[:cut]
    if not prefix_text.rstrip(_WS).endswith(("[", "}")):
        return _invalid(fallback, decode_token, "cut_token", n_resp)

    objects: list[RolloutObject] = []
    reasons: list[str] = []
    dropped: list[DroppedRecord] = []
    for rec in scan.items:
        reason = rec.reason
        slots: list[int] = []
        bins: tuple[int, ...] = ()
        if reason is None and rec.geometry_char_span is not None and rec.desc_char_span is not None:
            ga, gb = _token_range(prefix_offsets, rec.geometry_char_span)
            slots = [t for t in range(ga, gb) if prefix_ids[t] in coord_id_to_bin]
            bins = tuple(int(coord_id_to_bin[prefix_ids[t]]) for t in slots)
            if len(slots) != 4:
                reason = "wrong_arity"
            elif bins[2] < bins[0] or bins[3] < bins[1]:
                reason = "bbox_invalid"
        if reason is not None or rec.desc_char_span is None or rec.geometry_char_span is None:
            reason = reason or "malformed"
            reasons.append(reason)
            dropped.append(DroppedRecord(reason, rec.char_span))
            continue
        objects.append(RolloutObject(
            desc=_recover_desc(rec, text, prefix_ids, prefix_offsets, decode_ids),
            bins=(bins[0], bins[1], bins[2], bins[3]),
            slot_token_idx=(slots[0], slots[1], slots[2], slots[3]),
            char_span=rec.char_span,
            token_span=_token_range(prefix_offsets, rec.char_span),
            desc_char_span=rec.desc_char_span,
            geometry_char_span=rec.geometry_char_span,
        ))
    return ParsedRollout(
        prefix_token_ids=tuple(prefix_ids),
        prefix_text=prefix_text,
        token_char_offsets=tuple(prefix_offsets),
        objects=tuple(objects),
        dropped=tuple(dropped),
        drop_counts=_count(reasons),
        truncated=scan.truncated,
        invalid_rollout=False,
        invalid_reason=None,
        response_len=n_resp,
    )
