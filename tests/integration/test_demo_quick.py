"""`coordexp-swift demo --quick` end to end (real `swift sft` on the compact tiny model, ~1 minute), then the
`eval --model` CLI on the checkpoint it produced (seed 000 2.1-2.5: the operational Stage-1 checklist).

Asserts that the report and every artefact exist with finite numbers — not the demo bar (the quick run is far
too short to localise anything)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("coordexp-swift"))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    proc = subprocess.run([CLI, "demo", "--out", str(out), "--quick"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "# coordexp-swift CPU demo report" in proc.stdout  # the report is printed
    return out


def test_quick_demo_report_and_artefacts(quick_demo):
    """seed 000 2.1-2.5: base model recorded, data validated, seeded run with resolved config beside the outputs,
    parse rate + finite coord curves, checkpoint exported with metrics and config snapshot."""
    out = quick_demo
    report = (out / "REPORT.md").read_text()
    for row in ("000 2.1", "000 2.2", "000 2.3", "000 2.4", "000 2.5"):
        assert f"| {row} |" in report
    assert "✘" not in report.split("## Stage-1 retraining checklist")[1].split("## Data")[0]
    for name in ("parse rate", "mean IoU of matched boxes", "AP50", "coord-bin MAE", "desc accuracy"):
        assert name in report

    # 2.1 / 2.3: the run config given to swift sft names the base model, and the run saved its resolved configs
    run_cfg = yaml.safe_load((out / "run_softce_w1.yaml").read_text())
    assert run_cfg["model"] == str(out / "tiny_model") and run_cfg["seed"] == 42
    train = out / "train_softce_w1"
    args = json.loads((train / "args.json").read_text())
    assert args["model"] == str(out / "tiny_model") and args["seed"] == 42
    resolved = json.loads((train / "coordexp_config.json").read_text())
    assert resolved["custom"]["coord_soft_ce_w1"]["enabled"] is True

    # 2.4: curves finite, with the coord terms present
    rows = [json.loads(line) for line in (train / "logging.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    assert steps, "no step was logged"
    for r in steps:
        for k in ("loss", "loss/coord_reg/soft_ce", "loss/coord_reg/w1", "loss/coord_reg/coord_gate"):
            assert math.isfinite(r[k]), (k, r[k])

    # metrics: finite; mean IoU / MAE / desc accuracy are NaN exactly when nothing was matched
    summary = json.loads((out / "summary.json").read_text())["softce_w1"]
    for k in ("bbox_AP", "bbox_AP50", "parse_rate"):
        assert math.isfinite(summary[k]) and 0.0 <= summary[k] <= 1.0, (k, summary[k])
    for k in ("mean_iou", "desc_acc", "coord_mae_bins"):
        assert math.isfinite(summary[k]) == (summary["matched"] > 0), (k, summary)

    # artefacts: PNGs, eval files, export with metrics + config snapshot
    for png in ("loss_curves_softce_w1.png", "overlays_softce_w1.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("gt_vs_pred.jsonl", "metrics.json", "per_class.csv", "per_image.json", "coco_gt.json",
                 "coco_preds.json"):
        assert (out / "eval_softce_w1" / name).is_file(), name
    export = out / "export_softce_w1"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "demo_metrics.json", "run_config.yaml",
                 "coordexp_config.json"):
        assert (export / name).is_file(), name
    exported = json.loads((export / "demo_metrics.json").read_text())
    assert exported["bbox_AP50"] == summary["bbox_AP50"] and exported["coord_curves_finite"] is True
    assert len((out / "eval_softce_w1" / "gt_vs_pred.jsonl").read_text().splitlines()) == 8  # every val image


def test_eval_model_mode_on_demo_checkpoint(quick_demo, tmp_path):
    """`coordexp-swift eval --model CKPT --jsonl VAL --out_dir D` reads prompt and template from the run dir and
    reproduces the demo's own evaluation (greedy decoding is deterministic)."""
    out = quick_demo
    ckpt = sorted((out / "train_softce_w1").glob("checkpoint-*"))[-1]
    d = tmp_path / "eval"
    proc = subprocess.run([CLI, "eval", "--model", str(ckpt), "--jsonl", str(out / "shapes" / "val.jsonl"),
                           "--out_dir", str(d), "--batch_size", "25"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "template=qwen3_vl_compact" in proc.stdout and "Detect all objects as JSON." in proc.stdout
    ours = json.loads((d / "metrics.json").read_text())["metrics"]
    demo = json.loads((out / "eval_softce_w1" / "metrics.json").read_text())["metrics"]
    assert ours == demo
    a = [json.loads(x)["raw_text"] for x in (d / "gt_vs_pred.jsonl").read_text().splitlines()]
    b = [json.loads(x)["raw_text"] for x in (out / "eval_softce_w1" / "gt_vs_pred.jsonl").read_text().splitlines()]
    assert a == b
