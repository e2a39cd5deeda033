"""SPEC §1.1 / §1.5: record validation, one test per table row, plus the JSONL reader."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from coordexp_swift.data.records import (
    GTObject,
    Record,
    check_stage2_encoding,
    iter_jsonl,
    object_sort_key,
    validate_record,
)

WHERE = "/abs/train.jsonl:12"


def tok(k: int) -> str:
    return f"<|coord_{k}|>"


def rec(objects: list[Any] | None = None, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "images": ["images/a.png"],
        "width": 128,
        "height": 96,
        "objects": objects if objects is not None else [{"desc": "red circle", "bbox_2d": [1, 2, 3, 4]}],
    }
    raw.update(over)
    return raw


def check(raw: dict[str, Any], stage: str = "stage1", sample_id: int = 11) -> Record:
    return validate_record(raw, stage=stage, where=WHERE, base_dir="/data/set", sample_id=sample_id)


def raises(raw: dict[str, Any], *fragments: str, stage: str = "stage1") -> str:
    with pytest.raises(ValueError) as ei:
        check(raw, stage)
    msg = str(ei.value)
    assert msg.startswith(WHERE + ":"), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# ---------------------------------------------------------------- valid records


def test_valid_record_tokens_and_numbers_coerced() -> None:
    """seed 000 2.2: a well-formed record validates; tokens and integral numbers become int bins."""
    raw = rec(
        [
            {"desc": "red circle", "bbox_2d": [tok(12), tok(40), tok(80), tok(99)]},
            {"desc": "blue square", "bbox_2d": [0, 3.0, 999, 999.0]},
        ],
        metadata={"image_id": 7},
        summary="ignored",
    )
    r = check(raw)
    assert r == Record(
        sample_id=11,
        image="/data/set/images/a.png",
        width=128,
        height=96,
        objects=(
            GTObject("red circle", "bbox_2d", (12, 40, 80, 99)),
            GTObject("blue square", "bbox_2d", (0, 3, 999, 999)),
        ),
        metadata={"image_id": 7},
    )
    assert all(type(k) is int for o in r.objects for k in o.bins)


def test_metadata_absent_is_empty_dict_and_image_path_normalised() -> None:
    r = check(rec(images=["./sub/../images/b.png"]))
    assert r.metadata == {}
    assert r.image == "/data/set/images/b.png"


def test_poly_and_poly_points_alias_in_stage1() -> None:
    """poly (flat, even, >= 6) is Stage-1 geometry; poly_points is an alias stored as 'poly'."""
    pts = [1, 2, 30, 2, 15, 40]
    r = check(rec([{"desc": "tri", "poly": pts}, {"desc": "tri2", "poly_points": [tok(k) for k in pts]}]))
    assert r.objects == (GTObject("tri", "poly", tuple(pts)), GTObject("tri2", "poly", tuple(pts)))


def test_empty_objects_allowed_in_stage1() -> None:
    assert check(rec([])).objects == ()


# ---------------------------------------------------------------- §1.5 rows


@pytest.mark.parametrize("field", ["images", "width", "height", "objects"])
def test_missing_field_names_record_and_field(field: str) -> None:
    """§1.5 row 'missing images/width/height/objects': record index + field."""
    raw = rec()
    del raw[field]
    raises(raw, "record 11", f"'{field}'")


@pytest.mark.parametrize(
    "images", [[], ["a.png", "b.png"], "a.png", [3], [""], None],
)
def test_images_must_be_list_of_one_path(images: Any) -> None:
    raises(rec(images=images), "record 11", "'images'", "exactly 1")


def test_images_absolute_path_rejected() -> None:
    raises(rec(images=["/abs/a.png"]), "'images'", "relative")


@pytest.mark.parametrize("value", [0, -3, 1.5, 128.0, True, "128", None])
def test_width_height_positive_int(value: Any) -> None:
    raises(rec(width=value), "record 11", "'width'", repr(value))
    raises(rec(height=value), "record 11", "'height'", repr(value))


def test_objects_must_be_list() -> None:
    raises(rec(objects={"desc": "x"}), "'objects'", "list")


@pytest.mark.parametrize("desc", ["", "   ", None, 3, ["a"]])
def test_bad_desc(desc: Any) -> None:
    """§1.5 row 'empty/non-string desc': objects[i] + 'desc must be a non-empty string'."""
    objs = [{"desc": "ok", "bbox_2d": [1, 2, 3, 4]}, {"desc": desc, "bbox_2d": [1, 2, 3, 4]}]
    raises(rec(objs), "objects[1]", "desc must be a non-empty string")


def test_missing_desc() -> None:
    raises(rec([{"bbox_2d": [1, 2, 3, 4]}]), "objects[0]", "desc must be a non-empty string")


def test_desc_with_coord_literal_rejected() -> None:
    raises(rec([{"desc": "a <|coord_3|> b", "bbox_2d": [1, 2, 3, 4]}]), "objects[0]", "coord-token literal")


@pytest.mark.parametrize(
    "obj",
    [
        {"desc": "x"},  # 0 geometry keys
        {"desc": "x", "bbox_2d": [1, 2, 3, 4], "poly": [1, 2, 3, 4, 5, 6]},  # 2 keys
        {"desc": "x", "poly": [1, 2, 3, 4, 5, 6], "poly_points": [1, 2, 3, 4, 5, 6]},  # alias + poly = 2 keys
        {"desc": "x", "bbox": [1, 2, 3, 4]},  # unknown key
        {"desc": "x", "line": [1, 2, 3, 4]},
        {"desc": "x", "polygon": [1, 2, 3, 4, 5, 6]},
        {"desc": "x", "bbox_2d": [1, 2, 3, 4], "score": 0.5},  # geometry + unknown key
    ],
)
def test_geometry_key_count(obj: dict[str, Any]) -> None:
    """§1.5 row '0 or >=2 geometry keys / unknown key': objects[i] + 'exactly one geometry field (bbox_2d or poly)'."""
    raises(rec([obj]), "objects[0]", "exactly one geometry field (bbox_2d or poly)")


def test_unknown_key_hint() -> None:
    msg = raises(rec([{"desc": "x", "bbox": [1, 2, 3, 4]}]), "'bbox'")
    assert "bbox_2d" in msg.split("found keys")[1]


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        ("bbox_2d", [1, 2, 3], "exactly 4 values"),
        ("bbox_2d", [1, 2, 3, 4, 5], "exactly 4 values"),
        ("bbox_2d", [], "exactly 4 values"),
        ("poly", [1, 2, 3, 4], "even length >= 6"),
        ("poly", [1, 2, 3, 4, 5, 6, 7], "even length >= 6"),
        ("poly_points", [1, 2, 3, 4, 5], "even length >= 6"),
    ],
)
def test_bad_arity(key: str, values: list[int], expected: str) -> None:
    """§1.5 row 'bad arity': objects[i] + expected arity."""
    objs = [{"desc": "ok", "bbox_2d": [1, 2, 3, 4]}, {"desc": "x", key: values}]
    raises(rec(objs), "objects[1]", f"bad arity {len(values)}", expected)


def test_geometry_not_a_list() -> None:
    raises(rec([{"desc": "x", "bbox_2d": "1,2,3,4"}]), "objects[0].bbox_2d", "exactly 4 values")


@pytest.mark.parametrize(
    "value",
    [
        "<|coord_1000|>",  # bin 1000 never exists
        "<|coord_-1|>",  # malformed (sign)
        "<|coord_12|",  # malformed
        "<coord_12>",
        "<|coord_12345|>",  # 5 digits: malformed
        "12",  # numeric string is not a token
        1000,
        -1,
        10**400,  # too big for float(): still a clean range error
        3.5,  # non-integral
        999.4,
        float("nan"),
        float("inf"),
        True,
        None,
        [1],
    ],
)
def test_bad_value(value: Any) -> None:
    """seed 001 1.7.3 / §1.5 row 'malformed token, non-integral, outside [0,999]': objects[i] + value + range."""
    objs = [{"desc": "ok", "bbox_2d": [1, 2, 3, 4]}, {"desc": "x", "bbox_2d": [1, value, 3, 4]}]
    raises(rec(objs), "objects[1].bbox_2d[1]", repr(value), "norm1000 range 0..999")


def test_bad_value_in_stage2_too() -> None:
    """seed 001 1.7.3: bin 1000 and -1 raise in Stage-2 as well."""
    for v in ("<|coord_1000|>", -1):
        raises(rec([{"desc": "x", "bbox_2d": [1, 2, v, 4]}]), "objects[0].bbox_2d[2]", "norm1000 range 0..999",
               stage="stage2")


@pytest.mark.parametrize("key", ["poly", "poly_points"])
def test_stage2_poly_rejected(key: str) -> None:
    """seed 001 1.7.3 + 001 1.5.1: GT poly in Stage-2 raises with the §1.5 text."""
    objs = [{"desc": "ok", "bbox_2d": [1, 2, 3, 4]}, {"desc": "tri", key: [1, 2, 30, 2, 15, 40]}]
    raises(rec(objs), "objects[1]", "bbox-only", "filter polygons upstream", stage="stage2")


def test_stage2_malformed_gt_raises() -> None:
    """seed 001 1.5.1: malformed GT (bad arity / bad token) raises in Stage-2 with the §1.5 text."""
    raises(rec([{"desc": "x", "bbox_2d": [1, 2, 3]}]), "objects[0]", "exactly 4 values", stage="stage2")
    raises(rec([{"desc": "x", "bbox_2d": [1, 2, 3, "<|coord_x|>"]}]), "objects[0]", "norm1000 range 0..999",
           stage="stage2")


@pytest.mark.parametrize("box", [[10, 5, 9, 6], [10, 5, 11, 4]])
def test_stage2_bbox_ordering(box: list[int]) -> None:
    """seed 001 1.7.3 / §1.5 row 'Stage-2: x2<x1 or y2<y1': objects[i] + 'invalid bbox ordering'."""
    objs = [{"desc": "ok", "bbox_2d": [1, 2, 3, 4]}, {"desc": "x", "bbox_2d": box}]
    raises(rec(objs), "objects[1]", "invalid bbox ordering", stage="stage2")


def test_stage2_equal_edges_ok() -> None:
    """seed 001 1.7.3: x2 == x1 (and y2 == y1) is a valid (degenerate) Stage-2 box."""
    r = check(rec([{"desc": "x", "bbox_2d": [10, 5, 10, 5]}]), "stage2")
    assert r.objects[0].bins == (10, 5, 10, 5)


def test_stage1_does_not_check_ordering() -> None:
    """The ordering row is Stage-2 only (SPEC §1.5); Stage-1 keeps the box as given."""
    assert check(rec([{"desc": "x", "bbox_2d": [10, 5, 9, 4]}])).objects[0].bins == (10, 5, 9, 4)


def test_stage2_zero_objects() -> None:
    """§1.5 row 'Stage-2: zero objects': sample id + 'no GT objects'."""
    raises(rec([]), "sample_id 11", "no GT objects", stage="stage2")


def test_unknown_stage() -> None:
    with pytest.raises(ValueError, match="stage3"):
        check(rec(), "stage3")


def test_check_stage2_encoding() -> None:
    """§1.5 row 'Stage-2: coord-token count != 4*#objects': sample id + both counts."""
    check_stage2_encoding(5, 2, 8)
    with pytest.raises(ValueError) as ei:
        check_stage2_encoding(5, 2, 7)
    msg = str(ei.value)
    assert "sample_id 5" in msg and "7 coord tokens" in msg and "2 GT objects" in msg and "= 8" in msg


# ---------------------------------------------------------------- JSONL reader


def _write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def test_iter_jsonl_sample_ids_blank_lines_and_paths(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "train.jsonl")
    _write(path, [json.dumps(rec()), "", "   ", json.dumps(rec(images=["x/c.png"]))])
    out = list(iter_jsonl(path, stage="stage1"))
    assert [r.sample_id for r in out] == [0, 3]  # 0-based physical line index; blank lines skipped
    assert out[1].image == os.path.join(str(tmp_path), "x", "c.png")


def test_iter_jsonl_malformed_json_names_file_and_line(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "t.jsonl")
    _write(path, [json.dumps(rec()), "{not json"])
    with pytest.raises(ValueError, match=rf"^{path}:2: malformed JSON"):
        list(iter_jsonl(path, stage="stage1"))


def test_iter_jsonl_invalid_record_names_file_line_and_object(tmp_path: Any) -> None:
    """§1.5 errors carry file:line (1-based) from the reader."""
    path = os.path.join(tmp_path, "t.jsonl")
    bad = rec([{"desc": "a", "bbox_2d": [1, 2, 3, 4]}, {"desc": "b", "poly": [1, 2, 3, 4, 5, 6]}])
    _write(path, [json.dumps(rec()), json.dumps(rec()), json.dumps(bad)])
    with pytest.raises(ValueError) as ei:
        list(iter_jsonl(path, stage="stage2"))
    assert str(ei.value).startswith(f"{path}:3: objects[1].poly: Stage-2 is bbox-only")


def test_object_sort_key_top_left_first() -> None:
    objs = [
        GTObject("b", "bbox_2d", (50, 10, 60, 20)),
        GTObject("a", "bbox_2d", (5, 10, 9, 30)),
        GTObject("c", "bbox_2d", (0, 40, 9, 50)),
    ]
    assert [o.desc for o in sorted(objs, key=object_sort_key)] == ["a", "b", "c"]


def test_record_to_json_round_trip(tmp_path: Any) -> None:
    r = check(rec([{"desc": "x", "bbox_2d": [1, 2, 3, 4]}], metadata={"k": 1}))
    raw = r.to_json("/data/set")
    assert raw == {
        "images": ["images/a.png"],
        "width": 128,
        "height": 96,
        "objects": [{"desc": "x", "bbox_2d": [tok(1), tok(2), tok(3), tok(4)]}],
        "metadata": {"k": 1},
    }
    assert check(raw) == r


@pytest.mark.parametrize(
    ("geometry", "bins"),
    [("bbox", (1, 2, 3, 4)), ("bbox_2d", (1, 2, 3)), ("poly", (1, 2, 3, 4)), ("bbox_2d", (1, 2, 3, 1000)),
     ("bbox_2d", (1, 2, 3, 4.0))],
)
def test_gtobject_invariants(geometry: str, bins: tuple[Any, ...]) -> None:
    """GTObjects built in code (rollout FN append, tools) obey the same contract as validated ones."""
    with pytest.raises(ValueError, match="GTObject"):
        GTObject("x", geometry, bins)


def test_gtobject_list_bins_become_tuple() -> None:
    assert GTObject("x", "bbox_2d", [1, 2, 3, 4]).bins == (1, 2, 3, 4)  # type: ignore[arg-type]
