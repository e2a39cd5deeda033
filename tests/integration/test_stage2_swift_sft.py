"""Real ``swift sft`` runs of the two-channel trainer on the compact tiny Qwen3-VL (issue 9 acceptance; SPEC §3,
§6.4, §8).

Every run starts from the shipped ``configs/stage2_two_channel/smoke_*.yaml`` with only the model, data and output
paths (and the varied knob) replaced. Equal-split data for the equivalence runs: 4 one-object shapes samples whose
desc is set to the same string, so every micro-batch of 2 has the same token, slot and box counts; Stage-2 module
means are micro-batch local (SPEC §4.2), so only then is a batch of 4 exactly the mean of two batches of 2.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

from tests.integration.swift_run import read_logging_jsonl, run_swift_sft, step_records

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GOLDEN = "7ac21c5c36850a970028595ba9863045f7a3e175914098f89e1b7ef9cf380e34"
CONTRIBUTIONS = ("loss/struct_ce", "loss/desc_ce", "loss/coord_token_ce", "loss/coord_reg", "loss/geo")
A_KEYS = ("loss", "loss/struct_ce", "loss/desc_ce", "loss/geo", "loss/coord_reg", "loss/struct_ce/self_context",
          "loss/geo/bbox_smoothl1", "loss/geo/bbox_ciou", "loss/coord_reg/soft_ce", "time/forward_s",
          "stage2/b_ratio_realized", "coord_diag/gt/coord_tokens_total", "coord_diag/gt/p_gt_mean",
          "coord_diag/self_context/coord_tokens_total", "coord_diag/self_context/expected_bin_mae_mean")
COMPARED = ("loss", "grad_norm", "loss/struct_ce", "loss/desc_ce", "loss/geo", "loss/coord_reg",
            "loss/struct_ce/self_context", "coord_diag/gt/coord_tokens_total")


@pytest.fixture(scope="module")
def compact_model(tmp_path_factory):
    from coordexp_swift.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("compact_model"), seed=0, vocab="compact")


@pytest.fixture(scope="module")
def equal_split_data(shapes_dir, tmp_path_factory):
    """4 one-object samples with the same desc (equal supervision per sample), images from the shapes set."""
    d = tmp_path_factory.mktemp("equal_split")
    (d / "images").symlink_to(shapes_dir / "images")
    recs = [json.loads(x) for x in (shapes_dir / "train.jsonl").read_text().splitlines()]
    one = [r for r in recs if len(r["objects"]) == 1][:4]
    assert len(one) == 4
    for r in one:
        r["objects"][0]["desc"] = "red circle"
    path = d / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in one))
    return path


def stage2_config(smoke: str, model_dir: Path, data: Path, out: Path, **overrides) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "stage2_two_channel" / smoke).read_text())
    cfg.update(model=str(model_dir), dataset=[str(data)], output_dir=str(out),
               external_plugins=[str(REPO / "plugins" / "coordexp.py")])
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _run(cfg, workdir: Path, **kw):
    workdir.mkdir(parents=True, exist_ok=True)
    return run_swift_sft(cfg, workdir, timeout=900, **kw)


def _ok(proc):
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-5000:])


def _same(a: dict, b: dict, rel: float, keys=COMPARED):
    for key in keys:
        assert key in a and key in b, key
        assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (key, a[key], b[key])


# An extra plugin file given beside coordexp's: it counts, per training step, every call of the Qwen3-VL model's
# forward (with the token source it got and whether grad was on) and of ``generate``, at class level, so the count
# covers whatever the trainer calls; one JSON line per ``training_step`` in ``<output_dir>/forward_probe.jsonl``.
FORWARD_PROBE = '''
import functools, json, os, torch, transformers.trainer as T
from transformers import Qwen3VLForConditionalGeneration as M
_calls = []
_fwd, _gen, _step = M.forward, M.generate, T.Trainer.training_step
@functools.wraps(_fwd)  # keep the signature: ms-swift's forward hook filters kwargs by it
def forward(self, *a, **k):
    _calls.append({"src": "input_ids" if k.get("input_ids") is not None else "inputs_embeds",
                   "grad": torch.is_grad_enabled(), "use_cache": k.get("use_cache")})
    return _fwd(self, *a, **k)
@functools.wraps(_gen)
def generate(self, *a, **k):
    _calls.append({"src": "generate"})
    return _gen(self, *a, **k)
def training_step(self, *a, **k):
    _calls.clear()
    out = _step(self, *a, **k)
    with open(os.path.join(self.args.output_dir, "forward_probe.jsonl"), "a") as f:
        f.write(json.dumps({"step": self.state.global_step, "calls": list(_calls)}) + "\\n")
    return out
M.forward, M.generate, T.Trainer.training_step = forward, generate, training_step
'''


@pytest.fixture(scope="module")
def smoke_run(compact_model, shapes_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke_a_only")
    out = work / "out"
    probe = work / "forward_probe_plugin.py"
    probe.write_text(FORWARD_PROBE)
    cfg = stage2_config("smoke_a_only.yaml", compact_model, shapes_dir / "train.jsonl", out, max_steps=3)
    cfg["external_plugins"] = [*cfg["external_plugins"], str(probe)]
    proc = _run(cfg, work)
    return proc, out, work / "run.yaml"


def test_smoke_a_only_exactly_n_forwards_no_generate(smoke_run):
    """seed 001 1.3, 1.3.1, issue 9 acceptance ("exactly n forwards per step and no generate"): in the real
    ``swift sft`` run of ``smoke_a_only.yaml`` (n_softctx_iter 2, em_detach, GA 1) every training step calls the
    model exactly twice — A1 with ``input_ids`` and grad, then the final iteration with ``inputs_embeds`` and grad
    (n=2 has no middle no_grad iteration) — always with ``use_cache=False``, and never ``generate``."""
    proc, out, _ = smoke_run
    _ok(proc)
    lines = [json.loads(x) for x in (out / "forward_probe.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [0, 1, 2]
    for rec in lines:
        assert rec["calls"] == [{"src": "input_ids", "grad": True, "use_cache": False},
                                {"src": "inputs_embeds", "grad": True, "use_cache": False}], rec


def test_smoke_a_only_logs(smoke_run):
    """seed 001 1.1, 1.7, 2.2 (A routing), 002 4.3 (A), 7C.1-7C.5, 9.3D: ``swift sft smoke_a_only.yaml`` builds the
    trainer from the YAML alone and runs 3 Channel-A steps; every step logs the §8.2 contributions (adding up to
    ``loss`` within 1e-5 relative), breakdowns, ``coord_diag/{gt,self_context}/*``, ``time/forward_s`` and
    ``stage2/b_ratio_realized`` = 0.0, all finite; no internal (``_``) key, no alias key; counters are integers.
    Seed rows: seed 001 1.1, seed 001 1.7, seed 001 2.2, seed 002 4.3, seed 002 7C.1, seed 002 7C.2, seed 002 7C.3,
    seed 002 7C.4, seed 002 7C.5, seed 002 9.3D."""
    proc, out, _ = smoke_run
    _ok(proc)
    steps = step_records(out)
    assert len(steps) == 3
    for rec in steps:
        for key in A_KEYS:
            assert key in rec, (key, sorted(rec))
        for key, val in rec.items():
            if isinstance(val, float):
                assert math.isfinite(val), key
        total = sum(rec[k] for k in CONTRIBUTIONS if k in rec)
        assert rec["loss"] == pytest.approx(total, rel=1e-5)
        assert rec["stage2/b_ratio_realized"] == 0.0
        assert not any(seg.startswith("_") for k in rec for seg in k.split("/"))
        assert not any(k in rec for k in ("loss/ce", "loss/coord", "loss/token_ce_obj")) and not any(
            k.startswith("loss_") for k in rec)
        assert rec["coord_diag/gt/coord_tokens_total"] == int(rec["coord_diag/gt/coord_tokens_total"]) > 0
        assert rec["time/forward_s"] > 0


def test_smoke_writes_manifest_and_init_line(smoke_run):
    """seed 002 3.4, 8.1 (default = golden), issue 9 item 5: ``pipeline_manifest.json`` (canonical JSON whose
    SHA-256 is the §6.4 golden), ``coordexp_config.json``, and the init line with modules, checksum, config path,
    run name and seed in the run's log."""
    proc, out, yaml_path = smoke_run
    _ok(proc)
    raw = (out / "pipeline_manifest.json").read_text()
    assert hashlib.sha256(raw.rstrip("\n").encode()).hexdigest() == GOLDEN
    assert raw.rstrip("\n") == (REPO / "tests/golden/pipeline_manifest_two_channel.json").read_text().strip()
    resolved = json.loads((out / "coordexp_config.json").read_text())
    assert resolved["variant"] == "stage2_two_channel"
    assert resolved["stage2_ab"]["schedule"]["b_ratio"] == 0.0 and resolved["stage2_ab"]["packing"] is False
    log = proc.stdout + proc.stderr
    line = next(x for x in log.splitlines() if "objective pipeline (stage2_two_channel" in x)
    for frag in ("token_ce[w=1.0,ch=A+B]", "bbox_geo[", "coord_reg[", "coord_diag[", f"checksum={GOLDEN}",
                 f"config={yaml_path}", "seed=42", "run_name="):
        assert frag in line, (frag, line)


# Routing of the B-only / mixed smokes with real Channel-B steps, and "a failing B step raises, never reroutes":
# tests/integration/test_stage2_channel_b_swift.py (issue 10).


def test_packed_equals_unpacked(smoke_run, compact_model, shapes_dir, tmp_path):
    """seed 001 1.7.7 / SPEC §3.3 / issue 9 acceptance: ``stage2_ab.packing: true`` (one padding-free row per
    micro-step, 4-row positions) logs the same losses as the padded run on every step and the same first-step
    grad norm (1e-4 relative: float summation order only). Later grad norms are compared at 1e-2: after two Adam
    updates the ~1e-7 differences of near-zero gradients are amplified to lr-sized parameter differences (seen:
    6e-4 relative at step 3 while every loss still agreed to 1e-6)."""
    _, unpacked_out, _ = smoke_run
    out = tmp_path / "out"
    cfg = stage2_config("smoke_a_only.yaml", compact_model, shapes_dir / "train.jsonl", out, max_steps=3,
                        stage2_ab={"packing": True})
    _ok(_run(cfg, tmp_path))
    packed, unpacked = step_records(out), step_records(unpacked_out)
    assert len(packed) == len(unpacked) == 3
    for i, (p, u) in enumerate(zip(packed, unpacked)):
        _same(p, u, 1e-4, keys=COMPARED if i == 0 else tuple(k for k in COMPARED if k != "grad_norm"))
        assert p["grad_norm"] == pytest.approx(u["grad_norm"], rel=1e-2)


@pytest.fixture(scope="module")
def batch4_run(compact_model, equal_split_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch4")
    out = work / "out"
    cfg = stage2_config("smoke_a_only.yaml", compact_model, equal_split_data, out, max_steps=1,
                        per_device_train_batch_size=4, train_dataloader_shuffle=False)
    _ok(_run(cfg, work))
    return step_records(out)[0]


def test_batch4_equals_batch2_ga2(batch4_run, compact_model, equal_split_data, tmp_path):
    """issue 9 acceptance (batch 4, GA 1) = (batch 2, GA 2): on equal-split data the first optimizer step logs the
    same loss, contributions and grad norm (1e-4 relative)."""
    out = tmp_path / "out"
    cfg = stage2_config("smoke_a_only.yaml", compact_model, equal_split_data, out, max_steps=1,
                        per_device_train_batch_size=2, gradient_accumulation_steps=2, train_dataloader_shuffle=False)
    _ok(_run(cfg, tmp_path))
    _same(step_records(out)[0], batch4_run, 1e-4, keys=COMPARED[:-1])


def test_two_gloo_processes_equal_one(batch4_run, compact_model, equal_split_data, tmp_path):
    """seed 002 7.2 (A half) / issue 9 acceptance: 2 gloo processes x batch 2 (``NPROC_PER_NODE=2``,
    ``use_cpu: true``) log the same loss, contributions and grad norm as 1 process x batch 4; the metric
    reduction (key union + one SUM all-reduce) runs in ``Trainer.log`` on both ranks without a hang."""
    out = tmp_path / "out"
    cfg = stage2_config("smoke_a_only.yaml", compact_model, equal_split_data, out, max_steps=1,
                        per_device_train_batch_size=2, use_cpu=True, train_dataloader_shuffle=False)
    _ok(_run(cfg, tmp_path, extra_env={"NPROC_PER_NODE": "2", "MASTER_PORT": "29541"}))
    two = step_records(out)[0]
    _same(two, batch4_run, 1e-4, keys=COMPARED[:-1])
    # counters are summed over ranks: the coord tokens of all 4 samples
    assert two["coord_diag/gt/coord_tokens_total"] == batch4_run["coord_diag/gt/coord_tokens_total"] == 16


def test_resume_equals_uninterrupted(compact_model, shapes_dir, tmp_path):
    """seed 001 1.2 (after resume) / issue 9 acceptance: resuming at step 2 from a checkpoint gives the same
    schedule (``stage2/b_ratio_realized``) and the same per-step losses for steps 3-4 as the uninterrupted run."""
    full_out = tmp_path / "full" / "out"
    cfg = stage2_config("smoke_a_only.yaml", compact_model, shapes_dir / "train.jsonl", full_out, max_steps=4,
                        save_strategy="steps", save_steps=2)
    _ok(_run(cfg, tmp_path / "full"))
    full = step_records(full_out)
    assert len(full) == 4 and (full_out / "checkpoint-2").is_dir()
    resumed_out = tmp_path / "resumed" / "out"
    cfg = stage2_config("smoke_a_only.yaml", compact_model, shapes_dir / "train.jsonl", resumed_out, max_steps=4,
                        save_strategy="no", resume_from_checkpoint=str(full_out / "checkpoint-2"))
    _ok(_run(cfg, tmp_path / "resumed"))
    resumed = [r for r in step_records(resumed_out)]
    assert [r["global_step/max_steps"] for r in resumed] == ["3/4", "4/4"]
    for got, want in zip(resumed, full[2:]):
        _same(got, want, 1e-5, keys=COMPARED + ("stage2/b_ratio_realized",))
