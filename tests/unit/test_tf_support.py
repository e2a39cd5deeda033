"""Shared fixtures for the teacher_forcing tests: a reference CoordJSON renderer that records the char ranges of
desc values and the closure as it writes them, and a deterministic fake tokenizer whose pieces straddle syntax
boundaries (chunks of 1-3 chars), so the partition is checked against an independent per-char reference."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import torch

from coordexp_swift.coord.codec import NUM_BINS

COORD_BASE = 100
EOS_ID = COORD_BASE + NUM_BINS
VOCAB = EOS_ID + 8
COORD_IDS = torch.arange(COORD_BASE, COORD_BASE + NUM_BINS)
EOS_TEXT = "<|im_end|>"
_SPECIAL = re.compile(r"<\|coord_(\d+)\|>|<\|im_end\|>")


@dataclass
class Rendered:
    text: str
    desc_ranges: list[tuple[int, int]]   # char ranges of desc values (inside the quotes)
    record_ranges: list[tuple[int, int]]  # char ranges of each record {..}
    closure_char: int


def render(objects: list[tuple[str, tuple[int, int, int, int]]], *, opener: str = '{"objects": [',
           geometry_first: bool = False, eos: bool = True, closing: bool = True) -> Rendered:
    """Canonical CoordJSON (+ <|im_end|>) of ``objects`` [(desc, bins)], recording spans while writing."""
    out, desc_ranges, rec_ranges = opener, [], []
    for i, (desc, bins) in enumerate(objects):
        if i:
            out += ", "
        start = len(out)
        out += "{"
        desc_lit = json.dumps(desc, ensure_ascii=False)
        geom = '"bbox_2d": [' + ", ".join(f"<|coord_{b}|>" for b in bins) + "]"
        fields = [("desc", desc_lit), ("geom", geom)]
        if geometry_first:
            fields.reverse()
        for j, (kind, lit) in enumerate(fields):
            if j:
                out += ", "
            if kind == "desc":
                out += '"desc": '
                desc_ranges.append((len(out) + 1, len(out) + len(lit) - 1))
                out += lit
            else:
                out += lit
        out += "}"
        rec_ranges.append((start, len(out)))
    closure = -1
    if closing:
        out += "]"
        closure = len(out)
        out += "}"
    if eos:
        out += EOS_TEXT
    return Rendered(out, desc_ranges, rec_ranges, closure)


def tokenize(text: str, seed: int = 0) -> tuple[list[int], list[str]]:
    """Deterministic fake tokenizer: special tokens whole, other text in chunks of 1-3 chars (seeded)."""
    rng = np.random.default_rng(seed)
    ids, pieces, pos = [], [], 0
    for m in list(_SPECIAL.finditer(text)) + [None]:
        end = m.start() if m is not None else len(text)
        while pos < end:
            n = min(int(rng.integers(1, 4)), end - pos)
            piece = text[pos:pos + n]
            pieces.append(piece)
            ids.append(sum(map(ord, piece)) % 90 + 5)
            pos += n
        if m is not None:
            pieces.append(m.group(0))
            ids.append(EOS_ID if m.group(1) is None else COORD_BASE + int(m.group(1)))
            pos = m.end()
    return ids, pieces


def reference_types(pieces: list[str], desc_ranges: list[tuple[int, int]]) -> list[str]:
    """Per-token reference by a per-char loop: eos / coord by literal, desc iff any char lies in a desc value."""
    desc_chars = set()
    for a, b in desc_ranges:
        desc_chars.update(range(a, b))
    out, pos = [], 0
    for p in pieces:
        chars = set(range(pos, pos + len(p)))
        if p == EOS_TEXT:
            out.append("eos")
        elif _SPECIAL.fullmatch(p):
            out.append("coord")
        elif chars & desc_chars:
            out.append("desc")
        else:
            out.append("struct")
        pos += len(p)
    return out


def test_support_render_is_valid_json_after_coord_quoting():
    """Helper self-check: the reference renderer emits JSON (once coord tokens are quoted) with the recorded spans."""
    r = render([("red \"cat\" {x}", (1, 2, 3, 4)), ("dog", (5, 6, 7, 8))])
    body = r.text[: -len(EOS_TEXT)]
    doc = json.loads(re.sub(r"(<\|coord_\d+\|>)", r'"\1"', body))
    assert [o["desc"] for o in doc["objects"]] == ['red "cat" {x}', "dog"]
    assert r.text[r.desc_ranges[1][0]: r.desc_ranges[1][1]] == "dog"
    assert r.text[r.closure_char] == "}" and r.closure_char == len(body) - 1
    ids, pieces = tokenize(r.text)
    assert "".join(pieces) == r.text and len(ids) == len(pieces)


@dataclass
class RolloutCase:
    ids: list[int]
    pieces: list[str]
    text: str
    prefix_len: int                      # tokens
    prefix_chars: int
    records: list                        # PrefixRecord
    fn_bins: list[tuple[int, int, int, int]]
    desc_ranges: list[tuple[int, int]]
    matched_ranges: list[tuple[int, int]]
    closure_char: int


def make_rollout(pred: list[tuple[str, tuple[int, int, int, int], object]], fn: list[tuple[str, tuple]],
                 *, dropped: bool = False, seed: int = 0) -> RolloutCase:
    """Prefix = opener + predicted records (status: GT bins tuple = matched, None = FP) [+ a dropped poly record];
    tail = FN fragment (", " iff the prefix ends with "}") + "]}" + <|im_end|>. Prefix and tail tokenised apart."""
    from coordexp_swift.teacher_forcing.meta import PrefixRecord

    pre = render([(d, b) for d, b, _ in pred], eos=False, closing=False)
    prefix_text = pre.text
    if dropped:
        prefix_text += (", " if pred else "") + '{"desc": "bad", "poly": [<|coord_1|>, <|coord_2|>]}'
    tail_opener = ", " if prefix_text.endswith("}") else ""
    tail = render(list(fn), opener=tail_opener)
    text = prefix_text + tail.text
    p_ids, p_pieces = tokenize(prefix_text, seed)
    t_ids, t_pieces = tokenize(tail.text, seed + 1)
    offs = np.concatenate([[0], np.cumsum([len(p) for p in p_pieces])])
    records, matched_ranges = [], []
    for (desc, bins, status), (a, b) in zip(pred, pre.record_ranges):
        slot = [i for i, p in enumerate(p_pieces) if _SPECIAL.fullmatch(p) and p != EOS_TEXT and a <= offs[i] < b]
        records.append(PrefixRecord(char_span=(a, b), slot_token_idx=tuple(slot), gt_bins=status))
        if status is not None:
            matched_ranges.append((a, b))
    cut = len(prefix_text)
    desc_ranges = list(pre.desc_ranges) + [(a + cut, b + cut) for a, b in tail.desc_ranges]
    if dropped:
        j = prefix_text.rindex('"bad"')
        desc_ranges.insert(len(pre.desc_ranges), (j + 1, j + 4))
    return RolloutCase(ids=p_ids + t_ids, pieces=p_pieces + t_pieces, text=text, prefix_len=len(p_ids),
                       prefix_chars=cut, records=records, fn_bins=[b for _, b in fn], desc_ranges=desc_ranges,
                       matched_ranges=matched_ranges, closure_char=tail.closure_char + cut)
