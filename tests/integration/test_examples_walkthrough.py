"""``examples/cpu_walkthrough.sh`` end to end with a tiny step budget (issue 12 item 5), run from a temporary
directory outside the repository with the installed ``coordexp-swift`` / ``swift`` on PATH: tiny model → shapes →
validate-config → Stage-1 ``swift sft`` → Stage-2 two-channel from the Stage-1 checkpoint → eval → pictures."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.swift_run import step_records

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cpu_walkthrough.sh"
BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def test_cpu_walkthrough_runs_end_to_end(tmp_path):
    """issue 12 item 5: ``STEPS=4 STAGE2_STEPS=2 TRAIN=16 VAL=4 examples/cpu_walkthrough.sh`` in an empty directory
    outside the clone exits 0 and leaves: the data (16 / 4 records); Stage-1's 4 logged steps (finite positive
    losses) and ``checkpoint-4``; Stage-2 started *from that checkpoint* (its args.json), 2 logged steps — step 0
    Channel-A (no rollout keys, realised B share 0), step 1 Channel-B (smoke_mixed's b_ratio 0.5: 2 rollouts of one
    GT object each, realised B share 0.5) — and ``checkpoint-2``; the eval of that checkpoint with one record per
    val image (4), 4 GT objects, the 12 COCO metrics in [0, 1] (or -1, COCO's "no such objects"), F1@0.5 in [0, 1],
    score mode token_prob; and the four PNGs (two loss-curve plots, the box picture, the eval overlays)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "STEPS": "4", "STAGE2_STEPS": "2",
           "TRAIN": "16", "VAL": "4"}
    env.pop("WORK", None)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    out = tmp_path / "walkthrough_out" / "demo_out"   # WORK defaults to ./walkthrough_out

    assert (out / "tiny_model" / "config.json").is_file()
    assert len(_lines(out / "shapes" / "train.jsonl")) == 16 and len(_lines(out / "shapes" / "val.jsonl")) == 4

    s1 = step_records(out / "stage1")
    assert len(s1) == 4
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and math.isfinite(r["grad_norm"]) for r in s1)
    assert list((out / "stage1" / "checkpoint-4").glob("*.safetensors"))

    args2 = json.loads((out / "stage2" / "args.json").read_text())
    assert args2["model"] == "demo_out/stage1/checkpoint-4" and args2["max_steps"] == 2
    a, b = step_records(out / "stage2")
    assert "rollout/gt_objects_total" not in a and a["stage2/b_ratio_realized"] == 0.0 and "loss/geo" in a
    assert b["stage2/raw_rollouts_total"] == 2 and b["rollout/gt_objects_total"] == 2
    assert b["stage2/b_ratio_realized"] == 0.5
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in (a, b))
    assert list((out / "stage2" / "checkpoint-2").glob("*.safetensors"))

    ev = out / "eval_stage2"
    records = [json.loads(ln) for ln in _lines(ev / "gt_vs_pred.jsonl")]
    assert len(records) == 4 and all(len(r["gt"]) == 1 for r in records)
    summary = json.loads((ev / "metrics.json").read_text())
    metrics = summary["metrics"]
    assert len(metrics) == 12 and all(v == -1 or 0.0 <= v <= 1.0 for v in metrics.values()), metrics
    f1 = summary["f1_iou50"]
    assert all(0.0 <= f1[k] <= 1.0 for k in ("precision", "recall", "f1")) and f1["tp"] + f1["fn"] == 4
    c = summary["counters"]
    assert c["records_total"] == c["records_evaluated"] == 4 and c["gt_objects"] == 4
    assert summary["score_mode"] == "token_prob"

    for png in (out / "curves_stage1.png", out / "curves_stage2.png", out / "boxes_stage2.png", ev / "overlays.png"):
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, png
