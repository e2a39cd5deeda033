"""FN fragment and closure scan (SPEC §3.6 B3/B4). Expected strings are written out by hand."""
from __future__ import annotations

import pytest

from coordexp_swift.data.records import GTObject
from coordexp_swift.data.coordjson_scan import scan_coordjson
from coordexp_swift.rollout.fragment import build_fn_fragment, fn_fragment_text, gt_object_from_payload

CAT = {"desc": "cat", "bbox_2d": ["<|coord_1|>", "<|coord_2|>", "<|coord_3|>", "<|coord_4|>"]}
DOG = GTObject("dög \"x\"", "bbox_2d", (10, 20, 30, 40))
CAT_TXT = '{"desc": "cat", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]}'
DOG_TXT = '{"desc": "dög \\"x\\"", "bbox_2d": [<|coord_10|>, <|coord_20|>, <|coord_30|>, <|coord_40|>]}'
DOG_TXT_GF = '{"bbox_2d": [<|coord_10|>, <|coord_20|>, <|coord_30|>, <|coord_40|>], "desc": "dög \\"x\\""}'


def test_fragment_after_opener_has_no_comma():
    """seed 001 1.6.1: prefix ending in '[' -> no leading comma; records joined by ', '; then ']}'."""
    assert fn_fragment_text('{"objects": [', [CAT, DOG]) == CAT_TXT + ", " + DOG_TXT + "]}"


def test_fragment_after_record_has_comma_ignoring_whitespace():
    """seed 001 1.6.1: prefix ending in '}' (whitespace ignored) -> ', ' first."""
    prefix = '{"objects": [' + CAT_TXT + " \n"
    assert fn_fragment_text(prefix, [DOG]) == ", " + DOG_TXT + "]}"


def test_fragment_geometry_first_field_order():
    """seed 001 1.6.1: FN records follow the configured field order."""
    assert fn_fragment_text('{"objects": [', [DOG], "geometry_first") == DOG_TXT_GF + "]}"


def test_no_fn_is_just_closure():
    """seed 001 1.6.1: no FN -> ']}' (no comma, whatever the prefix ends with)."""
    assert fn_fragment_text('{"objects": [', []) == "]}"
    assert fn_fragment_text('{"objects": [' + CAT_TXT, []) == "]}"


def test_prefix_must_end_in_bracket_or_brace():
    with pytest.raises(RuntimeError, match="must end in"):
        fn_fragment_text('{"objects": [' + CAT_TXT + ",", [DOG])


def test_fragment_spans():
    prefix = '{"objects": [' + CAT_TXT
    frag = build_fn_fragment(prefix, [CAT, DOG], "geometry_first")
    t = frag.text
    assert [t[a:b] for a, b in frag.record_char_spans] == [
        '{"bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>], "desc": "cat"}', DOG_TXT_GF]
    assert [t[a:b] for a, b in frag.desc_char_spans] == ['"cat"', '"dög \\"x\\""']
    assert [t[a:b] for a, b in frag.desc_value_spans().tolist()] == ["cat", 'dög \\"x\\"']
    # closure: the fragment continues '{"objects": [' -> ']' and '}' are its last two chars, and the one scanner
    # finds the same outermost '}' in the whole document (issue 8 item 2: carried, not re-scanned).
    assert (t[frag.array_close_char], t[frag.closure_char]) == ("]", "}")
    assert scan_coordjson(prefix + t).closure_char == len(prefix) + frag.closure_char


def test_payload_conversion():
    assert gt_object_from_payload(CAT) == GTObject("cat", "bbox_2d", (1, 2, 3, 4))
    assert gt_object_from_payload(DOG) is DOG
    with pytest.raises(ValueError, match="bbox-only"):
        gt_object_from_payload({"desc": "p", "poly": ["<|coord_1|>"] * 6})


def test_closure_is_outermost_not_last_brace():
    """seed 002 1.2: the one scanner's closure is string-aware (braces/brackets and escaped quotes inside strings
    are ignored) and is the outermost `}`, not the last one."""
    text = '{"objects": [{"desc": "a}] \\"}{", "bbox_2d": [<|coord_1|>]}]} }'
    want_obj = text.index("]} }") + 1
    assert scan_coordjson(text).closure_char == want_obj and text.rindex("}") != want_obj
    # Unclosed text: no closure.
    assert scan_coordjson('{"objects": [{"desc": "}"}').closure_char == -1
    # Tail mode: start inside the container (depth 2 = '{' + '[').
    assert scan_coordjson(', {"desc": "]}"}]}', start_depth=2).closure_char == 17
