"""``examples/cpu_walkthrough.sh`` end to end with a tiny step budget (issue 12 item 5), run from a temporary
directory outside the repository with the installed ``coordexp-swift`` / ``swift`` on PATH: tiny model → shapes →
validate-config → Stage-1 ``swift sft`` → Stage-2 two-channel from the Stage-1 checkpoint → eval → pictures."""
from __future__ import annotations

import json
import math
import os
import re
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


RECIPE = REPO / "examples" / "coco" / "recipe.sh"


def _fake_coco(root: Path, shapes_dir: Path) -> None:
    """COCO 2017 layout on shapes images: 3 train + 2 val images, one box each, categories person / traffic light;
    every box is [10, 12, 40, 30.5] (x, y, w, h) on a 128x128 image."""
    (root / "annotations").mkdir(parents=True)
    for split, n in (("train", 3), ("val", 2)):
        (root / f"{split}2017").symlink_to(shapes_dir / "images")
        images = [{"id": i + 1, "file_name": f"{split}_{i:06d}.png", "width": 128, "height": 128} for i in range(n)]
        anns = [{"id": 10 * i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [10.0, 12.0, 40.0, 30.5],
                 "area": 1220.0, "iscrowd": 0} for i in range(n)]
        cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "traffic light"}]
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_recipe_check_only_prepares_and_validates(tmp_path, shapes_dir):
    """issue 12 item 5: ``CHECK_ONLY=1 examples/coco/recipe.sh`` (COCO_ROOT = a 5-image fake COCO on shapes images,
    MODEL = the tiny Qwen3-VL built *without* coord tokens) runs its real first half from a directory outside the
    clone: convert-coco (both splits), expand-vocab, both run YAMLs filled from the shipped configs and accepted by
    ``validate-config --data``, then stops before training. Golden boxes by hand from SPEC §1 (c = x/(W−1),
    k = floor(999·c + 0.5), W = H = 128): x1 = 10 → 79, y1 = 12 → 94, x2 = 50 → 393, y2 = 42.5 → 334."""
    from coordexp_swift.tools.tiny_model import build_tiny_model
    from transformers import AutoTokenizer

    model = build_tiny_model(tmp_path / "model", seed=0, with_coord_tokens=False)
    _fake_coco(tmp_path / "coco", shapes_dir)
    work, out = tmp_path / "cwd", tmp_path / "run"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "COCO_ROOT": str(tmp_path / "coco"), "MODEL": str(model), "OUT": str(out), "CHECK_ONLY": "1"}
    proc = subprocess.run(["bash", str(RECIPE)], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    assert "no training started" in proc.stdout and not (out / "stage1").exists()

    train = [json.loads(ln) for ln in _lines(out / "data" / "train.jsonl")]
    assert [r["objects"][0]["desc"] for r in train] == ["person", "traffic light", "person"]
    assert all(r["objects"][0]["bbox_2d"] == ["<|coord_79|>", "<|coord_94|>", "<|coord_393|>", "<|coord_334|>"]
               for r in train)
    assert len(_lines(out / "data" / "val.jsonl")) == 2
    tok = AutoTokenizer.from_pretrained(out / "base_coord")
    assert tok.convert_tokens_to_ids("<|coord_999|>") - tok.convert_tokens_to_ids("<|coord_0|>") == 999

    import yaml

    s1 = yaml.safe_load((out / "stage1.yaml").read_text())
    s2 = yaml.safe_load((out / "stage2.yaml").read_text())
    for name in ("stage1.yaml", "stage2.yaml"):  # every <PLACEHOLDER> filled (comments aside)
        body = [ln.split(" #")[0] for ln in (out / name).read_text().splitlines() if not ln.lstrip().startswith("#")]
        assert not re.search(r"<[A-Z][A-Z0-9_]*>", "\n".join(body)), name
    assert s1["model"] == str(out / "base_coord") and s1["output_dir"] == str(out / "stage1")
    assert s1["deepspeed"] == str(REPO / "configs" / "deepspeed" / "zero2.json")
    assert s2["model"] == str(out / "stage1" / "last-checkpoint") and s2["output_dir"] == str(out / "stage2")
    assert s2["custom"]["trainer_variant"] == "stage2_two_channel" and s2["stage2_ab"]["schedule"]["b_ratio"] == 0.25
    assert s1["dataset"] == s2["dataset"] == [str(out / "data" / "train.jsonl")]
