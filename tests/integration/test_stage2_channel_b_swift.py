"""Real ``swift sft`` runs of Channel-B on the compact tiny Qwen3-VL (issue 10 acceptance; SPEC §3.6, §3.7, §7.1, §8).

A model whose output we control: ``tests/integration/force_rollout_plugin.py`` (a second ``external_plugins`` file)
adds a ``LogitsProcessor`` at generation only, so every rollout is exactly :data:`FORCED` — one record matching GT 0
(IoU 0.887), one FP record far from every GT, one ``poly`` record (dropped, reason ``poly``) — while the teacher-forced
forward is the real model's. Every training / eval sample has the same two GT objects (images from the shapes set),
so GT 1 is always FN. Hence per rollout: matched 1, FP 1, FN 1, drop/poly 1 — the matched / FP / FN paths all run.

Golden eval values, by hand: precision = recall = f1 = 1/2 per image; COCO categories {red square, blue circle}:
"red square" has one detection at IoU 38000/42850 = 0.887 with its GT in every image → AP 1 at the 8 thresholds
0.50..0.85 and 0 at 0.90, 0.95 → 0.8; "blue circle" has no detection → 0; "green thing" is no GT category (dropped);
so ``rollout/mAP`` = (0.8 + 0) / 2 = 0.4.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.swift_run import read_logging_jsonl, run_swift_sft, step_records

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLUGIN = str(REPO / "tests" / "integration" / "force_rollout_plugin.py")


def C(k):
    return f"<|coord_{k}|>"


def box(b):
    return ", ".join(C(v) for v in b)


GT = [("red square", (100, 100, 300, 300)), ("blue circle", (600, 600, 900, 900))]
FORCED = ('{"objects": [{"desc": "red square", "bbox_2d": [' + box((110, 95, 300, 310)) + ']}, {"desc": "green '
          'thing", "bbox_2d": [' + box((800, 10, 900, 90)) + ']}, {"desc": "blob", "poly": [' + box((1, 2, 3, 4))
          + "]}]}<|im_end|>")
B_KEYS = ("rollout/gt_objects_total", "rollout/valid_pred_objects_total", "rollout/matched_total",
          "rollout/fp_total", "rollout/fn_total", "rollout/fn_appended_total", "rollout/invalid_rollout_total",
          "rollout/drop_invalid_total", "rollout/gating_rejections_total", "rollout/truncated_total",
          "rollout/drop/poly_total", "rollout/fn_appended_per_sample_mean", "stage2/raw_rollouts_total",
          "time/rollout_generate_s", "time/rollout_parse_match_s", "packing/fill_ratio_mean",
          "packing/segments_total")
CONTRIBUTIONS = ("loss/struct_ce", "loss/desc_ce", "loss/coord_token_ce", "loss/coord_reg", "loss/geo")
EVAL_KEYS = ("eval_rollout/precision", "eval_rollout/recall", "eval_rollout/f1", "eval_rollout/gt_objects_total",
             "eval_rollout/valid_pred_objects_total", "eval_rollout/matched_total", "eval_rollout/fp_total",
             "eval_rollout/fn_total", "eval_rollout/drop/poly_total", "eval_rollout/gt_per_sample",
             "eval_rollout/pred_per_sample", "eval_rollout/mAP")


@pytest.fixture(scope="module")
def compact_model(tmp_path_factory):
    from coordexp_swift.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("compact_model"), seed=0, vocab="compact")


@pytest.fixture(scope="module")
def fixed_gt_data(shapes_dir, tmp_path_factory):
    """Shapes images, every record's objects replaced by :data:`GT` (train 4, val 2)."""
    d = tmp_path_factory.mktemp("fixed_gt")
    (d / "images").symlink_to(shapes_dir / "images")
    out = {}
    for split, n in (("train", 4), ("val", 2)):
        recs = [json.loads(x) for x in (shapes_dir / f"{split}.jsonl").read_text().splitlines()][:n]
        for r in recs:
            r["objects"] = [{"desc": dsc, "bbox_2d": [C(v) for v in b]} for dsc, b in GT]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        out[split] = d / f"{split}.jsonl"
    return out


def _config(path: str, model_dir, data, out, **overrides) -> dict:
    cfg = yaml.safe_load((REPO / path).read_text())
    cfg.update(model=str(model_dir), dataset=[str(data["train"])], output_dir=str(out),
               external_plugins=[str(REPO / "plugins" / "coordexp.py"), PLUGIN])
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def _run(cfg, workdir: Path, **env):
    workdir.mkdir(parents=True, exist_ok=True)
    proc = run_swift_sft(cfg, workdir, timeout=1500,
                         extra_env={"COORDEXP_TEST_FORCED_ROLLOUT": FORCED, **{k: str(v) for k, v in env.items()}})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])
    return proc


def _check_b_step(rec, n=2):
    for key in B_KEYS:
        assert key in rec, (key, sorted(rec))
    assert rec["stage2/raw_rollouts_total"] == n
    assert rec["rollout/gt_objects_total"] == 2 * n and rec["rollout/valid_pred_objects_total"] == 2 * n
    assert rec["rollout/matched_total"] == n and rec["rollout/fp_total"] == n and rec["rollout/fn_total"] == n
    assert rec["rollout/fn_appended_total"] == n and rec["rollout/fn_appended_per_sample_mean"] == 1.0
    assert rec["rollout/drop/poly_total"] == n and rec["rollout/drop_invalid_total"] == n
    assert rec["rollout/invalid_rollout_total"] == 0 and rec["rollout/truncated_total"] == 0
    assert not any(k.startswith("rollout/drop/") and k != "rollout/drop/poly_total" for k in rec)


def _loss_is_sum(rec):
    parts = [rec[k] for k in CONTRIBUTIONS if k in rec]
    assert {"loss/struct_ce", "loss/desc_ce", "loss/geo"} <= set(rec)
    assert sum(parts) == pytest.approx(rec["loss"], rel=1e-4, abs=1e-6)


def test_b_only_swift_sft(compact_model, fixed_gt_data, tmp_path):
    """Seed rows: seed 001 1.5, seed 001 2.2, seed 002 4.3, seed 002 6.2, seed 002 8.1.
    seed 001 1.5, 2.2 (B-only routing on a real run), 002 4.3 (B), 6.2 (time/*, packing/* emitted), 8.1 rollout
    keys on B steps: ``smoke_b_only.yaml`` for 2 steps, rollouts forced to the partly matching answer; every step
    logs the §8.1 keys with the expected counts, ``loss`` = Σ contributions, seeds logged per B0 (``s`` and
    ``seed_base`` = norm(42 + s·1000003)); with ``stage2_ab.packing: true`` step 0 logs the same loss, terms and
    grad norm (SPEC §3.3)."""
    out = tmp_path / "out"
    proc = _run(_config("configs/stage2_two_channel/smoke_b_only.yaml", compact_model, fixed_gt_data, out,
                        max_steps=2, rollout_matching={"max_new_tokens": 96}), tmp_path)
    recs = step_records(out)
    assert len(recs) == 2
    for rec in recs:
        _check_b_step(rec)
        _loss_is_sum(rec)
        assert rec["stage2/b_ratio_realized"] == 1.0
    log = proc.stdout + proc.stderr
    assert "Channel-B rollout: s=0 micro_idx=0 seed_base=42 " in log
    assert "Channel-B rollout: s=1 micro_idx=0 seed_base=1000045 " in log
    # SPEC §3.3: the packed B forward (stage2_ab.packing: one padding-free row per micro-step) logs the padded run's
    # step-0 loss, terms and grad norm (same forced rollouts, same weights before the first update)
    outp = tmp_path / "packed"
    _run(_config("configs/stage2_two_channel/smoke_b_only.yaml", compact_model, fixed_gt_data, outp, max_steps=1,
                 rollout_matching={"max_new_tokens": 96}, stage2_ab={"packing": True}), tmp_path / "wp")
    packed = step_records(outp)[0]
    _check_b_step(packed)
    assert packed["packing/fill_ratio_mean"] < 1.0
    for key in ("loss", "grad_norm", "loss/struct_ce", "loss/desc_ce", "loss/geo"):
        assert packed[key] == pytest.approx(recs[0][key], rel=1e-4), key


def test_mixed_and_rollout_aligned_with_eval(compact_model, fixed_gt_data, tmp_path):
    """Seed rows: seed 001 2.2, seed 002 3B.3, seed 002 6B.1, seed 002 6B.2, seed 002 6B.3, seed 002 6B.4,
    seed 002 8.1.
    seed 001 2.2 (mixed A,B routing), 002 3B.3 (rollout-aligned init log), 6B.1 / 6B.2 (both trainers: the same
    eval keys and values on the same data — forced rollouts make the eval independent of the weights), 6B.3
    (``eval_rollout/mAP`` a float; the first eval's ``evaluate_records`` forced to fail → warning naming
    ``ZeroDivisionError``, 0.0, training continues), 6B.4, 8.1 (rollout keys exactly on the steps that ran one):
    ``smoke_mixed.yaml`` (2 steps: A then B, eval after step 2) and ``stage2_rollout_aligned/smoke.yaml`` (2 steps,
    eval after steps 1 and 2). Golden eval values in the module docstring (mAP 0.4)."""
    evals = {}
    for name, path, extra in (
        ("mixed", "configs/stage2_two_channel/smoke_mixed.yaml", {"eval_strategy": "steps", "eval_steps": 2}),
        ("aligned", "configs/stage2_rollout_aligned/smoke.yaml", {"eval_steps": 1}),
    ):
        out = tmp_path / name
        cfg = _config(path, compact_model, fixed_gt_data, out, max_steps=2, val_dataset=[str(fixed_gt_data["val"])],
                      per_device_eval_batch_size=2, rollout_matching={"max_new_tokens": 96}, **extra)
        proc = _run(cfg, tmp_path / f"w_{name}", COORDEXP_TEST_FAIL_MAP_CALLS=1 if name == "aligned" else 0)
        log = proc.stdout + proc.stderr
        recs = step_records(out)
        assert len(recs) == 2
        if name == "mixed":
            assert not any(k in recs[0] for k in B_KEYS)  # step 0 is A: rollout keys absent, not 0
            assert "rollout/matched_total" not in recs[0] and recs[0]["stage2/b_ratio_realized"] == 0.0
            _check_b_step(recs[1])
            assert recs[1]["stage2/b_ratio_realized"] == 0.5
        else:
            for rec in recs:
                _check_b_step(rec)
            assert "stage2_rollout_aligned: Channel-B every step" in log
            assert "62c3a17870bf9bc9750e947fbb053286c5b983e8350138c721940395468124e9" in log
            assert "ZeroDivisionError" in log and "rollout/mAP failed" in log
        for rec in recs:
            _loss_is_sum(rec)
        ev = [r for r in read_logging_jsonl(out) if "eval_rollout/f1" in r]
        assert len(ev) == (1 if name == "mixed" else 2)
        for r in ev:
            assert not any(k.startswith("eval_loss") for k in r)  # no teacher-forced loss in eval
            assert isinstance(r["eval_rollout/mAP"], float)
            assert r["eval_rollout/precision"] == 0.5 and r["eval_rollout/recall"] == 0.5
            assert r["eval_rollout/f1"] == 0.5
            assert r["eval_rollout/gt_per_sample"] == 2.0 and r["eval_rollout/pred_per_sample"] == 2.0
            assert r["eval_rollout/gt_objects_total"] == 4 and r["eval_rollout/drop/poly_total"] == 2
        if name == "aligned":
            assert ev[0]["eval_rollout/mAP"] == 0.0  # forced failure
        assert ev[-1]["eval_rollout/mAP"] == pytest.approx(0.4, abs=1e-6)
        evals[name] = {k: v for k, v in ev[-1].items() if k in EVAL_KEYS}
    assert set(evals["mixed"]) == set(evals["aligned"]) == set(EVAL_KEYS)
    assert evals["mixed"] == evals["aligned"]


INVALID = "no JSON here<|im_end|>"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

NODESC = ('{"objects": [{"desc": "", "bbox_2d": [' + box((5, 5, 50, 50)) + ']}, {"desc": "red square", "bbox_2d": ['
          + box(GT[0][1]) + "]}]}<|im_end|>")


def test_two_process_disjoint_keys(compact_model, fixed_gt_data, tmp_path):
    """seed 002 7.2 / issue 10 item 5 / SPEC §8.3: ``NPROC_PER_NODE=2 ... use_cpu: true`` (gloo) run of
    ``smoke_mixed.yaml`` (A then B) where rank 0's rollouts drop a ``poly`` record and rank 1 has one invalid
    rollout and one ``missing_desc`` drop (disjoint drop-reason keys): no hang, both ranks log the same reduced
    dict on every step, and the counters are the sums over ranks (hand-computed: rank 0 = 2 × [1 matched, 1 FP,
    1 FN, poly]; rank 1 = [invalid: 2 FN] + [missing_desc, 1 matched (exact GT 0), 1 FN])."""
    out, logs = tmp_path / "out", tmp_path / "ranklogs"
    logs.mkdir()
    cfg = _config("configs/stage2_two_channel/smoke_mixed.yaml", compact_model, fixed_gt_data, out, max_steps=2,
                  use_cpu=True, rollout_matching={"max_new_tokens": 96})
    workdir = tmp_path / "w"
    workdir.mkdir()
    proc = run_swift_sft(cfg, workdir, timeout=1500, extra_env={
        "NPROC_PER_NODE": "2", "MASTER_PORT": str(_free_port()), "COORDEXP_TEST_LOG_DIR": str(logs),
        "COORDEXP_TEST_FORCED_ROLLOUT_BY_RANK": json.dumps({"0": [FORCED, FORCED], "1": [INVALID, NODESC]})})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])
    r0 = [json.loads(x) for x in (logs / "rank0.jsonl").read_text().splitlines()]
    r1 = [json.loads(x) for x in (logs / "rank1.jsonl").read_text().splitlines()]
    assert len(r0) == len(r1) >= 2
    for a, b in zip(r0, r1):
        assert set(a) == set(b)
        for k in a:  # time/* are reduced means of both ranks: equal too
            assert a[k] == (b[k] if isinstance(b[k], str) else pytest.approx(b[k], rel=1e-9, abs=1e-12)), k
    b_step = [r for r in r0 if "stage2/raw_rollouts_total" in r]
    assert len(b_step) == 1
    b = b_step[0]
    expect = {"stage2/raw_rollouts_total": 4, "rollout/gt_objects_total": 8, "rollout/valid_pred_objects_total": 5,
              "rollout/matched_total": 3, "rollout/fp_total": 2, "rollout/fn_total": 5,
              "rollout/fn_appended_total": 5, "rollout/invalid_rollout_total": 1, "rollout/drop_invalid_total": 3,
              "rollout/drop/poly_total": 2, "rollout/drop/missing_desc_total": 1, "rollout/truncated_total": 0,
              "rollout/precision": 3 / 5, "rollout/recall": 3 / 8}
    for k, v in expect.items():
        assert b[k] == pytest.approx(v), k
    assert b["rollout/fn_appended_per_sample_mean"] == pytest.approx((1 + 1 + 2 + 1) / 4)
    a_step = [r for r in r0 if "loss/struct_ce/self_context" in r]
    assert a_step and not any(k.startswith("rollout/") for k in a_step[0])
    steps = step_records(out)
    assert len(steps) == 2 and steps[1]["rollout/drop/missing_desc_total"] == 1


def test_failing_b_step_raises_never_reroutes(compact_model, fixed_gt_data, tmp_path):
    """seed 001 1.2 / SPEC §3.2, §3.6: with every Channel-B step forced to raise, ``smoke_mixed.yaml`` runs step 0
    as A (logged) and stops at step 1 (the first B step) with the error; the step is never rerouted to A."""
    out = tmp_path / "out"
    cfg = _config("configs/stage2_two_channel/smoke_mixed.yaml", compact_model, fixed_gt_data, out, max_steps=3)
    (tmp_path / "w").mkdir()
    proc = run_swift_sft(cfg, tmp_path / "w", timeout=1500,
                         extra_env={"COORDEXP_TEST_FORCED_ROLLOUT": FORCED, "COORDEXP_TEST_FAIL_B_STEP": "1"})
    assert proc.returncode != 0
    assert "forced Channel-B failure" in proc.stdout + proc.stderr
    steps = step_records(out)
    assert len(steps) == 1 and steps[0]["stage2/b_ratio_realized"] == 0.0 and "loss/struct_ce/self_context" in steps[0]
