"""`coordexp-swift demo --quick` end to end (real `swift sft` on the compact tiny model: 80 Stage-1 steps, then a
4-step Stage-2 two-channel continuation with its eval step, ~2-3 minutes), then the `eval --model` CLI on the
checkpoint it produced (seed 000 2.1-2.5: the operational Stage-1 checklist; issue 11 items 3, 5, 6).

Asserts the report, every artefact and the values of the run: step counts, the loss falling, the format learnt
(parse rate), summary numbers recomputed independently from `gt_vs_pred.jsonl`, the Stage-2 row and its eval step
over the whole val split, the progress lines — not the demo bar (the quick run is far too short to localise)."""
from __future__ import annotations

import csv
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
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_quick_demo_report_and_artefacts(quick_demo):
    """seed 000 2.1-2.5: base model recorded, data validated, seeded run with resolved config beside the outputs,
    parse rate + finite coord curves, checkpoint exported with metrics and config snapshot. Seed rows: seed 000 2.1,
    seed 000 2.2, seed 000 2.3, seed 000 2.4, seed 000 2.5."""
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
    _check_eval_files(out / "eval_softce_w1", out / "shapes" / "val.jsonl", summary)
    export = out / "export_softce_w1"
    ckpt = max(train.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):  # the final checkpoint, byte for byte
        assert (export / name).read_bytes() == (ckpt / name).read_bytes(), name
    _check_exported_model(export)
    assert yaml.safe_load((export / "run_config.yaml").read_text()) == run_cfg
    assert json.loads((export / "coordexp_config.json").read_text()) == resolved
    exported = json.loads((export / "demo_metrics.json").read_text())
    assert exported["bbox_AP50"] == summary["bbox_AP50"] and exported["coord_curves_finite"] is True
    assert len((out / "eval_softce_w1" / "gt_vs_pred.jsonl").read_text().splitlines()) == 8  # every val image


def _check_eval_files(ev: Path, val_jsonl: Path, summary: dict) -> None:
    """The five §7.2 eval files agree with the val set and with each other (issue 8 item 8: content, not existence):
    one COCO image per val record with its objects as annotations, predictions only on those images with finite
    boxes, per-image / per-class counts summing to the totals, and AP50 recomputed by pycocotools' own
    ``COCOeval.summarize`` from the two COCO files equal to the reported one."""
    val = [json.loads(line) for line in val_jsonl.read_text().splitlines() if line.strip()]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["metrics"]["bbox_AP50"] == summary["bbox_AP50"] and metrics["source"].endswith("gt_vs_pred.jsonl")
    gt = json.loads((ev / "coco_gt.json").read_text())
    assert len(gt["images"]) == len(val) == metrics["counters"]["records_total"]
    per_record = [len(r["objects"]) for r in val]
    by_image = [sum(a["image_id"] == im["id"] for a in gt["annotations"]) for im in gt["images"]]
    assert by_image == per_record and sum(per_record) == metrics["counters"]["gt_objects"]
    preds = json.loads((ev / "coco_preds.json").read_text())
    assert len(preds) == metrics["counters"]["pred_objects"]
    ids = {im["id"] for im in gt["images"]}
    for p in preds:
        x, y, w, h = p["bbox"]
        assert p["image_id"] in ids and all(math.isfinite(v) for v in (x, y, w, h, p["score"])) and w >= 0 <= h
    per_image = json.loads((ev / "per_image.json").read_text())
    assert [p["num_gt"] for p in per_image] == per_record and sum(p["num_pred"] for p in per_image) == len(preds)
    with (ev / "per_class.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["category_id"]) for r in rows} == {c["id"] for c in gt["categories"]}
    assert sum(int(r["num_gt"]) for r in rows) == sum(per_record)
    assert sum(int(r["num_pred"]) for r in rows) == len(preds)
    if not preds:  # the quick run may predict nothing: every metric is then 0.0
        assert set(metrics["metrics"].values()) == {0.0}
        return
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    e = COCOeval(coco_gt, coco_gt.loadRes(preds), iouType="bbox")
    e.evaluate(), e.accumulate(), e.summarize()
    assert metrics["metrics"]["bbox_AP50"] == pytest.approx(max(float(e.stats[1]), 0.0), abs=1e-12)


def _check_exported_model(export: Path) -> None:
    """The export loads: config says qwen3_vl, the safetensors hold the language-model head / embeddings with the
    config's vocabulary rows, and the tokenizer maps every ``<|coord_k|>`` literal to one id below that size."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    config = json.loads((export / "config.json").read_text())
    vocab = config["text_config"]["vocab_size"]
    assert config["model_type"] == "qwen3_vl"
    with safe_open(str(export / "model.safetensors"), framework="pt") as f:
        rows = {k: f.get_slice(k).get_shape()[0] for k in f.keys()
                if k.endswith(("embed_tokens.weight", "lm_head.weight"))}
    assert rows and set(rows.values()) == {vocab}, rows
    tok = Tokenizer.from_file(str(export / "tokenizer.json"))
    coord_ids = [tok.encode(f"<|coord_{k}|>", add_special_tokens=False).ids for k in (0, 1, 500, 998, 999)]
    assert all(len(ids) == 1 and ids[0] < vocab for ids in coord_ids) and len({i[0] for i in coord_ids}) == 5


def test_eval_model_mode_on_demo_checkpoint(quick_demo, tmp_path):
    """`coordexp-swift eval --model CKPT --jsonl VAL --out_dir D` reads prompt and template from the run dir and
    reproduces the demo's own evaluation (greedy decoding is deterministic; same generation cap as the demo)."""
    from coordexp_swift.tools.demo import QUICK_DATA, eval_max_new_tokens

    out = quick_demo
    ckpt = sorted((out / "train_softce_w1").glob("checkpoint-*"))[-1]
    d = tmp_path / "eval"
    proc = subprocess.run([CLI, "eval", "--model", str(ckpt), "--jsonl", str(out / "shapes" / "val.jsonl"),
                           "--out_dir", str(d), "--batch_size", "25",
                           "--max_new_tokens", str(eval_max_new_tokens(QUICK_DATA))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "template=qwen3_vl_compact" in proc.stdout and "Detect all objects as JSON." in proc.stdout
    ours = json.loads((d / "metrics.json").read_text())["metrics"]
    demo = json.loads((out / "eval_softce_w1" / "metrics.json").read_text())["metrics"]
    assert ours == demo
    a = [json.loads(x)["raw_text"] for x in (d / "gt_vs_pred.jsonl").read_text().splitlines()]
    b = [json.loads(x)["raw_text"] for x in (out / "eval_softce_w1" / "gt_vs_pred.jsonl").read_text().splitlines()]
    assert a == b


def _logged(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "logging.jsonl").read_text().splitlines() if x.strip()]


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_quick_demo_values(quick_demo):
    """issue 11 items 2, 3, 6 (seed 000 2.4): the values of the quick run. Stage-1 ran its 80 planned steps and its
    logged loss fell below 0.8x the first step's; the model learnt the output format (parse rate >= 0.5 on the 8 val
    images); summary.json's counts and means equal an independent recomputation from each variant's
    gt_vs_pred.jsonl (parse flags, scipy Hungarian on IoU of the norm1000 boxes); Stage-2 continued from the Stage-1
    checkpoint for its 4 steps and its eval step saw every val object, its rollout/mAP in summary.json equal to the
    logged eval_rollout/mAP; the progress lines carry the logged loss."""
    from scipy.optimize import linear_sum_assignment

    out = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"softce_w1", "stage2_two_channel"}
    val = [json.loads(x) for x in (out / "shapes" / "val.jsonl").read_text().splitlines() if x.strip()]
    n_gt = sum(len(r["objects"]) for r in val)

    s1 = summary["softce_w1"]
    assert (s1["steps"], s1["max_steps"], s1["stopped_by_budget"]) == (80, 80, False)
    losses = [r["loss"] for r in _logged(out / "train_softce_w1") if "loss" in r and "global_step/max_steps" in r]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], losses
    assert s1["parse_rate"] >= 0.5, s1
    assert s1["rollout_mAP"] is None  # Stage-1 has no rollout eval step

    for name, row in summary.items():
        recs = [json.loads(x) for x in (out / f"eval_{name}" / "gt_vs_pred.jsonl").read_text().splitlines()]
        assert row["records"] == len(recs) == len(val) and row["gt_objects"] == n_gt
        ok = [not (r["parse"]["invalid_rollout"] or r["parse"]["truncated_record"] or r["parse"]["max_new_tokens"])
              for r in recs]
        assert row["parse_rate"] == pytest.approx(sum(ok) / len(recs), abs=1e-12)
        assert row["pred_objects"] == sum(len(r["pred"]) for r in recs)
        ious = []
        for r in recs:
            if r["pred"] and r["gt"]:
                m = [[_iou(p["bbox_2d"], g["bbox_2d"]) for g in r["gt"]] for p in r["pred"]]
                rows, cols = linear_sum_assignment(m, maximize=True)
                ious += [m[i][j] for i, j in zip(rows, cols)]
        assert row["matched"] == len(ious)
        if ious:
            assert row["mean_iou"] == pytest.approx(sum(ious) / len(ious), abs=1e-9)
            assert row["recall_iou50"] == pytest.approx(sum(i >= 0.5 for i in ious) / n_gt, abs=1e-12)
        else:
            assert math.isnan(row["mean_iou"]) and row["recall_iou50"] == 0.0

    s2 = summary["stage2_two_channel"]
    assert (s2["steps"], s2["max_steps"]) == (4, 4)
    s2_cfg = yaml.safe_load((out / "run_stage2_two_channel.yaml").read_text())
    assert s2_cfg["model"] == str(out / "train_softce_w1" / "checkpoint-80")
    assert s2_cfg["custom"]["trainer_variant"] == "stage2_two_channel"
    assert s2_cfg["stage2_ab"]["schedule"]["b_ratio"] == 0.5
    manifest = json.loads((out / "train_stage2_two_channel" / "pipeline_manifest.json").read_text())
    assert [o["config"]["coord_gate_weight"] for o in manifest["objective"] if o["name"] == "coord_reg"] == [1.0]
    evals = [r for r in _logged(out / "train_stage2_two_channel") if "eval_rollout/mAP" in r]
    assert len(evals) == 1 and evals[0]["eval_rollout/gt_objects_total"] == n_gt
    assert s2["rollout_mAP"] == evals[0]["eval_rollout/mAP"] and 0.0 <= s2["rollout_mAP"] <= 1.0

    report = (out / "REPORT.md").read_text()
    assert "| Stage-1 + Stage-2 two-channel (mixed A/B) | 4/4 |" in report
    assert "Measured offline" not in report  # only numbers of this run
    stdout = (out / "stdout.txt").read_text()
    step50 = next(r for r in _logged(out / "train_softce_w1") if r.get("global_step/max_steps") == "50/80")
    assert f"[softce_w1] step 50/80 | loss {step50['loss']:.3f} | coord acc {step50['coord_token_acc']:.3f}" in stdout
    assert "[stage2_two_channel] eval at step 4: rollout/mAP" in stdout
    assert "pictures:" in stdout and str(out / "overlays_") in stdout


def test_demo_frontier_rescores_the_final_checkpoint_like_the_demo(quick_demo):
    """issue 11 item 2 (the frontier tool): `coordexp-swift demo-frontier OUT` scores every kept Stage-1 checkpoint
    the way the demo scores its final model, so its row for the final checkpoint equals summary.json (same model,
    greedy decoding, same evaluator) and the printed table carries those numbers."""
    from coordexp_swift.tools.demo import QUICK_DATA
    from coordexp_swift.tools.demo_frontier import run_data

    out = quick_demo
    assert run_data(out) == QUICK_DATA  # so the default generation cap is the demo's own
    proc = subprocess.run([CLI, "demo-frontier", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "frontier_softce_w1.json").read_text())
    assert [r["step"] for r in rows] == [80]
    s1 = json.loads((out / "summary.json").read_text())["softce_w1"]
    for key in ("parse_rate", "mean_iou", "bbox_AP50", "bbox_AP", "recall_iou50", "coord_mae_bins", "matched"):
        assert rows[0][key] == s1[key] or (math.isnan(rows[0][key]) and math.isnan(s1[key])), key
    r = rows[0]
    assert f"| 80 | {r['parse_rate']:.2f} / {r['mean_iou']:.3f} / {r['bbox_AP50']:.3f} |" in proc.stdout


def test_progress_line_reads_growing_log(tmp_path):
    """issue 11 item 5: the progress line prints each row appended to logging.jsonl exactly once (a half-written
    last line waits for its newline), with the row's step, loss and coord accuracy; the eval step prints mAP."""
    import io

    from coordexp_swift.tools.demo import ProgressLine

    log = tmp_path / "logging.jsonl"
    buf = io.StringIO()
    mon = ProgressLine(log, "softce_w1", 3000, budget_s=600, stream=buf)
    assert mon.poll() == []  # no file yet
    row1 = {"loss": 6.5, "coord_token_acc": 0.0125, "global_step/max_steps": "50/3000"}
    row2 = {"loss": 3.21, "coord_token_acc": 0.18, "global_step/max_steps": "450/3000"}
    log.write_text(json.dumps(row1) + "\n" + json.dumps(row2)[:10])  # second row half written
    first = mon.poll()
    assert len(first) == 1 and first[0].startswith("[softce_w1] step 50/3000 | loss 6.500 | coord acc 0.013 |")
    with log.open("a") as fh:
        fh.write(json.dumps(row2)[10:] + "\n" + json.dumps({"eval_rollout/mAP": 0.25, "eval_rollout/f1": 0.5,
                                                             "global_step/max_steps": "450/3000"}) + "\n")
    second = mon.poll()
    assert [x.split(" | ")[:3] for x in second[:1]] == [["[softce_w1] step 450/3000", "loss 3.210", "coord acc 0.180"]]
    assert " it/s" in second[0] and "ETA " in second[0] and "budget left " in second[0]
    assert second[1] == "[softce_w1] eval at step 450: rollout/mAP 0.250, f1 0.500"
    assert mon.poll() == [] and buf.getvalue().count("\n") == 3


def test_study_table_mean_and_spread():
    """issue 11 item 4: STUDY.md cells are mean ± half-range (min..max) over the seeds; golden values by hand:
    AP50 0.2 / 0.4 -> 0.300 ± 0.100 (0.200..0.400); MAE 10 / 30 -> 20.0 ± 10.0; the per-seed bar check marks
    the seed whose Stage-1 AP50 is under the bar."""
    from coordexp_swift.tools.demo import study_table

    def row(ap50, mae):
        return {"parse_rate": 1.0, "mean_iou": 0.7, "bbox_AP50": ap50, "bbox_AP": ap50 / 2, "recall_iou50": 0.5,
                "coord_mae_bins": mae, "desc_acc": 1.0, "steps": 3000, "max_steps": 3000}

    per_seed = {42: {"softce_w1": row(0.2, 10.0)}, 43: {"softce_w1": row(0.4, 30.0)}}
    text = study_table(per_seed, machine="testbox (2 CPUs)", when="2026-12-04 17:00 UTC", bar=(0.95, 0.6, 0.3),
                       curriculum="multi")
    assert "Measured 2026-12-04 17:00 UTC on testbox (2 CPUs)" in text
    line = next(x for x in text.splitlines() if x.startswith("| Stage-1 softCE+W1"))
    assert "| 0.300 ± 0.100 (0.200..0.400) |" in line and "| 20.0 ± 10.0 (10.0..30.0) |" in line
    assert "| 42 | softce_w1 | 3000/3000 | 1.000 | 0.700 | 0.200 | ✘ |" in text
    assert "| 43 | softce_w1 | 3000/3000 | 1.000 | 0.700 | 0.400 | ✔ |" in text


def test_frontier_table_cells():
    """issue 11 item 2: the frontier table has a row per step over all runs and `–` where a run has no checkpoint;
    cells are parse / mean IoU / AP50 with 2/3/3 decimals (hand-written rows)."""
    from coordexp_swift.tools.demo_frontier import frontier_table

    text = frontier_table({"s42": [{"step": 500, "parse_rate": 1.0, "mean_iou": 0.2644, "bbox_AP50": 0.0251},
                                   {"step": 1000, "parse_rate": 0.99, "mean_iou": 0.5, "bbox_AP50": 0.5}],
                           "s43": [{"step": 1000, "parse_rate": 0.5, "mean_iou": 0.1, "bbox_AP50": 0.0}]})
    assert text.splitlines() == [
        "| step | s42: parse / mean IoU / AP50 | s43: parse / mean IoU / AP50 |", "|---|---|---|",
        "| 500 | 1.00 / 0.264 / 0.025 | – |", "| 1000 | 0.99 / 0.500 / 0.500 | 0.50 / 0.100 / 0.000 |"]
