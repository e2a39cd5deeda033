"""``forwards.forward`` on a Qwen3-VL whose forward ms-swift 4.6 patched (``_compat_qwen3_vl_mixed_data``), with
DeepSpeed "on" (issue 9 bug under DeepSpeed; issue 12 item 2, Stage-2 half).

The model is the tiny real-vocabulary Qwen3-VL loaded by ms-swift's own loader (so ``model.model`` carries ms-swift's
replacement ``forward`` and transformers' as ``origin_forward``); the sample is a shapes image through ms-swift's real
``qwen3_vl`` template (real ``pixel_values``). DeepSpeed is switched on the way ``TrainingArguments`` does it: a live
``transformers.integrations.HfDeepSpeedConfig`` (ZeRO-2 dict), whose weak reference ``swift.utils.is_deepspeed_enabled``
reads — no monkeypatch. References are the same forwards with DeepSpeed off, where ms-swift's forward itself
delegates to ``origin_forward``.
"""
from __future__ import annotations

import pytest
import torch

from coordexp_swift.config import DEFAULT_USER_PROMPT
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import iter_jsonl
from coordexp_swift.trainers.forwards import forward, positions_for, swift_patched_module

VISION = ("pixel_values", "image_grid_thw", "mm_token_type_ids")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, shapes_dir):
    """``(model, one collated sample, ms-swift template)``."""
    from coordexp_swift.rollout.hf_backend import load_model_and_template

    model, template = load_model_and_template(tiny_model_dir)
    model.eval()
    template.model = model
    template.set_mode("train")
    rec = next(iter(iter_jsonl(shapes_dir / "train.jsonl", stage="stage1")))
    batch = template.data_collator([template.encode(to_swift_row(rec, user_prompt=DEFAULT_USER_PROMPT))])
    return model, batch, template


@pytest.fixture
def deepspeed_on():
    """DeepSpeed enabled for ms-swift / transformers (the global weak ref TrainingArguments sets), reset after."""
    from swift.utils import is_deepspeed_enabled
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    cfg = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}})
    assert is_deepspeed_enabled()
    try:
        yield cfg
    finally:
        unset_hf_deepspeed_config()
    assert not is_deepspeed_enabled()


@torch.no_grad()
def test_inputs_embeds_forward_under_deepspeed_equals_plain(tiny, deepspeed_on):
    """issue 9 (Channel-A under DeepSpeed) / seed 001 1.3.2: with ms-swift's patch and DeepSpeed on, a Channel-A
    iteration forward (``inputs_embeds`` from the embedding module + explicit positions + ``pixel_values``) through
    ``forward`` equals the same forward with DeepSpeed off, bitwise (both run transformers' forward on the same
    tensors). Calling the model directly dies in ms-swift's DeepSpeed branch (the bug is real); the ``input_ids``
    forward (A1, ms-swift's branch) agrees to 1e-5; the patched ``forward`` is in place again after each call."""
    model, batch, _ = tiny
    patched = swift_patched_module(model)
    assert patched is model.model and "origin_forward" in vars(patched)
    swift_fwd = vars(patched)["forward"]
    vision = {k: batch[k] for k in VISION}
    pos = positions_for(model, batch)
    emb = model.get_input_embeddings()(batch["input_ids"])

    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # reference: DeepSpeed off
    try:
        ref = forward(model, vision, inputs_embeds=emb, position_ids=pos).logits
        ref_ids = forward(model, vision, input_ids=batch["input_ids"], position_ids=pos).logits
    finally:
        set_hf_deepspeed_config(deepspeed_on)
    torch.testing.assert_close(ref, ref_ids, rtol=0, atol=1e-5)

    with pytest.raises(AttributeError, match="unsqueeze"):  # ms-swift's branch on an inputs_embeds forward
        model(inputs_embeds=emb, position_ids=pos, use_cache=False, **vision)
    got = forward(model, vision, inputs_embeds=emb, position_ids=pos).logits
    assert torch.equal(got, ref)
    assert vars(patched)["forward"] is swift_fwd
    got_ids = forward(model, vision, input_ids=batch["input_ids"], position_ids=pos).logits  # ms-swift's branch
    torch.testing.assert_close(got_ids, ref_ids, rtol=0, atol=1e-5)
    assert vars(patched)["forward"] is swift_fwd


@torch.no_grad()
def test_text_only_inputs_embeds_under_deepspeed_raises_and_restores(tiny, deepspeed_on):
    """issue 9 (Channel-A under DeepSpeed): an ``inputs_embeds`` forward without ``pixel_values`` under the patch
    with DeepSpeed on raises ``RuntimeError`` naming the reason (ZeRO-3 lockstep of ms-swift's dummy image); a
    forward that raises inside the model (image features vs placeholder count) leaves ms-swift's ``forward``
    restored."""
    model, batch, _ = tiny
    patched = swift_patched_module(model)
    swift_fwd = vars(patched)["forward"]
    pos = positions_for(model, batch)
    emb = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(RuntimeError, match="without pixel_values under DeepSpeed"):
        forward(model, {"mm_token_type_ids": batch["mm_token_type_ids"]}, inputs_embeds=emb, position_ids=pos)
    assert vars(patched)["forward"] is swift_fwd
    half = {k: batch[k] for k in VISION}
    half["pixel_values"] = half["pixel_values"][: half["pixel_values"].shape[0] // 2]
    half["image_grid_thw"] = half["image_grid_thw"].clone()
    half["image_grid_thw"][0, 1] //= 2
    with pytest.raises(Exception):
        forward(model, half, inputs_embeds=emb, position_ids=pos)
    assert vars(patched)["forward"] is swift_fwd



def test_hf_generate_under_deepspeed_equals_plain(tiny, shapes_dir):
    """issue 12 item 2 (B steps / eval rollouts under DeepSpeed), SPEC §3.6 B0: greedy HF rollouts of two prompts
    with different images, with DeepSpeed on (ZeRO-2 flag; nothing is partitioned, so no gather happens), equal the
    DeepSpeed-off rollouts token for token. transformers 5.19's ``generate`` hands ``Qwen3VLModel`` the encoded
    images as ``mm_encoder_outputs`` with ``pixel_values=None``, which ms-swift's DeepSpeed branch takes for a
    text-only call (the images were dropped); the backend runs transformers' forward inside ``generate``."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    from coordexp_swift.rollout.backends import DecodeOptions
    from coordexp_swift.rollout.hf_backend import HFRolloutBackend
    from coordexp_swift.rollout.seeds import RolloutSeeds

    model, _, template = tiny
    backend = HFRolloutBackend(model, template)
    recs = list(iter_jsonl(shapes_dir / "val.jsonl", stage="stage2"))[:2]
    rows = [to_swift_row(r, user_prompt=DEFAULT_USER_PROMPT) for r in recs]
    decode = DecodeOptions(max_new_tokens=12, batch_size=2)
    plain = [o.response_ids for o in backend.generate(rows, decode=decode, seeds=RolloutSeeds(base=1))]
    cfg = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}})
    try:
        ds = [o.response_ids for o in backend.generate(rows, decode=decode, seeds=RolloutSeeds(base=1))]
    finally:
        unset_hf_deepspeed_config()
    del cfg
    assert all(len(r) == 12 or r[-1] == backend.encoder.im_end_id for r in plain)
    assert ds == plain, (ds, plain)
    swift_fwd = vars(swift_patched_module(model))["forward"]
    assert swift_fwd.__func__ is not type(model.model).forward  # ms-swift's forward is back after generate
