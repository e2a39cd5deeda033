"""vLLM rollout backend on ms-swift's engine, with a fake ``vllm`` at the import boundary (issue 12 item 4).

``tests/unit/fake_vllm`` (put on ``sys.path`` here only) stands in for ``vllm`` and its ``msgspec`` dependency; ms-swift's
real ``GRPOVllmEngine`` (engine kwargs, template encode in vllm mode, request building, per-request seed offsets,
response assembly) and its real ``RolloutTrainerMixin._move_model_to_vllm`` run on top of it, with the real tiny
Qwen3-VL checkpoint, template and shapes rows. The fake engine finishes requests in reverse order and derives
sampled ids from the request seed, so order and seeds are observable. A real-GPU comparison with the HF backend is
``examples/gpu/check_vllm_rollout.sh`` (unrun here: no GPU with vLLM).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from coordexp_swift.rollout.backends import DecodeOptions
from coordexp_swift.rollout.seeds import RolloutSeeds, norm_seed

FAKE = Path(__file__).resolve().parent / "fake_vllm"
_PREFIXES = ("vllm", "msgspec", "swift.infer_engine.vllm_engine", "swift.infer_engine.grpo_vllm_engine",
             "swift.rlhf_trainers")


def _drop_modules():
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in _PREFIXES):
            del sys.modules[name]


@pytest.fixture(scope="module")
def fake_vllm():
    _drop_modules()
    sys.path.insert(0, str(FAKE))
    import vllm

    yield vllm
    sys.path.remove(str(FAKE))
    _drop_modules()  # later tests see the real environment (no vllm)


@pytest.fixture(scope="module")
def setup(fake_vllm, tiny_model_dir, shapes_dir):
    from coordexp_swift.eval.generate import load_eval_rows
    from coordexp_swift.rollout.hf_backend import load_model_and_template
    from coordexp_swift.rollout.vllm_backend import VllmRolloutBackend

    model, template = load_model_and_template(tiny_model_dir)
    backend = VllmRolloutBackend(model, template, model_dir=str(tiny_model_dir))
    rows = [row for _, row in load_eval_rows(shapes_dir / "val.jsonl", limit=3)]
    return backend, rows


@pytest.fixture()
def events(fake_vllm):
    fake_vllm.EVENTS.update(requests=[], loads=[], reset_prefix_cache=0, reset_encoder_cache=0)
    fake_vllm.OMIT_STOP_ID = False
    return fake_vllm.EVENTS


def test_engine_built_like_swift_grpo_colocate(setup, fake_vllm, tiny_model_dir):
    """issue 12 item 4: the engine is ms-swift's GRPOVllmEngine with the colocate kwargs: raw log-probs, one image
    per prompt, the checkpoint dir, seed = rank // tp (0 here; ``external_launcher`` only under torch.distributed)."""
    from swift.infer_engine.grpo_vllm_engine import GRPOVllmEngine

    backend, _ = setup
    assert isinstance(backend.engine, GRPOVllmEngine)
    args = fake_vllm.EVENTS["engines"][-1]
    assert args.logprobs_mode == "raw_logprobs" and args.limit_mm_per_prompt == {"image": 1}
    assert args.seed == 0 and args.distributed_executor_backend is None
    assert Path(args.model).resolve() == Path(tiny_model_dir).resolve()


def test_requests_prompt_ids_stop_and_order(setup, events, fake_vllm):
    """issue 12 item 4 (SPEC §3.6 B0/B4): three shapes rows, greedy. Each request carries the row's image and the
    vllm-mode prompt (one image pad), equal to the training encoding once image-pad runs are collapsed; greedy
    params (temperature 0, ``max_tokens``, ``<|im_end|>`` among the stop ids). The engine finishes in reverse
    order; outputs come back in input order with the training prompt ids. Stop: the scripted
    ``[a, b, <|im_end|>, c]`` gives ``(a, b, <|im_end|>)``; a script without ``<|im_end|>`` gives the first
    ``max_new_tokens`` ids, truncated; a stop reported only by ``finish_reason`` gets ``<|im_end|>`` appended."""
    from coordexp_swift.rollout.vllm_backend import collapse_runs

    backend, rows = setup
    im_end, pad = backend.encoder.im_end_id, backend.image_pad_id
    fake_vllm.GREEDY_SCRIPT = lambda prompt: [len(prompt) % 97 + 10, 11, im_end, 12]
    outs = backend.generate(rows, decode=DecodeOptions(max_new_tokens=8, batch_size=3), seeds=RolloutSeeds(5))
    reqs = events["requests"]
    assert len(reqs) == 3
    for row, req, out in zip(rows, reqs, outs):
        train = backend.encoder.encode(row).input_ids
        assert out.prompt_ids == tuple(train)
        sent = req["inputs"]["prompt_token_ids"]
        assert collapse_runs(sent, pad)[0] == collapse_runs(train, pad)[0] and list(sent).count(pad) == 1
        assert req["inputs"]["multi_modal_data"]["image"] is not None
        p = req["params"]
        assert p.temperature == 0 and p.max_tokens == 8 and im_end in p.stop_token_ids
        assert out.response_ids == (len(sent) % 97 + 10, 11, im_end) and not out.truncated
        assert out.text.endswith("<|im_end|>") and out.token_logprobs is None
    fake_vllm.GREEDY_SCRIPT = [20, 21, 22, 23, 24, 25]
    (out,) = backend.generate(rows[:1], decode=DecodeOptions(max_new_tokens=4), seeds=RolloutSeeds(5))
    assert out.response_ids == (20, 21, 22, 23) and out.truncated
    fake_vllm.GREEDY_SCRIPT, fake_vllm.OMIT_STOP_ID = [30, im_end, 31], True
    (out,) = backend.generate(rows[:1], decode=DecodeOptions(max_new_tokens=4), seeds=RolloutSeeds(5))
    assert out.response_ids == (30, im_end) and not out.truncated


def test_request_seeds_follow_spec_including_the_31_bit_wrap(setup, events, fake_vllm):
    """SPEC §3.6 B0 seeds, sampling (temperature 0.7): request j of rank 1 of 2, micro_idx 1, per_device_bs 3
    gets norm(seed_base + (1·2+1)·3 + j) = seed_base + 9 + j. With seed_base = 2³¹−2 (i = 0, 1, 2 at micro 0,
    rank 0) the seeds are 2147483646, 2147483647 and norm(2³¹) = 0 ↦ 1: the wrap is honoured (two ms-swift calls).
    The sampled ids are the fake's function of the seed, so each output shows the seed its request carried; with
    ``logprobs`` the per-token values come back aligned (-0.1·(k+1))."""
    backend, rows = setup
    fake_vllm.SEED_SCRIPT = lambda seed: [100 + seed % 1000, 7]
    dec = DecodeOptions(max_new_tokens=2, batch_size=3, temperature=0.7, top_p=0.9, logprobs=True)
    outs = backend.generate(rows, decode=dec, seeds=RolloutSeeds(123456, micro_idx=1, world_size=2, rank=1,
                                                                 per_device_bs=3))
    want = [123456 + 9 + j for j in range(3)]
    assert [r["params"].seed for r in events["requests"]] == want
    assert [o.response_ids[0] for o in outs] == [100 + s % 1000 for s in want]
    assert all(r["params"].temperature == 0.7 and r["params"].top_p == 0.9 for r in events["requests"])
    assert outs[0].token_logprobs == pytest.approx((-0.1, -0.2))
    events["requests"].clear()
    base = 2**31 - 2
    outs = backend.generate(rows, decode=dec, seeds=RolloutSeeds(base, per_device_bs=3))
    assert [r["params"].seed for r in events["requests"]] == [norm_seed(base + j) for j in range(3)] == \
        [2147483646, 2147483647, 1]


def test_sync_weights_once_per_step_through_swift(setup, events):
    """issue 12 item 4, the ``sync_weights(step)`` contract: the first call of a step copies every parameter of
    the trained model into the engine through ms-swift's ``_move_model_to_vllm`` (names as in the checkpoint,
    values equal) and resets the prefix cache; a second call in the same step copies nothing; the next step (or
    ``force``) copies again, with the updated values."""
    backend, _ = setup
    model = backend.model
    params = dict(model.named_parameters())
    assert backend.sync_weights(3) is True
    (loaded,) = events["loads"]
    got = dict(loaded)
    assert set(got) == set(params)
    name = next(iter(params))
    assert got[name] == pytest.approx(float(params[name].detach().float().sum()), rel=1e-6)
    assert events["reset_prefix_cache"] == 1
    assert backend.sync_weights(3) is False and len(events["loads"]) == 1
    with torch.no_grad():
        params[name].add_(1.0)
    try:
        assert backend.sync_weights(4) is True
        assert dict(events["loads"][-1])[name] == pytest.approx(float(params[name].detach().float().sum()), rel=1e-6)
        assert backend.sync_weights(4, force=True) is True and len(events["loads"]) == 3
    finally:
        with torch.no_grad():
            params[name].sub_(1.0)


def test_beam_and_encoded_prompts_rejected(setup):
    """SPEC §3.6 B0: beam search is not offered by the vLLM backend; EncodedPrompt inputs lack the raw image."""
    from coordexp_swift.rollout.prompts import EncodedPrompt

    backend, rows = setup
    with pytest.raises(ValueError, match="beam"):
        backend.generate(rows, decode=DecodeOptions(mode="beam", num_beams=2), seeds=RolloutSeeds(1))
    with pytest.raises(ValueError, match="raw images"):
        backend.generate([EncodedPrompt((1, 2), None, None, None, 0)], decode=DecodeOptions(), seeds=RolloutSeeds(1))


def test_seed_runs_and_collapse():
    """Helpers: runs of consecutive seeds; image-pad runs collapsed with their lengths."""
    from coordexp_swift.rollout.vllm_backend import collapse_runs, seed_runs

    assert seed_runs([5, 6, 7]) == [(0, 3)]
    assert seed_runs([2147483646, 2147483647, 1, 2]) == [(0, 2), (2, 4)]
    assert seed_runs([]) == []
    assert collapse_runs([1, 9, 9, 9, 2, 9, 3], 9) == ((1, 9, 2, 9, 3), [3, 1])


def test_zero3_sync_gathers_layer_by_layer(setup, events, fake_vllm, tiny_model_dir):
    """issue 12 item 4 (c): with the trainer's accelerator on ZeRO-3 (a stage-3 DeepSpeed plugin), the weight sync
    goes through ms-swift's own ``split_batches`` with ``move_model_batches`` = the language model's layer count:
    one ``GatheredParameters`` + engine load per decoder layer, then one for the embeddings + final norm and one for
    the rest (vision tower, ``lm_head``) — every parameter copied exactly once, values equal. (The parameters here are not partitioned, so
    DeepSpeed's gather is a no-op; the grouping is what is checked.)"""
    from types import SimpleNamespace

    from coordexp_swift.rollout.vllm_backend import VllmRolloutBackend

    backend, _ = setup
    model = backend.model
    acc = SimpleNamespace(device=next(model.parameters()).device, unwrap_model=lambda m: m, is_main_process=True,
                          state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    z3 = VllmRolloutBackend(model, backend.template, engine=backend.engine, accelerator=acc)
    assert z3.sync_weights(0) is True
    n_layers = model.config.text_config.num_hidden_layers
    groups = [dict(load) for load in events["loads"]]
    assert len(groups) == n_layers + 2
    names = [n for g in groups for n in g]
    params = dict(model.named_parameters())
    assert sorted(names) == sorted(params)  # every parameter once
    for i in range(n_layers):
        assert groups[i] and all(f"layers.{i}." in n for n in groups[i])
    assert set(groups[-2]) == {"model.language_model.embed_tokens.weight", "model.language_model.norm.weight"}
    # ms-swift's split puts every parameter outside the language model (vision tower, lm_head) in the last group
    assert all(n.startswith("model.visual.") or n == "lm_head.weight" for n in groups[-1])
    name = next(iter(groups[0]))
    assert groups[0][name] == pytest.approx(float(params[name].detach().float().sum()), rel=1e-6)
