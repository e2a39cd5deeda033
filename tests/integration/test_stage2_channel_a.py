"""Channel-A forwards of the two-channel trainer on the tiny real-vocabulary Qwen3-VL, in process (issue 9 item 3;
SPEC §3.3, §3.4; seed 001 1.1.2, 1.3, 1.3.1, 1.3.2, 1.3.3, 1.3.4, 1.7.7, 1.7.8, 1.7.9, 1.7.10; seed 002 4.3 (A), 4.4).

Rows go through ms-swift's real ``qwen3_vl`` template ``encode`` in train mode with ``remove_unused_columns=False``
(what ``swift sft`` hands the trainer's identity collator), with real ``pixel_values``. The model's ``forward`` and
its input-embedding module are wrapped to record every call (kwargs, grad mode, outputs); ``generate`` is replaced
by a function that fails the test.
"""
from __future__ import annotations

import json

import pytest
import torch

from coordexp_swift.config import DEFAULT_USER_PROMPT
from coordexp_swift.data.swift_loader import load_rows
from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.rollout.prompts import PromptEncoder
from coordexp_swift.teacher_forcing.batch import CEWeightTable
from coordexp_swift.trainers.stage2_two_channel import (
    build_channel_a_inputs,
    channel_a_forwards,
    encode_gt_targets,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, shapes_dir):
    from coordexp_swift.rollout.hf_backend import load_model_and_template

    model, template = load_model_and_template(tiny_model_dir)
    model.train()
    template.model = model
    template.set_mode("train")
    template.remove_unused_columns = False
    rows = load_rows(str(shapes_dir / "train.jsonl"), stage="stage2", user_prompt=DEFAULT_USER_PROMPT,
                     system_prompt=None, field_order="desc_first")[:3]  # as the dataset loader stores them
    encoded = [template.encode(dict(r)) for r in rows]
    vocab = VocabView.from_tokenizer(template.tokenizer, vocab_size=model.get_output_embeddings().weight.shape[0])
    return model, template, rows, encoded, vocab


def _inputs(tiny, *, packed=False, n=2, contexts=("gt", "self_context")):
    model, template, _, encoded, vocab = tiny
    pairs = encode_gt_targets(encoded[:n], vocab)
    return build_channel_a_inputs(model, pairs, vocab=vocab, ce_table=CEWeightTable(), contexts=contexts,
                                  packed=packed, pad_id=template.tokenizer.pad_token_id, max_length=None,
                                  device="cpu")


class Recorder:
    """Wraps ``model.forward`` and the input-embedding module's ``forward``; ``model.generate`` fails the test."""

    def __init__(self, model):
        self.model = model
        self.calls: list[dict] = []
        self.embed_calls: list[torch.Tensor] = []
        self.inside = False

    def __enter__(self):
        model, emb = self.model, self.model.get_input_embeddings()
        self._fwd, self._emb = model.forward, emb.forward

        def fwd(*args, **kwargs):
            self.inside = True
            try:
                out = self._fwd(*args, **kwargs)
            finally:
                self.inside = False
            self.calls.append({"kwargs": kwargs, "grad": torch.is_grad_enabled(), "out": out})
            return out

        def emb_fwd(ids):
            if not self.inside:  # the trainer's own calls (the model calls the module inside its forward too)
                self.embed_calls.append(ids)
            return self._emb(ids)

        def no_generate(*a, **k):
            raise AssertionError("Channel-A must not call generate")

        model.forward, emb.forward, model.generate = fwd, emb_fwd, no_generate
        return self

    def __exit__(self, *exc):
        model = self.model
        model.forward = self._fwd
        model.get_input_embeddings().forward = self._emb
        del model.generate  # back to the class attribute
        return False


def test_prompt_ids_equal_generation_prompt(tiny):
    """seed 001 1.1.2 / SPEC §3.6 B4 groundwork: the GT target's prompt ids (the training encoding up to the first
    labelled position) equal PromptEncoder's generation prompt ids, and its ``Y_train`` equals the template's
    assistant tokens up to ``<|im_end|>``."""
    _, template, rows, encoded, vocab = tiny
    pairs = encode_gt_targets(encoded, vocab)
    enc = PromptEncoder(template)
    try:
        for row, (target, seg), e in zip(rows, pairs, encoded):
            assert list(target.prompt_ids) == list(enc.encode(row).input_ids)
            n = len(target.prompt_ids) + len(target.y_train_ids)
            assert seg["input_ids"].tolist() == list(e["input_ids"][:n])
            assert int(target.y_train_ids[-1]) == vocab.eos_id
            assert all(lab == -100 for lab in e["labels"][: len(target.prompt_ids)])
            assert e["labels"][len(target.prompt_ids)] != -100
    finally:
        template.set_mode("train")


def test_stage2_encoding_rule_names_sample(tiny):
    """SPEC §1.5 last row: a payload whose object count does not match the encoded coord tokens fails with the
    sample id and both counts."""
    _, _, _, encoded, vocab = tiny
    bad = dict(encoded[0])
    extra = dict(bad["_extra_kwargs"])
    payload = json.loads(extra["assistant_payload"])
    payload["objects"] = payload["objects"] + payload["objects"][:1]
    extra["assistant_payload"] = json.dumps(payload)
    bad["_extra_kwargs"] = extra
    n = len(payload["objects"])
    with pytest.raises(ValueError, match=rf"sample_id {extra['sample_id']}:.* {4 * (n - 1)} coord tokens .*{4 * n}"):
        encode_gt_targets([bad], vocab)


@pytest.mark.parametrize("packed", [False, True])
def test_two_forwards_ids_then_embeds(tiny, packed):
    """seed 001 1.3, seed 001 1.3.2, seed 001 1.3.3, seed 001 1.3.4, seed 001 1.7.8, seed 001 1.7.9,
    seed 002 4.3 (A): n=2 runs exactly two forwards and no generate; A1 gets ``input_ids``, iteration 1 ``inputs_embeds`` with ``input_ids=None``; both ``use_cache=False``,
    no ``past_key_values``, no cache returned, the same explicit positions (``[4, 1, T]`` with row 0 restarting per
    segment when packed) and the same real ``pixel_values``. The embedding module is called on the ids (fresh E⁰)
    and on the coord ids (E_c); the embeds differ from E⁰ only at the coord-slot rows (image placeholder rows
    bitwise equal), and each slot row is E_c[argmax of A1's coord logits at p − 1] (st forward value)."""
    model = tiny[0]
    a = _inputs(tiny, packed=packed)
    with Recorder(model) as rec:
        logits = channel_a_forwards(model, a, n_iter=2, grad_mode="em_detach", embed_mode="st")
    assert len(rec.calls) == 2
    first, second = (c["kwargs"] for c in rec.calls)
    assert torch.equal(first["input_ids"], a.input_ids) and "inputs_embeds" not in first
    assert second.get("input_ids") is None and second["inputs_embeds"].shape[:2] == a.input_ids.shape
    for kw, call in zip((first, second), rec.calls):
        assert kw["use_cache"] is False and kw.get("past_key_values") is None
        assert getattr(call["out"], "past_key_values", None) is None
        assert kw["position_ids"] is a.position_ids
        assert torch.equal(kw["pixel_values"], a.model_inputs["pixel_values"])
        assert "logits_to_keep" not in kw and "labels" not in kw
    bsz, seq = a.input_ids.shape
    assert a.position_ids.shape == (4, bsz, seq)
    if packed:
        assert bsz == 1
        starts = [0]
        for m in a.batch.meta[:-1]:
            starts.append(starts[-1] + m.encoded_len)
        row0 = a.position_ids[0, 0]
        assert [int(i) for i in torch.nonzero(row0 == 0).reshape(-1)] == starts
    else:
        assert "attention_mask" in first and first["attention_mask"] is second["attention_mask"]

    # embedding-module calls: E⁰ from the ids, E_c from the coord ids (module calls, not weight indexing)
    assert len(rec.embed_calls) == 2
    assert torch.equal(rec.embed_calls[0], a.input_ids)
    assert torch.equal(rec.embed_calls[1], a.batch.coord_ids)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        base = emb(a.input_ids)
        e_c = emb(a.batch.coord_ids)
    embeds = second["inputs_embeds"].detach()
    differs = (embeds != base).any(-1).reshape(-1)
    slots = (a.batch.group_flat + 1).sort().values
    assert torch.equal(torch.nonzero(differs).reshape(-1), slots)  # only slot rows differ
    image_rows = (a.input_ids == model.config.image_token_id).reshape(-1)
    assert int(image_rows.sum()) > 0
    assert torch.equal(embeds.reshape(bsz * seq, -1)[image_rows], base.reshape(bsz * seq, -1)[image_rows])
    z0 = logits["gt"].detach().reshape(bsz * seq, -1)
    k_star = z0[a.batch.group_flat][:, a.batch.coord_ids].argmax(-1)
    torch.testing.assert_close(embeds.reshape(bsz * seq, -1)[a.batch.group_flat + 1], e_c[k_star], rtol=0, atol=1e-6)
    assert set(logits) == {"gt", "self_context"}
    assert logits["gt"].shape[:2] == logits["self_context"].shape[:2] == (bsz, seq)


def test_packed_equals_unpacked_per_segment(tiny):
    """seed 001 1.7.7: the packed row's logits of every segment, in both iterations, equal that sample's unpacked
    row (no cross-segment leakage through attention or positions)."""
    model = tiny[0]
    with torch.no_grad():
        up = _inputs(tiny, packed=False)
        pk = _inputs(tiny, packed=True)
        lu = channel_a_forwards(model, up, n_iter=2)
        lp = channel_a_forwards(model, pk, n_iter=2)
    off = 0
    for i, m in enumerate(pk.batch.meta):
        n = m.encoded_len
        for ctx in ("gt", "self_context"):
            torch.testing.assert_close(lp[ctx][0, off: off + n], lu[ctx][i, :n], rtol=1e-4, atol=1e-4)
        off += n


@pytest.mark.parametrize("mode,n,grads,z0_grad", [
    ("em_detach", 3, [True, False, True], False),
    ("unroll", 3, [True, True, True], True),
    ("em_detach", 1, [True], None),
])
def test_grad_modes(tiny, mode, n, grads, z0_grad):
    """seed 001 1.3.1 / SPEC §3.4 steps 4-5: ``em_detach`` runs A1 and the final iteration with grad and the middle
    ones under ``no_grad``; P is detached, so a loss on the final logits sends no gradient into A1's logits;
    ``unroll`` records grad everywhere and the final loss reaches A1's logits through the context rows. n=1: A1
    only, no self_context."""
    model = tiny[0]
    a = _inputs(tiny, n=1)
    with Recorder(model) as rec:
        logits = channel_a_forwards(model, a, n_iter=n, grad_mode=mode, embed_mode="soft")
    assert [c["grad"] for c in rec.calls] == grads
    if n == 1:
        assert set(logits) == {"gt"}
        return
    z0 = logits["gt"]
    z0.retain_grad()
    slot_logits = logits["self_context"].reshape(-1, z0.shape[-1])[a.batch.group_flat]
    slot_logits.sum().backward()
    if z0_grad:
        assert z0.grad is not None and float(z0.grad.abs().sum()) > 0
    else:
        assert z0.grad is None or float(z0.grad.abs().sum()) == 0.0
    model.zero_grad(set_to_none=True)


def test_logits_to_keep_refused(tiny):
    """seed 001 1.7.10: a ``logits_to_keep`` in the forward inputs raises (sliced logits) before any Channel-A
    loss is computed."""
    model = tiny[0]
    a = _inputs(tiny, n=1)
    a.model_inputs["logits_to_keep"] = 1
    with pytest.raises(RuntimeError, match="logits_to_keep"):
        channel_a_forwards(model, a, n_iter=2)


@pytest.mark.parametrize("packed,mode,n", [(False, "em_detach", 2), (True, "em_detach", 3), (True, "unroll", 2)])
def test_audit_a_step_passes(tiny, packed, mode, n):
    """seed 001 2.3 (A half) / issue 9 item 7: ``audit_a_step`` runs real Channel-A forwards on the tiny model with
    real pixel_values and reports every §3.3 invariant as holding, packed and padded."""
    from coordexp_swift.trainers.channel_a import audit_a_step

    report = audit_a_step(tiny[0], _inputs(tiny, packed=packed), n_iter=n, grad_mode=mode)
    assert report["failed"] == [], report
    assert report["counts"]["forwards"] == n and report["counts"]["placeholder_rows"] > 0


def test_audit_a_step_catches_broken_positions(tiny):
    """seed 001 2.3: the audit can fail — a packed row whose text positions do not restart per segment (one
    arange over the whole row, the cross-segment leak) is reported under ``positions``."""
    from dataclasses import replace

    from coordexp_swift.trainers.channel_a import audit_a_step

    a = _inputs(tiny, packed=True)
    pos = a.position_ids.clone()
    pos[0, 0] = torch.arange(pos.shape[-1])
    report = audit_a_step(tiny[0], replace(a, position_ids=pos), n_iter=2)
    assert report["failed"] == ["positions"], report
