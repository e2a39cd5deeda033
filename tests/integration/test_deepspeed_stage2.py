"""Stage-2 two-channel under DeepSpeed ZeRO-2 / ZeRO-3 on CPU (issue 12 item 2, Stage-2 half; issue 9 bug: Channel-A
under DeepSpeed; SPEC §3.3, §3.4, §3.6).

``smoke_mixed.yaml`` (b_ratio 0.5: step 0 is A with ``n_softctx_iter: 2``, i.e. an ``inputs_embeds`` forward with
``pixel_values``; step 1 is B with real greedy HF rollouts) on the compact tiny Qwen3-VL, 2 gloo processes
(``NPROC_PER_NODE=2``, ``use_cpu: true``, ``configs/deepspeed/zero{2,3}.json``, no precision flags: the argv hook adds
``--fp16 false``), compared with the same run under plain 2-process DDP. Nothing is forced: the rollouts are the
model's own greedy decodes, so "ZeRO-3 generates with the full weights" is checked by the token ids themselves.

Two extra plugin files record what really ran: ``test_deepspeed.PROBE`` (engine, ZeRO optimizer, world size) and
:data:`ROLLOUT_PROBE` (per rank: every rollout's response ids; at every HF ``generate`` entry, how many ZeRO-3
partitioned parameters are not gathered).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.swift_run import REPO, free_port, run_swift_sft, step_records
from tests.integration.test_deepspeed import PROBE, _assert_engine
from tests.integration.test_stage2_channel_b_swift import compact_model, fixed_gt_data  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

ROLLOUT_PROBE = '''
import json, os
from transformers.generation.utils import GenerationMixin
from coordexp_swift.rollout.hf_backend import HFRolloutBackend

_DIR, _RANK = os.environ["COORDEXP_TEST_DS_PROBE_DIR"], os.environ.get("RANK", "0")


def _write(name, rec):
    with open(os.path.join(_DIR, f"{name}_rank{_RANK}.jsonl"), "a") as fh:
        fh.write(json.dumps(rec) + "\\n")


_backend_generate = HFRolloutBackend.generate


def backend_generate(self, samples, **kw):
    outs = _backend_generate(self, samples, **kw)
    _write("rollouts", {"response_ids": [list(o.response_ids) for o in outs],
                        "truncated": [bool(o.truncated) for o in outs]})
    return outs


HFRolloutBackend.generate = backend_generate
_hf_generate = GenerationMixin.generate


def hf_generate(self, *a, **k):
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    part = [p for p in self.parameters() if hasattr(p, "ds_id") and not p.ds_persist]
    _write("generate", {"partitioned": len(part),
                        "not_gathered": sum(p.ds_status != ZeroParamStatus.AVAILABLE or p.numel() != p.ds_numel
                                            for p in part)})
    return _hf_generate(self, *a, **k)


GenerationMixin.generate = hf_generate
'''
A_ONLY = ("loss/struct_ce/self_context",)
B_COUNTERS = ("stage2/raw_rollouts_total", "rollout/gt_objects_total", "rollout/valid_pred_objects_total",
              "rollout/matched_total", "rollout/fp_total", "rollout/fn_total", "rollout/fn_appended_total",
              "rollout/invalid_rollout_total", "rollout/drop_invalid_total", "rollout/truncated_total")


def _run(model_dir: Path, data: dict, work: Path, name: str, *, deepspeed: str | None) -> Path:
    """2 optimizer steps (A then B) of ``smoke_mixed.yaml`` on 2 gloo processes × 2 samples, from the same seed."""
    work.mkdir(parents=True, exist_ok=True)
    out, probes = work / name, work / f"{name}_probes"
    probes.mkdir()
    (work / "probe_plugin.py").write_text(PROBE)
    (work / "rollout_probe.py").write_text(ROLLOUT_PROBE)
    cfg = yaml.safe_load((REPO / "configs/stage2_two_channel/smoke_mixed.yaml").read_text())
    cfg.update(model=str(model_dir), dataset=[str(data["train"])], output_dir=str(out), max_steps=2, use_cpu=True,
               train_dataloader_shuffle=False,
               external_plugins=[str(REPO / "plugins" / "coordexp.py"), str(work / "probe_plugin.py"),
                                 str(work / "rollout_probe.py")])
    cfg["rollout_matching"] = {**cfg["rollout_matching"], "max_new_tokens": 48}
    if deepspeed:
        cfg["deepspeed"] = str(REPO / "configs" / "deepspeed" / f"{deepspeed}.json")  # no fp16/bf16 flags
    run_dir = work / f"{name}_run"
    run_dir.mkdir()
    proc = run_swift_sft(cfg, run_dir, timeout=1200, extra_env={
        "NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port()), "COORDEXP_TEST_DS_PROBE_DIR": str(probes)})
    assert proc.returncode == 0, proc.stderr[-5000:] + proc.stdout[-2000:]
    # ms-swift's default gradient checkpointing, non-reentrant (DDP: ms-swift's choice; DeepSpeed: the trainer's)
    assert "use_reentrant: False" in proc.stdout + proc.stderr
    return out


def _probe(out: Path, kind: str, rank: int) -> list[dict]:
    path = out.parent / f"{out.name}_probes" / f"{kind}_rank{rank}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(compact_model, fixed_gt_data, tmp_path_factory) -> Path:  # noqa: F811
    """The baseline: plain 2-process DDP (gloo)."""
    return _run(compact_model, fixed_gt_data, tmp_path_factory.mktemp("ds2"), "ddp", deepspeed=None)


@pytest.mark.parametrize("stage,optimizer", [("zero2", "DeepSpeedZeroOptimizer"),
                                             ("zero3", "DeepSpeedZeroOptimizer_Stage3")])
def test_mixed_under_zero_equals_ddp(compact_model, fixed_gt_data, tmp_path, ddp_run,  # noqa: F811
                                     stage, optimizer):
    """issue 12 item 2 (Stage-2 half), issue 9 (Channel-A under DeepSpeed), SPEC §3.4 / §3.6: ``smoke_mixed.yaml``
    under ``configs/deepspeed/{stage}.json`` really runs DeepSpeed (engine + that stage's ZeRO optimizer, world 2),
    runs its A step (logs the self-context keys, no rollout keys) and its B step (rollout keys), and equals plain
    2-process DDP:

    * step 0 (A): ``loss``, every ``loss/*`` term, rel 1e-6 — the same fp32 forwards on the same micro-batches
      (ms-swift's DeepSpeed forward for A1, transformers' for the ``inputs_embeds`` iteration, both bitwise equal to
      the DDP path's in ``tests/unit/test_forward_swift_ds_patch.py``); ``grad_norm`` rel 1e-4 (the Stage-1 test's
      bound: torch's fp32 norm over the 9.8M-element embedding gradient on CPU loses ~1e-5 in DDP, ZeRO's own norm
      does not).
    * step 1 (B): each rank's greedy rollouts equal DDP's token for token (the weights after one AdamW step agree to
      1e-6, Stage-1 test; greedy argmax on this model has no near-ties at that scale), hence every rollout counter
      exactly; ``loss`` / ``loss/*`` / ``grad_norm`` rel 1e-4 (a teacher-forced forward on weights that differ by
      ~1e-6 after step 0).
    * ZeRO-3: at every HF ``generate`` entry no partitioned parameter is left un-gathered (the backend gathers the
      full weights around ``generate``); the ZeRO-3 run did partition parameters (the check is not vacuous).
    """
    out = _run(compact_model, fixed_gt_data, tmp_path, stage, deepspeed=stage)
    _assert_engine(ddp_run, None)
    _assert_engine(out, optimizer)
    ddp, got = step_records(ddp_run), step_records(out)
    assert len(ddp) == len(got) == 2
    # step 0: A (self-context keys, no rollout keys)
    for rec in (ddp[0], got[0]):
        assert all(k in rec for k in A_ONLY) and not any(k.startswith("rollout/") for k in rec)
    loss_keys = sorted(k for k in ddp[0] if k == "loss" or k.startswith("loss/"))
    assert len(loss_keys) >= 6 and set(loss_keys) == {k for k in got[0] if k == "loss" or k.startswith("loss/")}
    for key in loss_keys:
        assert got[0][key] == pytest.approx(ddp[0][key], rel=1e-6), (key, got[0], ddp[0])
    assert got[0]["grad_norm"] == pytest.approx(ddp[0]["grad_norm"], rel=1e-4)
    # step 1: B (rollout keys), same rollouts as DDP
    for rank in (0, 1):
        r_ddp, r_got = _probe(ddp_run, "rollouts", rank), _probe(out, "rollouts", rank)
        assert len(r_ddp) == len(r_got) == 1 and len(r_got[0]["response_ids"]) == 2
        assert r_got == r_ddp, rank
    for key in B_COUNTERS:
        assert key in got[1] and got[1][key] == ddp[1][key], key
    assert got[1]["stage2/raw_rollouts_total"] == 4 and not any(k in got[1] for k in A_ONLY)
    b_keys = sorted(k for k in ddp[1] if k == "loss" or k.startswith("loss/"))
    assert set(b_keys) == {k for k in got[1] if k == "loss" or k.startswith("loss/")}
    for key in (*b_keys, "grad_norm"):
        assert got[1][key] == pytest.approx(ddp[1][key], rel=1e-4), (key, got[1], ddp[1])
    if stage == "zero3":
        for rank in (0, 1):
            gens = _probe(out, "generate", rank)
            assert gens and all(g["partitioned"] > 0 and g["not_gathered"] == 0 for g in gens), gens
