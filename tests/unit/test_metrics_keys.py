"""SPEC §8.1 key classes, rate rules and naming checks (002 7C.1-7C.4)."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordexp_swift.metrics.keys import (
    RATE_RULES,
    ROLLOUT_COUNTER_KEYS,
    F1Rule,
    RatioRule,
    classify,
    naming_violations,
    rate_rule,
)

# Every key named in SPEC §8.1 / §8.2 / §7.1 with the class the spec assigns it (written out by hand).
SPEC_KEYS: dict[str, str] = {
    # §8.1 rollout counters
    **{k: "counter" for k in ROLLOUT_COUNTER_KEYS},
    "rollout/drop/invalid_geometry_total": "counter",
    "packing/segments_total": "counter",
    "coord_diag/gt/coord_tokens_total": "counter",
    "diag/token_type_diag_failed_count": "counter",
    # rates
    "rollout/precision": "rate",
    "rollout/recall": "rate",
    "rollout/f1": "rate",
    "rollout/parse_ok_rate": "rate",
    "packing/pad_frac": "rate",
    # mean-like
    "loss": "mean",
    "token_acc": "mean",
    "coord_token_acc": "mean",
    "loss/struct_ce": "mean",
    "loss/desc_ce": "mean",
    "loss/coord_token_ce": "mean",
    "loss/coord_reg": "mean",
    "loss/geo": "mean",
    "loss/struct_ce/self_context": "mean",
    "loss/geo/bbox_smoothl1": "mean",
    "loss/geo/bbox_ciou": "mean",
    "loss/coord_reg/soft_ce": "mean",
    "loss/coord_reg/w1": "mean",
    "coord_diag/gt/acc_top5_mean": "mean",
    "coord_diag/self_context/st_embed_gap_mean": "mean",
    "rollout/fn_appended_per_sample_mean": "mean",
    "rollout/gt_per_sample": "mean",
    "rollout/pred_per_sample": "mean",
    "rollout/mAP": "mean",
    "time/rollout_generate_s": "mean",
    "time/forward_s": "mean",
    "packing/fill_ratio_mean": "mean",
    "stage2/b_ratio_realized": "mean",
    # internal
    "stage2/_log_weight": "internal",
    "loss/_tokens_sum": "internal",
    "_private": "internal",
}


def test_every_spec_key_has_exactly_its_class() -> None:
    """002 7C.1: every key maps to one §8.1 class (the hand-written table above)."""
    got = {k: classify(k) for k in SPEC_KEYS}
    assert got == SPEC_KEYS


def _reference_class(key: str) -> str:
    """Independent regex restatement of SPEC §8.1 used as the oracle for the property test."""
    if re.search(r"(^|/)_", key):
        return "internal"
    if re.search(r"_(total|count|sum|num|den)$", key):
        return "counter"
    if re.search(r"_(rate|frac)$", key) or key in {"rollout/precision", "rollout/recall", "rollout/f1"}:
        return "rate"
    return "mean"


_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
_suffix = st.sampled_from(["", "_total", "_count", "_sum", "_num", "_den", "_rate", "_frac", "_mean", "_s"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=4), _suffix)
def test_classifier_enforces_naming(segments: list[str], suffix: str) -> None:
    """002 7C.2: the classifier follows the §8.1 naming rules exactly (oracle: regex restatement)."""
    key = "/".join(segments) + suffix
    assert classify(key) == _reference_class(key)
    assert classify(key) in {"counter", "rate", "mean", "internal"}


def test_rollout_counters_and_per_sample() -> None:
    """002 7C.3: rollout counters are `*_total` counters; rollout/{gt,pred}_per_sample are mean-like."""
    assert all(k.endswith("_total") and classify(k) == "counter" for k in ROLLOUT_COUNTER_KEYS)
    assert classify("rollout/gt_per_sample") == classify("rollout/pred_per_sample") == "mean"


def test_naming_violations_flag_unsuffixed_helpers_and_aliases() -> None:
    """002 7C.4: unsuffixed sum/count helpers, §8.2 aliases and `_total`-less rollout counters are flagged."""
    for bad in ("loss/coord_reg/sum", "rollout/count", "loss/ce", "loss/coord", "loss_ce", "rollout/matched",
                "rollout/gt_objects"):
        assert naming_violations(bad), bad
    for good in SPEC_KEYS:
        assert naming_violations(good) == [], good


def test_rate_rules_by_hand() -> None:
    """SPEC §7.1: P = 3/4, R = 3/6 → F1 = 2·0.75·0.5/1.25 = 0.6; undefined ratios are 0."""
    sums = {"rollout/matched_total": 3.0, "rollout/valid_pred_objects_total": 4.0, "rollout/gt_objects_total": 6.0}
    assert RATE_RULES["rollout/precision"].compute(sums) == pytest.approx(0.75)
    assert RATE_RULES["rollout/recall"].compute(sums) == pytest.approx(0.5)
    assert RATE_RULES["rollout/f1"].compute(sums) == pytest.approx(0.6)
    assert RATE_RULES["rollout/f1"].compute({}) == 0.0
    assert isinstance(RATE_RULES["rollout/f1"], F1Rule)
    conv = rate_rule("rollout/parse_ok_rate")
    assert conv == RatioRule("rollout/parse_ok_rate_num", "rollout/parse_ok_rate_den")
    assert conv.compute({"rollout/parse_ok_rate_num": 1.0, "rollout/parse_ok_rate_den": 4.0}) == 0.25
    with pytest.raises(ValueError, match="not a rate"):
        rate_rule("loss/geo")


@pytest.mark.parametrize("bad", ["", "a//b", "a/"])
def test_malformed_key_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="metric key"):
        classify(bad)
