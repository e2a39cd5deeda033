"""Fast checks of the demo's pure parts: matched-box statistics, run-config building, and the `eval --model`
settings resolution (prompt / field order / template read from the checkpoint's run dir)."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from coordexp_swift.eval.cli import resolve_generation_settings
from coordexp_swift.tools.demo import MAIN, PLAIN_CE, build_run_config, matched_box_stats


def _rec(gt, pred, *, invalid=False, truncated=False):
    return {"image": "x.png", "width": 100, "height": 100, "coord_mode": "norm1000", "gt": gt, "pred": pred,
            "parse": {"invalid_rollout": invalid, "truncated_record": truncated, "max_new_tokens": False}}


def test_matched_box_stats_hand_values():
    """Hungarian (class-agnostic, no IoU gate) statistics against values computed by hand.

    record 0: GT [0,0,99,99], pred [0,0,99,49] (desc "Red_Square" normalises to the GT's "red square"):
      IoU = (99*49)/(99*99) = 49/99; |err| = (0, 0, 0, 50) -> 4 coordinates summing to 50.
    record 1: two GT, one pred equal to GT #1 -> matched to it (IoU 1, err 0), desc wrong; GT #0 unmatched.
    record 2: invalid rollout, no preds; its GT counts for recall.
    mean IoU = (49/99 + 1)/2; recall@0.5 = 1 matched pair with IoU >= .5 / 4 GT; desc acc = 1/2;
    MAE = 50 / 8 coordinates; parse rate = 2/3.
    """
    recs = [
        _rec([{"desc": "red square", "bbox_2d": [0, 0, 99, 99]}],
             [{"desc": "Red_Square", "bbox_2d": [0, 0, 99, 49]}]),
        _rec([{"desc": "blue square", "bbox_2d": [0, 0, 10, 10]}, {"desc": "green square", "bbox_2d": [500, 500, 700, 700]}],
             [{"desc": "blue square", "bbox_2d": [500, 500, 700, 700]}]),
        _rec([{"desc": "red square", "bbox_2d": [1, 1, 5, 5]}], [], invalid=True),
    ]
    s = matched_box_stats(recs)
    assert (s.records, s.gt_objects, s.pred_objects, s.matched) == (3, 4, 2, 2)
    assert s.parse_rate == pytest.approx(2 / 3)
    assert s.mean_iou == pytest.approx((49 / 99 + 1.0) / 2)
    assert s.recall_iou50 == pytest.approx(1 / 4)
    assert s.desc_acc == pytest.approx(0.5)
    assert s.coord_mae_bins == pytest.approx(50 / 8)


def test_matched_box_stats_counts_zero_iou_pairs():
    """Without a gate a disjoint pred is still matched (IoU 0 pulls the mean down) — the mean is not inflated
    by only averaging good boxes."""
    s = matched_box_stats([_rec([{"desc": "a", "bbox_2d": [0, 0, 10, 10]}],
                                [{"desc": "a", "bbox_2d": [800, 800, 900, 900]}])])
    assert s.matched == 1 and s.mean_iou == 0.0 and s.recall_iou50 == 0.0
    assert s.coord_mae_bins == pytest.approx((800 + 800 + 890 + 890) / 4)


def test_matched_box_stats_nan_without_pairs():
    s = matched_box_stats([_rec([{"desc": "a", "bbox_2d": [0, 0, 10, 10]}], [], invalid=True)])
    assert s.matched == 0 and math.isnan(s.mean_iou) and s.parse_rate == 0.0


def test_build_run_config_fills_paths_and_variant(tmp_path, repo_root):
    """The demo YAML gets absolute model/data/output/plugin paths; the plain-CE variant only flips `enabled`;
    a --quick max_steps also bounds save_steps so a checkpoint exists."""
    tpl = repo_root / "configs" / "demo" / "stage1_shapes.yaml"
    base = yaml.safe_load(tpl.read_text())
    cfg = build_run_config(tpl, model_dir=tmp_path / "m", shapes_dir=tmp_path / "s", output_dir=tmp_path / "o",
                           variant=PLAIN_CE, max_steps=7)
    assert cfg["model"] == str(tmp_path / "m")
    assert cfg["dataset"] == [str(tmp_path / "s" / "train.jsonl")]
    assert cfg["val_dataset"] == [str(tmp_path / "s" / "val.jsonl")]
    assert cfg["output_dir"] == str(tmp_path / "o") and cfg["add_version"] is False
    assert cfg["external_plugins"] == ["coordexp_swift"]  # the installed plugin, by name (issue 11 item 6)
    assert cfg["max_steps"] == 7 and cfg["save_steps"] == 7
    assert cfg["custom"]["coord_soft_ce_w1"]["enabled"] is False
    # everything else identical to the template (the comparison differs in exactly one key)
    assert cfg["custom"]["coord_soft_ce_w1"]["w1_weight"] == base["custom"]["coord_soft_ce_w1"]["w1_weight"]
    assert cfg["custom"]["user_prompt"] == base["custom"]["user_prompt"]
    main = build_run_config(tpl, model_dir=tmp_path / "m", shapes_dir=tmp_path / "s", output_dir=tmp_path / "o",
                            variant=MAIN)
    assert main["custom"] == base["custom"] and main["max_steps"] == base["max_steps"]
    assert main["template"] == "qwen3_vl_compact"


def test_build_run_config_requires_plan_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "x", "seed": 1, "save_steps": 5, "template": "qwen3_vl"}))
    with pytest.raises(ValueError, match="missing `max_steps`"):
        build_run_config(bad, model_dir=tmp_path, shapes_dir=tmp_path, output_dir=tmp_path, variant=MAIN)


def test_generation_settings_from_run_dir_and_flags(tmp_path):
    """`eval --model CKPT`: prompt / system prompt / field order from the run's coordexp_config.json, template
    and max_pixels from ms-swift's args.json (run dir = checkpoint's parent); explicit flags win."""
    run = tmp_path / "run"
    ckpt = run / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (run / "coordexp_config.json").write_text(json.dumps({"custom": {
        "user_prompt": "Find shapes.", "system_prompt": "be brief", "object_field_order": "geometry_first"}}))
    (run / "args.json").write_text(json.dumps({"template": "qwen3_vl_compact", "max_pixels": 4096}))
    s = resolve_generation_settings(ckpt)
    assert (s.template_type, s.user_prompt, s.system_prompt, s.object_field_order, s.max_pixels) == (
        "qwen3_vl_compact", "Find shapes.", "be brief", "geometry_first", 4096)
    assert len(s.sources) == 2
    o = resolve_generation_settings(ckpt, template_type="qwen3_vl", user_prompt="P", object_field_order="desc_first")
    assert (o.template_type, o.user_prompt, o.object_field_order) == ("qwen3_vl", "P", "desc_first")


def test_generation_settings_defaults_and_bad_file(tmp_path):
    from coordexp_swift.config import DEFAULT_USER_PROMPT

    s = resolve_generation_settings(tmp_path)
    assert (s.template_type, s.user_prompt, s.system_prompt, s.object_field_order, s.sources) == (
        "qwen3_vl", DEFAULT_USER_PROMPT, None, "desc_first", ())
    (tmp_path / "args.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="args.json: expected a JSON object"):
        resolve_generation_settings(tmp_path)


def test_budget_stop_uses_newest_checkpoint(tmp_path):
    """The wall-clock budget: a run still going after `budget_s` is terminated (its process group) and the newest
    complete checkpoint is returned, flagged as stopped by the budget; a run with no checkpoint is an error."""
    import sys

    from coordexp_swift.tools.demo import run_swift_sft

    out = tmp_path / "run"
    script = ("import os, sys, time\n"
              "for step in (5, 10):\n"
              f"    d = os.path.join({str(out)!r}, f'checkpoint-{{step}}'); os.makedirs(d)\n"
              "    open(os.path.join(d, 'model.safetensors'), 'w').close()\n"
              f"os.makedirs(os.path.join({str(out)!r}, 'checkpoint-15'))  # incomplete: no weights\n"
              "print('saved', flush=True); time.sleep(120)\n")
    t = run_swift_sft(tmp_path / "x.yaml", out, budget_s=3.0, max_steps=20, log=tmp_path / "log.txt",
                      command=[sys.executable, "-c", script])
    assert t.stopped_by_budget and t.steps_done == 10 and t.checkpoint == out / "checkpoint-10"
    assert t.max_steps == 20 and 3.0 <= t.wall_s < 60
    with pytest.raises(RuntimeError, match="no checkpoint"):
        run_swift_sft(tmp_path / "x.yaml", tmp_path / "empty", budget_s=30, max_steps=1,
                      log=tmp_path / "log2.txt", command=[sys.executable, "-c", "pass"])


def test_curricula_run_plans(repo_root):
    """issue 11 item 2: each curriculum's Stage-1 plan as swift receives it. `squares`: the YAML's 3000 steps, σ 2,
    8-minute budget. `multi`: 4000 steps (the measured frontier reaches its bar region there, docs/demo.md), σ 4,
    desc-first (the default order), a 45-minute budget so a 2-core machine is not cut short, and its data (1-3
    objects, two shapes × four colours)."""
    from pathlib import Path

    from coordexp_swift.tools.demo import CURRICULA, DEFAULT_CONFIG

    def plan(name):
        cfg = build_run_config(DEFAULT_CONFIG, model_dir=Path("/m"), shapes_dir=Path("/s"), output_dir=Path("/o"),
                               variant=MAIN, sets=CURRICULA[name].sets)
        c = cfg["custom"]
        return (cfg["max_steps"], c["coord_soft_ce_w1"]["target_sigma"], c.get("object_field_order", "desc_first"),
                CURRICULA[name].budget_min)

    assert plan("squares") == (3000, 2.0, "desc_first", 8.0)
    assert plan("multi") == (4000, 4.0, "desc_first", 45.0)
    d = CURRICULA["multi"].data
    assert (d.min_objects, d.max_objects, len(d.shapes), len(d.colors)) == (1, 3, 2, 4)
