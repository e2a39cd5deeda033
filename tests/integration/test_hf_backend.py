"""HF rollout backend on the tiny random Qwen3-VL (SPEC §3.6 B0, B4 prompt identity).

The random model emits garbage; these tests assert the decoding contract (prompt identity with training, left
padding, stop/truncation, determinism, seeding, mode restoration), not content.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from coordexp_swift.config import DEFAULT_USER_PROMPT, RolloutMatchingConfig
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import iter_jsonl
from coordexp_swift.rollout.backends import (
    BACKENDS,
    DecodeOptions,
    RolloutBackend,
    RolloutOutput,
    build_backend,
    finalize_response,
    get_backend_cls,
)
from coordexp_swift.rollout.prompts import EncodedPrompt, collate_left, template_mode
from coordexp_swift.rollout.seeds import RolloutSeeds

IM_END = 151645
IMAGE_PAD = 151655
PAD = 151643
N_NEW = 8
SEEDS = RolloutSeeds(base=12345)


# ------------------------------------------------------------------------------------------------ pure helpers


def test_finalize_response_cuts_through_first_im_end():
    """SPEC §3.6 B0: response = ids through the first <|im_end|> (inclusive) or max_new_tokens."""
    assert finalize_response([5, 6, IM_END, PAD, PAD], im_end_id=IM_END, max_new_tokens=5) == ((5, 6, IM_END), False)
    assert finalize_response([5, IM_END, 7, IM_END], im_end_id=IM_END, max_new_tokens=4) == ((5, IM_END), False)
    assert finalize_response([1, 2, 3, 4], im_end_id=IM_END, max_new_tokens=4) == ((1, 2, 3, 4), True)
    # an <|im_end|> beyond max_new_tokens does not count
    assert finalize_response([1, 2, IM_END], im_end_id=IM_END, max_new_tokens=2) == ((1, 2), True)


def test_decode_options_validation_and_config():
    """SPEC §3.6 B0: greedy needs num_beams 1, beam >= 2; sampling iff temperature > 0; config mapping."""
    with pytest.raises(ValueError, match="num_beams"):
        DecodeOptions(mode="greedy", num_beams=2)
    with pytest.raises(ValueError, match="num_beams"):
        DecodeOptions(mode="beam", num_beams=1)
    with pytest.raises(ValueError, match="top_k"):
        DecodeOptions(top_k=0)
    assert not DecodeOptions().do_sample and DecodeOptions(temperature=0.7).do_sample
    rm = RolloutMatchingConfig()
    d = DecodeOptions.from_config(rm)
    assert (d.mode, d.max_new_tokens, d.num_beams, d.batch_size, d.temperature, d.top_p, d.top_k) == (
        "greedy", 512, 1, 4, 0.0, 1.0, -1)


def test_collate_left_pads_on_the_left():
    """SPEC §3.6 B0 left padding: pads (and mask 0) come first, prompts are right-aligned."""
    a = EncodedPrompt((1, 2, 3), None, None, None, 0)
    b = EncodedPrompt((7,), None, None, None, 0)
    batch = collate_left([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [0, 0, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_registry_names_and_unknown_backend():
    """SPEC §3.6 B0 backends hf | vllm; unknown names list the known ones; the registry resolves each name to its
    class in its own module without importing vllm (checked in a fresh interpreter)."""
    assert set(BACKENDS) == {"hf", "vllm"}
    with pytest.raises(ValueError, match="hf, vllm"):
        get_backend_cls("sglang")
    from coordexp_swift.rollout.hf_backend import HFRolloutBackend
    from coordexp_swift.rollout.vllm_backend import VllmRolloutBackend

    assert get_backend_cls("hf") is HFRolloutBackend and get_backend_cls("vllm") is VllmRolloutBackend
    code = ("import sys; from coordexp_swift.rollout.backends import get_backend_cls; c = get_backend_cls('vllm'); "
            "print(c.__module__, c.__name__, 'vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["coordexp_swift.rollout.vllm_backend", "VllmRolloutBackend", "False"]


def test_vllm_backend_without_vllm_names_the_fix(monkeypatch):
    """SPEC §3.6 B0 / issue 8 item 8: with the ``vllm`` package not importable (made so here whether or not it is
    installed: ``sys.modules['vllm'] = None`` makes ``import vllm`` raise ImportError), building the vllm backend
    raises ImportError naming the fix, before touching the model or template."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"needs the `vllm` package.*rollout_matching.rollout_backend: hf"):
        build_backend("vllm", model=None, template=None)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    from coordexp_swift.rollout.hf_backend import HFRolloutBackend

    be = HFRolloutBackend.from_pretrained(tiny_model_dir)
    assert isinstance(be, RolloutBackend)
    return be


@pytest.fixture(scope="module")
def rows(shapes_dir):
    """3 validation rows; row 1 carries a system prompt so the three prompt lengths differ (real left padding)."""
    recs = list(iter_jsonl(shapes_dir / "val.jsonl", stage="stage2"))[:3]
    out = [to_swift_row(r, user_prompt=DEFAULT_USER_PROMPT) for r in recs]
    out[1] = to_swift_row(recs[1], user_prompt=DEFAULT_USER_PROMPT, system_prompt="You are a careful detector.")
    return out


@pytest.fixture(scope="module")
def greedy_alone(backend, rows):
    """Greedy outputs of each row generated on its own (batch of 1)."""
    d = DecodeOptions(max_new_tokens=N_NEW, batch_size=1)
    return [backend.generate([r], decode=d, seeds=SEEDS)[0] for r in rows]


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("idx", [0, 1])
def test_prompt_ids_equal_training_prefix(backend, rows, idx):
    """SPEC §3.6 B4: generation prompt ids == training encoding up to the first labelled token; same number
    of <|image_pad|> tokens and the same pixel values."""
    row = rows[idx]
    template = backend.encoder.template
    with template_mode(template, "train"):
        train = template.encode({"messages": row["messages"], "images": row["images"]})
    first_label = next(i for i, lab in enumerate(train["labels"]) if lab != -100)
    prompt = backend.encoder.encode(row)
    assert list(prompt.input_ids) == list(train["input_ids"][:first_label])
    # the prompt ends with "<|im_start|>assistant\n" and the next training token is the answer's first token
    assert backend.tokenizer.decode(prompt.input_ids[-3:]) == "<|im_start|>assistant\n"
    # 128x128 image, patch 16, merge 2: (128/16)^2 / 2^2 = 16 image tokens (hand computation)
    assert prompt.n_image_tokens == 16 == list(train["input_ids"]).count(IMAGE_PAD)
    assert torch.equal(prompt.pixel_values, train["pixel_values"])
    assert prompt.mm_token_type_ids.tolist() == [1 if t == IMAGE_PAD else 0 for t in prompt.input_ids]
    with template_mode(template, "train"):  # as inside a trainer: encode switches mode only temporarily
        assert backend.encoder.encode(row).input_ids == prompt.input_ids
        assert template.mode == "train"


# ------------------------------------------------------------------------------------------------ decoding


def test_greedy_is_deterministic(backend, rows, greedy_alone):
    """SPEC §3.6 B0: greedy is deterministic; outputs carry the training-identical prompt ids."""
    again = backend.generate([rows[0]], decode=DecodeOptions(max_new_tokens=N_NEW), seeds=RolloutSeeds(999))[0]
    assert again == greedy_alone[0]
    assert again.prompt_ids == backend.encoder.encode(rows[0]).input_ids
    assert again.text == backend.tokenizer.decode(list(again.response_ids), skip_special_tokens=False)


@pytest.mark.parametrize("batch_size", [3, 2])
def test_left_padded_batch_equals_each_alone(backend, rows, greedy_alone, batch_size):
    """SPEC §3.6 B0: left-padded batches (≤ decode_batch_size) give the same greedy ids as each sample alone."""
    lengths = {len(backend.encoder.encode(r)) for r in rows}
    assert len(lengths) >= 2  # padding really happens
    out = backend.generate(rows, decode=DecodeOptions(max_new_tokens=N_NEW, batch_size=batch_size), seeds=SEEDS)
    assert [o.response_ids for o in out] == [o.response_ids for o in greedy_alone]
    assert [o.prompt_ids for o in out] == [o.prompt_ids for o in greedy_alone]


def test_max_new_tokens_truncation(backend, rows, greedy_alone):
    """SPEC §3.6 B0: without <|im_end|>, the response is exactly max_new_tokens ids and flagged truncated."""
    short = backend.generate([rows[0]], decode=DecodeOptions(max_new_tokens=3), seeds=SEEDS)[0]
    assert short.truncated and len(short.response_ids) == 3 and IM_END not in short.response_ids
    assert short.response_ids == greedy_alone[0].response_ids[:3]  # greedy prefix property


def test_stops_at_im_end(backend, rows, greedy_alone):
    """SPEC §3.6 B0: generation stops at <|im_end|>, which is the last response id; batch padding is cut.

    Swapping the output-embedding rows of <|im_end|> and the greedy token t_k makes <|im_end|> the argmax at step
    k while leaving steps < k unchanged (only those two logits swap, and neither was an earlier argmax), so the
    expected response is greedy[:k] + (<|im_end|>,) — derived without running the model.
    """
    base = greedy_alone[0].response_ids
    k = next(i for i in range(2, len(base)) if base[i] not in base[:i] and base[i] != IM_END)
    model = copy.deepcopy(backend.model)
    w = model.get_output_embeddings().weight
    with torch.no_grad():
        w[[IM_END, base[k]]] = w[[base[k], IM_END]]
    from coordexp_swift.rollout.hf_backend import HFRolloutBackend

    swapped = HFRolloutBackend(model, backend.encoder.template)
    d = DecodeOptions(max_new_tokens=N_NEW, batch_size=2)
    out = swapped.generate(rows[:2], decode=d, seeds=SEEDS)
    assert out[0].response_ids == tuple(base[:k]) + (IM_END,)
    assert not out[0].truncated and out[0].text.endswith("<|im_end|>")
    # the other row of the batch (finished or not) equals its own single-sample run on the same model
    alone = swapped.generate([rows[1]], decode=DecodeOptions(max_new_tokens=N_NEW, batch_size=1), seeds=SEEDS)[0]
    assert out[1] == alone
    for o in out:
        assert PAD not in o.response_ids
        assert o.response_ids.count(IM_END) == (0 if o.truncated else 1)


def test_sampling_reproducible_with_seed(backend, rows):
    """SPEC §3.6 B0: sampling iff temperature > 0; HF seeds the global RNG with seed_base + micro_idx, so equal
    sums reproduce and a different seed gives a different sample."""
    d = DecodeOptions(max_new_tokens=6, batch_size=2, temperature=1.0, top_p=0.95, top_k=50)
    a = backend.generate(rows[:2], decode=d, seeds=RolloutSeeds(100, micro_idx=2))
    b = backend.generate(rows[:2], decode=d, seeds=RolloutSeeds(101, micro_idx=1))  # same 102
    c = backend.generate(rows[:2], decode=d, seeds=RolloutSeeds(100, micro_idx=3))
    assert a == b
    assert [o.response_ids for o in a] != [o.response_ids for o in c]


def _next_log_probs(model, prompt, ids):
    """float64 log-softmax of the next-token logits after ``prompt.input_ids + ids`` (one no-cache forward)."""
    full = torch.tensor([list(prompt.input_ids) + list(ids)])
    mm = torch.cat([prompt.mm_token_type_ids, torch.zeros(len(ids), dtype=torch.long)])[None]
    out = model(input_ids=full, attention_mask=torch.ones_like(full), mm_token_type_ids=mm,
                pixel_values=prompt.pixel_values.to(model.dtype), image_grid_thw=prompt.image_grid_thw,
                use_cache=False)
    return torch.log_softmax(out.logits[0, -1].double(), dim=-1)


def _reference_beams(model, prompt, width, steps):
    """Width-``width`` beam search written here from forwards: at each step keep the ``width`` highest cumulative
    log-prob continuations over all beams x vocabulary (top 2·width per beam suffices). Returns the final beams
    best first as ``(ids, sum log p)``. No ``<|im_end|>`` may enter a kept candidate (asserted), so every beam has
    ``steps`` tokens and length normalisation cannot reorder them."""
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for _ in range(steps):
        cands = []
        for ids, score in beams:
            top = _next_log_probs(model, prompt, ids).topk(2 * width)
            cands += [(ids + (int(t),), score + float(lp)) for lp, t in zip(top.values, top.indices)]
        beams = sorted(cands, key=lambda c: -c[1])[:width]
        assert all(IM_END not in ids for ids, _ in beams)
    return beams


def test_beam_returns_best_beam_only(backend, rows):
    """SPEC §3.6 B0 decode_mode beam: one response per sample — the highest-scoring final beam of a reference
    beam search written in the test from per-step forwards (float64 log-probs) — deterministic, same contract."""
    d = DecodeOptions(mode="beam", num_beams=2, max_new_tokens=4, batch_size=2)
    a = backend.generate(rows[:2], decode=d, seeds=SEEDS)
    b = backend.generate(rows[:2], decode=d, seeds=RolloutSeeds(7))
    assert len(a) == 2 and a == b
    assert all(isinstance(o, RolloutOutput) and o.truncated and len(o.response_ids) == 4 for o in a)
    model = backend.model
    rope, modes = model.model.rope_deltas, [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for row, out in zip(rows[:2], a):
                (best, s_best), (second, s_second) = _reference_beams(model, backend.encoder.encode(row), 2, 4)
                assert s_best - s_second > 1e-3 and best != second  # the order of the two beams is unambiguous
                assert out.response_ids == best
    finally:
        model.model.rope_deltas = rope
        for m, flag in modes:
            m.training = flag


def test_modes_restored_and_no_grad(backend, rows):
    """SPEC §3.6 B0: no grad during rollout; the model's (mixed) train/eval modes are restored afterwards."""
    model = backend.model
    model.train()
    model.visual.eval()  # mixed state, as with a frozen ViT
    before = {name: m.training for name, m in model.named_modules()}
    rope_before = model.model.rope_deltas
    seen_grad: list[bool] = []
    seen_training: list[bool] = []

    def spy(mod, args):  # returns None: inputs untouched
        seen_grad.append(torch.is_grad_enabled())
        seen_training.append(mod.training)

    handle = model.register_forward_pre_hook(spy)
    try:
        backend.generate([rows[0]], decode=DecodeOptions(max_new_tokens=2), seeds=SEEDS)
    finally:
        handle.remove()
        after = {name: m.training for name, m in model.named_modules()}
        model.eval()
    assert seen_grad and not any(seen_grad) and not any(seen_training)
    assert after == before
    assert model.model.rope_deltas is rope_before  # the rollout's cached mRoPE deltas do not leak into training
