"""The ONE string-aware CoordJSON scanner (SPEC §1.3, §3.6 B1/B4, §4.1), shared by the rollout parser, the token
typing and the FN-fragment / meta builders, plus the char-span → token-range maps they all use.

:func:`lex` makes one left-to-right pass (a C-level regex, no per-character Python loop): JSON strings (escape
aware; an unterminated string runs to the end of the text) and the structural characters ``{ } [ ] ,`` that lie
outside strings. Outside strings CoordJSON has no quote characters, so this segmentation is the one a sequential
character scanner would make. Everything else is derived from the lexed arrays with numpy:

* :meth:`Lexed.desc_value_spans` — desc values (the chars strictly between the quotes of a string that follows the
  key ``"desc"`` and a colon);
* :meth:`Lexed.closure` — the outermost ``}`` (first ``}`` at which the brace+bracket depth, counted outside
  strings from ``start_depth``, returns to 0; never "the last ``}``") and the depth at the end of the text;
* :meth:`Lexed.brace_ends` — the matching ``}`` of every ``{`` (braces only, string aware): the balanced records
  of the rollout parser;
* :func:`scan_items` — the top-level items of the ``objects`` array after its opener (records, non-record junk,
  truncation, prefix cut).

Char offsets are *boundaries* ``offsets [L+1]`` (token i covers ``[offsets[i], offsets[i+1])``), as produced by
:meth:`coordexp_swift.coord.vocab.PieceTable.render`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "JSON_WS",
    "STRING_RE",
    "Item",
    "ItemScan",
    "JsonScan",
    "Lexed",
    "lex",
    "scan_coordjson",
    "scan_items",
    "token_range",
    "tokens_overlapping",
    "tokens_overlapping_ranges",
]

JSON_WS = " \t\n\r"
#: A complete JSON string literal (escape aware).
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# A string: closed, or unterminated up to the end of the text.
_STRING_LEX_RE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_DESC_COLON_RE = re.compile(r"[ \t\n\r]*:[ \t\n\r]*\Z")
_OPEN_BRACE, _CLOSE_BRACE, _OPEN_BRACKET, _CLOSE_BRACKET, _COMMA = map(ord, "{}[],")
_IS_STRUCT = np.zeros(128, dtype=bool)  # ASCII code point -> is one of { } [ ] ,
_IS_STRUCT[[_OPEN_BRACE, _CLOSE_BRACE, _OPEN_BRACKET, _CLOSE_BRACKET, _COMMA]] = True
_EMPTY_SPANS = np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Lexed:
    """One lexing pass over ``text``.

    ``strings [S, 2]`` int64 char spans of string literals, quotes included (an unterminated one ends at
    ``len(text)``; ``closed [S]`` says which are terminated); ``struct_pos [K]`` / ``struct_chr [K]`` positions
    (ascending) and code points of the ``{ } [ ] ,`` outside strings.
    """

    text: str
    strings: np.ndarray
    closed: np.ndarray
    struct_pos: np.ndarray
    struct_chr: np.ndarray

    def desc_value_spans(self) -> np.ndarray:
        """``[D, 2]`` int64 char spans of desc values (inside the quotes), in text order: a closed string that
        follows the closed key string ``"desc"`` with only a colon and JSON whitespace between them."""
        s, text = self.strings, self.text
        if len(s) < 2:
            return _EMPTY_SPANS
        keys = [i for i in np.flatnonzero(s[:-1, 1] - s[:-1, 0] == 6).tolist() if text[s[i, 0]:s[i, 1]] == '"desc"']
        out = [(s[i + 1, 0] + 1, s[i + 1, 1] - 1) for i in keys
               if self.closed[i + 1] and _DESC_COLON_RE.match(text, s[i, 1], s[i + 1, 0])]
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    def closure(self, start_depth: int = 0) -> tuple[int, int]:
        """``(closure_char, end_depth)``: the first ``}`` at which the brace+bracket depth (outside strings, from
        ``start_depth``) returns to 0, or -1; and the depth after the last character."""
        c = self.struct_chr
        step = ((c == _OPEN_BRACE) | (c == _OPEN_BRACKET)).astype(np.int64) - (
            (c == _CLOSE_BRACE) | (c == _CLOSE_BRACKET))
        depth = start_depth + np.cumsum(step)
        hits = np.flatnonzero((c == _CLOSE_BRACE) & (depth == 0))
        return (int(self.struct_pos[hits[0]]) if len(hits) else -1,
                int(depth[-1]) if len(depth) else start_depth)

    def brace_ends(self) -> dict[int, int]:
        """``{pos of '{': index just past its matching '}'}`` (braces only, outside strings); -1 when the brace
        never closes. Vectorised: a ``{`` and its ``}`` are consecutive among the braces of one nesting level."""
        is_b = (self.struct_chr == _OPEN_BRACE) | (self.struct_chr == _CLOSE_BRACE)
        pos, opens = self.struct_pos[is_b], self.struct_chr[is_b] == _OPEN_BRACE
        if not len(pos):
            return {}
        after = np.cumsum(np.where(opens, 1, -1))
        level = np.where(opens, after, after + 1)  # the depth "inside" the pair a brace belongs to
        order = np.lexsort((np.arange(len(pos)), level))
        lv, op = level[order], opens[order]
        pair = (lv[:-1] == lv[1:]) & op[:-1] & ~op[1:]
        end = np.full(len(pos), -1, dtype=np.int64)
        end[order[:-1][pair]] = pos[order[1:][pair]] + 1
        return dict(zip(pos[opens].tolist(), end[opens].tolist()))


def lex(text: str) -> Lexed:
    """Lex ``text`` (see the module docstring); never raises. Strings come from one C-level regex pass (outside
    strings CoordJSON has no quotes, so ``finditer`` finds exactly the strings a sequential scanner would); the
    structural characters are a vectorised mask of the text outside them."""
    n = len(text)
    strings = np.asarray([m.span() for m in _STRING_LEX_RE.finditer(text)], dtype=np.int64).reshape(-1, 2)
    closed = np.ones(len(strings), dtype=bool)
    if len(strings) and strings[-1, 1] == n:  # only the last string can be unterminated (it runs to the end)
        closed[-1] = STRING_RE.fullmatch(text, int(strings[-1, 0]), n) is not None
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    depth = np.zeros(n + 1, dtype=np.int64)
    np.add.at(depth, strings[:, 0], 1)
    np.add.at(depth, strings[:, 1], -1)
    outside = np.cumsum(depth[:-1]) == 0
    struct_pos = np.flatnonzero(outside & _IS_STRUCT[np.minimum(chars, 127)] & (chars < 128))
    return Lexed(text, strings, closed, struct_pos, chars[struct_pos].astype(np.int64))


@dataclass(frozen=True)
class JsonScan:
    """:func:`scan_coordjson` result: ``desc_value_spans [D, 2]`` (inside the quotes, text order),
    ``closure_char`` (outermost ``}`` or -1) and ``end_depth`` (brace+bracket depth after the text)."""

    desc_value_spans: np.ndarray
    closure_char: int
    end_depth: int


def scan_coordjson(text: str, *, start_depth: int = 0) -> JsonScan:
    """Scan a CoordJSON document (or a tail of one that starts at nesting depth ``start_depth``)."""
    lx = lex(text)
    closure, end_depth = lx.closure(start_depth)
    return JsonScan(lx.desc_value_spans(), closure, end_depth)


@dataclass(frozen=True)
class Item:
    """A top-level item of the objects array: ``span`` (half-open chars); ``is_record``: a balanced ``{...}``
    (else a non-record junk run up to the next ``{``, ``,`` or ``]`` outside strings)."""

    span: tuple[int, int]
    is_record: bool


@dataclass(frozen=True)
class ItemScan:
    """:func:`scan_items` result: ``items`` in text order; ``truncated``: a ``{`` that never closes ended the scan;
    ``cut``: end of the last balanced record, or the ``start`` when there is none."""

    items: tuple[Item, ...]
    truncated: bool
    cut: int


def scan_items(lx: Lexed, start: int) -> ItemScan:
    """Walk the objects array from ``start`` (just past its ``[``): skip whitespace and ``,``; a ``{`` is a record
    up to its matching ``}`` (unterminated: truncation, stop); a ``]`` ends the array; anything else is junk.
    One Python step per item, none per character."""
    text, n = lx.text, len(lx.text)
    ends = lx.brace_ends()
    c = lx.struct_chr
    stops = lx.struct_pos[(c == _OPEN_BRACE) | (c == _COMMA) | (c == _CLOSE_BRACKET)]
    items: list[Item] = []
    truncated, cut, pos = False, start, start
    while True:
        while pos < n and text[pos] in JSON_WS:
            pos += 1
        if pos >= n or text[pos] == "]":
            break
        c = text[pos]
        if c == ",":
            pos += 1
        elif c == "{":
            end = ends[pos]
            if end < 0:
                truncated = True
                break
            items.append(Item((pos, end), True))
            cut = pos = end
        else:
            k = int(np.searchsorted(stops, pos, side="right"))
            end = int(stops[k]) if k < len(stops) else n
            items.append(Item((pos, end), False))
            pos = end
    return ItemScan(tuple(items), truncated, cut)


def tokens_overlapping_ranges(offsets: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For char spans ``[S, 2]`` (half-open) the token ranges ``lo [S], hi [S]`` of the tokens overlapping them.

    Token i overlaps ``[a, b)`` iff ``start_i < b`` and ``end_i > a`` (zero-width tokens never overlap; an empty
    span gives an empty range)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lo = np.searchsorted(ends, spans[:, 0], side="right")
    hi = np.searchsorted(starts, spans[:, 1], side="left")
    empty = spans[:, 1] <= spans[:, 0]
    hi = np.where(empty | (hi < lo), lo, hi)
    return lo, hi


def token_range(offsets: np.ndarray, span: tuple[int, int]) -> tuple[int, int]:
    """Half-open token index range overlapping char span ``[a, b)`` (see :func:`tokens_overlapping_ranges`)."""
    lo, hi = tokens_overlapping_ranges(offsets, np.asarray([span], dtype=np.int64))
    return int(lo[0]), int(hi[0])


def tokens_overlapping(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Boolean mask ``[L]`` of tokens overlapping any of ``spans [S, 2]`` (difference array, no per-token loop)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    lo, hi = tokens_overlapping_ranges(offsets, spans)
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    return (np.cumsum(diff[:-1]) > 0) & (np.diff(offsets) > 0)
