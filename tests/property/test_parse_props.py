"""Property tests of the strict rollout parser + FN fragment (SPEC §3.6 B1, B3), on the fake byte-level tokenizer.

Oracles: the canonical renderer ``coordexp_swift.data.coordjson.render_objects`` (rendering) and the object lists
hypothesis generated (expected parse results).
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coordexp_swift.data.coordjson import check_desc_text, render_object, render_objects
from coordexp_swift.data.records import GTObject
from coordexp_swift.rollout.fragment import fn_fragment_text
from coordexp_swift.rollout import parse as parse_mod
from coordexp_swift.rollout.parse import DROP_REASONS, parse_rollout, parse_text
from tests.rollout_tokenizer import FakeByteTokenizer, check_prefix_contract

T = FakeByteTokenizer()
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

bins = st.integers(0, 999)


@st.composite
def boxes(draw) -> tuple[int, int, int, int]:
    x1, x2 = sorted((draw(bins), draw(bins)))
    y1, y2 = sorted((draw(bins), draw(bins)))
    return (x1, y1, x2, y2)


def _renderable(s: str) -> bool:
    """A GT desc the CoordJSON renderer accepts (non-blank, no coord / special-token literal: hypothesis also
    draws string constants it finds in the package, such as ``<|box_end|>``)."""
    try:
        check_desc_text(s)
    except ValueError:
        return False
    return s.strip() != ""


descs = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
).filter(_renderable)
gt_objects = st.builds(lambda d, b: GTObject(d, "bbox_2d", b), descs, boxes())
object_lists = st.lists(gt_objects, max_size=4)
orders = st.sampled_from(["desc_first", "geometry_first"])

# Pieces that make near-JSON noise: structure, keys, coord literals (valid and not), escapes, specials.
NOISE = ['{', '}', '[', ']', '"', ',', ':', ' ', '\n', '\\', '\\"', 'desc', 'bbox_2d', 'poly', '"objects"',
         '{"objects": [', '<|coord_5|>', '<|coord_999|>', '<|coord_1000|>', '<|coord_', '<|im_end|>', 'é', '狗',
         '"desc": "a", ', '"bbox_2d": [', ']}', '1', '-2.5e3', 'true', 'null']
noise_text = st.lists(st.sampled_from(NOISE), max_size=60).map("".join)


def as_dicts(objs: list[GTObject]) -> list[dict]:
    return [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in objs]


@SETTINGS
@given(st.one_of(st.text(max_size=200), noise_text, noise_text.map(lambda s: '{"objects": [' + s)), orders)
def test_parse_text_never_raises(text, order):
    tp = parse_text(text, order)
    assert set(tp.drop_counts) == set(DROP_REASONS) and all(v >= 0 for v in tp.drop_counts.values())
    assert tp.prefix_text.rstrip(" \t\n\r").endswith(("[", "}"))
    for o in tp.objects:
        x1, y1, x2, y2 = o["bbox_2d"]
        assert o["desc"].strip() and 0 <= x1 <= x2 <= 999 and 0 <= y1 <= y2 <= 999


@SETTINGS
@given(st.lists(st.integers(0, T.vocab_size - 1), max_size=80), noise_text, orders)
def test_parse_rollout_never_raises_on_arbitrary_ids(ids, noise, order):
    for seq in (ids, T.encode('{"objects": [') + ids, T.encode('{"objects": [' + noise) + ids):
        r = parse_rollout(seq, T.view, object_field_order=order)
        if r.invalid_rollout:
            assert r.objects == () and r.prefix_token_ids == tuple(T.encode('{"objects": ['))
            continue
        body = seq[: r.response_len]
        check_prefix_contract(body, r, T.decode_token)
        for o in r.objects:
            assert [T.coord_id_to_bin[r.prefix_token_ids[i]] for i in o.slot_token_idx] == list(o.bins)


@SETTINGS
@given(object_lists, orders)
def test_parse_of_render_is_identity(objs, order):
    text = render_objects(objs, order)
    assert parse_text(text, order).objects == as_dicts(objs)
    r = parse_rollout(T.encode(text) + [T.im_end_id], T.view, object_field_order=order)
    assert [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in r.objects] == as_dicts(objs)
    assert r.n_drop_invalid == 0 and not r.truncated


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(gt_objects, max_size=3), orders)
def test_truncation_at_every_token_boundary(objs, order):
    """Every token-boundary truncation parses, yields a prefix of the objects, keeps the model's ids (one cut token
    re-tokenised at most), ends in '[' or '}'; appending the FN fragment of the missing objects restores the list."""
    text = render_objects(objs, order)
    ids = T.encode(text)
    opener_tokens = len(T.encode('{"objects": ['))
    for t in range(len(ids) + 1):
        r = parse_rollout(ids[:t], T.view, object_field_order=order)
        if t < opener_tokens:
            assert r.invalid_rollout
            continue
        assert not r.invalid_rollout
        got = [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in r.objects]
        assert got == as_dicts(objs)[: len(got)]
        check_prefix_contract(ids[:t], r, T.decode_token)
        # Y_train text: joint decode of the prefix ids (per-token text may hold U+FFFD) + the FN fragment.
        completed = T.decode_ids(r.prefix_token_ids) + fn_fragment_text(r.prefix_text, objs[len(got):], order)
        assert completed == text  # canonical prefix + canonical FN records = the canonical full text
        assert parse_text(completed, order).objects == as_dicts(objs)


BAD_RECORDS = {
    "poly": '{"desc": "p", "poly": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>, <|coord_5|>, <|coord_6|>]}',
    "wrong_arity": '{"desc": "w", "bbox_2d": [<|coord_1|>]}',
    "non_coord_token": '{"desc": "n", "bbox_2d": [1, 2, 3, 4]}',
    "malformed": '{"desc": "m" "bbox_2d": []}',
    "unknown_geom": '{"desc": "u", "line": [<|coord_1|>, <|coord_2|>]}',
}


@SETTINGS
@given(st.lists(st.one_of(gt_objects, st.sampled_from(sorted(BAD_RECORDS))), max_size=6))
def test_mixed_valid_and_invalid_records(items):
    """Valid records come out in order; each invalid one is counted once under its reason (seed 001 1.5.1)."""
    parts = [render_object(i) if isinstance(i, GTObject) else BAD_RECORDS[i] for i in items]
    text = '{"objects": [' + ", ".join(parts) + "]}"
    r = parse_rollout(T.encode(text) + [T.im_end_id], T.view)
    assert [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in r.objects] == as_dicts(
        [i for i in items if isinstance(i, GTObject)])
    want = {k: sum(1 for i in items if i == k) for k in DROP_REASONS}
    assert r.drop_counts == want


# Record-shaped noise: the canonical shape with its parts perturbed (whitespace, escapes, key spellings, literal
# spellings, arity, order), so that both classification paths see near-valid records.
_WSP = st.sampled_from(["", " ", "  ", "\n", "\t", "\r\n"])
_LIT = st.one_of(bins.map(lambda k: f"<|coord_{k}|>"), st.sampled_from(
    ["<|coord_01|>", "<|coord_007|>", "<|coord_1000|>", "<|coord_\u0661|>", "1", '"<|coord_3|>"', "<|coord_x|>"]))
_KEY = st.sampled_from(['"desc"', '"bbox_2d"', '"d\\u0065sc"', '"poly"', '"bbox"', '"desc "'])
_DESC = st.one_of(descs.map(lambda d: json.dumps(d, ensure_ascii=False)),
                  st.sampled_from(['""', '"  "', '"a\\"b"', '"a\nb"', '"\\x"', "7", "null"]))


@st.composite
def record_like(draw) -> str:
    ws = lambda: draw(_WSP)  # noqa: E731
    if draw(st.booleans()):  # half the records carry 4 canonical literals (the fast path's domain)
        lits = [f"<|coord_{draw(bins)}|>" for _ in range(4)]
    else:
        lits = draw(st.lists(_LIT, min_size=0, max_size=5))
    box = "[" + ws() + (ws() + "," + ws()).join(lits) + ws() + "]"
    odd = st.integers(0, 3).map(lambda i: i == 0)  # perturb a part one time in four
    fields = [(draw(_KEY) if draw(odd) else '"desc"', draw(_DESC)),
              (draw(_KEY) if draw(odd) else '"bbox_2d"', box)]
    if draw(odd):
        fields.reverse()
    body = (ws() + "," + ws()).join(f"{k}{ws()}:{ws()}{v}" for k, v in fields)
    return "{" + ws() + body + ws() + "}"


@SETTINGS
@given(record_like(), orders)
def test_fast_record_path_agrees_with_general_parser(record, order):
    """issue 8 item 4: the one-regex classification of common-shape records gives exactly the general
    JSON-with-bare-coords parser's answer (reason, desc, bins, spans) whenever it answers."""
    span = (0, len(record))
    fast = parse_mod._classify_fast(record, span, order)
    general = parse_mod._classify_general(record, span, parse_mod._key_order(order))
    if fast is not None:
        assert fast == general
    event(f"fast path {'answered' if fast is not None else 'declined'}")
    assert parse_mod._classify(record, span, order) == general


def _reference_lex(text: str):
    """Independent oracle: a plain sequential character scanner (strings escape-aware, an unterminated one runs
    to the end) -> string spans, positions of { } [ ] , outside strings, and each '{' -> end of its matching '}'."""
    strings, struct, stack, ends = [], [], [], {}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            end = min(j + 1, n)
            strings.append((i, end))
            i = end
            continue
        if c in "{}[],":
            struct.append(i)
            if c == "{":
                stack.append(i)
                ends[i] = -1
            elif c == "}" and stack:
                ends[stack.pop()] = i + 1
        i += 1
    return strings, struct, ends


@SETTINGS
@given(st.one_of(noise_text, st.text(alphabet='{}[],"\\ a:', max_size=60)))
def test_one_scanner_matches_a_sequential_reference(text):
    """issue 8 item 4: the vectorised lexer of data/coordjson_scan.py finds the same strings, structure and brace
    matches as a per-character sequential scanner (the three scanners it replaced were all of that kind)."""
    from coordexp_swift.data.coordjson_scan import lex

    lx = lex(text)
    strings, struct, ends = _reference_lex(text)
    assert [tuple(s) for s in lx.strings.tolist()] == strings
    assert lx.struct_pos.tolist() == struct
    got = lx.brace_ends()
    assert {p: e for p, e in got.items()} == ends
