"""Real `swift sft` with the plugin on the tiny model (seed 000 1.8 / 1.9, 000 2.3)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.integration.swift_run import read_logging_jsonl, run_swift_sft, tiny_stage1_config

pytestmark = pytest.mark.integration

MODEL_LOAD_MARKER = "model_info"  # ms-swift logs this right after the model is built
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "stage1_frozen_swift.json"
# Batch size 1 (ms-swift compacts labels/logits to the supervised positions), GA 2 (window denominators), every
# coord term on. Its logs were frozen before Stage-1 moved onto the registry modules (tests/golden/README.md).
FROZEN_RUN = dict(per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=2, custom={
    "coord_soft_ce_w1": {"enabled": True, "ce_weight": 0.5, "soft_ce_weight": 1.0, "w1_weight": 2.0,
                         "gate_weight": 0.5, "text_gate_weight": 0.2, "target_sigma": 1.5}})


def test_stage1_swift_sft_logs_keys(tiny_model_dir, shapes_dir, tmp_path):
    """seed 000 1.9 / 2.3: a few real steps log loss, token accs and softCE/W1 terms, all finite; the resolved
    coordexp config is written beside the outputs. Seed rows: seed 000 1.9, seed 000 2.3."""
    out = tmp_path / "out"
    proc = run_swift_sft(tiny_stage1_config(tiny_model_dir, shapes_dir, out), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [r for r in read_logging_jsonl(out) if "loss" in r]
    assert len(steps) == 3
    for rec in steps:
        for key in ("loss", "token_acc", "coord_token_acc", "text_token_acc", "loss/struct_ce", "loss/desc_ce",
                    "loss/coord_reg", "loss/coord_reg/soft_ce", "loss/coord_reg/w1", "loss/coord_reg/coord_gate"):
            assert key in rec, (key, sorted(rec))
            assert math.isfinite(rec[key]), (key, rec[key])
        assert "loss/coord_token_ce" not in rec  # ce_weight defaults to 0.0 -> not emitted
        assert "loss/coord_reg/text_gate" not in rec  # text_gate_weight defaults to 0.0
        # coord_reg is the sum of its emitted sub-terms; the components add up to the loss (SPEC 8.2)
        subs = sum(rec[k] for k in rec if k.startswith("loss/coord_reg/"))
        assert rec["loss/coord_reg"] == pytest.approx(subs, rel=1e-4)
        total = rec["loss/struct_ce"] + rec["loss/desc_ce"] + rec["loss/coord_reg"]
        assert rec["loss"] == pytest.approx(total, rel=1e-5)
    resolved = json.loads((out / "coordexp_config.json").read_text())
    assert resolved["variant"] == "stage1"
    assert resolved["custom"]["coord_soft_ce_w1"]["enabled"] is True
    assert resolved["custom"]["coord_soft_ce_w1"]["target_sigma"] == 2.0


@pytest.mark.parametrize("where,bad_key,expect", [
    ("custom", "sof_ce_weight", "custom.coord_soft_ce_w1.sof_ce_weight"),
    ("swift", "learnig_rate", "learnig_rate"),
])
def test_typo_fails_before_model_load(tiny_model_dir, shapes_dir, tmp_path, where, bad_key, expect):
    """Acceptance: a misspelt coordexp key and a misspelt ms-swift key both fail before the model loads, naming
    the dotted key and the closest valid key."""
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, tmp_path / "out")
    if where == "custom":
        cfg["custom"]["coord_soft_ce_w1"][bad_key] = 1.0
        closest = "soft_ce_weight"
    else:
        cfg[bad_key] = 1.0e-3
        closest = "learning_rate"
    proc = run_swift_sft(cfg, tmp_path, timeout=300)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert expect in log and closest in log
    assert MODEL_LOAD_MARKER not in log


def test_out_of_range_bin_fails_with_file_line(tiny_model_dir, shapes_dir, tmp_path):
    """Acceptance: a JSONL with an out-of-range bin fails naming file, line and object index."""
    lines = (shapes_dir / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["objects"][0]["bbox_2d"][2] = 1000
    lines[2] = json.dumps(rec)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(shapes_dir / "images")
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, tmp_path / "out", dataset=[str(bad)])
    proc = run_swift_sft(cfg, tmp_path, timeout=300)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert f"{bad}:3" in log and "objects[0]" in log and "norm1000 range 0..999" in log


def test_plain_sft_keeps_coord_tokens_in_base_ce(tiny_model_dir, shapes_dir, tmp_path):
    """seed 000 1.4 / SPEC 2.5: with the coord loss disabled the coord targets stay in the base CE, logged as
    loss/coord_token_ce; no coord_reg keys; the three CE parts add up to the loss."""
    out = tmp_path / "out"
    cfg = tiny_stage1_config(tiny_model_dir, shapes_dir, out, max_steps=2,
                             custom={"coord_soft_ce_w1": {"enabled": False}})
    proc = run_swift_sft(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [r for r in read_logging_jsonl(out) if "loss" in r]
    assert len(steps) == 2
    for rec in steps:
        assert not any(k.startswith("loss/coord_reg") for k in rec)
        total = rec["loss/struct_ce"] + rec["loss/desc_ce"] + rec["loss/coord_token_ce"]
        assert rec["loss"] == pytest.approx(total, rel=1e-5)


def test_stage1_logs_unchanged_by_the_registry_refactor(tiny_model_dir, shapes_dir, tmp_path):
    """seed 002 7B.1: a real `swift sft` Stage-1 run (batch 1 compacted by ms-swift's logits_to_keep, GA 2, all coord
    terms) logs the same loss, grad_norm, loss parts and accuracies as the pre-registry implementation did
    (frozen in tests/golden/stage1_frozen_swift.json; rel 1e-4 leaves room for CPU BLAS differences only)."""
    out = tmp_path / "out"
    proc = run_swift_sft(tiny_stage1_config(tiny_model_dir, shapes_dir, out, **FROZEN_RUN), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [r for r in read_logging_jsonl(out) if "loss" in r]
    frozen = json.loads(GOLDEN.read_text())
    assert len(steps) == len(frozen)
    for got, want in zip(steps, frozen):
        assert sorted(k for k in got if k in want) == sorted(want)
        for key, val in want.items():
            assert got[key] == pytest.approx(val, rel=1e-4, abs=1e-7), key
