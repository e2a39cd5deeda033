"""The offline evaluator never raises on bad data: bad records are counted drops, overlays stay bounded (issue 13)."""
from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from coordexp_swift.eval.cli import main as eval_main
from coordexp_swift.eval.coco_eval import evaluate_records
from coordexp_swift.eval.visualize import HEADER, PRED_COLOR, TILE, draw_overlays

GOOD = {"image": "a.png", "width": 100, "height": 80, "coord_mode": "pixel",
        "gt": [{"desc": "cat", "bbox_2d": [10, 10, 50, 50]}],
        "pred": [{"desc": "cat", "bbox_2d": [10, 10, 50, 50], "score": 0.9}]}
HUGE = 10 ** 400


def _with(**changes) -> dict:
    rec = json.loads(json.dumps(GOOD))
    rec.update(changes)
    return rec


@pytest.mark.parametrize("rec,counter", [
    (_with(coord_mode=["norm1000"]), "malformed_records"),
    (_with(coord_mode={"a": 1}), "malformed_records"),
    (_with(width=HUGE), "missing_size"),
    (_with(height=-HUGE), "missing_size"),
    (_with(width=2 ** 40), "missing_size"),
])
def test_bad_record_fields_are_counted_not_raised(rec, counter):
    """issue 13 item 8: coord_mode given as a list or dict and a 400-digit width/height are counted record drops
    (named in `malformed`), never an exception; the good record beside them is still evaluated."""
    result = evaluate_records([GOOD, rec])
    c = result["counters"]
    assert c["records_total"] == 2 and c["records_evaluated"] == 1 and c[counter] == 1
    assert result["malformed"][0]["location"] == "record 1"
    assert result["metrics"]["bbox_AP50"] == pytest.approx(1.0)  # COCO 101-point interpolation: 1 - 1e-16


@pytest.mark.parametrize("obj,reason", [
    ({"desc": "cat", "bbox_2d": [10, 10, HUGE, 50], "score": 0.5}, "invalid_coord"),
    ({"desc": "cat", "bbox_2d": [10, 10, 50, 50], "score": HUGE}, "invalid_score"),
    ({"desc": "cat", "bbox_2d": [-1e308, 10, 1e308, 50]}, "invalid_coord"),  # finite values, infinite area
    ({"desc": "cat", "bbox_2d": ["<|coord_١٢|>", 1, 2, 3]}, "invalid_coord"),
])
def test_bad_pred_values_are_counted(obj, reason):
    """issue 13 items 8 and 11: a 400-digit coordinate or score, an infinite-area box and a coord literal with
    non-ASCII digits are per-object drops with their reason."""
    mode = "norm1000" if isinstance(obj["bbox_2d"][0], str) else "pixel"
    result = evaluate_records([_with(coord_mode=mode, pred=[obj])])
    assert result["counters"][reason] == 1 and result["counters"]["pred_dropped"] == 1
    assert result["per_image"][0]["pred_dropped"] == {reason: 1}


def test_overlays_bounded_for_extreme_records(tmp_path):
    """issue 13 item 8: overlays of extreme records (a 1M x 1 image, 1e300 pixel boxes, a 1 MB desc, 5000 boxes,
    a missing image, a non-string image) come out tile-sized, using little memory, and never raise."""
    big = [{"desc": "x" * 1_000_000, "bbox_2d": [-1e300, 0, 1e300, 1e300], "score": HUGE}]
    recs = [
        {"image": "missing.png", "width": 1 << 20, "height": 1, "coord_mode": "pixel", "gt": big, "pred": big},
        {"image": ["not", "a", "path"], "width": 1 << 20, "height": 1 << 20, "coord_mode": "norm1000",
         "gt": [{"desc": "a", "bbox_2d": [0, 0, 999, 999]}] * 5000, "pred": []},
        {"image": 7, "width": 3, "height": 3, "coord_mode": "pixel",
         "gt": [{"desc": "\ud800", "bbox_2d": [0, 0, 2, 2]}], "pred": []},
    ]
    tracemalloc.start()
    out = draw_overlays(recs, tmp_path, tmp_path / "o.png", max_images=8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = Image.open(out).size
    assert size[0] <= 2 * TILE and size[1] <= 2 * (TILE + HEADER)  # 3 tiles -> 2x2 grid of <= TILE tiles
    assert peak < 64 * 2 ** 20  # a full-size canvas of the 2^20 x 2^20 record would need terabytes


def test_eval_cli_empty_file_warns(tmp_path, capsys):
    """issue 13 item 11: `eval` of an empty prediction file warns (and still writes all-zero metrics)."""
    empty = tmp_path / "gt_vs_pred.jsonl"
    empty.write_text("")
    assert eval_main(["--pred_jsonl", str(empty), "--out_dir", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {empty} has no records" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["counters"]["records_total"] == 0 and metrics["metrics"]["bbox_AP"] == 0.0


def test_eval_cli_bad_lines_are_counted(tmp_path, capsys):
    """issue 13 items 8 and 11: BOM accepted; duplicate keys, a 5000-digit integer, 100k nested brackets and
    non-UTF-8 bytes are counted malformed lines naming file and line."""
    Image.new("RGB", (100, 80)).save(tmp_path / "a.png")
    lines = [b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), json.dumps(GOOD)[:-1].encode() + b', "width": 5}',
             b'{"width": ' + b"9" * 5000 + b"}", b"[" * 100_000, b'{"image": "\xff"}']
    path = tmp_path / "gt_vs_pred.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert eval_main(["--pred_jsonl", str(path), "--out_dir", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    c = metrics["counters"]
    assert c["records_total"] == 5 and c["records_evaluated"] == 1
    assert c["malformed_records"] + c["missing_size"] == 4
    locs = [m["location"] for m in metrics["malformed"]]
    assert locs[:3] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "duplicate key 'width'" in metrics["malformed"][0]["reason"]
    overlay = Image.open(tmp_path / "out" / "overlays.png").convert("RGB")  # only the one evaluated record drawn:
    assert overlay.size == (320, 256 + HEADER)  # 100x80 scaled by 3.2 into one tile, with its caption
    assert PRED_COLOR in {c for _, c in overlay.getcolors(1 << 20)}
