"""SPEC §7.2 offline evaluator: hand-derived COCO AP on tiny fixtures, drops, normalisation, modes."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from coordexp_swift.coord.codec import MAX_BIN
from coordexp_swift.eval import evaluate_records
from coordexp_swift.eval.cli import main as eval_main
from coordexp_swift.eval.coco_eval import METRIC_KEYS, normalize_desc


def _rec(gt, pred, *, w=100, h=100, mode="pixel", image="img.png", **extra):
    return {"image": image, "width": w, "height": h, "coord_mode": mode,
            "gt": [{"desc": d, "bbox_2d": b} for d, b in gt],
            "pred": [dict({"desc": d, "bbox_2d": b}, **({"score": s} if s is not None else {}))
                     for d, b, s in pred], **extra}


def test_perfect_predictions_ap_one_and_clamped_sentinel(capsys) -> None:
    """SPEC §7.2: preds == GT → AP = AP50 = AP75 = 1. Areas: 40²=1600 (medium), 30²=900 (small), 50²=2500
    (medium), so APs = APm = 1 and there is no large GT: COCO's −1 for APl/ARl is clamped to 0.0."""
    gt0 = [("red circle", [10, 10, 50, 50]), ("blue square", [60, 60, 90, 90])]
    gt1 = [("red circle", [20, 30, 70, 80])]
    recs = [_rec(gt0, [(d, b, None) for d, b in gt0]), _rec(gt1, [(d, b, None) for d, b in gt1])]
    res = evaluate_records(recs)
    m = res["metrics"]
    assert set(m) == set(METRIC_KEYS)
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_AR1", "bbox_AR10",
              "bbox_AR100", "bbox_ARs", "bbox_ARm"):
        assert m[k] == pytest.approx(1.0), k
    assert m["bbox_APl"] == 0.0 and m["bbox_ARl"] == 0.0
    assert all(type(v) is float for v in m.values())
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced
    assert [c["name"] for c in res["per_class"]] == ["red circle", "blue square"]  # ids by first appearance
    assert [c["category_id"] for c in res["per_class"]] == [1, 2]
    ann = res["coco_gt"]["annotations"][0]  # pixel xywh, area w·h, iscrowd 0, image_id = record index
    assert ann["bbox"] == [10, 10, 40, 40] and ann["area"] == 1600 and ann["iscrowd"] == 0
    assert res["coco_gt"]["annotations"][2]["image_id"] == 1
    assert res["coco_preds"][0]["score"] == 1.0  # absent score → 1.0


def test_false_positive_at_higher_score_ap_two_thirds() -> None:
    """SPEC §7.2, AP50 > 0 on a 2-image fixture. One class, GT g1 (img 0) and g2 (img 1); dets by score:
    0.9 FP (img 0, no overlap), 0.8 TP (g1 exact), 0.7 TP (g2 exact). Cumulative precision 0, 1/2, 2/3 at
    recall 0, 1/2, 1; COCO's right-max envelope is 2/3 at every recall threshold → AP = 2/3 at every IoU.
    AR1 (1 det per image): img 0 keeps only the FP → recall 1/2. Moving the FP to score 0.1 gives AP = 1."""
    gt = [_rec([("cat", [0, 0, 50, 50])], [("cat", [60, 60, 90, 90], 0.9), ("cat", [0, 0, 50, 50], 0.8)]),
          _rec([("cat", [10, 10, 60, 60])], [("cat", [10, 10, 60, 60], 0.7)])]
    m = evaluate_records(gt)["metrics"]
    assert m["bbox_AP50"] > 0
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75"):
        assert m[k] == pytest.approx(2 / 3), k
    assert m["bbox_AR1"] == pytest.approx(0.5) and m["bbox_AR100"] == pytest.approx(1.0)
    gt[0]["pred"][0]["score"] = 0.1
    assert evaluate_records(gt)["metrics"]["bbox_AP"] == pytest.approx(1.0)


def test_partial_overlap_and_custom_iou_thresholds() -> None:
    """SPEC §7.2: GT [0,0,100,100], pred [0,0,100,62] → IoU = 6200 px² / (100·100 px²) = 0.62: TP at 0.50/0.55/0.60 only, so
    AP = 3/10, AP50 = 1, AP75 = 0. With iou_thrs [0.5, 0.75]: AP = (1+0)/2. With [0.6]: AP = 1 and AP50/AP75
    are still reported at 0.5/0.75."""
    recs = [_rec([("box", [0, 0, 100, 100])], [("box", [0, 0, 100, 62], None)], w=200, h=200)]
    m = evaluate_records(recs)["metrics"]
    assert (m["bbox_AP"], m["bbox_AP50"], m["bbox_AP75"]) == pytest.approx((0.3, 1.0, 0.0))
    assert evaluate_records(recs, [0.5, 0.75])["metrics"]["bbox_AP"] == pytest.approx(0.5)
    m6 = evaluate_records(recs, [0.6])["metrics"]
    assert (m6["bbox_AP"], m6["bbox_AP50"], m6["bbox_AP75"]) == pytest.approx((1.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="iou_thrs"):
        evaluate_records(recs, [0.0])


def test_ties_keep_record_order() -> None:
    """SPEC §7.2 stable order: two score-1.0 dets on one GT. FP first → precision 0, 1/2 at recall 0, 1 →
    AP = 1/2; TP first → precision 1 at recall 1 → AP = 1."""
    fp, tp = ("a", [60, 60, 90, 90], None), ("a", [0, 0, 50, 50], None)
    gt = [("a", [0, 0, 50, 50])]
    assert evaluate_records([_rec(gt, [fp, tp])])["metrics"]["bbox_AP"] == pytest.approx(0.5)
    assert evaluate_records([_rec(gt, [tp, fp])])["metrics"]["bbox_AP"] == pytest.approx(1.0)


def test_desc_normalisation_and_unknown_dropped() -> None:
    """SPEC §7.2: lowercase, trim, `_`/`/` → space, whitespace collapsed; unknown pred desc → unknown_dropped."""
    assert normalize_desc("  Red_Circle/Big\t x ") == "red circle big x"
    gt = [("Red_Circle", [0, 0, 50, 50]), ("red circle", [50, 50, 90, 90])]
    pred = [("  RED   circle ", [0, 0, 50, 50], 0.9), ("red/circle", [50, 50, 90, 90], 0.8),
            ("green triangle", [0, 0, 10, 10], 0.99)]
    res = evaluate_records([_rec(gt, pred)])
    assert res["counters"]["categories"] == 1 and res["per_class"][0]["name"] == "red circle"
    assert res["counters"]["unknown_dropped"] == 1 and res["counters"]["pred_objects"] == 2
    assert res["metrics"]["bbox_AP"] == pytest.approx(1.0)  # the unknown FP never reaches COCO


def test_invalid_and_degenerate_objects_counted() -> None:
    """SPEC §7.2 drops. norm1000, W=H=100: bins 10, 11 → round(990/999)=1 and round(1089/999)=1 pixel → zero
    width → degenerate. Bin 1000 / -1 / 3.5 / bad token → invalid_coord; poly, two geometries, arity 3 and
    x2<x1 → invalid_geometry; empty desc → invalid_desc; non-numeric score → invalid_score."""
    good = {"desc": "a", "bbox_2d": [0, 0, 500, 500]}
    preds = [
        {"desc": "a", "bbox_2d": [10, 0, 11, 500]},                 # degenerate
        {"desc": "a", "bbox_2d": [0, 0, MAX_BIN + 1, 500]},         # invalid_coord
        {"desc": "a", "bbox_2d": [-1, 0, 10, 500]},                 # invalid_coord
        {"desc": "a", "bbox_2d": [0, 0, 3.5, 500]},                 # invalid_coord
        {"desc": "a", "bbox_2d": ["<|coord_x|>", 0, 10, 500]},      # invalid_coord
        {"desc": "a", "poly": [0, 0, 10, 0, 10, 10]},               # invalid_geometry
        {"desc": "a", "bbox_2d": [0, 0, 9, 9], "poly": [0, 0, 1, 1, 2, 2]},  # invalid_geometry
        {"desc": "a", "bbox_2d": [0, 0, 9]},                        # invalid_geometry
        {"desc": "a", "bbox_2d": [50, 0, 10, 500]},                 # invalid_geometry (ordering)
        {"desc": "  ", "bbox_2d": [0, 0, 500, 500]},                # invalid_desc
        {"desc": "a", "bbox_2d": [0, 0, 500, 500], "score": "hi"},  # invalid_score
        {"desc": "a", "bbox_2d": ["<|coord_0|>", "<|coord_0|>", "<|coord_500|>", "<|coord_500|>"]},  # kept
    ]
    rec = {"image": "x.png", "width": 100, "height": 100, "coord_mode": "norm1000",
           "gt": [good, {"desc": "a", "bbox_2d": [0, 0, 0, 5]}], "pred": preds, "errors": ["truncated"]}
    res = evaluate_records([rec])
    c = res["counters"]
    assert (c["degenerate"], c["invalid_coord"], c["invalid_geometry"], c["invalid_desc"], c["invalid_score"]) \
        == (1 + 1, 4, 4, 1, 1)  # one degenerate GT (x1 = x2 = 0) + one degenerate pred
    assert c["gt_dropped"] == 1 and c["pred_dropped"] == 11 and c["pred_objects"] == 1
    assert c["record_errors"] == 1
    assert res["per_image"][0]["pred_dropped"]["invalid_coord"] == 4
    assert res["metrics"]["bbox_AP"] == pytest.approx(1.0)  # the token-form pred equals the GT box


def test_malformed_records_named_never_crash() -> None:
    """SPEC §7.2: malformed records are counted and named (index + reason); the rest is evaluated."""
    ok = _rec([("a", [0, 0, 50, 50])], [("a", [0, 0, 50, 50], None)])
    recs = [["not", "a", "dict"], {k: v for k, v in ok.items() if k != "width"}, dict(ok, coord_mode="bins"),
            {k: v for k, v in ok.items() if k != "gt"}, dict(ok, pred="oops"), dict(ok, height=-3), ok,
            dict(ok, pred=[])]
    res = evaluate_records(recs)
    bad = {m["location"]: m["reason"] for m in res["malformed"]}
    assert set(bad) == {f"record {i}" for i in range(6)}
    assert "expected a JSON object" in bad["record 0"]
    assert bad["record 1"].startswith("missing_size") and bad["record 5"].startswith("missing_size")
    assert "coord_mode 'bins'" in bad["record 2"] and "'gt' is missing" in bad["record 3"]
    assert "'pred' is a str" in bad["record 4"]
    c = res["counters"]
    assert (c["records_total"], c["records_evaluated"], c["malformed_records"], c["missing_size"],
            c["empty_pred"]) == (8, 2, 4, 2, 1)
    assert [p["image_id"] for p in res["per_image"]] == [6, 7]  # image_id = record index
    # 2 GT, 1 exact det: precision 1 up to recall 1/2, nothing beyond → 51 of COCO's 101 recall points → 51/101
    assert res["metrics"]["bbox_AP"] == pytest.approx(51 / 101)


def test_no_predictions_all_zero() -> None:
    """SPEC §7.2: no valid predictions → every metric 0.0; empty_pred counts records without predictions."""
    res = evaluate_records([_rec([("a", [0, 0, 5, 5])], []), _rec([("b", [0, 0, 5, 5])], [])])
    assert res["metrics"] == {k: 0.0 for k in METRIC_KEYS} and res["counters"]["empty_pred"] == 2
    assert evaluate_records([])["metrics"] == {k: 0.0 for k in METRIC_KEYS}


def _px(k: int, size: int) -> int:
    """Independent SPEC §1.2 projection x = round(k/999·(size−1)) (inputs chosen away from .5 ties)."""
    v = k * (size - 1) / 999
    assert abs(v - math.floor(v) - 0.5) > 1e-6
    return math.floor(v + 0.5)


def test_pixel_and_norm1000_modes_agree() -> None:
    """SPEC §1.2/§7.2: a norm1000 record and its pixel conversion (computed here independently) give the same
    COCO GT, predictions and metrics."""
    w, h = 640, 480
    gt = [("a", [100, 200, 400, 600]), ("b", [10, 20, 990, 980])]
    pred = [("a", [110, 190, 410, 610], 0.9), ("b", [10, 20, 700, 980], 0.6), ("a", [500, 500, 900, 950], 0.4)]

    def to_px(b):
        return [_px(b[0], w), _px(b[1], h), _px(b[2], w), _px(b[3], h)]

    n = evaluate_records([_rec(gt, pred, w=w, h=h, mode="norm1000")])
    p = evaluate_records([_rec([(d, to_px(b)) for d, b in gt], [(d, to_px(b), s) for d, b, s in pred],
                               w=w, h=h, mode="pixel")])
    assert n["coco_gt"]["annotations"] == p["coco_gt"]["annotations"]
    assert n["coco_preds"] == p["coco_preds"]
    assert n["metrics"] == p["metrics"] and n["metrics"]["bbox_AP50"] > 0


def test_cli_writes_five_files_and_names_bad_lines(tmp_path: Path, capsys) -> None:
    """SPEC §7.2 CLI on a 3-image gt_vs_pred.jsonl with one undecodable line (named by line number)."""
    recs = [_rec([("cat", [0, 0, 50, 50])], [("cat", [60, 60, 90, 90], 0.9), ("cat", [0, 0, 50, 50], 0.8)]),
            _rec([("cat", [10, 10, 60, 60])], [("cat", [10, 10, 60, 60], 0.7)]),
            _rec([("dog", [5, 5, 40, 40])], [("dog", [5, 5, 40, 40], 0.5)])]
    src = tmp_path / "gt_vs_pred.jsonl"
    lines = [json.dumps(recs[0]), "{not json", json.dumps(recs[1]), "", json.dumps(recs[2])]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert eval_main(["--pred_jsonl", str(src), "--out_dir", str(out), "--iou_thrs", "0.5", "0.75"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metrics.json", "per_class.csv", "per_image.json", "coco_gt.json", "coco_preds.json", "overlays.png"])
    from PIL import Image

    from coordexp_swift.eval.visualize import HEADER, PRED_COLOR

    overlay = Image.open(out / "overlays.png").convert("RGB")  # 3 records -> 2 x 2 grid of 320 px tiles + captions
    colours = {c for _, c in overlay.getcolors(1 << 20)}
    assert overlay.size == (2 * 320, 2 * (320 + HEADER))
    assert (128, 128, 128) in colours and PRED_COLOR in colours  # images absent -> grey canvases, boxes still drawn
    bare = tmp_path / "bare"
    assert eval_main(["--pred_jsonl", str(src), "--out_dir", str(bare), "--overlays", "0"]) == 0
    assert "overlays.png" not in {p.name for p in bare.iterdir()}
    summary = json.loads((out / "metrics.json").read_text())
    # cat AP = 2/3 (see the FP test), dog AP = 1 → mean over classes 5/6 at both thresholds
    assert summary["metrics"]["bbox_AP"] == pytest.approx(5 / 6)
    assert summary["counters"]["malformed_records"] == 1 and summary["counters"]["records_evaluated"] == 3
    assert summary["malformed"][0]["location"] == f"{src}:2" and "invalid JSON" in summary["malformed"][0]["reason"]
    assert (out / "per_class.csv").read_text().splitlines()[0] == "category_id,name,num_gt,num_pred,AP,AP50,AP75"
    with (out / "per_class.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["category_id"], r["name"], r["num_gt"], r["num_pred"]) for r in rows] == \
        [("1", "cat", "2", "3"), ("2", "dog", "1", "1")]
    assert [float(r["AP"]) for r in rows] == pytest.approx([2 / 3, 1.0])
    per_image = json.loads((out / "per_image.json").read_text())
    assert [(r["image_id"], r["tp_iou50"], r["fp_iou50"], r["fn_iou50"]) for r in per_image] == \
        [(0, 1, 1, 0), (1, 1, 0, 0), (2, 1, 0, 0)]
    assert len(json.loads((out / "coco_preds.json").read_text())) == 4
    assert "bbox AP 0.8333" in capsys.readouterr().out


def test_cli_missing_file_and_mode_errors(tmp_path: Path, capsys) -> None:
    """CLI: a missing --pred_jsonl returns exit code 2 with the path in the message; no mode is a usage error."""
    assert eval_main(["--pred_jsonl", str(tmp_path / "nope.jsonl"), "--out_dir", str(tmp_path / "o")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--out_dir", str(tmp_path / "o")])
