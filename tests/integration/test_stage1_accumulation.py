"""Gradient accumulation does not change the Stage-1 objective (SPEC §2.3 denominators, §8.3; §9 row 000 1.4).

Two real ``swift sft`` runs on the compact tiny model, one optimizer step each, on the same 4 samples in a fixed
order (``dataset_shuffle: false``, ``train_dataloader_shuffle: false``): (batch 4, GA 1) and (batch 2, GA 2). The
micro-batches of the second run hold 1+1 and 3+3 objects, so per-micro-batch token means would weight them
differently from one window-global mean.

Observable: the logged ``grad_norm`` (HF's pre-clipping global L2 norm of the accumulated gradient) and ``loss``
(the window's summed micro-step losses). Saved weights are not used: AdamW's first update is ≈ lr·sign(g), blind to
a wrong gradient scale. With window-global denominators both observables agree to float32 round-off (~1e-7); a
per-micro-batch mean or a missing/extra 1/GA factor moves them by 1e-3 .. 1x.
"""
from __future__ import annotations

import math

import pytest

from tests.integration.swift_run import read_logging_jsonl, run_swift_sft, tiny_stage1_config

pytestmark = pytest.mark.integration

RECORDS = (0, 1, 6, 7)  # 1, 1, 3, 3 objects in the conftest shapes set (seed 0)


@pytest.fixture(scope="session")
def compact_model_dir(tmp_path_factory):
    from coordexp_swift.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_compact"), seed=0, vocab="compact")


def _one_step(model_dir, shapes_dir, work, dataset, bs: int, ga: int) -> dict:
    out = work / f"bs{bs}_ga{ga}"
    out.mkdir()
    cfg = tiny_stage1_config(model_dir, shapes_dir, out / "out", template="qwen3_vl_compact", dataset=[str(dataset)],
                             per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1,
                             dataset_shuffle=False, train_dataloader_shuffle=False, learning_rate=1.0e-4,
                             custom={"coord_soft_ce_w1": {"enabled": True, "ce_weight": 0.5,
                                                          "text_gate_weight": 0.2}})
    proc = run_swift_sft(cfg, out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [r for r in read_logging_jsonl(out / "out") if "grad_norm" in r]
    assert len(steps) == 1, steps
    return steps[0]


def test_batch4_ga1_equals_batch2_ga2(compact_model_dir, shapes_dir, tmp_path):
    """seed 000 1.4 (SPEC §2.3): (batch 4, GA 1) and (batch 2, GA 2) on the same 4 samples give the same loss and
    the same gradient norm after one step; both finite and non-trivial."""
    import json

    lines = (shapes_dir / "train.jsonl").read_text().splitlines()
    counts = [len(json.loads(lines[i])["objects"]) for i in RECORDS]
    assert counts[0] + counts[1] != counts[2] + counts[3]  # unequal micro-batches: the check has power
    dataset = tmp_path / "four.jsonl"
    dataset.write_text("\n".join(lines[i] for i in RECORDS) + "\n")
    (tmp_path / "images").symlink_to(shapes_dir / "images")

    a = _one_step(compact_model_dir, shapes_dir, tmp_path, dataset, bs=4, ga=1)
    b = _one_step(compact_model_dir, shapes_dir, tmp_path, dataset, bs=2, ga=2)
    for rec in (a, b):
        assert math.isfinite(rec["loss"]) and math.isfinite(rec["grad_norm"]) and rec["grad_norm"] > 1e-3
        assert "loss/coord_token_ce" in rec and "loss/coord_reg/text_gate" in rec
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
