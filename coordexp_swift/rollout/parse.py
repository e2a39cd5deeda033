"""Strict rollout parser (SPEC §1.3, §3.6 B1): salvage valid CoordJSON records, never repair, never raise.

Two views share one scan (:func:`scan_text`, on the one CoordJSON scanner :mod:`coordexp_swift.data.coordjson_scan`):

* :func:`parse_rollout` — the token-aligned view used by Channel-B. The generated ids are rendered through the
  run's :class:`~coordexp_swift.coord.vocab.VocabView` piece table (each id's own decoded text, concatenated, with
  per-token char offsets; no tokenizer call per token) and cut at the first ``<|im_end|>`` id. Valid records
  become predictions with their coord-slot token indices; the kept prefix ids are the model's own ids, except that
  a cut falling inside a token replaces only that token by the tokenisation of its needed leading piece.
* :func:`parse_text` — the text view used by tools (offline eval, visualisation): same scan on a string.

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
``non_coord_token``   an array element is not a coord token: quoted tokens, numbers, nested arrays, and literals
                      ``<|coord_k|>`` whose k is not the canonical ASCII decimal of a bin 0..999 (``<|coord_1000|>``,
                      ``<|coord_01|>``, non-ASCII digits: no tokenizer id spells them)
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
are exact on the per-token text. Only a ``desc`` can contain U+FFFD: if the vocab view has a joint ``decode``, the
desc of a valid record is re-decoded from its tokens jointly; otherwise it keeps U+FFFD. A cut piece that contains
U+FFFD is never re-encoded (its bytes are unknown): that rollout is invalid.

**Speed.** Records in the common shape (the canonical grammar with any JSON whitespace, canonical coord literals)
are classified by one compiled regex; every other record goes through the general JSON-with-bare-coords parser,
which gives the same answer on the records the regex accepts (see ``tests/property/test_parse_props.py``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.data.coordjson import field_slots
from coordexp_swift.data.coordjson_scan import (
    JSON_WS,
    STRING_RE,
    Lexed,
    lex,
    scan_items,
    token_range,
    tokens_overlapping_ranges,
)

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
_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
# The lexical shape of a coord literal (any Unicode digits); only canonical ASCII 0..999 is a coord token.
_COORD_LIKE_RE = re.compile(r"<\|coord_(\d{1,4})\|>")
_CANONICAL_BIN = r"0|[1-9][0-9]{0,2}"
_CANONICAL_BIN_RE = re.compile(_CANONICAL_BIN)
_PLAIN_STRING_RE = re.compile(r'"[^"\\\x00-\x1f]*"')  # no escapes: the value is the body
_POLY_KEYS = frozenset({"poly", "poly_points"})
_MAX_DEPTH = 32

Span = tuple[int, int]


def _key_order(object_field_order: str) -> tuple[str, ...]:
    """Key order of a valid (bbox-only) record for ``custom.object_field_order``."""
    return tuple("bbox_2d" if slot == "geometry" else slot for slot in field_slots(object_field_order))


def _fast_record_re(key_order: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for a valid-looking record: the two keys in order, a desc string, 4 canonical coord literals."""
    w = r"[ \t\n\r]*"
    coord = [rf"<\|coord_(?P<c{i}>{_CANONICAL_BIN})\|>" for i in range(4)]
    box = rf"(?P<box>\[{w}" + rf"{w},{w}".join(coord) + rf"{w}\])"
    fields = {"desc": rf'"desc"{w}:{w}(?P<desc>{STRING_RE.pattern})', "bbox_2d": rf'"bbox_2d"{w}:{w}{box}'}
    return re.compile(rf"\{{{w}" + rf"{w},{w}".join(fields[k] for k in key_order) + rf"{w}\}}", re.DOTALL)


_FAST = {order: _fast_record_re(_key_order(order)) for order in ("desc_first", "geometry_first")}


# --------------------------------------------------------------------------------------------------------------
# Record value parser (general path): JSON + bare coord literals. Internal; _Malformed never escapes this module.
# --------------------------------------------------------------------------------------------------------------


class _Malformed(Exception):
    """Internal control flow: the record text is not JSON-with-bare-coords."""


@dataclass(frozen=True)
class _Value:
    kind: str  # "string" | "number" | "literal" | "coord" | "array" | "object"
    span: Span  # char span of the whole value
    value: Any = None  # decoded string, or the digit string of a coord literal, or None
    items: tuple["_Value", ...] = ()  # array elements
    members: tuple[tuple[str, "_Value"], ...] = ()  # object (key, value) in text order


def _skip_ws(text: str, pos: int, end: int) -> int:
    while pos < end and text[pos] in JSON_WS:
        pos += 1
    return pos


def _parse_value(text: str, pos: int, end: int, depth: int) -> _Value:
    pos = _skip_ws(text, pos, end)
    if pos >= end or depth > _MAX_DEPTH:
        raise _Malformed
    c = text[pos]
    if c == '"':
        m = STRING_RE.match(text, pos, end)
        if m is None:
            raise _Malformed
        try:
            s = json.loads(m.group())
        except ValueError:
            raise _Malformed from None
        return _Value("string", m.span(), s)
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
        m = _COORD_LIKE_RE.match(text, pos, end)
        if m is None:
            raise _Malformed
        return _Value("coord", m.span(), m.group(1))
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
# Text-level scan
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScannedRecord:
    """One item of the objects array (text level).

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


@dataclass(frozen=True, eq=False)
class ScanResult:
    """Scan of a text already cut at the first ``<|im_end|>`` literal.

    ``opener_end`` is the index just past the opener ``[`` (None: no opener → invalid rollout). ``cut`` is the
    prefix cut (0 when invalid). ``items`` are records and non-record items in text order. ``lexed``: the one
    lexing pass over ``text`` (strings and structure), reused for desc-value spans by the target builder.
    """

    text: str
    opener_end: int | None
    items: tuple[ScannedRecord, ...]
    truncated: bool
    cut: int
    lexed: Lexed

    @property
    def invalid_rollout(self) -> bool:
        return self.opener_end is None


def _classify_fast(text: str, span: Span, order: str) -> ScannedRecord | None:
    m = _FAST[order].fullmatch(text, span[0], span[1])
    if m is None:
        return None
    literal = m.group("desc")
    if _PLAIN_STRING_RE.fullmatch(literal):
        desc = literal[1:-1]  # nothing to unescape
    else:
        try:
            desc = json.loads(literal)
        except ValueError:
            return None
    x1, y1, x2, y2 = map(int, m.group("c0", "c1", "c2", "c3"))
    if not desc.strip() or x2 < x1 or y2 < y1:
        return None
    return ScannedRecord(span, None, True, desc, (x1, y1, x2, y2), m.span("desc"), m.span("box"))


def _classify(text: str, span: Span, order: str) -> ScannedRecord:
    fast = _classify_fast(text, span, order)
    return fast if fast is not None else _classify_general(text, span, _key_order(order))


def _classify_general(text: str, span: Span, key_order: tuple[str, ...]) -> ScannedRecord:
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
    if any(v.kind != "coord" or _CANONICAL_BIN_RE.fullmatch(v.value) is None for v in geom.items):
        return ScannedRecord(span, "non_coord_token")
    if len(geom.items) != 4:
        return ScannedRecord(span, "wrong_arity")
    x1, y1, x2, y2 = (int(v.value) for v in geom.items)
    if x2 < x1 or y2 < y1:
        return ScannedRecord(span, "bbox_invalid")
    return ScannedRecord(span, None, True, desc.value, (x1, y1, x2, y2), desc.span, geom.span)


def scan_text(text: str, object_field_order: str = "desc_first") -> ScanResult:
    """Scan a rollout text: cut at the first ``<|im_end|>`` literal, find the opener, classify every item.

    Never raises on any ``text`` (only on an unknown ``object_field_order``).
    """
    _key_order(object_field_order)
    stop = text.find(IM_END_TEXT)
    if stop >= 0:
        text = text[:stop]
    lx = lex(text)
    m = _OPENER_RE.match(text)
    if m is None:
        return ScanResult(text, None, (), False, 0, lx)
    walk = scan_items(lx, m.end())
    items = tuple(_classify(text, it.span, object_field_order) if it.is_record
                  else ScannedRecord(it.span, "malformed", is_record=False) for it in walk.items)
    return ScanResult(text, m.end(), items, walk.truncated, walk.cut, lx)


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


@dataclass(frozen=True, eq=False)
class ParsedRollout:
    """Result of :func:`parse_rollout` (SPEC §3.6 B1).

    ``prefix_token_ids``: kept ids (the model's own ids; only a token containing the cut is replaced by the
    tokenisation of its leading piece); ``prefix_text``: their per-token decoded text; ``token_char_offsets``:
    ``[len(prefix_token_ids) + 1]`` int64 boundaries into ``prefix_text`` (token i covers ``[off[i], off[i+1])``).
    ``desc_value_spans``: ``[D, 2]`` int64 char spans of every desc value in ``prefix_text`` (inside the quotes;
    dropped records included) from the parser's own scan, for the token typing of ``Y_train``.
    ``objects``: valid predictions in appearance order. ``drop_counts``: every reason of :data:`DROP_REASONS`
    -> count (do not mutate). ``response_len``: number of generated ids before the first ``<|im_end|>`` id.
    ``invalid_reason``: None, ``"no_opener"`` or ``"cut_token"`` (leading piece did not re-tokenise exactly).
    """

    prefix_token_ids: tuple[int, ...]
    prefix_text: str
    token_char_offsets: np.ndarray
    desc_value_spans: np.ndarray
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


def _invalid(fallback_ids: Sequence[int], vocab: VocabView, reason: str, n: int) -> ParsedRollout:
    text, offsets = vocab.pieces.render(fallback_ids)
    return ParsedRollout(
        prefix_token_ids=tuple(int(i) for i in fallback_ids),
        prefix_text=text,
        token_char_offsets=offsets,
        desc_value_spans=np.zeros((0, 2), dtype=np.int64),
        objects=(),
        dropped=(),
        drop_counts=_zero_counts(),
        truncated=False,
        invalid_rollout=True,
        invalid_reason=reason,
        response_len=n,
    )


def _recover_desc(rec: ScannedRecord, text: str, ids: np.ndarray, offsets: np.ndarray, vocab: VocabView) -> str:
    """The desc of a valid record; re-decoded jointly when the per-token text has U+FFFD (see module doc)."""
    if rec.desc is None or rec.desc_char_span is None:
        return ""
    if "\ufffd" not in rec.desc or vocab.decode is None:
        return rec.desc
    qa, qb = rec.desc_char_span
    ta, tb = token_range(offsets, (qa, qb))
    joint = vocab.decode(ids[ta:tb].tolist())
    lead, trail = text[offsets[ta]:qa], text[qb:offsets[tb]]
    if len(joint) < len(lead) + len(trail) or not joint.startswith(lead) or not joint.endswith(trail):
        return rec.desc
    literal = joint[len(lead): len(joint) - len(trail)]
    if STRING_RE.fullmatch(literal) is None:
        return rec.desc
    try:
        value = json.loads(literal)
    except ValueError:
        return rec.desc
    return value if isinstance(value, str) and value.strip() else rec.desc


def parse_rollout(
    token_ids: Sequence[int] | np.ndarray,
    vocab: VocabView,
    *,
    object_field_order: str = "desc_first",
    fallback_prefix_ids: Sequence[int] | None = None,
) -> ParsedRollout:
    """Strict token-aligned parse of one rollout (SPEC §3.6 B1). Never raises on any model output.

    ``token_ids``: generated ids (response only, no prompt; may include ``<|im_end|>`` and anything after it).
    ``vocab``: the run's vocab view — its piece table renders the ids, ``id_to_bin`` finds the slots, ``eos_id``
    is ``<|im_end|>``, ``encode`` tokenises the cut token's leading piece and (unless ``fallback_prefix_ids`` is
    given) the fallback opener, and the optional joint ``decode`` recovers non-ASCII descs.
    """
    _key_order(object_field_order)
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    ends = np.flatnonzero(ids == vocab.eos_id)
    n_resp = int(ends[0]) if len(ends) else len(ids)
    ids = ids[:n_resp]
    fallback = (list(fallback_prefix_ids) if fallback_prefix_ids is not None
                else list(vocab.encode_cached(EMPTY_OPENER_TEXT)))

    text, offsets = vocab.pieces.render(ids)
    scan = scan_text(text, object_field_order)
    if scan.invalid_rollout:
        return _invalid(fallback, vocab, "no_opener", n_resp)
    text, cut = scan.text, scan.cut

    # Prefix ids: tokens fully before the cut are kept; a token straddling the cut is re-tokenised.
    j = int(np.searchsorted(offsets, cut, side="right")) - 1  # token containing char `cut` (or starting at it)
    prefix_ids, prefix_offsets = ids[:j], offsets[: j + 1]
    if offsets[j] < cut:
        piece = text[offsets[j]:cut]
        new_ids = np.asarray(vocab.encode(piece), dtype=np.int64).reshape(-1)
        new_text, new_offsets = vocab.pieces.render(new_ids)
        if "\ufffd" in piece or new_text != piece or bool((new_ids == vocab.eos_id).any()):
            return _invalid(fallback, vocab, "cut_token", n_resp)
        prefix_ids = np.concatenate([prefix_ids, new_ids])
        prefix_offsets = np.concatenate([prefix_offsets, new_offsets[1:] + offsets[j]])
    prefix_text = text[:cut]
    if not prefix_text.rstrip(JSON_WS).endswith(("[", "}")):
        return _invalid(fallback, vocab, "cut_token", n_resp)

    # Slots of every valid record at once: the V_c ids among the tokens overlapping its geometry span.
    valid = [r for r in scan.items if r.reason is None]
    token_bins = vocab.bins(prefix_ids)
    coord_at = np.flatnonzero(token_bins >= 0)
    n_before = np.concatenate([[0], np.cumsum(token_bins >= 0)])
    geo_lo, geo_hi = tokens_overlapping_ranges(prefix_offsets, [r.geometry_char_span for r in valid])
    rec_lo, rec_hi = tokens_overlapping_ranges(prefix_offsets, [r.char_span for r in valid])
    first, n_slots = n_before[geo_lo], n_before[geo_hi] - n_before[geo_lo]

    objects: list[RolloutObject] = []
    reasons: list[str] = []
    dropped: list[DroppedRecord] = []
    k = 0
    for rec in scan.items:
        reason = rec.reason
        if reason is None:
            slots = coord_at[first[k]: first[k] + 4] if n_slots[k] == 4 else coord_at[:0]
            bins = token_bins[slots].tolist()
            if len(slots) != 4:
                reason = "wrong_arity"
            elif bins[2] < bins[0] or bins[3] < bins[1]:
                reason = "bbox_invalid"
            else:
                objects.append(RolloutObject(
                    desc=_recover_desc(rec, text, prefix_ids, prefix_offsets, vocab),
                    bins=tuple(bins), slot_token_idx=tuple(slots.tolist()), char_span=rec.char_span,
                    token_span=(int(rec_lo[k]), int(rec_hi[k])), desc_char_span=rec.desc_char_span,
                    geometry_char_span=rec.geometry_char_span))
            k += 1
        if reason is not None:
            reasons.append(reason)
            dropped.append(DroppedRecord(reason, rec.char_span))
    desc_spans = scan.lexed.desc_value_spans()
    return ParsedRollout(
        prefix_token_ids=tuple(prefix_ids.tolist()),
        prefix_text=prefix_text,
        token_char_offsets=prefix_offsets,
        desc_value_spans=desc_spans[desc_spans[:, 1] <= cut],
        objects=tuple(objects),
        dropped=tuple(dropped),
        drop_counts=_count(reasons),
        truncated=scan.truncated,
        invalid_rollout=False,
        invalid_reason=None,
        response_len=n_resp,
    )
