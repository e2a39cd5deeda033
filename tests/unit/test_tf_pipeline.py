"""Pipeline config, default manifest, identity/checksum, manifest file, registry discovery (SPEC §6)."""
from __future__ import annotations

from pathlib import Path

import hashlib
import json
import logging
import sys

import pytest

from coordexp_swift.config import load_coordexp_config
from coordexp_swift.teacher_forcing import (
    canonical_json,
    describe_pipeline,
    module_registry,
    parse_pipeline,
    resolve_pipeline,
    write_manifest,
)
from coordexp_swift.teacher_forcing.manifest import MANIFEST_FILENAME

GOLDEN = str(Path(__file__).resolve().parents[1] / "golden" / "pipeline_manifest_{}.json")
CHECKSUMS = {"two_channel": "7ac21c5c36850a970028595ba9863045f7a3e175914098f89e1b7ef9cf380e34",
             "rollout_aligned": "62c3a17870bf9bc9750e947fbb053286c5b983e8350138c721940395468124e9"}
TWO, RA = "stage2_two_channel", "stage2_rollout_aligned"


def two(stage2_ab=None, custom=None):
    return load_coordexp_config({"custom": {"trainer_variant": TWO, **(custom or {})},
                                 "stage2_ab": {"schedule": {"b_ratio": 0.5}, **(stage2_ab or {})},
                                 "rollout_matching": {}})


def ra(rollout_matching=None, custom=None):
    return load_coordexp_config({"custom": {"trainer_variant": RA, **(custom or {})},
                                 "rollout_matching": rollout_matching or {}})


def golden(name):
    with open(GOLDEN.format(name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name,make", [("two_channel", two), ("rollout_aligned", ra)])
def test_default_manifest_reproduces_golden(name, make, tmp_path):
    """seed 002 9.1B / 8.1: omitted pipeline -> §6.3 configs; canonical JSON byte-for-byte equal to the golden file
    (minus its newline) and the golden SHA-256 (hashlib on the bytes); the written manifest file is identical."""
    m = resolve_pipeline(make())
    assert m.canonical_json().encode() == golden(name).rstrip(b"\n")
    assert m.checksum == CHECKSUMS[name] == hashlib.sha256(golden(name).rstrip(b"\n")).hexdigest()
    path, line = write_manifest(tmp_path, m, config_path="x.yaml", run_name="r", seed=1)
    with open(path, "rb") as f:
        assert f.read() == golden(name)
    assert path.endswith(MANIFEST_FILENAME)
    # an explicitly authored pipeline equal to the default has the same checksum
    authored = json.loads(golden(name))
    pipe = {"objective": authored["objective"], "diagnostics": authored["diagnostics"]}
    cfg = make(**({"stage2_ab": {"pipeline": pipe}} if name == "two_channel" else
                  {"rollout_matching": {"pipeline": pipe}}))
    assert resolve_pipeline(cfg).checksum == CHECKSUMS[name]
    minimal = {"objective": [{"name": "token_ce"}, {"name": "bbox_geo"}, {"name": "coord_reg"}],
               "diagnostics": [{"name": "coord_diag"}]}
    if name == "rollout_aligned":
        assert resolve_pipeline(make(rollout_matching={"pipeline": minimal})).checksum == CHECKSUMS[name]


def test_default_manifest_derives_from_flat_knobs():
    """seed 002 3.5 / 9.1B: stage2_ab.text_gate_weight and the other flat knobs reach the default module configs;
    custom.coord_soft_ce_w1 (enabled) supplies softCE/W1/τ/σ and self-context softCE."""
    cfg = two(stage2_ab={"text_gate_weight": 0.25, "desc_ce_weight": 0.5, "fmt_struct_ce_weight": 0.2,
                         "bbox_ciou_weight": 0.0, "channel_b": {"drop_invalid_struct_ce_multiplier": 2.0}},
              custom={"coord_soft_ce_w1": {"enabled": True, "soft_ce_weight": 0.3, "w1_weight": 0.4,
                                           "target_sigma": 3.0, "target_truncate": 8}})
    m = resolve_pipeline(cfg)
    reg, tok, geo = m.entry("coord_reg").config, m.entry("token_ce").config, m.entry("bbox_geo").config
    assert reg.text_gate_weight == 0.25 and reg.soft_ce_weight == 0.3 and reg.self_context_soft_ce_weight == 0.3
    assert (reg.w1_weight, reg.target_sigma, reg.target_truncate) == (0.4, 3.0, 8)
    assert (tok.desc_ce_weight, tok.rollout_fn_desc_weight, tok.self_context_struct_ce_weight) == (0.5, 0.5, 0.2)
    assert tok.rollout_drop_invalid_struct_ce_multiplier == 2.0 and geo.ciou_weight == 0.0
    assert m.checksum != CHECKSUMS["two_channel"]
    r = resolve_pipeline(ra(custom={"coord_soft_ce_w1": {"enabled": True, "ce_weight": 0.1, "gate_weight": 0.6,
                                                         "text_gate_weight": 0.9}})).entry("coord_reg").config
    assert (r.coord_ce_weight, r.coord_gate_weight, r.text_gate_weight, r.soft_ce_weight) == (0.1, 0.6, 0.0, 1.0)


def test_st_keys_change_checksum_not_modules():
    """seed 002 2.4 / 2.5 / §5: ST modes enter the checksum via extra, never the module list."""
    base = resolve_pipeline(two())
    st = resolve_pipeline(two(stage2_ab={"coord_decode_mode": "st", "coord_ctx_embed_mode": "soft"}))
    assert st.checksum != base.checksum and st.module_lines() == base.module_lines()
    assert resolve_pipeline(ra({"coord_decode_mode": "st"})).checksum != CHECKSUMS["rollout_aligned"]
    with pytest.raises(ValueError, match="stage2_ab.coord_decode_mode"):
        two(stage2_ab={"coord_decode_mode": "argmax"})


OBJ = [{"name": "token_ce"}]


@pytest.mark.parametrize("raw,match", [
    ({"objective": OBJ, "extras": []}, r"unknown key 'stage2_ab.pipeline.extras'"),
    ({"diagnostics": []}, r"stage2_ab.pipeline.objective: missing"),
    ({"objective": []}, r"objective: must be a non-empty list"),
    ({"objective": {"name": "token_ce"}}, r"objective: expected a list"),
    ({"objective": [{"name": "tokn_ce"}]}, r"unknown objective module 'tokn_ce'; available objective modules: "
                                           r"bbox_geo, coord_reg, token_ce"),
    ({"objective": OBJ + OBJ}, r"objective\[1\].name: duplicate module 'token_ce'"),
    ({"objective": [{"name": "coord_diag"}]}, r"'coord_diag' is a diagnostics module .* move it"),
    ({"objective": OBJ, "diagnostics": [{"name": "bbox_geo"}]}, r"diagnostics\[0\].name: 'bbox_geo' is a objective"),
    ({"objective": [{"enabled": True}]}, r"objective\[0\].name: missing required key"),
    ({"objective": [{"name": "token_ce", "weigth": 1}]}, r"unknown key 'stage2_ab.pipeline.objective\[0\].weigth' — "
                                                         r"did you mean 'weight'"),
    ({"objective": [{"name": "token_ce", "weight": -1}]}, r"weight: expected a finite float >= 0"),
    ({"objective": [{"name": "token_ce", "weight": True}]}, r"weight: expected a finite float >= 0"),
    ({"objective": [{"name": "token_ce", "weight": float("nan")}]}, r"finite float"),
    ({"objective": [{"name": "token_ce", "enabled": "yes"}]}, r"enabled: expected bool"),
    ({"objective": [{"name": "token_ce", "channels": []}]}, r"channels: expected a non-empty list"),
    ({"objective": [{"name": "token_ce", "channels": ["A", "A"]}]}, r"duplicate channel"),
    ({"objective": [{"name": "token_ce", "channels": ["C"]}]}, r"channels\[0\]: invalid channel 'C'"),
    ({"objective": [{"name": "token_ce", "config": {"desc_weight": 1}}]},
     r"unknown key 'stage2_ab.pipeline.objective\[0\].config.desc_weight' .*valid keys: desc_ce_weight, "),
    ({"objective": [{"name": "token_ce", "config": {"desc_ce_weight": "1"}}]}, r"desc_ce_weight: expected float"),
    ({"objective": [{"name": "token_ce", "config": None}]}, r"config: expected a mapping \(allowed keys: "),
    ({"objective": [{"name": "coord_reg", "config": {"temperature": 0}}]}, r"temperature = 0.0: must be > 0"),
    ({"objective": OBJ, "diagnostics": [{"name": "coord_diag", "config": {"x": 1}}]}, r"valid keys: \(none\)"),
    ([1], r"stage2_ab.pipeline: expected a mapping"),
])
def test_pipeline_strict_errors(raw, match):
    """seed 002 3.1 / 3.2 / 9.1 / 5.3: every §6.1 rule fails fast with the dotted key and the fix/valid names.
    Seed rows: seed 002 3.1, seed 002 3.2, seed 002 9.1, seed 002 5.3."""
    with pytest.raises(ValueError, match=match):
        parse_pipeline(raw, TWO, {"variant": TWO})


def test_rollout_aligned_pipeline_rules():
    """seed 002 3B.1 / 9.1: rollout_matching.pipeline is strict, entries must include B, and two-channel-only config
    keys are rejected with the allowed list."""
    with pytest.raises(ValueError, match=r"rollout_matching.pipeline.objective\[0\].channels: \['A'\] must include"):
        parse_pipeline({"objective": [{"name": "token_ce", "channels": ["A"]}]}, RA, {})
    with pytest.raises(ValueError, match=r"config.desc_ce_weight.*valid keys: rollout_drop_invalid"):
        parse_pipeline({"objective": [{"name": "token_ce", "config": {"desc_ce_weight": 1}}]}, RA, {})
    m = parse_pipeline({"objective": [{"name": "token_ce", "channels": ["B"]}]}, RA, {})
    assert m.objective[0].channels == ("B",)


def test_rollout_only_objective_is_expressible():
    """seed 002 5.4: the first-version rollout objective (token CE + L1 + GIoU on B) is a config."""
    m = parse_pipeline({"objective": [
        {"name": "token_ce", "channels": ["B"], "config": {"desc_ce_weight": 1.0}},
        {"name": "bbox_geo", "channels": ["B"], "config": {"smoothl1_weight": 0, "ciou_weight": 0, "l1_weight": 1,
                                                           "giou_weight": 1}}]}, TWO, {"variant": TWO})
    assert [e.name for e in m.objective] == ["token_ce", "bbox_geo"] and m.objective[1].config.giou_weight == 1.0


def test_guardrails_and_cross_variant_via_loader():
    """seed 002 3.3 / 3B.2: a pipeline plus an authored flat knob (even at its default) fails "move it into module
    config"; cross-variant pipelines fail with the right home."""
    pipe = {"objective": OBJ}
    with pytest.raises(ValueError, match="stage2_ab.desc_ce_weight .*move it into module config"):
        two(stage2_ab={"pipeline": pipe, "desc_ce_weight": 1.0})
    with pytest.raises(ValueError, match="custom.coord_soft_ce_w1.w1_weight"):
        ra({"pipeline": pipe}, custom={"coord_soft_ce_w1": {"w1_weight": 1.0}})
    with pytest.raises(ValueError, match="use stage2_ab.pipeline"):
        load_coordexp_config({"custom": {"trainer_variant": TWO}, "stage2_ab": {"schedule": {"b_ratio": 0.5}},
                              "rollout_matching": {"pipeline": pipe}})
    with pytest.raises(ValueError, match="use rollout_matching.pipeline"):
        load_coordexp_config({"custom": {"trainer_variant": RA}, "stage2_ab": {"pipeline": pipe},
                              "rollout_matching": {}})
    assert resolve_pipeline(two(stage2_ab={"pipeline": pipe, "coord_decode_mode": "st"})).authored


def test_canonical_json_rules():
    """seed 002 9.1B / §6.4: sorted keys, compact separators, ASCII escapes, -0.0 -> 0.0, non-finite rejected."""
    assert canonical_json({"b": -0.0, "a": ["é", 1.5e-07, None]}) == '{"a":["\\u00e9",1.5e-07,null],"b":0.0}'
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"x": float("inf")})


def test_init_log_and_describe(tmp_path, caplog):
    """seed 002 3.4 / 3B.3: init log line names modules, checksum, config path, run name, seed; describe_pipeline
    returns the module lines and checksum for validate-config."""
    m = resolve_pipeline(ra())
    with caplog.at_level(logging.INFO):
        _, line = write_manifest(tmp_path, m, config_path="cfg/run.yaml", run_name="demo", seed=17)
    assert line in caplog.text
    for part in ("token_ce[w=1.0,ch=A+B]", "bbox_geo", "coord_reg", "coord_diag", f"checksum={CHECKSUMS['rollout_aligned']}",
                 "config=cfg/run.yaml", "run_name=demo", "seed=17"):
        assert part in line
    lines, checksum = describe_pipeline(two())
    assert checksum == CHECKSUMS["two_channel"] and len(lines) == 4 and lines[0].startswith("objective: token_ce")


def test_entry_point_discovery(tmp_path, monkeypatch):
    """seed 002 4.1 / ARCHITECTURE §2: a third-party module registered in the `coordexp_swift.modules` entry-point
    group (a tiny dist-info on sys.path) is discovered and usable in a pipeline."""
    pkg = tmp_path / "tf_ext_mod.py"
    pkg.write_text(
        "import torch\n"
        "from dataclasses import dataclass\n"
        "from coordexp_swift.teacher_forcing.modules.base import PipelineModule, ModuleOutput\n"
        "@dataclass(frozen=True)\n"
        "class Cfg:\n    scale: float = 1.0\n"
        "class Ext(PipelineModule):\n"
        "    name, kind = 'ext_obj', 'objective'\n"
        "    config_classes = {'stage2_two_channel': Cfg}\n"
        "    def __call__(self, ctx):\n"
        "        return ModuleOutput(loss=torch.tensor(self.config.scale))\n")
    dist = tmp_path / "tf_ext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[coordexp_swift.modules]\next_obj = tf_ext_mod:Ext\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = module_registry()
    assert "ext_obj" in reg and reg["ext_obj"].source == "tf_ext_mod:Ext"
    m = parse_pipeline({"objective": [{"name": "ext_obj", "config": {"scale": 2.0}}]}, TWO, {"variant": TWO})
    assert m.objective[0].config.scale == 2.0
    with pytest.raises(ValueError, match="does not support trainer variant"):
        parse_pipeline({"objective": [{"name": "ext_obj"}]}, RA, {})
    monkeypatch.delitem(sys.modules, "tf_ext_mod", raising=False)


def _mutate_all(node):
    """Change every leaf and container of a plain-data tree in place."""
    if isinstance(node, dict):
        for k in list(node):
            if isinstance(node[k], (dict, list)):
                _mutate_all(node[k])
            else:
                node[k] = "mutated"
        node["added"] = 1
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, (dict, list)):
                _mutate_all(v)
            else:
                node[i] = "mutated"
        node.append("added")


def _is_plain(node) -> bool:
    if isinstance(node, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in node.items())
    if isinstance(node, list):
        return all(_is_plain(v) for v in node)
    return node is None or isinstance(node, (bool, int, float, str))


def test_manifest_identity_is_plain_data_and_mutation_safe():
    """seed 002 9.1B: ``identity()`` returns fresh plain data (dict/list/str/number/bool/None only); mutating every
    container and leaf of the returned object in place — config dicts, channel lists, ``extra`` — changes neither
    the manifest's identity, canonical JSON nor checksum (still the golden one)."""
    m = resolve_pipeline(two(stage2_ab={"coord_decode_mode": "st"}))
    fresh = m.identity()
    want_json, want_sum = m.canonical_json(), m.checksum
    assert _is_plain(fresh) and fresh["extra"]["stage2_ab.coord_decode_mode"] == "st"
    ident = m.identity()
    _mutate_all(ident)
    assert ident["objective"][0]["weight"] == "mutated" and ident["extra"]["added"] == 1
    assert m.identity() == fresh and m.canonical_json() == want_json and m.checksum == want_sum
    d = resolve_pipeline(two())
    _mutate_all(d.identity())
    assert d.checksum == CHECKSUMS["two_channel"] and d.canonical_json().encode() == golden("two_channel").rstrip(b"\n")


def test_stage1_has_no_pipeline_key():
    """issue 8 item 7: the unused ``custom.pipeline`` path is gone — only the Stage-2 variants have a pipeline key;
    the Stage-1 manifest is built from ``custom.coord_soft_ce_w1`` and its errors name that source."""
    from coordexp_swift.config.custom import VARIANT_STAGE1, CoordSoftCEW1Config
    from coordexp_swift.teacher_forcing.manifest import pipeline_path, stage1_manifest

    assert (pipeline_path(TWO), pipeline_path(RA)) == ("stage2_ab.pipeline", "rollout_matching.pipeline")
    with pytest.raises(ValueError, match="'stage1' has no objective pipeline key"):
        pipeline_path(VARIANT_STAGE1)
    m = stage1_manifest(CoordSoftCEW1Config(enabled=True, w1_weight=0.25))
    assert [e.name for e in m.objective] == ["token_ce", "coord_reg"] and m.entry("coord_reg").config.w1_weight == 0.25
    with pytest.raises(ValueError, match=r"stage1_manifest\(custom.coord_soft_ce_w1\).coord_reg.config"):
        stage1_manifest(CoordSoftCEW1Config(enabled=True, temperature=-1.0))  # not validated at construction
