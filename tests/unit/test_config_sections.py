"""The three coordexp sections: spec defaults and per-key validation (SPEC §0, §2.1, §3.1, §3.6, §3.7, §7.1)."""

from __future__ import annotations

from typing import Any

import pytest

from coordexp_swift.config import (
    DEFAULT_USER_PROMPT,
    CoordSoftCEW1Config,
    CustomConfig,
    RolloutMatchingConfig,
    Stage2ABConfig,
    build_strict,
    load_coordexp_config,
    normalize_trainer_variant,
    to_jsonable,
)


def _custom(data: dict[str, Any]) -> CustomConfig:
    return build_strict(CustomConfig, data, "custom")


def _s2(data: dict[str, Any]) -> Stage2ABConfig:
    return build_strict(Stage2ABConfig, {"schedule": {"b_ratio": 0.5}, **data}, "stage2_ab")


def _rm(data: dict[str, Any]) -> RolloutMatchingConfig:
    return build_strict(RolloutMatchingConfig, data, "rollout_matching")


def _err(fn, data: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as exc:
        fn(data)
    return str(exc.value)


# --- defaults (values copied from the SPEC tables, not from the code) -------------------------------------------

def test_custom_defaults_match_spec() -> None:
    """seed 000 1.1: SPEC §2.1 defaults of custom.coord_soft_ce_w1; §1.3 field order; no variant = Stage-1."""
    cfg = _custom({})
    assert cfg.trainer_variant is None and cfg.variant == "stage1"
    assert cfg.object_field_order == "desc_first"
    assert cfg.system_prompt is None
    assert cfg.user_prompt == DEFAULT_USER_PROMPT and '"objects"' in cfg.user_prompt and "bbox_2d" in cfg.user_prompt
    assert to_jsonable(cfg.coord_soft_ce_w1) == {
        "enabled": False, "ce_weight": 0.0, "soft_ce_weight": 1.0, "w1_weight": 1.0, "gate_weight": 1.0,
        "text_gate_weight": 0.0, "temperature": 1.0, "target_sigma": 2.0, "target_truncate": None,
    }


def test_stage2_ab_defaults_match_spec() -> None:
    """SPEC §3.1 table defaults."""
    d = to_jsonable(_s2({}))
    assert d == {
        "schedule": {"b_ratio": 0.5, "pattern": None},
        "n_softctx_iter": 2, "softctx_grad_mode": "em_detach", "softctx_temperature": 1.0,
        "coord_ctx_embed_mode": "st", "coord_decode_mode": "exp",
        "desc_ce_weight": 1.0, "fmt_struct_ce_weight": 0.1, "bbox_smoothl1_weight": 1.0, "bbox_ciou_weight": 1.0,
        "coord_ce_weight": 0.0, "coord_el1_weight": 0.0, "coord_ehuber_weight": 0.0, "coord_entropy_weight": 0.0,
        "coord_gate_weight": 0.0, "text_gate_weight": 0.0, "coord_huber_delta": 0.001,
        "channel_b": {"drop_invalid_struct_ce_multiplier": 1.0}, "packing": False, "pipeline": None,
    }


def test_rollout_matching_defaults_match_spec() -> None:
    """seed 002 6B.0 (config part): SPEC §3.7 / §7.1 defaults; eval_detection default-on with coco."""
    d = to_jsonable(_rm({}))
    vllm = d.pop("vllm")
    assert set(vllm) == {"gpu_memory_utilization", "tensor_parallel_size", "max_model_len", "enable_prefix_caching"}
    assert d == {
        "rollout_backend": "hf", "decode_mode": "greedy", "max_new_tokens": 512, "num_beams": 1,
        "decode_batch_size": 4, "decoding": {"temperature": 0.0, "top_p": 1.0, "top_k": -1},
        "candidate_top_k": 10, "maskiou_gate": 0.3, "maskiou_resolution": 256, "fp_cost": 1.0, "fn_cost": 1.0,
        "eval_detection": {"enabled": True, "metrics": "coco", "score_mode": "constant", "constant_score": 1.0,
                           "iou_thrs": None, "dump_records": False},
        "coord_decode_mode": "exp", "pipeline": None,
    }
    assert _rm({"eval_detection": {"enabled": False}}).eval_detection.enabled is False


# --- custom -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("legacy", "replacement"), [("stage2_ab_training", "stage2_two_channel"),
                                                      ("rollout_matching_sft", "stage2_rollout_aligned")])
def test_legacy_trainer_variant_recommends_replacement(legacy: str, replacement: str) -> None:
    """seed 002 0.3: legacy variant strings fail with guidance (custom.trainer_variant + the new name)."""
    msg = _err(_custom, {"trainer_variant": legacy})
    assert msg == (f"custom.trainer_variant: {legacy!r} is a legacy name and is no longer accepted; "
                   f"use {replacement!r}")
    with pytest.raises(ValueError, match=f"use '{replacement}'"):
        normalize_trainer_variant(legacy)


def test_unknown_trainer_variant_lists_accepted_values() -> None:
    """seed 001 1.1.1: variants map to names; unknown strings/types raise listing the accepted values."""
    msg = _err(_custom, {"trainer_variant": "stage3"})
    assert msg == ("custom.trainer_variant: invalid value 'stage3'; accepted values: 'stage2_two_channel', "
                   "'stage2_rollout_aligned' (omit custom.trainer_variant for Stage-1)")
    assert _custom({"trainer_variant": "stage2_rollout_aligned"}).variant == "stage2_rollout_aligned"
    assert normalize_trainer_variant(None) == "stage1"
    assert normalize_trainer_variant("stage2_two_channel") == "stage2_two_channel"
    with pytest.raises(ValueError, match="accepted values: 'stage2_two_channel', 'stage2_rollout_aligned'"):
        normalize_trainer_variant(3)


@pytest.mark.parametrize("legacy", ["coord_loss", "coord_expectation_metrics"])
def test_legacy_custom_keys_name_coord_soft_ce_w1(legacy: str) -> None:
    """seed 000 1.1 / SPEC §2.1: legacy keys fail naming custom.coord_soft_ce_w1 as the replacement."""
    msg = _err(_custom, {legacy: {"enabled": True}})
    assert msg.startswith(f"custom.{legacy} is a legacy key")
    assert "use 'custom.coord_soft_ce_w1' instead" in msg


def test_custom_field_order_and_prompts_validated() -> None:
    """object_field_order choices; prompts non-empty; system prompt optional."""
    assert _custom({"object_field_order": "geometry_first"}).object_field_order == "geometry_first"
    assert _err(_custom, {"object_field_order": "bbox_first"}) == (
        "custom.object_field_order: invalid value 'bbox_first'; accepted values: 'desc_first', 'geometry_first'")
    assert _err(_custom, {"user_prompt": "  "}).startswith("custom.user_prompt: must be a non-empty string")
    assert _err(_custom, {"system_prompt": ""}).startswith("custom.system_prompt: must be non-empty")
    assert _custom({"system_prompt": "You detect."}).system_prompt == "You detect."


def test_coord_soft_ce_w1_typo_suggests_closest_key() -> None:
    """seed 000 1.1: unknown key in custom.coord_soft_ce_w1 names path + closest key."""
    msg = _err(_custom, {"coord_soft_ce_w1": {"sof_ce_weight": 1.0}})
    assert msg.startswith("unknown key 'custom.coord_soft_ce_w1.sof_ce_weight' — did you mean 'soft_ce_weight'? "
                          "valid keys: ce_weight, enabled, gate_weight, soft_ce_weight,")


@pytest.mark.parametrize("key", ["ce_weight", "soft_ce_weight", "w1_weight", "gate_weight", "text_gate_weight"])
def test_coord_soft_ce_w1_negative_weight_fails(key: str) -> None:
    """seed 000 1.1: negative weights fail."""
    assert _err(_custom, {"coord_soft_ce_w1": {key: -0.5}}) == f"custom.coord_soft_ce_w1.{key} = -0.5: must be >= 0"


def test_coord_soft_ce_w1_enabled_all_zero_weights_fails() -> None:
    """seed 000 1.1: enabled with all weights 0 fails; one positive weight is enough."""
    zeros = {k: 0 for k in ("ce_weight", "soft_ce_weight", "w1_weight", "gate_weight", "text_gate_weight")}
    msg = _err(_custom, {"coord_soft_ce_w1": {"enabled": True, **zeros}})
    assert msg.startswith("custom.coord_soft_ce_w1.enabled is true but every weight is 0")
    ok = _custom({"coord_soft_ce_w1": {"enabled": True, **zeros, "w1_weight": 0.5}}).coord_soft_ce_w1
    assert ok.enabled and ok.w1_weight == 0.5
    # disabled with all zeros is fine (plain SFT)
    assert not _custom({"coord_soft_ce_w1": zeros}).coord_soft_ce_w1.enabled


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("temperature", 0.0, "custom.coord_soft_ce_w1.temperature = 0.0: must be > 0"),
    ("temperature", -1, "custom.coord_soft_ce_w1.temperature = -1.0: must be > 0"),
    ("target_sigma", 0, "custom.coord_soft_ce_w1.target_sigma = 0.0: must be > 0"),
    ("target_truncate", -1, "custom.coord_soft_ce_w1.target_truncate = -1: must be >= 0"),
    ("target_truncate", 2.5, "custom.coord_soft_ce_w1.target_truncate: expected int, got float 2.5"),
    ("enabled", "yes", "custom.coord_soft_ce_w1.enabled: expected bool (true/false), got str 'yes'"),
])
def test_coord_soft_ce_w1_ranges(key: str, value: Any, expected: str) -> None:
    """seed 000 1.1: τ ≤ 0 fails; σ > 0; target_truncate None or int ≥ 0; typed enabled."""
    assert _err(_custom, {"coord_soft_ce_w1": {key: value}}) == expected


def test_coord_soft_ce_w1_accepts_valid_values() -> None:
    """seed 000 1.1: a valid coord_soft_ce_w1 block loads with ints widened to floats."""
    cfg = _custom({"coord_soft_ce_w1": {"enabled": True, "temperature": 2, "target_truncate": 0}}).coord_soft_ce_w1
    assert isinstance(cfg, CoordSoftCEW1Config)
    assert cfg.temperature == 2.0 and isinstance(cfg.temperature, float) and cfg.target_truncate == 0


# --- stage2_ab --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("schedule", "expected"), [
    ({}, "stage2_ab.schedule: exactly one of stage2_ab.schedule.b_ratio"),
    ({"b_ratio": 0.5, "pattern": ["A"]}, "stage2_ab.schedule: exactly one of"),
    ({"pattern": []}, "stage2_ab.schedule.pattern: must be a non-empty list"),
    ({"pattern": ["A", "b"]}, "stage2_ab.schedule.pattern[1]: invalid value 'b'; accepted values: 'A', 'B'"),
    ({"pattern": "AB"}, "stage2_ab.schedule.pattern: expected a list, got str 'AB'"),
    ({"b_ratio": 1.5}, "stage2_ab.schedule.b_ratio = 1.5: must be >= 0 and <= 1"),
    ({"b_ratio": -0.1}, "stage2_ab.schedule.b_ratio = -0.1: must be >= 0 and <= 1"),
    ({"b_ratio": 0.5, "ratio": 1}, "unknown key 'stage2_ab.schedule.ratio' — did you mean 'b_ratio'?"),
])
def test_schedule_exactly_one_and_typed(schedule: dict[str, Any], expected: str) -> None:
    """SPEC §3.1: exactly one of b_ratio ∈ [0,1] / non-empty pattern over {A,B}."""
    msg = _err(lambda d: build_strict(Stage2ABConfig, d, "stage2_ab"), {"schedule": schedule})
    assert msg.startswith(expected)


def test_schedule_required_and_valid_forms() -> None:
    """SPEC §3.1: schedule is required; b_ratio 0/1 and a pattern load."""
    msg = _err(lambda d: build_strict(Stage2ABConfig, d, "stage2_ab"), {})
    assert msg.startswith("missing required key 'stage2_ab.schedule'")
    assert build_strict(Stage2ABConfig, {"schedule": {"b_ratio": 0}}, "stage2_ab").schedule.b_ratio == 0.0
    s = build_strict(Stage2ABConfig, {"schedule": {"pattern": ["A", "A", "B"]}}, "stage2_ab").schedule
    assert s.pattern == ("A", "A", "B") and s.b_ratio is None


@pytest.mark.parametrize(("data", "expected"), [
    ({"n_softctx_iter": 0}, "stage2_ab.n_softctx_iter = 0: must be >= 1"),
    ({"n_softctx_iter": 2.0}, "stage2_ab.n_softctx_iter: expected int, got float 2.0"),
    ({"softctx_grad_mode": "detach"},
     "stage2_ab.softctx_grad_mode: invalid value 'detach'; accepted values: 'em_detach', 'unroll'"),
    ({"softctx_temperature": 0}, "stage2_ab.softctx_temperature = 0.0: must be > 0"),
    ({"coord_huber_delta": 0.0}, "stage2_ab.coord_huber_delta = 0.0: must be > 0"),
    ({"desc_ce_weight": -1}, "stage2_ab.desc_ce_weight = -1.0: must be >= 0"),
    ({"coord_entropy_weight": -0.1}, "stage2_ab.coord_entropy_weight = -0.1: must be >= 0"),
    ({"channel_b": {"drop_invalid_struct_ce_multiplier": 0.5}},
     "stage2_ab.channel_b.drop_invalid_struct_ce_multiplier = 0.5: must be >= 1 and <= 4"),
    ({"channel_b": {"drop_invalid_struct_ce_multiplier": 4.5}},
     "stage2_ab.channel_b.drop_invalid_struct_ce_multiplier = 4.5: must be >= 1 and <= 4"),
    ({"pipeline": ["token_ce"]}, "stage2_ab.pipeline: expected a mapping, got list ['token_ce']"),
])
def test_stage2_ab_field_validation(data: dict[str, Any], expected: str) -> None:
    """SPEC §3.1 per-key types and ranges."""
    assert _err(_s2, data) == expected


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("coord_ctx_embed_mode", "argmax",
     "stage2_ab.coord_ctx_embed_mode: invalid value 'argmax'; accepted values: 'soft', 'st', 'hard'"),
    ("coord_decode_mode", "hard", "stage2_ab.coord_decode_mode: invalid value 'hard'; accepted values: 'exp', 'st'"),
    ("coord_decode_mode", 1, "stage2_ab.coord_decode_mode: invalid value 1; accepted values: 'exp', 'st'"),
])
def test_st_keys_typed(key: str, value: Any, expected: str) -> None:
    """seed 002 2.1: ST keys typed; a bad value fails listing the accepted values."""
    assert _err(_s2, {key: value}) == expected


def test_st_keys_unknown_sibling_and_valid_values() -> None:
    """seed 002 2.1: an unknown sibling of the ST keys fails with the closest key; valid values load."""
    msg = _err(_s2, {"coord_ctx_embed_mod": "st"})
    assert msg.startswith("unknown key 'stage2_ab.coord_ctx_embed_mod' — did you mean 'coord_ctx_embed_mode'?")
    cfg = _s2({"coord_ctx_embed_mode": "hard", "coord_decode_mode": "st"})
    assert (cfg.coord_ctx_embed_mode, cfg.coord_decode_mode) == ("hard", "st")


# --- rollout_matching -------------------------------------------------------------------------------------------

def test_rollout_matching_coord_decode_mode_typed() -> None:
    """seed 002 2.5: rollout_matching.coord_decode_mode typed (exp|st), unknown sibling fails."""
    assert _rm({"coord_decode_mode": "st"}).coord_decode_mode == "st"
    assert _err(_rm, {"coord_decode_mode": "expectation"}) == (
        "rollout_matching.coord_decode_mode: invalid value 'expectation'; accepted values: 'exp', 'st'")
    assert _err(_rm, {"coord_decode_mod": "st"}).startswith(
        "unknown key 'rollout_matching.coord_decode_mod' — did you mean 'coord_decode_mode'?")


@pytest.mark.parametrize(("data", "expected"), [
    ({"rollout_backend": "sglang"},
     "rollout_matching.rollout_backend: invalid value 'sglang'; accepted values: 'hf', 'vllm'"),
    ({"decode_mode": "sample"},
     "rollout_matching.decode_mode: invalid value 'sample'; accepted values: 'greedy', 'beam'"),
    ({"max_new_tokens": 0}, "rollout_matching.max_new_tokens = 0: must be >= 1"),
    ({"decode_batch_size": 0}, "rollout_matching.decode_batch_size = 0: must be >= 1"),
    ({"candidate_top_k": 0}, "rollout_matching.candidate_top_k = 0: must be >= 1"),
    ({"maskiou_gate": 1.2}, "rollout_matching.maskiou_gate = 1.2: must be >= 0 and <= 1"),
    ({"fp_cost": -1.0}, "rollout_matching.fp_cost = -1.0: must be >= 0"),
    ({"num_beams": 3}, "rollout_matching.num_beams = 3 with rollout_matching.decode_mode = 'greedy'"),
    ({"decode_mode": "beam"}, "rollout_matching.num_beams = 1 with rollout_matching.decode_mode = 'beam'"),
    ({"decoding": {"temperature": -0.1}}, "rollout_matching.decoding.temperature = -0.1: must be >= 0"),
    ({"decoding": {"top_p": 0}}, "rollout_matching.decoding.top_p = 0.0: must be > 0 and <= 1"),
    ({"decoding": {"top_k": 0}}, "rollout_matching.decoding.top_k = 0: must be -1 (disabled) or an int >= 1"),
    ({"decoding": {"topk": 5}}, "unknown key 'rollout_matching.decoding.topk' — did you mean 'top_k'?"),
    ({"vllm": {"gpu_memory_utilization": 0}},
     "rollout_matching.vllm.gpu_memory_utilization = 0.0: must be > 0 and <= 1"),
    ({"vllm": {"tensor_parallel_size": 0}}, "rollout_matching.vllm.tensor_parallel_size = 0: must be >= 1"),
    ({"eval_detection": {"metrics": "lvis"}},
     "rollout_matching.eval_detection.metrics: invalid value 'lvis'; accepted values: 'coco'"),
    ({"eval_detection": {"score_mode": "logprob"}},
     "rollout_matching.eval_detection.score_mode: invalid value 'logprob'; accepted values: 'constant', 'token_prob'"),
    ({"eval_detection": {"iou_thrs": [0.5, 1.0]}},
     "rollout_matching.eval_detection.iou_thrs[1] = 1.0: must be > 0 and < 1"),
    ({"eval_detection": {"iou_thrs": []}}, "rollout_matching.eval_detection.iou_thrs: must be null"),
    ({"eval_detection": {"iou_thrs": [0.5, 0.5]}}, "rollout_matching.eval_detection.iou_thrs = [0.5, 0.5]: dup"),
    ({"eval_detection": {"enabled": "true"}},
     "rollout_matching.eval_detection.enabled: expected bool (true/false), got str 'true'"),
])
def test_rollout_matching_field_validation(data: dict[str, Any], expected: str) -> None:
    """SPEC §3.6/§3.7/§7.1 per-key types, choices and ranges."""
    assert _err(_rm, data).startswith(expected)


def test_rollout_matching_valid_overrides() -> None:
    """Beam with num_beams ≥ 2, sampling decode, vllm knobs and iou_thrs load as typed values."""
    cfg = _rm({"decode_mode": "beam", "num_beams": 4, "rollout_backend": "vllm",
               "decoding": {"temperature": 0.7, "top_p": 0.9, "top_k": 50},
               "vllm": {"max_model_len": 4096, "enable_prefix_caching": False},
               "eval_detection": {"iou_thrs": [0.5, 0.75], "dump_records": True}})
    assert cfg.num_beams == 4 and cfg.decoding.top_k == 50 and cfg.decoding.temperature == 0.7
    assert cfg.vllm.max_model_len == 4096 and cfg.vllm.enable_prefix_caching is False
    assert cfg.eval_detection.iou_thrs == (0.5, 0.75) and cfg.eval_detection.dump_records is True


def test_full_stage2_load_types_every_section() -> None:
    """seed 001 1.1.2 (config part): rollout_matching is typed (a dataclass, not a dict) in a two-channel load."""
    cfg = load_coordexp_config({"custom": {"trainer_variant": "stage2_two_channel"},
                                "stage2_ab": {"schedule": {"pattern": ["A", "B"]}},
                                "rollout_matching": {"max_new_tokens": 64}})
    assert isinstance(cfg.rollout_matching, RolloutMatchingConfig) and cfg.rollout_matching.max_new_tokens == 64
    assert isinstance(cfg.stage2_ab, Stage2ABConfig)
