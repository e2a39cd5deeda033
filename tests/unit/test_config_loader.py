"""load_coordexp_config / load_yaml_file: variant section rules (SPEC §0), §6.2 guardrails, JSON-string sections,
authored-key tracking, to_dict round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordexp_swift.config import SECTION_NAMES, CoordExpConfig, load_coordexp_config, load_yaml_file

TWO = "stage2_two_channel"
ALIGNED = "stage2_rollout_aligned"
PIPELINE = {"objective": [{"name": "token_ce"}]}  # raw; its contents are validated by teacher_forcing


def _two_channel(stage2_ab: dict[str, Any] | None = None, custom: dict[str, Any] | None = None,
                 rollout_matching: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"custom": {"trainer_variant": TWO, **(custom or {})},
            "stage2_ab": {"schedule": {"b_ratio": 0.5}, **(stage2_ab or {})},
            "rollout_matching": rollout_matching or {}}


def _aligned(rollout_matching: dict[str, Any] | None = None, custom: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"custom": {"trainer_variant": ALIGNED, **(custom or {})}, "rollout_matching": rollout_matching or {}}


def _err(sections: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(ValueError) as exc:
        load_coordexp_config(sections, **kw)
    return str(exc.value)


# --- variants and section presence (SPEC §0) --------------------------------------------------------------------

def test_variants_resolve() -> None:
    """seed 001 1.1: each variant loads from sections alone; .variant names it; absent sections are None."""
    s1 = load_coordexp_config({})
    assert s1.variant == "stage1" and s1.stage2_ab is None and s1.rollout_matching is None
    two = load_coordexp_config(_two_channel())
    assert two.variant == TWO and two.stage2_ab is not None and two.rollout_matching is not None
    aligned = load_coordexp_config(_aligned())
    assert aligned.variant == ALIGNED and aligned.stage2_ab is None and aligned.rollout_matching is not None


@pytest.mark.parametrize("section", ["stage2_ab", "rollout_matching"])
def test_stage1_rejects_stage2_sections(section: str) -> None:
    """SPEC §0: Stage-1 rejects stage2_ab and rollout_matching sections."""
    msg = _err({"custom": {}, section: {}})
    assert msg.startswith(f"{section}: Stage-1 (custom.trainer_variant omitted) does not accept the {section} section")


@pytest.mark.parametrize("variant", [TWO, ALIGNED])
def test_stage2_variants_require_rollout_matching(variant: str) -> None:
    """SPEC §0: Stage-2 variants require rollout_matching."""
    sections: dict[str, Any] = {"custom": {"trainer_variant": variant}}
    if variant == TWO:
        sections["stage2_ab"] = {"schedule": {"b_ratio": 1.0}}
    msg = _err(sections)
    assert msg.startswith(f"rollout_matching: section is required for custom.trainer_variant '{variant}'")


def test_two_channel_requires_stage2_ab() -> None:
    """SPEC §3.1: stage2_two_channel requires the stage2_ab section (with a schedule)."""
    msg = _err({"custom": {"trainer_variant": TWO}, "rollout_matching": {}})
    assert msg.startswith("stage2_ab: section is required for custom.trainer_variant 'stage2_two_channel'")


def test_rollout_aligned_rejects_stage2_ab_section() -> None:
    """SPEC §3.7: stage2_rollout_aligned + a stage2_ab section fails."""
    msg = _err({**_aligned(), "stage2_ab": {"schedule": {"b_ratio": 1.0}}})
    assert msg.startswith("stage2_ab: this section belongs to custom.trainer_variant 'stage2_two_channel'")


def test_legacy_variant_fails_through_loader_with_source() -> None:
    """seed 002 0.3: legacy variant strings fail with guidance; the file path prefixes the message."""
    msg = _err({"custom": {"trainer_variant": "rollout_matching_sft"}}, source="configs/x.yaml")
    assert msg == ("configs/x.yaml: custom.trainer_variant: 'rollout_matching_sft' is a legacy name and is no "
                   "longer accepted; use 'stage2_rollout_aligned'")


def test_unknown_section_name_suggests_closest() -> None:
    """SPEC §0: unknown coordexp section names fail with the closest valid one."""
    msg = _err({"stage2ab": {}})
    assert msg.startswith("unknown key 'stage2ab' — did you mean 'stage2_ab'?")


# --- §6.2 guardrails --------------------------------------------------------------------------------------------

STAGE2_AB_FLAT_KNOBS = {  # key -> a valid value (the guardrail applies even when equal to the default)
    "desc_ce_weight": 1.0, "fmt_struct_ce_weight": 0.1, "bbox_smoothl1_weight": 1.0, "bbox_ciou_weight": 1.0,
    "coord_ce_weight": 0.0, "coord_el1_weight": 0.0, "coord_ehuber_weight": 0.0, "coord_huber_delta": 0.001,
    "coord_entropy_weight": 0.0, "coord_gate_weight": 0.0, "text_gate_weight": 0.0,
}


@pytest.mark.parametrize("knob", sorted(STAGE2_AB_FLAT_KNOBS))
def test_stage2_ab_pipeline_rejects_flat_knob(knob: str) -> None:
    """seed 002 3.3 / 002 9.1C: stage2_ab.pipeline + an authored flat knob (default value) fails naming it."""
    msg = _err(_two_channel({"pipeline": PIPELINE, knob: STAGE2_AB_FLAT_KNOBS[knob]}))
    assert msg.startswith(f"stage2_ab.{knob} is a flat objective knob but stage2_ab.pipeline is present: "
                          "move it into module config")
    # the same knob without a pipeline is fine
    assert load_coordexp_config(_two_channel({knob: STAGE2_AB_FLAT_KNOBS[knob]})).is_authored(f"stage2_ab.{knob}")


def test_stage2_ab_pipeline_rejects_drop_invalid_multiplier() -> None:
    """seed 002 3.3 / 002 9.1C: stage2_ab.channel_b.drop_invalid_struct_ce_multiplier with a pipeline fails."""
    msg = _err(_two_channel({"pipeline": PIPELINE, "channel_b": {"drop_invalid_struct_ce_multiplier": 1.0}}))
    assert msg.startswith("stage2_ab.channel_b.drop_invalid_struct_ce_multiplier is a flat objective knob but "
                          "stage2_ab.pipeline is present: move it into module config "
                          "(stage2_ab.pipeline → token_ce.config.rollout_drop_invalid_struct_ce_multiplier)")
    # an empty channel_b mapping authors no knob
    assert load_coordexp_config(_two_channel({"pipeline": PIPELINE, "channel_b": {}})).stage2_ab is not None


SOFT_CE_W1_KEYS = {"enabled": False, "ce_weight": 0.0, "soft_ce_weight": 1.0, "w1_weight": 1.0, "gate_weight": 1.0,
                   "text_gate_weight": 0.0, "temperature": 1.0, "target_sigma": 2.0, "target_truncate": None}


@pytest.mark.parametrize("key", sorted(SOFT_CE_W1_KEYS))
def test_stage2_ab_pipeline_rejects_coord_soft_ce_w1_keys(key: str) -> None:
    """seed 002 3.3 / 002 9.1C: stage2_ab.pipeline + any authored custom.coord_soft_ce_w1.* fails naming it."""
    msg = _err(_two_channel({"pipeline": PIPELINE}, custom={"coord_soft_ce_w1": {key: SOFT_CE_W1_KEYS[key]}}))
    assert msg.startswith(f"custom.coord_soft_ce_w1.{key} is a flat objective knob but stage2_ab.pipeline is "
                          "present: move it into module config")


@pytest.mark.parametrize("key", sorted(SOFT_CE_W1_KEYS))
def test_rollout_matching_pipeline_rejects_coord_soft_ce_w1_keys(key: str) -> None:
    """seed 002 9.1C: rollout_matching.pipeline + any authored custom.coord_soft_ce_w1.* fails naming it."""
    msg = _err(_aligned({"pipeline": PIPELINE}, custom={"coord_soft_ce_w1": {key: SOFT_CE_W1_KEYS[key]}}))
    assert msg.startswith(f"custom.coord_soft_ce_w1.{key} is a flat objective knob but rollout_matching.pipeline "
                          "is present: move it into module config")


def test_empty_coord_soft_ce_w1_section_with_pipeline_fails() -> None:
    """seed 002 9.1C: an authored (even empty) custom.coord_soft_ce_w1 section counts as authored with a pipeline."""
    msg = _err(_aligned({"pipeline": PIPELINE}, custom={"coord_soft_ce_w1": {}}))
    assert msg.startswith("custom.coord_soft_ce_w1 is a flat objective knob but rollout_matching.pipeline is present")


def test_guardrail_lists_every_offending_key() -> None:
    """seed 002 9.1C: with several flat knobs, the message names the first and lists the rest."""
    msg = _err(_two_channel({"pipeline": PIPELINE, "desc_ce_weight": 0.5, "bbox_ciou_weight": 2.0},
                            custom={"coord_soft_ce_w1": {"w1_weight": 0.5}}))
    assert msg.startswith("custom.coord_soft_ce_w1.w1_weight is a flat objective knob")
    assert msg.endswith("also authored: stage2_ab.bbox_ciou_weight, stage2_ab.desc_ce_weight")


def test_st_and_non_objective_keys_allowed_with_pipeline() -> None:
    """seed 002 9.1C / SPEC §6.2: ST keys (and schedule/softctx keys) stay allowed with a pipeline."""
    cfg = load_coordexp_config(_two_channel({
        "pipeline": PIPELINE, "coord_ctx_embed_mode": "soft", "coord_decode_mode": "st", "n_softctx_iter": 3,
        "softctx_grad_mode": "unroll", "softctx_temperature": 0.5}))
    assert cfg.stage2_ab is not None and cfg.stage2_ab.pipeline == PIPELINE
    assert (cfg.stage2_ab.coord_ctx_embed_mode, cfg.stage2_ab.coord_decode_mode) == ("soft", "st")
    aligned = load_coordexp_config(_aligned({"pipeline": PIPELINE, "coord_decode_mode": "st"}))
    assert aligned.rollout_matching is not None and aligned.rollout_matching.coord_decode_mode == "st"


def test_coord_soft_ce_w1_allowed_without_pipeline_in_stage2() -> None:
    """SPEC §6.3: without a pipeline custom.coord_soft_ce_w1 feeds the Stage-2 defaults, so it is accepted."""
    cfg = load_coordexp_config(_aligned(custom={"coord_soft_ce_w1": {"enabled": True}}))
    assert cfg.custom.coord_soft_ce_w1.enabled


def test_null_pipeline_counts_as_absent() -> None:
    """pipeline: null = omitted (default manifest), so flat knobs are allowed."""
    cfg = load_coordexp_config(_two_channel({"pipeline": None, "desc_ce_weight": 0.5}))
    assert cfg.stage2_ab is not None and cfg.stage2_ab.pipeline is None and cfg.stage2_ab.desc_ce_weight == 0.5


def test_two_channel_rejects_rollout_matching_pipeline() -> None:
    """seed 002 3B.2: stage2_two_channel + rollout_matching.pipeline → "use stage2_ab.pipeline"."""
    msg = _err(_two_channel(rollout_matching={"pipeline": PIPELINE}))
    assert msg == ("rollout_matching.pipeline is not read by custom.trainer_variant 'stage2_two_channel': "
                   "use stage2_ab.pipeline")


def test_two_channel_rejects_rollout_matching_coord_decode_mode() -> None:
    """seed 002 3B.2 / 002 2.5: stage2_two_channel + rollout_matching.coord_decode_mode → use stage2_ab's."""
    msg = _err(_two_channel(rollout_matching={"coord_decode_mode": "exp"}))
    assert msg == ("rollout_matching.coord_decode_mode is not read by custom.trainer_variant 'stage2_two_channel': "
                   "use stage2_ab.coord_decode_mode")


def test_rollout_aligned_rejects_stage2_ab_pipeline() -> None:
    """seed 002 3B.2: stage2_rollout_aligned + stage2_ab.pipeline → "use rollout_matching.pipeline"."""
    msg = _err({**_aligned(), "stage2_ab": {"schedule": {"b_ratio": 1.0}, "pipeline": PIPELINE}})
    assert msg.startswith("stage2_ab.pipeline is not read by custom.trainer_variant 'stage2_rollout_aligned': "
                          "use rollout_matching.pipeline")


def test_rollout_aligned_rejects_stage2_ab_coord_decode_mode() -> None:
    """seed 002 2.5: stage2_rollout_aligned reads rollout_matching.coord_decode_mode, not stage2_ab's."""
    msg = _err({**_aligned(), "stage2_ab": {"coord_decode_mode": "st"}})
    assert msg.startswith("stage2_ab.coord_decode_mode is not read by custom.trainer_variant "
                          "'stage2_rollout_aligned': use rollout_matching.coord_decode_mode")


# --- input forms, authored keys, to_dict ------------------------------------------------------------------------

def test_json_string_sections_equal_mapping_sections() -> None:
    """`swift sft` passes dict-valued YAML keys as JSON strings; both forms load to the same config."""
    sections = _two_channel({"desc_ce_weight": 0.5, "channel_b": {"drop_invalid_struct_ce_multiplier": 2}},
                            rollout_matching={"decoding": {"top_k": 5}})
    as_json = {k: json.dumps(v) for k, v in sections.items()}
    assert load_coordexp_config(as_json) == load_coordexp_config(sections)
    assert load_coordexp_config(as_json).stage2_ab.channel_b.drop_invalid_struct_ce_multiplier == 2.0


@pytest.mark.parametrize(("value", "expected"), [
    ("{not json", "stage2_ab: expected a mapping; got a string that is not valid JSON"),
    ("[1, 2]", "stage2_ab: expected a mapping, got JSON list [1, 2]"),
    (5, "stage2_ab: expected a mapping, got int 5"),
])
def test_bad_section_values(value: Any, expected: str) -> None:
    """A section value that is neither a mapping nor a JSON object string fails naming the section."""
    assert _err({"custom": {"trainer_variant": TWO}, "stage2_ab": value, "rollout_matching": {}}).startswith(expected)


def test_authored_keys_tracked() -> None:
    """Authored = sections, nested sections and leaves present in the input (even at default values)."""
    cfg = load_coordexp_config(_two_channel({"desc_ce_weight": 1.0, "pipeline": None},
                                            rollout_matching={"decoding": {"top_p": 1.0}}))
    assert cfg.authored == frozenset({
        "custom", "custom.trainer_variant", "stage2_ab", "stage2_ab.schedule", "stage2_ab.schedule.b_ratio",
        "stage2_ab.desc_ce_weight", "stage2_ab.pipeline", "rollout_matching", "rollout_matching.decoding",
        "rollout_matching.decoding.top_p",
    })
    assert load_coordexp_config({}).authored == frozenset()


@pytest.mark.parametrize("sections", [
    {},
    {"custom": {"coord_soft_ce_w1": {"enabled": True, "target_truncate": 3}, "system_prompt": "sys"}},
    _two_channel({"desc_ce_weight": 0.5, "coord_decode_mode": "st"}),
    _aligned({"decoding": {"temperature": 0.7}, "eval_detection": {"iou_thrs": [0.5]}}),
    _two_channel({"pipeline": PIPELINE, "coord_ctx_embed_mode": "hard"}),
    _aligned({"pipeline": PIPELINE, "coord_decode_mode": "st"}),
])
def test_to_dict_round_trips(sections: dict[str, Any]) -> None:
    """to_dict is JSON-ready (json.dumps/loads identity), includes defaults, and reloads to an equal config."""
    cfg = load_coordexp_config(sections)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["variant"] == cfg.variant and d["authored"] == sorted(cfg.authored)
    assert d["custom"]["object_field_order"] == cfg.custom.object_field_order
    again = load_coordexp_config({k: d[k] for k in SECTION_NAMES})
    assert isinstance(again, CoordExpConfig)
    assert (again.custom, again.stage2_ab, again.rollout_matching) == (cfg.custom, cfg.stage2_ab,
                                                                       cfg.rollout_matching)


def test_to_dict_leaves_out_inert_keys() -> None:
    """SPEC §6.2: keys that cannot take effect (flat knobs under a pipeline, rollout_matching.pipeline /
    coord_decode_mode in two-channel) are not written to the resolved config."""
    d = load_coordexp_config(_two_channel({"pipeline": PIPELINE})).to_dict()
    assert "desc_ce_weight" not in d["stage2_ab"] and "coord_huber_delta" not in d["stage2_ab"]
    assert d["stage2_ab"]["channel_b"] == {} and d["stage2_ab"]["pipeline"] == PIPELINE
    assert "coord_soft_ce_w1" not in d["custom"]
    assert "pipeline" not in d["rollout_matching"] and "coord_decode_mode" not in d["rollout_matching"]
    assert d["stage2_ab"]["coord_decode_mode"] == "exp"  # ST keys stay: they act with a pipeline
    plain = load_coordexp_config(_two_channel()).to_dict()
    assert plain["stage2_ab"]["desc_ce_weight"] == 1.0 and plain["custom"]["coord_soft_ce_w1"]["w1_weight"] == 1.0
    aligned = load_coordexp_config(_aligned({"pipeline": PIPELINE})).to_dict()
    assert "coord_soft_ce_w1" not in aligned["custom"] and aligned["rollout_matching"]["coord_decode_mode"] == "exp"


def test_config_is_frozen() -> None:
    """CoordExpConfig and its sections are immutable."""
    cfg = load_coordexp_config({})
    with pytest.raises(AttributeError):
        cfg.custom = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.custom.coord_soft_ce_w1.enabled = True  # type: ignore[misc]


# --- load_yaml_file ---------------------------------------------------------------------------------------------

def test_load_yaml_file_reads_mapping(tmp_path: Path) -> None:
    """A run YAML's top-level mapping is returned; its coordexp sections load."""
    path = tmp_path / "run.yaml"
    path.write_text("model: m\ncustom:\n  trainer_variant: stage2_rollout_aligned\nrollout_matching: {}\n")
    data = load_yaml_file(str(path))
    assert data["model"] == "m"
    cfg = load_coordexp_config({k: v for k, v in data.items() if k in SECTION_NAMES}, source=str(path))
    assert cfg.variant == ALIGNED


@pytest.mark.parametrize(("text", "expected"), [
    ("custom: [1, 2\n", "invalid YAML"),
    ("- a\n- b\n", "the top level must be a mapping of keys, got list"),
    ("", "the top level must be a mapping of keys, got an empty document"),
    ("model: a\nmodel: b\n", "duplicate key 'model' (first at line 1)"),
])
def test_load_yaml_file_errors_name_the_path(tmp_path: Path, text: str, expected: str) -> None:
    """YAML syntax errors, duplicate keys and a non-mapping top level fail with the file path."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as exc:
        load_yaml_file(str(path))
    assert str(exc.value).startswith(f"{path}: ")
    assert expected in str(exc.value)


def test_load_yaml_file_missing_file(tmp_path: Path) -> None:
    """A missing file is a ValueError naming the path."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match="cannot read config file"):
        load_yaml_file(str(path))
