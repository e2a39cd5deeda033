"""Channel-B driving the vLLM backend inside the real trainer (issue 12 item 4; SPEC §3.6 B0/B4, §7.1).

vLLM cannot run here (no GPU): ``tests/unit/fake_vllm`` stands in for the ``vllm`` package at the import boundary
(``PYTHONPATH``), and ms-swift's real ``GRPOVllmEngine`` (request building, per-request seed offsets) and its real
``RolloutTrainerMixin._move_model_to_vllm`` weight sync run on top of it, inside a real 2-process gloo ``swift sft`` of
``smoke_mixed.yaml`` (A, B, A, B; ``gradient_accumulation_steps`` 2, so every B step has micro-steps 0 and 1) with
``rollout_backend: vllm`` and an eval step after step 4. ``fake_vllm_plugin.py`` logs, per rank and in order, the
trainer's micro-steps, Channel-B rollouts (with the rows' training prompt ids), weight loads, syncs, engine
requests and the B targets. The fake engine's greedy output is :data:`FORCED` of the Channel-B swift tests (1 matched,
1 FP, 1 FN, 1 ``poly`` drop per rollout on the fixed-GT data).

The real-GPU comparison (``rollout_backend: vllm`` vs ``hf``, identical greedy rollouts) is
``examples/gpu/check_vllm_rollout.sh``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordexp_swift.rollout.seeds import norm_seed, seed_base
from coordexp_swift.rollout.vllm_backend import collapse_runs
from tests.integration.swift_run import free_port, read_logging_jsonl, run_swift_sft, step_records
from tests.integration.test_stage2_channel_b_swift import GT, C, FORCED, _check_b_step, _config, compact_model  # noqa: F401

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "unit" / "fake_vllm"
PLUGIN = str(REPO / "tests" / "integration" / "fake_vllm_plugin.py")
SEED, WORLD, BS, ACCUM = 42, 2, 2, 2


@pytest.fixture(scope="module")
def fixed_gt_data(shapes_dir, tmp_path_factory):
    """Shapes images with every record's objects replaced by the two fixed ``GT`` objects: train 8 (one optimizer
    step = 2 ranks × 2 rows × 2 micro-steps), val 2."""
    d = tmp_path_factory.mktemp("fixed_gt8")
    (d / "images").symlink_to(shapes_dir / "images")
    out = {}
    for split, n in (("train", WORLD * BS * ACCUM), ("val", 2)):
        recs = [json.loads(x) for x in (shapes_dir / f"{split}.jsonl").read_text().splitlines()][:n]
        for r in recs:
            r["objects"] = [{"desc": dsc, "bbox_2d": [C(v) for v in b]} for dsc, b in GT]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        out[split] = d / f"{split}.jsonl"
    return out


def test_vllm_backend_in_two_channel_trainer(compact_model, fixed_gt_data, tmp_path):  # noqa: F811
    """issue 12 item 4 / SPEC §3.6 B0, B4 / §7.1 (2 gloo ranks, steps A B A B, 2 micro-steps each, eval after 4):

    * weight sync (``sync_weights(s)`` → ms-swift's ``_move_model_to_vllm``) exactly once per optimizer step that
      rolls out — B steps 1 and 3 and the eval at step 4 — on every rank, before that step's first request; never
      on A steps (steps 0, 2 send nothing to the engine); the weights loaded at step 3 differ from step 1's (the
      trained weights, not the checkpoint);
    * request seeds ``norm(seed_base(42, s) + (micro_idx·2 + rank)·2 + j)`` (SPEC B0), in request order;
    * each request's prompt ids = the row's training prompt ids with the image-pad run collapsed to one (B4);
    * the fake greedy output flows into the targets: every rollout response is :data:`FORCED`'s ids, each
      ``Y_train`` starts with its matched-prefix, and the logged B counters are the forced answer's (matched / FP /
      FN / poly per rollout);
    * the eval step (5th sync) counts its 2 records once although rank 1's shard is a padding repeat.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(compact_model)
    forced_ids = tok.encode(FORCED, add_special_tokens=False)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    out, events = tmp_path / "out", tmp_path / "events"
    events.mkdir()
    cfg = _config("configs/stage2_two_channel/smoke_mixed.yaml", compact_model, fixed_gt_data, out, max_steps=4,
                  use_cpu=True, gradient_accumulation_steps=ACCUM, eval_strategy="steps", eval_steps=4,
                  val_dataset=[str(fixed_gt_data["val"])], per_device_eval_batch_size=2,
                  rollout_matching={"rollout_backend": "vllm", "max_new_tokens": 96})
    cfg["external_plugins"] = [str(REPO / "plugins" / "coordexp.py"), PLUGIN]
    (tmp_path / "w").mkdir()
    proc = run_swift_sft(cfg, tmp_path / "w", timeout=1500, extra_env={
        "NPROC_PER_NODE": str(WORLD), "MASTER_PORT": str(free_port()), "PYTHONPATH": f"{FAKE}:{REPO}",
        "COORDEXP_TEST_VLLM_EVENTS": str(events), "COORDEXP_TEST_VLLM_MODEL": str(compact_model),
        "COORDEXP_TEST_VLLM_TEXT": FORCED})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])

    for rank in range(WORLD):
        ev = [json.loads(x) for x in (events / f"rank{rank}.jsonl").read_text().splitlines()]
        # group the event stream by optimizer step: a trainer micro-step or a Channel-B rollout entry opens its
        # step; the eval step's rollouts are at step 4 (after the last optimizer step, 3)
        steps: dict[int, list] = {}
        cur = -1
        for e in ev:
            if e["event"] in ("compute_loss", "evaluate", "rollout"):
                cur = e["step"]
            steps.setdefault(cur, []).append(e)
        kinds = [(e["step"], e["channel"]) for e in ev if e["event"] == "compute_loss"]
        assert kinds == [(0, "A")] * ACCUM + [(1, "B")] * ACCUM + [(2, "A")] * ACCUM + [(3, "B")] * ACCUM
        assert -1 not in steps  # nothing reached the engine before the first step (the backend is built lazily)
        loads = {}
        for s, items in steps.items():
            names = [e["event"] for e in items]
            if s in (0, 2):
                assert not {"rollout", "sync", "load", "request"} & set(names), (s, names)
                continue
            assert names.count("sync") == 1, (rank, s, names)
            first_req = names.index("request")
            assert names.index("sync") < first_req and names.index("load") < first_req
            loads[s] = [e for e in items if e["event"] == "load"]
            reqs = [e for e in items if e["event"] == "request"]
            prompts = [p for e in items if e["event"] == "rollout" for p in e["train_prompt_ids"]]
            assert len(reqs) == len(prompts) == (ACCUM * BS if s != 4 else 2)
            for req, train in zip(reqs, prompts):
                assert collapse_runs(req["prompt_token_ids"], pad)[0] == collapse_runs(train, pad)[0]
                assert req["prompt_token_ids"].count(pad) == 1 and train.count(pad) > 1
                assert req["temperature"] == 0 and req["max_tokens"] == 96
            if s != 4:
                want = [norm_seed(seed_base(SEED, s) + (m * WORLD + rank) * BS + j)
                        for m in range(ACCUM) for j in range(BS)]
                assert [r["seed"] for r in reqs] == want, (rank, s)
                tg = [e for e in items if e["event"] == "targets"]
                assert len(tg) == ACCUM
                for t in tg:
                    assert t["response_ids"] == [forced_ids] * BS
                    for y in t["y_train_ids"]:
                        assert y[-1] == tok.convert_tokens_to_ids("<|im_end|>")
                        # Y_train = the rollout's ids through its last complete record (the poly one), then the
                        # FN fragment: it shares all but the closing few ids of the forced answer
                        common = next(i for i, (a, b) in enumerate(zip(y, forced_ids)) if a != b)
                        assert len(forced_ids) - 6 <= common < len(forced_ids)
        assert set(loads) == {1, 3, 4}
        # the trained weights (not the checkpoint): every tensor is loaded; lm_head changed from step 1 to 3, the
        # frozen vision tower did not
        s1, s3 = (dict(kv for ld in loads[s] for kv in ld["sums"].items()) for s in (1, 3))
        assert set(s1) == set(s3) and len(s1) > 10
        head = [k for k in s1 if "lm_head" in k or "embed_tokens" in k]
        assert head and any(s1[k] != s3[k] for k in head)
        assert all(s1[k] == s3[k] for k in s1 if k.startswith("model.visual."))
    recs = step_records(out)
    assert len(recs) == 4
    for s in (1, 3):
        _check_b_step(recs[s], n=WORLD * ACCUM * BS)
    ev = [r for r in read_logging_jsonl(out) if "eval_rollout/f1" in r]
    assert len(ev) == 1 and ev[0]["eval_rollout/gt_objects_total"] == 4  # 2 records × 2 GT, the repeat dropped
    assert ev[0]["eval_rollout/matched_total"] == 2 and ev[0]["eval_rollout/mAP"] == pytest.approx(0.4, abs=1e-6)
