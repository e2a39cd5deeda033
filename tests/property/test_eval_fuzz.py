"""Fuzz: `evaluate_records` and the eval CLI over arbitrary JSON values in every field (issue 13, acceptance).

The records are the §7.2 shape with each field (and each object field) drawn either from a plausible value or
from arbitrary JSON (null, bools, huge/negative ints, floats incl. NaN/inf, strings with surrogates and token
literals, nested lists/dicts). Property: nothing raises, and every record is either evaluated or counted as a
dropped record with a named reason; every object is either kept or counted under a drop reason.
"""
from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordexp_swift.eval.cli import main as eval_main
from coordexp_swift.eval.coco_eval import DROP_REASONS, evaluate_records

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.integers(min_value=-5, max_value=1200), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["norm1000", "pixel", "<|coord_12|>", "<|coord_١٢|>", "<|coord_1000|>",
                                           "\ud800", "<|im_end|>", "cat", "dog"]),
)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                    max_leaves=12)
COORD = st.one_of(st.integers(min_value=-2, max_value=1001), st.sampled_from(["<|coord_5|>", "<|coord_999|>"]),
                  JSON)


def maybe(plausible):
    return st.one_of(plausible, JSON)


OBJECT = st.one_of(JSON, st.fixed_dictionaries(
    {"desc": maybe(st.sampled_from(["cat", "dog", " Cat_", ""])),
     "bbox_2d": maybe(st.lists(COORD, min_size=4, max_size=4))},
    optional={"score": maybe(st.floats(0, 1)), "poly": JSON}))
RECORD = st.one_of(JSON, st.fixed_dictionaries(
    {"image": maybe(st.just("a.png")), "width": maybe(st.integers(1, 2000)),
     "height": maybe(st.integers(1, 2000)), "coord_mode": maybe(st.sampled_from(["norm1000", "pixel"])),
     "gt": maybe(st.lists(OBJECT, max_size=4)), "pred": maybe(st.lists(OBJECT, max_size=4))},
    optional={"errors": JSON}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=6))
def test_evaluate_records_never_raises_and_accounts_for_everything(records):
    """issue 13 item 8 / acceptance: arbitrary JSON in every field never raises; records_total = evaluated +
    counted drops (each named); every object is kept or counted under one reason; metrics are finite in [0, 1]."""
    result = evaluate_records(records)
    c = result["counters"]
    assert c["records_total"] == len(records)
    assert c["records_evaluated"] + c["malformed_records"] + c["missing_size"] == len(records)
    assert len(result["malformed"]) == c["malformed_records"] + c["missing_size"]
    assert all(m["reason"] for m in result["malformed"])
    assert c["gt_dropped"] + c["pred_dropped"] == sum(c[r] for r in DROP_REASONS)
    for img in result["per_image"]:
        rec = records[img["image_id"]]
        assert img["num_gt"] + sum(img["gt_dropped"].values()) == len(rec["gt"])
        assert img["num_pred"] + sum(img["pred_dropped"].values()) == len(rec["pred"])
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in result["metrics"].values())
    json.dumps(result)  # JSON-serialisable


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(RECORD, max_size=4))
def test_eval_cli_never_fails_on_bad_data(tmp_path, records):
    """issue 13 item 8 / acceptance: the eval CLI (files + default overlays) exits 0 on arbitrary JSON records and
    counts every line."""
    path = tmp_path / "gt_vs_pred.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    assert eval_main(["--pred_jsonl", str(path), "--out_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    c = metrics["counters"]
    assert c["records_total"] == len(records)
    assert c["records_evaluated"] + c["malformed_records"] + c["missing_size"] == len(records)
