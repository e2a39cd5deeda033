"""FN fragment and closure scan (SPEC §3.6 B3/B4). Expected strings are written out by hand."""
from __future__ import annotations

import pytest

from coordexp_swift.data.records import GTObject
from coordexp_swift.rollout.fragment import (
    ClosureOffsets,
    build_fn_fragment,
    closure_char_offsets,
    fn_fragment_text,
    gt_object_from_payload,
)

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
    # closure: the fragment continues '{"objects": [' -> depths 1/1; ']' and '}' are the last two chars here.
    assert frag.closure == ClosureOffsets(len(t) - 2, len(t) - 1)


def test_payload_conversion():
    assert gt_object_from_payload(CAT) == GTObject("cat", "bbox_2d", (1, 2, 3, 4))
    assert gt_object_from_payload(DOG) is DOG
    with pytest.raises(ValueError, match="bbox-only"):
        gt_object_from_payload({"desc": "p", "poly": ["<|coord_1|>"] * 6})


def test_closure_is_outermost_not_last_brace():
    # Braces/brackets inside strings (with escaped quotes) are ignored; a stray '}' after the closure is not it.
    text = '{"objects": [{"desc": "a}] \\"}{", "bbox_2d": [<|coord_1|>]}]} }'
    want_obj = text.index("]} }") + 1
    assert closure_char_offsets(text) == ClosureOffsets(want_obj - 1, want_obj)
    assert text.rindex("}") != want_obj
    # Unclosed text: no closure.
    assert closure_char_offsets('{"objects": [{"desc": "}"}') == ClosureOffsets(None, None)
    # Fragment mode: start inside the container.
    assert closure_char_offsets(', {"desc": "]}"}]}', brace_depth=1, bracket_depth=1) == ClosureOffsets(16, 17)
