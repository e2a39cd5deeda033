"""Channel-B step and eval step in process on the compact tiny Qwen3-VL (issue 10 items 1, 3; SPEC §3.3, §3.6 B0/B4/B5,
§7.1; seed 001 1.5, 1.5.3, 1.7.5; 002 4.3 (B), 4.5, 6B.3).

Rows go through ms-swift's real template ``encode`` in train mode with ``remove_unused_columns=False`` and real
``pixel_values``; rollouts are real ``generate`` calls of the random model (which produces invalid rollouts: the
fallback path) with a short ``max_new_tokens``.
"""
from __future__ import annotations

import functools
import logging

import pytest
import torch

from coordexp_swift.config import DEFAULT_USER_PROMPT, load_coordexp_config
from coordexp_swift.data.swift_loader import load_rows
from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.rollout.prompts import PromptEncoder
from coordexp_swift.rollout.seeds import seed_base
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config
from coordexp_swift.teacher_forcing.manifest import resolve_pipeline
from coordexp_swift.trainers.channel_b import ChannelB
from coordexp_swift.trainers.rollout_eval import RolloutEvaluator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shapes_dir):
    from coordexp_swift.rollout.hf_backend import load_model_and_template
    from coordexp_swift.tools.tiny_model import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("compact"), seed=0, vocab="compact")
    model, template = load_model_and_template(d, template_type="qwen3_vl_compact")
    model.train()
    template.model = model
    template.set_mode("train")
    template.remove_unused_columns = False
    rows = load_rows(str(shapes_dir / "train.jsonl"), stage="stage2", user_prompt=DEFAULT_USER_PROMPT,
                     system_prompt=None, field_order="desc_first")[:2]
    encoded = [template.encode(dict(r)) for r in rows]
    cfg = load_coordexp_config({"custom": {"trainer_variant": "stage2_two_channel"},
                                "stage2_ab": {"schedule": {"b_ratio": 1.0}},
                                "rollout_matching": {"max_new_tokens": 12, "decode_batch_size": 1}})
    pipe = ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))
    vocab = VocabView.from_tokenizer(template.tokenizer, vocab_size=model.get_output_embeddings().weight.shape[0])
    cb = ChannelB(rm=cfg.rollout_matching, template=template, vocab=vocab, objective=pipe, packed=False,
                  pad_id=template.tokenizer.pad_token_id, max_length=4096, object_field_order="desc_first",
                  training_seed=123)
    return model, template, rows, encoded, cfg, cb


def test_b_step_one_forward_prompt_ids_modes(tiny, caplog):
    """seed 001 1.5 / 002 4.3 (B) / 4.5 / SPEC §3.6 B0, B4, B5: rollouts run under no_grad with the model in eval
    mode, in left-padded batches of ``decode_batch_size`` (1 here: 2 generate calls), and train mode is restored;
    then exactly ONE training forward, with ``input_ids`` (no ``inputs_embeds``), ``use_cache=False``, grad on; its
    segments start with the generation prompt ids of ``PromptEncoder`` on the raw row; the INFO line carries ``s``
    and ``seed_base`` (123, s=7 → 7000144, seed 001 1.7.5); the random model's invalid rollouts train (fallback,
    counter, finite loss with a gradient)."""
    model, template, rows, encoded, cfg, cb = tiny
    calls, gens = [], []
    fwd, gen = model.forward, model.generate
    state = {"in_gen": False}

    @functools.wraps(fwd)  # generate validates its kwargs against the forward signature
    def rec_fwd(*a, **k):
        if not state["in_gen"]:
            calls.append({"kwargs": k, "grad": torch.is_grad_enabled(), "training": model.training})
        return fwd(*a, **k)

    def rec_gen(*a, **k):
        gens.append({"grad": torch.is_grad_enabled(), "training": model.training,
                     "width": k["input_ids"].shape, "left_pad": bool((k["attention_mask"][:, 0] == 1).all())})
        state["in_gen"] = True
        try:
            return gen(*a, **k)
        finally:
            state["in_gen"] = False

    model.forward, model.generate = rec_fwd, rec_gen
    try:
        with caplog.at_level(logging.INFO, logger="swift.coordexp_swift"):
            out = cb.step(model, encoded, step=7)
    finally:
        del model.forward, model.generate
    assert [g["grad"] for g in gens] == [False, False] and [g["training"] for g in gens] == [False, False]
    assert all(g["width"][0] == 1 for g in gens)
    assert model.training and all(m.training for m in model.modules())
    assert len(calls) == 1
    kw = calls[0]
    assert kw["grad"] and kw["training"]
    assert kw["kwargs"]["use_cache"] is False and "inputs_embeds" not in kw["kwargs"]
    assert kw["kwargs"].get("past_key_values") is None
    ids = kw["kwargs"]["input_ids"]
    enc = PromptEncoder(template)
    try:
        for i, row in enumerate(rows):
            p = enc.encode(row).input_ids
            assert ids[i, : len(p)].tolist() == list(p)
            assert list(out.targets[i].prompt_ids) == list(p)
    finally:
        template.set_mode("train")
    assert f"s=7 micro_idx=0 seed_base={seed_base(123, 7)}" in caplog.text and seed_base(123, 7) == 7000144
    assert out.metrics["stage2/raw_rollouts_total"] == 2.0
    assert out.metrics["rollout/invalid_rollout_total"] + out.metrics["rollout/valid_pred_objects_total"] >= 1
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    assert model.get_output_embeddings().weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_b_step_packed_equals_padded(tiny):
    """SPEC §3.3: the packed B forward (one padding-free row, 4-row positions restarting per segment) gives the
    padded forward's loss and terms (greedy rollouts are deterministic, so both steps see the same targets)."""
    model, _, _, encoded, _, cb = tiny
    res = {}
    for packed in (False, True):
        cb.packed = packed
        out = cb.step(model, encoded, step=0)
        res[packed] = ({k: v for k, v in out.metrics.items() if k.startswith("loss/")}, float(out.loss))
    cb.packed = False
    assert res[True][1] == pytest.approx(res[False][1], rel=1e-5)
    for k, v in res[False][0].items():
        assert res[True][0][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_eval_step_forced_failure_logs_zero(tiny, caplog, monkeypatch):
    """seed 002 6B.3 / 6B.4: the eval step's ``rollout/mAP`` goes through ``eval.coco_eval.evaluate_records`` (the
    shared helper, looked up at call time); when it raises, one warning names the exception type and the value is
    0.0; the other eval keys are still computed. The normal path gives a float in [0, 1]."""
    from coordexp_swift.eval import coco_eval

    model, _, _, encoded, cfg, cb = tiny
    ev = RolloutEvaluator(cb, cfg.rollout_matching.eval_detection)
    ok = ev.evaluate(model, [encoded[:1], encoded[1:]], step=3)
    assert isinstance(ok["rollout/mAP"], float) and 0.0 <= ok["rollout/mAP"] <= 1.0
    assert ok["rollout/gt_per_sample"] == pytest.approx(ok["rollout/gt_objects_total"] / 2)

    def boom(*a, **k):
        raise KeyError("forced")

    monkeypatch.setattr(coco_eval, "evaluate_records", boom)
    with caplog.at_level(logging.WARNING, logger="swift.coordexp_swift"):
        bad = ev.evaluate(model, [encoded], step=4)
    assert bad["rollout/mAP"] == 0.0
    assert "KeyError" in caplog.text and "rollout/mAP failed" in caplog.text
    assert {k: v for k, v in bad.items() if k != "rollout/mAP"} == {k: v for k, v in ok.items() if k != "rollout/mAP"}
    # seed 002 6B.0: eval_detection.enabled false → no rollout/mAP key (and evaluate_records is never called)
    off = load_coordexp_config({"custom": {"trainer_variant": "stage2_two_channel"},
                                "stage2_ab": {"schedule": {"b_ratio": 1.0}},
                                "rollout_matching": {"eval_detection": {"enabled": False}}})
    none = RolloutEvaluator(cb, off.rollout_matching.eval_detection).evaluate(model, [encoded], step=5)
    assert "rollout/mAP" not in none and none["rollout/gt_objects_total"] == ok["rollout/gt_objects_total"]


@pytest.mark.parametrize("packed", [False, True])
def test_audit_b_step_invariants(tiny, monkeypatch, packed):
    """issue 10 item 4 / seed 001 2.3 (B half): ``audit_b_step`` runs one real B step with rollouts forced (a
    generation-only logits processor) to a matched + FP + poly answer and reports every Channel-B invariant true —
    prompt ids of the teacher-forced forward = generation prompt ids, supervised indices inside the assistant span,
    FP positions weight 0 (and there are FP positions), one cache-free forward, no-grad eval-mode rollouts."""
    from transformers import LogitsProcessorList
    from transformers.generation.utils import GenerationMixin

    from tests.integration.force_rollout_plugin import ForceText
    from tests.integration.test_stage2_channel_b_swift import FORCED

    from coordexp_swift.trainers.channel_b import audit_b_step

    model, template, _, encoded, _, cb = tiny
    ids = template.tokenizer.encode(FORCED, add_special_tokens=False)
    orig = GenerationMixin.generate

    def forced(self, *a, **k):
        return orig(self, *a, logits_processor=LogitsProcessorList([ForceText([ids])]), **k)

    monkeypatch.setattr(GenerationMixin, "generate", forced)
    monkeypatch.setattr(cb, "decode", __import__("dataclasses").replace(cb.decode, max_new_tokens=len(ids) + 2))
    cb.packed = packed
    try:
        rep = audit_b_step(cb, model, encoded, step=1)
    finally:
        cb.packed = False
    assert rep["failed"] == [], rep
    assert rep["counts"]["fp_positions"] > 20 and rep["counts"]["packed"] is packed
    assert rep["counts"]["rollout/drop/poly_total"] == 2 and rep["counts"]["generate_calls"] == 2
