"""SPEC §1.3 canonical CoordJSON and §1.4 runtime sample. Expected strings are written by hand."""

from __future__ import annotations

import json
import re

import pytest

from coordexp_swift.data.coordjson import (
    assistant_payload,
    render_object,
    render_objects,
    render_record,
    to_swift_row,
)
from coordexp_swift.data.records import GTObject, Record

RED = GTObject("red circle", "bbox_2d", (12, 40, 80, 99))
BLUE = GTObject("blue square", "bbox_2d", (0, 500, 999, 999))


def test_single_object_byte_exact() -> None:
    """SPEC §1.3 example, byte for byte."""
    assert render_objects([RED]) == (
        '{"objects": [{"desc": "red circle", "bbox_2d": [<|coord_12|>, <|coord_40|>, <|coord_80|>, <|coord_99|>]}]}'
    )


def test_two_objects_byte_exact_and_order_kept() -> None:
    """Objects keep the given (JSONL) order, never re-sorted; separators ', ' and ': '."""
    assert render_objects([BLUE, RED]) == (
        '{"objects": [{"desc": "blue square", "bbox_2d": [<|coord_0|>, <|coord_500|>, <|coord_999|>, <|coord_999|>]}, '
        '{"desc": "red circle", "bbox_2d": [<|coord_12|>, <|coord_40|>, <|coord_80|>, <|coord_99|>]}]}'
    )


def test_empty() -> None:
    assert render_objects([]) == '{"objects": []}'


def test_geometry_first_byte_exact() -> None:
    assert render_objects([RED], "geometry_first") == (
        '{"objects": [{"bbox_2d": [<|coord_12|>, <|coord_40|>, <|coord_80|>, <|coord_99|>], "desc": "red circle"}]}'
    )


def test_desc_escaping_non_ascii_kept() -> None:
    """Quotes, backslashes, newlines escaped as JSON; non-ASCII (é, 猫, emoji) unescaped."""
    obj = GTObject('a "q" \\ b\né 猫 🐱', "bbox_2d", (1, 2, 3, 4))
    assert render_object(obj) == (
        '{"desc": "a \\"q\\" \\\\ b\\né 猫 🐱", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]}'
    )


def test_poly_rendered_flat() -> None:
    obj = GTObject("tri", "poly", (1, 2, 30, 2, 15, 40))
    assert render_object(obj) == (
        '{"desc": "tri", "poly": [<|coord_1|>, <|coord_2|>, <|coord_30|>, <|coord_2|>, <|coord_15|>, <|coord_40|>]}'
    )


def test_no_newline_and_parseable_after_substitution() -> None:
    text = render_objects([RED, BLUE])
    assert "\n" not in text
    as_json = json.loads(re.sub(r"<\|coord_(\d+)\|>", r"\1", text))
    assert as_json == {
        "objects": [
            {"desc": "red circle", "bbox_2d": [12, 40, 80, 99]},
            {"desc": "blue square", "bbox_2d": [0, 500, 999, 999]},
        ]
    }


def test_unknown_field_order() -> None:
    with pytest.raises(ValueError, match="desc_first, geometry_first"):
        render_objects([RED], "desc_last")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="desc_first, geometry_first"):
        assistant_payload([], "x")  # type: ignore[arg-type]


def test_assistant_payload_order_and_tokens() -> None:
    """SPEC §1.4: {"objects": [{desc, bbox_2d: ["<|coord_k|>" x4]}]} with dict order = field order."""
    p = assistant_payload([RED])
    assert p == {"objects": [{"desc": "red circle", "bbox_2d": ["<|coord_12|>", "<|coord_40|>", "<|coord_80|>",
                                                                 "<|coord_99|>"]}]}
    assert list(p["objects"][0]) == ["desc", "bbox_2d"]
    assert list(assistant_payload([RED], "geometry_first")["objects"][0]) == ["bbox_2d", "desc"]
    assert assistant_payload([]) == {"objects": []}


def test_to_swift_row() -> None:
    """SPEC §1.4 runtime sample: messages, images (absolute), width, height, sample_id, metadata, payload."""
    r = Record(sample_id=3, image="/d/images/a.png", width=128, height=64, objects=(RED,), metadata={"k": 1})
    row = to_swift_row(r, user_prompt="Detect all objects.", system_prompt="You are a detector.")
    assert row == {
        "messages": [
            {"role": "system", "content": "You are a detector."},
            {"role": "user", "content": "<image>Detect all objects."},
            {"role": "assistant", "content": render_record(r)},
        ],
        "images": ["/d/images/a.png"],
        "width": 128,
        "height": 64,
        "sample_id": 3,
        "metadata": {"k": 1},
        "assistant_payload": assistant_payload([RED]),
    }
    no_sys = to_swift_row(r, user_prompt="Go", field_order="geometry_first")
    assert [m["role"] for m in no_sys["messages"]] == ["user", "assistant"]
    assert no_sys["messages"][1]["content"] == render_objects([RED], "geometry_first")
    assert list(no_sys["assistant_payload"]["objects"][0]) == ["bbox_2d", "desc"]
