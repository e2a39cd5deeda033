"""faster-coco-eval and pycocotools give the same ``evaluate_records`` output (issue 12 item 7).

The two evaluators fill the same COCOeval ``precision``/``recall`` arrays; the parity asserted here is: the 12
metrics and per-class AP within 1e-9, and identical per-image TP/FP/FN at IoU 0.5, ``f1_iou50``, ``coco_gt`` and
``coco_preds``. Fixtures: the shapes val split (norm1000 records, constant scores → COCO's stable tie order
matters) and hand-made records whose COCO values are derived by hand in each docstring.
"""
from __future__ import annotations

import copy
import json
import sys

import pytest

from coordexp_swift.coord.codec import COORD_TOKEN_RE
from coordexp_swift.eval.coco_eval import METRIC_KEYS, evaluate_records, resolve_evaluator

SAME_KEYS = ("per_image", "f1_iou50", "coco_gt", "coco_preds", "counters", "iou_thrs")


def _both(records, iou_thrs=None):
    a = evaluate_records(copy.deepcopy(records), iou_thrs, evaluator="pycocotools")
    b = evaluate_records(copy.deepcopy(records), iou_thrs, evaluator="faster_coco_eval")
    assert (a["evaluator"], b["evaluator"]) == ("pycocotools", "faster_coco_eval")
    for k in METRIC_KEYS:
        assert b["metrics"][k] == pytest.approx(a["metrics"][k], abs=1e-9, rel=0), k
    for k in SAME_KEYS:
        assert b[k] == a[k], k
    assert len(b["per_class"]) == len(a["per_class"])
    for ca, cb in zip(a["per_class"], b["per_class"]):  # float sums in another order: equal to 1e-9
        assert cb == {k: pytest.approx(v, abs=1e-9, rel=0) if isinstance(v, float) else v for k, v in ca.items()}
    return a


def _rec(gt, pred, *, w=100, h=100):
    return {"image": "img.png", "width": w, "height": h, "coord_mode": "pixel",
            "gt": [{"desc": d, "bbox_2d": b} for d, b in gt],
            "pred": [dict({"desc": d, "bbox_2d": b}, **({"score": s} if s is not None else {})) for d, b, s in pred]}


def _shift(bins, d):
    return [f"<|coord_{min(max(int(COORD_TOKEN_RE.fullmatch(b).group(1)) + d, 0), 999)}|>" for b in bins]


def test_same_metrics_on_shapes_fixture(shapes_dir):
    """issue 12 item 7: shapes val (8 images) with predictions made from the GT: object j of image i shifted by
    (i+j) % 5 · 15 bins (IoU from 1 down to ~0.6 on these ~220-bin boxes), every third desc swapped to another
    class, an extra FP per image; all scores absent (constant 1.0, so the stable tie order decides matching).
    Both evaluators agree; the fixture is not trivial (0 < AP < 1, some TP and some FP at IoU 0.5)."""
    records = []
    for i, line in enumerate((shapes_dir / "val.jsonl").read_text().splitlines()):
        src = json.loads(line)
        pred = []
        for j, o in enumerate(src["objects"]):
            desc = o["desc"] if j % 3 else ("red circle" if o["desc"] != "red circle" else "blue square")
            pred.append({"desc": desc, "bbox_2d": _shift(o["bbox_2d"], (i + j) % 5 * 15)})
        pred.insert(i % 2, {"desc": src["objects"][0]["desc"], "bbox_2d": _shift(src["objects"][0]["bbox_2d"], 400)})
        records.append({"image": src["images"][0], "width": src["width"], "height": src["height"],
                        "coord_mode": "norm1000", "gt": src["objects"], "pred": pred})
    a = _both(records)
    assert 0.0 < a["metrics"]["bbox_AP"] < 1.0
    assert a["f1_iou50"]["tp"] > 0 and a["f1_iou50"]["fp"] > 0
    _both(records, [0.5, 0.75])


def test_same_metrics_on_hand_fixture():
    """issue 12 item 7, hand-derived values (SPEC §7.2 rules), each checked on both evaluators:

    - one class, img 0: GT [0,0,50,50]; dets 0.9 FP ([60,60,90,90]) and 0.8 exact TP; img 1: GT [10,10,60,60],
      det 0.7 exact TP → cumulative precision 0, 1/2, 2/3; envelope 2/3 → AP = AP50 = AP75 = 2/3; AR1 = 1/2.
    - img 2 (200×200): GT [0,0,100,100], det [0,0,100,62] (tie score 1.0 is not possible across records: COCO
      sorts per category; this class is separate) → IoU 0.62: TP at 0.50..0.60 only.
    - img 3: 120 dets of a third class, 119 non-overlapping FPs at score 0.5 then 1 exact TP at score 0.4 (beyond
      maxDets 100 → unmatched: TP = 0 for that image, FP = 120).
    - img 4: GT [0,0,100,100], det [0,0,100,40] → IoU 0.4: FP at 0.5, a match at 0.3.
    Counted at IoU 0.5: TP = 2 + 1 + 0 + 0 = 3, FP = 1 + 0 + 120 + 1 = 122, FN = 5 − 3 = 2.
    Thresholds [0.3, 0.5] put 0.3 first, which takes faster-coco-eval's second match run at 0.5: img 4 stays FP
    in the IoU-0.5 counts while its AP (averaged over 0.3 and 0.5) is 1/2."""
    far = [[200 + 2 * k, 0, 201 + 2 * k, 1] for k in range(119)]
    records = [
        _rec([("cat", [0, 0, 50, 50])], [("cat", [60, 60, 90, 90], 0.9), ("cat", [0, 0, 50, 50], 0.8)]),
        _rec([("cat", [10, 10, 60, 60])], [("cat", [10, 10, 60, 60], 0.7)]),
        _rec([("box", [0, 0, 100, 100])], [("box", [0, 0, 100, 62], None)], w=200, h=200),
        _rec([("dot", [0, 0, 10, 10])], [("dot", b, 0.5) for b in far] + [("dot", [0, 0, 10, 10], 0.4)], w=500),
        _rec([("bar", [0, 0, 100, 100])], [("bar", [0, 0, 100, 40], 0.3)], w=200, h=200),
    ]
    a = _both(records)
    cls = {c["name"]: c for c in a["per_class"]}
    assert cls["cat"]["AP"] == pytest.approx(2 / 3) and cls["cat"]["AP75"] == pytest.approx(2 / 3)
    assert (cls["box"]["AP"], cls["box"]["AP50"], cls["box"]["AP75"]) == pytest.approx((0.3, 1.0, 0.0))
    assert cls["dot"]["AP"] == 0.0
    assert [(p["tp_iou50"], p["fp_iou50"]) for p in a["per_image"]] == [(1, 1), (1, 0), (1, 0), (0, 120), (0, 1)]
    f = a["f1_iou50"]
    assert (f["tp"], f["fp"], f["fn"]) == (3, 122, 2)
    b = _both(records, [0.3, 0.5])
    assert [p["tp_iou50"] for p in b["per_image"]] == [1, 1, 1, 0, 0]
    ap = {c["name"]: c["AP"] for c in b["per_class"]}
    assert ap["box"] == pytest.approx(1.0) and ap["bar"] == pytest.approx(0.5)  # IoU 0.62 / 0.4 vs 0.3 and 0.5
    _both(records, [0.6])


def test_tie_order_is_record_order_on_both():
    """SPEC §7.2 stable order on ties, both evaluators: two score-1.0 dets on one GT; FP first → AP = 1/2, TP
    first → AP = 1."""
    fp, tp = ("a", [60, 60, 90, 90], None), ("a", [0, 0, 50, 50], None)
    assert _both([_rec([("a", [0, 0, 50, 50])], [fp, tp])])["metrics"]["bbox_AP"] == pytest.approx(0.5)
    assert _both([_rec([("a", [0, 0, 50, 50])], [tp, fp])])["metrics"]["bbox_AP"] == pytest.approx(1.0)


def test_auto_prefers_faster_and_falls_back(monkeypatch):
    """issue 12 item 7: ``auto`` picks faster-coco-eval when importable, pycocotools when it is not (import
    blocked through ``sys.modules``); an unknown name is a ValueError naming the choices, a missing explicit one
    an ImportError naming the extra."""
    rec = [_rec([("a", [0, 0, 50, 50])], [("a", [0, 0, 50, 50], None)])]
    assert resolve_evaluator() == "faster_coco_eval"
    assert evaluate_records(rec)["evaluator"] == "faster_coco_eval"
    with pytest.raises(ValueError, match="pycocotools"):
        evaluate_records(rec, evaluator="coco")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    assert resolve_evaluator() == "pycocotools"
    res = evaluate_records(rec)
    assert res["evaluator"] == "pycocotools" and res["metrics"]["bbox_AP"] == pytest.approx(1.0)
    with pytest.raises(ImportError, match="fast-eval"):
        resolve_evaluator("faster_coco_eval")
    assert evaluate_records([_rec([("a", [0, 0, 5, 5])], [])])["evaluator"] is None  # nothing to evaluate
