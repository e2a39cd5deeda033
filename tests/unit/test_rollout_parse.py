"""Strict token-aligned rollout parser (SPEC §1.3, §3.6 B1).

Expected values are written by hand from the record texts below; token-level expectations are derived from the
fake tokenizer's merge list (tests/rollout_tokenizer.py) or from the real Qwen BPE's own ``encode``.
"""
from __future__ import annotations

import dataclasses

import pytest

from coordexp_swift.rollout.parse import (
    DROP_REASONS,
    EMPTY_OPENER_TEXT,
    parse_rollout,
    parse_text,
    scan_text,
)
from tests.rollout_tokenizer import MERGES, FakeByteTokenizer, check_prefix_contract

T = FakeByteTokenizer()


def c(*bins: int) -> str:
    """Bare coord literals joined canonically."""
    return ", ".join(f"<|coord_{k}|>" for k in bins)


def rec(desc: str, bins: tuple[int, ...] = (1, 2, 3, 4), order: str = "desc_first") -> str:
    """Canonical record written by hand (independent of data/coordjson.py)."""
    d, g = f'"desc": "{desc}"', f'"bbox_2d": [{c(*bins)}]'
    return "{" + (f"{d}, {g}" if order == "desc_first" else f"{g}, {d}") + "}"


def doc(*records: str) -> str:
    return '{"objects": [' + ", ".join(records) + "]}"


def rollout(text: str, tok: FakeByteTokenizer = T, view=None, **kw):
    return parse_rollout(tok.encode(text) + [tok.im_end_id], view or tok.view, **kw)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


# ---------------------------------------------------------------------------------------------------------------
# valid records, both views
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["desc_first", "geometry_first"])
def test_canonical_round_trip_both_views(order):
    text = doc(rec("red circle", (10, 20, 30, 40), order), rec("blue", (0, 0, 999, 999), order))
    want = [{"desc": "red circle", "bbox_2d": [10, 20, 30, 40]}, {"desc": "blue", "bbox_2d": [0, 0, 999, 999]}]
    tp = parse_text(text, order)
    assert tp.objects == want and not tp.invalid_rollout and not tp.truncated
    assert nonzero(tp.drop_counts) == {} and set(tp.drop_counts) == set(DROP_REASONS)
    r = rollout(text, object_field_order=order)
    assert [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in r.objects] == want
    # The whole response minus the final "]}" is kept: cut = end of the last record.
    assert r.prefix_text == text[: -len("]}")]
    assert r.n_drop_invalid == 0 and not r.invalid_rollout


def test_token_indices_offsets_and_spans():
    text = doc(rec("red circle", (10, 20, 30, 40)), rec("blue", (5, 6, 7, 8)))
    ids = T.encode(text) + [T.im_end_id]
    r = parse_rollout(ids, T.view)
    # Per-token offsets reproduce the prefix text token by token.
    offs = r.token_char_offsets
    assert len(offs) == len(r.prefix_token_ids) + 1 and offs[-1] == len(r.prefix_text)
    assert all(r.prefix_text[offs[i]:offs[i + 1]] == T.decode_token(t) for i, t in enumerate(r.prefix_token_ids))
    for o in r.objects:
        assert [T.coord_id_to_bin[r.prefix_token_ids[i]] for i in o.slot_token_idx] == list(o.bins)
        assert r.prefix_text[o.char_span[0]] == "{" and r.prefix_text[o.char_span[1] - 1] == "}"
        a, b = o.token_span
        assert offs[a] <= o.char_span[0] < offs[a + 1] and offs[b - 1] < o.char_span[1] <= offs[b]
        assert r.prefix_text[slice(*o.desc_char_span)] == f'"{o.desc}"'
        assert r.prefix_text[o.geometry_char_span[0]] == "[" and r.prefix_text[o.geometry_char_span[1] - 1] == "]"
    # First record: ids are '{"objects": [', '{"', 'desc', '": "', 'red', ' circle', '", "', 'bbox_2d', '": [',
    # then coord(10) at index 9, ', ' at 10, coord(20) at 11, ... -> slots 9, 11, 13, 15.
    assert r.objects[0].slot_token_idx == (9, 11, 13, 15)


def test_whitespace_variants_and_braces_inside_strings():
    text = ('  {\n "objects" :\n [ { "desc" : "a } { ] [ \\" x" ,"bbox_2d":[<|coord_1|>,<|coord_2|> ,<|coord_3|>,'
            '\n<|coord_4|>] } ,\n{"desc":"b","bbox_2d":[<|coord_5|>,<|coord_5|>,<|coord_5|>,<|coord_5|>]}\n]\n}')
    tp = parse_text(text)
    assert tp.objects == [{"desc": 'a } { ] [ " x', "bbox_2d": [1, 2, 3, 4]}, {"desc": "b", "bbox_2d": [5, 5, 5, 5]}]
    assert rollout(text).pred_bins == [(1, 2, 3, 4), (5, 5, 5, 5)]


def test_empty_objects_list_is_valid_with_opener_prefix():
    r = rollout('{"objects": []}')
    assert not r.invalid_rollout and r.objects == () and r.prefix_text == '{"objects": ['


# ---------------------------------------------------------------------------------------------------------------
# drop reasons (seed 001 1.5.1)
# ---------------------------------------------------------------------------------------------------------------

DROP_CASES = [
    ("missing_desc", '{"bbox_2d": [%s]}' % c(1, 2, 3, 4)),
    ("missing_desc", '{"desc": "   ", "bbox_2d": [%s]}' % c(1, 2, 3, 4)),
    ("missing_desc", '{"desc": 7, "bbox_2d": [%s]}' % c(1, 2, 3, 4)),
    ("wrong_arity", '{"desc": "a", "bbox_2d": [%s]}' % c(1, 2, 3)),
    ("wrong_arity", '{"desc": "a", "bbox_2d": [%s]}' % c(1, 2, 3, 4, 5)),
    ("wrong_arity", '{"desc": "a", "bbox_2d": []}'),
    ("non_coord_token", '{"desc": "a", "bbox_2d": ["<|coord_1|>", "<|coord_2|>", "<|coord_3|>", "<|coord_4|>"]}'),
    ("non_coord_token", '{"desc": "a", "bbox_2d": [1, 2, 3, 4]}'),
    ("non_coord_token", '{"desc": "a", "bbox_2d": [%s, <|coord_1000|>]}' % c(1, 2, 3)),
    ("non_coord_token", '{"desc": "a", "bbox_2d": [[%s]]}' % c(1, 2, 3, 4)),
    # issue 13 item 11: no tokenizer id spells a non-canonical literal -> never a valid prediction
    ("non_coord_token", '{"desc": "a", "bbox_2d": [%s, <|coord_01|>]}' % c(1, 2, 3)),
    ("non_coord_token", '{"desc": "a", "bbox_2d": [<|coord_007|>, %s]}' % c(8, 9, 10)),
    ("unexpected_keys", '{"desc": "a", "bbox_2d": [%s], "score": 0.9}' % c(1, 2, 3, 4)),
    ("unexpected_keys", '{"desc": "a", "desc": "b", "bbox_2d": [%s]}' % c(1, 2, 3, 4)),
    ("order_violation", '{"bbox_2d": [%s], "desc": "a"}' % c(1, 2, 3, 4)),
    ("poly", '{"desc": "a", "poly": [%s]}' % c(1, 2, 3, 4, 5, 6)),
    ("poly", '{"desc": "a", "poly_points": [%s]}' % c(1, 2, 3, 4, 5, 6)),
    ("unknown_geom", '{"desc": "a", "bbox": [%s]}' % c(1, 2, 3, 4)),
    ("unknown_geom", '{"desc": "a", "line": [%s]}' % c(1, 2, 3, 4)),
    ("bbox_invalid", '{"desc": "a", "bbox_2d": [%s]}' % c(5, 2, 4, 9)),
    ("bbox_invalid", '{"desc": "a", "bbox_2d": [%s]}' % c(1, 9, 3, 8)),
    ("malformed", '{"desc": "a" "bbox_2d": [%s]}' % c(1, 2, 3, 4)),
    ("malformed", '{"desc": "a", "bbox_2d": [%s,]}' % c(1, 2, 3, 4)),
    ("malformed", '{"desc": "a", "bbox_2d": [<|coord_x|>, %s]}' % c(2, 3, 4)),
    ("malformed", '{"desc": "a"}'),
    ("malformed", '{"desc": "a", "bbox_2d": "%s"}' % c(1, 2, 3, 4)),
    ("malformed", '{"desc": "a\nb", "bbox_2d": [%s]}' % c(1, 2, 3, 4)),
]


@pytest.mark.parametrize("reason,bad", DROP_CASES)
def test_each_drop_reason_is_dropped_counted_and_kept_in_prefix(reason, bad):
    """seed 001 1.5.1: predicted non-bbox / malformed objects are dropped and counted per reason."""
    good0, good1 = rec("red", (1, 2, 3, 4)), rec("blue", (5, 6, 7, 8))
    text = doc(good0, bad, good1)
    tp = parse_text(text)
    assert [o["desc"] for o in tp.objects] == ["red", "blue"]
    assert nonzero(tp.drop_counts) == {reason: 1}
    r = rollout(text)
    assert [o.desc for o in r.objects] == ["red", "blue"]
    assert nonzero(r.drop_counts) == {reason: 1} and r.n_drop_invalid == 1
    assert [d.reason for d in r.dropped] == [reason]
    assert bad in r.prefix_text  # dropped text stays in the prefix (FP context)


@pytest.mark.parametrize("digits", ["\u0661\u0662", "\uff19", "\u0967"])
def test_non_ascii_digit_literal_is_never_a_prediction(digits):
    """issue 13 item 11: `<|coord_١٢|>` (Arabic-Indic), fullwidth and Devanagari digits are not bins: the text view
    drops the record as non_coord_token; in the token view (fake byte BPE and the real Qwen BPE) the record is
    dropped too (its per-token text may hold U+FFFD, then it is malformed), never read as bin 12 / 9 / 1."""
    bad = '{"desc": "a", "bbox_2d": [%s, <|coord_%s|>]}' % (c(1, 2, 3), digits)
    text = doc(rec("red", (1, 2, 3, 4)), bad, rec("blue", (5, 6, 7, 8)))
    tp = parse_text(text)
    assert [o["desc"] for o in tp.objects] == ["red", "blue"] and nonzero(tp.drop_counts) == {"non_coord_token": 1}
    from tests.rollout_tokenizer import real_view

    for tok, view in ((T, T.view), real_view("qwen")):
        r = parse_rollout(tok.encode(text) + [view.eos_id], view)
        assert [o.desc for o in r.objects] == ["red", "blue"] and r.n_drop_invalid == 1
        assert r.dropped[0].reason in ("non_coord_token", "malformed")


def test_ids_outside_the_vocabulary_never_raise():
    """SPEC B1 (never raises on model output): ids past the tokenizer (a model's padded embedding rows) or negative
    decode to '' — the parse equals the parse without them, and the model's ids stay in the prefix."""
    text = doc(rec("red", (1, 2, 3, 4)), rec("blue", (5, 6, 7, 8)))
    ids = T.encode(text)
    odd = ids[:5] + [T.vocab_size + 7] + ids[5:9] + [10 ** 6] + ids[9:]
    plain, r = parse_rollout(ids + [T.im_end_id], T.view), parse_rollout(odd + [T.im_end_id], T.view)
    assert [(o.desc, o.bins) for o in r.objects] == [(o.desc, o.bins) for o in plain.objects]
    assert T.vocab_size + 7 in r.prefix_token_ids and 10 ** 6 in r.prefix_token_ids
    assert r.prefix_text == plain.prefix_text and len(r.token_char_offsets) == len(r.prefix_token_ids) + 1


def test_drop_reason_list_is_exact():
    assert DROP_REASONS == ("missing_desc", "wrong_arity", "non_coord_token", "unexpected_keys", "order_violation",
                            "poly", "unknown_geom", "bbox_invalid", "malformed")


def test_bbox_equal_edges_are_valid():
    assert parse_text(doc(rec("a", (3, 4, 3, 4)))).objects == [{"desc": "a", "bbox_2d": [3, 4, 3, 4]}]


def test_order_violation_under_geometry_first():
    """desc-first records violate the geometry_first order and vice versa."""
    text = doc(rec("a", order="desc_first"), rec("b", order="geometry_first"))
    tp = parse_text(text, "geometry_first")
    assert [o["desc"] for o in tp.objects] == ["b"] and nonzero(tp.drop_counts) == {"order_violation": 1}


def test_non_record_items_count_as_malformed():
    text = '{"objects": [' + rec("a") + ', "junk {", 7, ' + rec("b") + "]}"
    tp = parse_text(text)
    assert [o["desc"] for o in tp.objects] == ["a", "b"] and nonzero(tp.drop_counts) == {"malformed": 2}


def test_token_level_wrong_arity_when_a_coord_literal_is_spelled_in_bytes():
    """Slots are ids in V_c: a literal spelled byte by byte counts in text but not as a slot (SPEC B1)."""
    text = doc(rec("a", (1, 2, 3, 4)))
    ids: list[int] = []
    for part in text.split("<|coord_4|>"):
        ids += T.encode(part)
        ids += list(b"<|coord_4|>")  # byte tokens 0..255
    ids = ids[: -len(b"<|coord_4|>")] + [T.im_end_id]
    assert "".join(T.decode_token(i) for i in ids[:-1]) == text
    assert parse_text(text).objects == [{"desc": "a", "bbox_2d": [1, 2, 3, 4]}]
    r = parse_rollout(ids, T.view)
    assert r.objects == () and nonzero(r.drop_counts) == {"wrong_arity": 1}


# ---------------------------------------------------------------------------------------------------------------
# invalid rollouts (seed 001 1.5.3)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "", "   ", "no json here", "[{}]", '{"object": [' + rec("a") + "]}", '{"objects": {' + rec("a") + "}",
    'Sure: {"objects": [' + rec("a") + "]}", '"objects": [' + rec("a") + "]}", "{", '{"objects"',
])
def test_no_opener_is_invalid_rollout_with_empty_opener_fallback(text):
    """seed 001 1.5.3: no opener -> prefix '{"objects": [', zero predictions."""
    tp = parse_text(text)
    assert tp.invalid_rollout and tp.objects == [] and tp.prefix_text == EMPTY_OPENER_TEXT
    r = rollout(text)
    assert r.invalid_rollout and r.invalid_reason == "no_opener" and r.objects == ()
    assert list(r.prefix_token_ids) == T.encode('{"objects": [') and r.prefix_text == '{"objects": ['
    assert nonzero(r.drop_counts) == {}


def test_invalid_rollout_uses_given_fallback_ids_and_empty_response():
    r = parse_rollout([], T.view, fallback_prefix_ids=[ord("{"), ord('"')])
    assert r.invalid_rollout and r.prefix_token_ids == (ord("{"), ord('"')) and r.response_len == 0
    r = parse_rollout([T.im_end_id] + T.encode(doc(rec("a"))), T.view)
    assert r.invalid_rollout and r.response_len == 0  # everything after the first <|im_end|> is ignored


# ---------------------------------------------------------------------------------------------------------------
# im_end cut and truncation
# ---------------------------------------------------------------------------------------------------------------


def test_cut_at_first_im_end_id_and_literal():
    full = doc(rec("a"), rec("b"))
    ids = T.encode(doc(rec("a"))) + [T.im_end_id] + T.encode(full)
    r = parse_rollout(ids, T.view)
    assert [o.desc for o in r.objects] == ["a"] and r.response_len == len(T.encode(doc(rec("a"))))
    spelled = '{"objects": [' + rec("a") + ", " + "<|im_end|>" + rec("b") + "]}"
    assert parse_text(spelled).objects == [{"desc": "a", "bbox_2d": [1, 2, 3, 4]}]


def test_unterminated_last_record_is_truncation_not_a_drop():
    head = '{"objects": [' + rec("a") + ", " + rec("b")
    text = head + ', {"desc": "c", "bbox_2d": [<|coord_1|>, <|co'
    tp = parse_text(text)
    assert tp.truncated and [o["desc"] for o in tp.objects] == ["a", "b"] and nonzero(tp.drop_counts) == {}
    r = parse_rollout(T.encode(text), T.view)  # max_new_tokens hit: no <|im_end|>
    assert r.truncated and [o.desc for o in r.objects] == ["a", "b"] and r.prefix_text == head


def test_array_not_closed_without_open_record_is_not_truncated():
    tp = parse_text('{"objects": [' + rec("a") + ", ")
    assert not tp.truncated and tp.prefix_text == '{"objects": [' + rec("a")


# ---------------------------------------------------------------------------------------------------------------
# cuts inside tokens
# ---------------------------------------------------------------------------------------------------------------


def test_cut_inside_record_straddling_token():
    """']}, {"' is one token: a truncated next record cuts inside it; only that token is re-tokenised."""
    text = '{"objects": [' + rec("red") + ', {"desc": "blu'
    ids = T.encode(text)
    pieces = [T.decode_token(i) for i in ids]
    j = pieces.index(']}, {"')
    r = parse_rollout(ids, T.view)
    assert r.truncated and [o.desc for o in r.objects] == ["red"]
    assert r.prefix_token_ids == tuple(ids[:j]) + tuple(T.encode("]}"))
    assert T.decode_token(r.prefix_token_ids[-1]) == "]}" and r.prefix_text.endswith("]}")


def test_cut_inside_closing_token():
    """A model emitting ']}]}' as one id: the prefix keeps ']}' (re-tokenised), the array closure is cut."""
    text = doc(rec("red"))
    ids = T.encode(text)
    assert T.decode_token(ids[-1]) == "]}]}"
    r = parse_rollout(ids + [T.im_end_id], T.view)
    assert r.prefix_token_ids == tuple(ids[:-1]) + (T.encode("]}")[0],)


def test_cut_inside_opener_token():
    text = '{"objects" : [{"desc": "re'
    ids = T.encode(text)
    pieces = [T.decode_token(i) for i in ids]
    assert ' [{"' in pieces  # the opener '[' and the record's '{"' share one token
    j = pieces.index(' [{"')
    r = parse_rollout(ids, T.view)
    assert not r.invalid_rollout and r.truncated and r.objects == ()
    assert r.prefix_token_ids == tuple(ids[:j]) + tuple(T.encode(" [")) and r.prefix_text == '{"objects" : ['


def test_cut_piece_that_does_not_retokenise_exactly_is_invalid():
    text = '{"objects": [' + rec("red") + ', {"desc": "blu'
    bad = dataclasses.replace(T.view, encode=lambda s: T.encode(s + " "), _cache={})  # decodes to piece + " "
    r = parse_rollout(T.encode(text), bad, fallback_prefix_ids=T.encode(EMPTY_OPENER_TEXT))
    assert r.invalid_rollout and r.invalid_reason == "cut_token" and r.objects == ()
    assert r.prefix_token_ids == tuple(T.encode(EMPTY_OPENER_TEXT))


def test_cut_piece_with_partial_utf8_is_invalid():
    """A token holding the last byte of '狗' plus '"}' cannot be re-encoded honestly (its text is U+FFFD)."""
    tok = FakeByteTokenizer(MERGES + ('狗'.encode()[2:] + b'"}, ',))
    text = '{"objects": [' + rec("小狗", order="geometry_first") + ", " + '{"bbox_2d": [<|coord_1|>'
    ids = tok.encode(text)
    assert '\ufffd"}, ' in [tok.decode_token(i) for i in ids]
    r = parse_rollout(ids, tok.view, object_field_order="geometry_first")
    assert r.invalid_rollout and r.invalid_reason == "cut_token"


# ---------------------------------------------------------------------------------------------------------------
# non-ASCII descs
# ---------------------------------------------------------------------------------------------------------------


def test_non_ascii_desc_split_inside_utf8_characters():
    """'狗' is 3 byte tokens in the fake vocab; each decodes to U+FFFD alone. With decode_ids the desc is
    recovered exactly; without it the per-token text keeps U+FFFD (documented)."""
    text = doc(rec("小狗 é", (1, 2, 3, 4)))
    assert parse_text(text).objects[0]["desc"] == "小狗 é"
    r = rollout(text)
    assert r.objects[0].desc == "小狗 é"
    r = rollout(text, view=dataclasses.replace(T.view, decode=None, _cache={}))
    assert r.objects[0].desc == "\ufffd" * 6 + " é"
    assert r.objects[0].bins == (1, 2, 3, 4)


# ---------------------------------------------------------------------------------------------------------------
# shared scanner
# ---------------------------------------------------------------------------------------------------------------


def test_scan_text_is_the_shared_core():
    text = doc(rec("a"), '{"desc": "b", "poly": []}')
    s = scan_text(text)
    assert s.opener_end == len('{"objects": [') and [i.reason for i in s.items] == [None, "poly"]
    assert s.cut == len(text) - 2
    with pytest.raises(ValueError, match="object_field_order"):
        scan_text(text, "desc_last")


# ---------------------------------------------------------------------------------------------------------------
# the real Qwen byte-level BPE (+ specials + coord tokens) of the tiny model
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen():
    from tests.rollout_tokenizer import real_view

    return real_view("qwen")


def test_qwen_fallback_ids_are_tokenizer_ids_of_empty_opener(qwen):
    """seed 001 1.7.4: fallback ids = tokenizer ids of '{"objects": [' for every invalid sample.
    seed 001 1.5.3: no opener -> that prefix, zero predictions."""
    tok, view = qwen
    want = tuple(tok.encode('{"objects": [', add_special_tokens=False))
    assert view.eos_id == 151645
    for text in ["", "I see a cat.", "[{}]", '{"objects" "x"']:
        r = parse_rollout(tok.encode(text, add_special_tokens=False) + [151645], view)
        assert r.invalid_rollout and r.prefix_token_ids == want and r.objects == ()
        assert r.prefix_text == '{"objects": ['


def test_qwen_round_trip_and_every_token_boundary(qwen):
    """Real BPE merges ']},' and ' [{"' across record boundaries; every truncation parses to a prefix of the
    objects, the kept ids are the model's ids except for the one cut token, and the prefix ends in '[' or '}'."""
    tok, view = qwen
    decode_token = view.pieces.text.__getitem__
    objs = [("red circle", (1, 2, 30, 40)), ("稀有的龘 cat", (5, 6, 7, 8)), ("blue", (0, 0, 999, 999))]
    text = doc(*(rec(d, b) for d, b in objs))
    ids = tok.encode(text, add_special_tokens=False)
    pieces = view.pieces.pieces(ids)
    assert ' [{"' in pieces and "]}," in pieces and any("\ufffd" in p for p in pieces)
    full = parse_rollout(ids + [151645], view)
    assert [(o.desc, o.bins) for o in full.objects] == objs
    for t in range(len(ids) + 1):
        r = parse_rollout(ids[:t], view)
        got = [(o.desc, o.bins) for o in r.objects]
        assert got == objs[: len(got)]
        if r.invalid_rollout:
            assert "[" not in "".join(pieces[:t])
            continue
        check_prefix_contract(ids[:t], r, decode_token)
