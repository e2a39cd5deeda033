"""The forward preamble's key handling and guards (issue 8 item 3; SPEC §3.3), on a small real causal LM.

The preamble is what is under test; the model is a two-layer torch LM (embedding → linear) that records the keyword
arguments it receives, so the test can see exactly what reaches a forward. The positions, the packed row and the
real Qwen3-VL are covered by ``tests/integration/test_forwards.py`` (this file has another basename: pytest
collects ``tests/`` without packages, so basenames must be unique).
"""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from coordexp_swift.trainers.forwards import NON_FORWARD_KEYS, forward, forward_kwargs, pack_segments, rope_module

V, H, B, T = 11, 4, 2, 6


class _RecordingLM(torch.nn.Module):
    """``logits = Linear(Embedding(ids) or inputs_embeds)`` honouring ``logits_to_keep`` like transformers;
    ``drop_last`` returns one position too few (a broken wrapper), ``cache`` returns a non-None cache."""

    def __init__(self, *, drop_last: bool = False, cache: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(V, H), torch.nn.Linear(H, V)
        self.drop_last, self.cache, self.seen = drop_last, cache, None

    def forward(self, input_ids=None, inputs_embeds=None, logits_to_keep=0, **kwargs):
        self.seen = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "logits_to_keep": logits_to_keep,
                     **kwargs}
        h = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        if self.drop_last:
            h = h[:, :-1]
        return CausalLMOutputWithPast(logits=self.head(h), past_key_values=("kv",) if self.cache else None)


def _batch() -> dict:
    ids = torch.arange(B * T).reshape(B, T) % V
    return {"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.long),
            "pixel_values": torch.zeros(3, 5), "image_grid_thw": torch.tensor([[1, 2, 2]]),
            "position_ids": torch.zeros(3, B, T, dtype=torch.long)}


def test_strips_non_forward_keys_and_sets_use_cache_false():
    """issue 8 item 3 / SPEC §3.3: every key of the one NON_FORWARD_KEYS list (labels, compute_loss_func,
    loss_scale, text_position_ids, channel, meta, ...) is dropped, every other key reaches the model unchanged, and
    the forward runs with use_cache=False; the logits are the model's for these ids."""
    assert {"labels", "compute_loss_func", "loss_scale", "text_position_ids", "channel", "meta"} <= set(
        NON_FORWARD_KEYS)
    model, batch = _RecordingLM(), _batch()
    inputs = {**batch, **{k: object() for k in NON_FORWARD_KEYS}}
    out = forward(model, inputs)
    assert set(model.seen) == set(batch) | {"inputs_embeds", "logits_to_keep", "use_cache"}
    assert model.seen["use_cache"] is False and model.seen["inputs_embeds"] is None
    assert model.seen["logits_to_keep"] == 0  # the model's default: not passed
    for k, v in batch.items():
        assert model.seen[k] is v
    torch.testing.assert_close(out.logits, model.head(model.emb(batch["input_ids"])), rtol=0, atol=0)


def test_exactly_one_token_source():
    """issue 8 item 3 / SPEC §3.3: both input_ids and inputs_embeds → RuntimeError (in the inputs or as keywords),
    neither → RuntimeError; an ``inputs_embeds=`` keyword replaces the micro-batch's ids (a Channel-A iteration)."""
    model, batch = _RecordingLM(), _batch()
    emb = torch.randn(B, T, H)
    with pytest.raises(RuntimeError, match="exactly one of input_ids / inputs_embeds; got both"):
        forward(model, {**batch, "inputs_embeds": emb})
    with pytest.raises(RuntimeError, match="got both"):
        forward(model, batch, input_ids=batch["input_ids"], inputs_embeds=emb)
    with pytest.raises(RuntimeError, match="got neither"):
        forward(model, {k: v for k, v in batch.items() if k != "input_ids"})
    pos = torch.ones(4, B, T, dtype=torch.long)
    out = forward(model, batch, inputs_embeds=emb, position_ids=pos)
    assert model.seen["input_ids"] is None and model.seen["inputs_embeds"] is emb
    assert model.seen["position_ids"] is pos  # the keyword wins over the batch's positions
    torch.testing.assert_close(out.logits, model.head(emb), rtol=0, atol=0)


def test_inputs_embeds_forward_needs_explicit_positions():
    """issue 8 item 3 (ARCHITECTURE §3 rope_deltas trap): an inputs_embeds forward without position_ids raises
    instead of letting Qwen3-VL reuse a stale rope_deltas cache."""
    model, batch = _RecordingLM(), _batch()
    del batch["position_ids"]
    with pytest.raises(RuntimeError, match="needs explicit position_ids"):
        forward(model, batch, inputs_embeds=torch.randn(B, T, H))
    assert model.seen is None  # refused before the model ran


def test_logits_shape_guard_and_logits_to_keep():
    """issue 8 item 3 / SPEC §3.3: Stage-2 forwards refuse logits_to_keep and require logits.shape[:2] ==
    ids.shape[:2]; Stage-1 (sft_labels) passes logits_to_keep through and guards logits against the labels."""
    batch = _batch()
    with pytest.raises(RuntimeError, match="logits \\(2, 5\\) do not align with input_ids \\(2, 6\\)"):
        forward(_RecordingLM(drop_last=True), batch)
    with pytest.raises(RuntimeError, match="do not align with inputs_embeds"):
        forward(_RecordingLM(drop_last=True), batch, inputs_embeds=torch.randn(B, T, H))
    with pytest.raises(RuntimeError, match="logits_to_keep=3 would slice"):
        forward(_RecordingLM(), {**batch, "logits_to_keep": 3})
    forward(_RecordingLM(), {**batch, "logits_to_keep": 0})  # 0 = keep all (transformers' default)
    model = _RecordingLM()
    out = forward(model, {**batch, "logits_to_keep": 3}, sft_labels=torch.zeros(B, 3, dtype=torch.long))
    assert model.seen["logits_to_keep"] == 3 and out.logits.shape == (B, 3, V)
    with pytest.raises(RuntimeError, match="logits \\(2, 3\\) do not align with labels \\(2, 6\\)"):
        forward(_RecordingLM(), {**batch, "logits_to_keep": 3}, sft_labels=torch.zeros(B, T, dtype=torch.long))


def test_no_cache_in_or_out():
    """SPEC §9 001 1.3.4: a micro-batch carrying past_key_values is refused; a forward that returns a cache although
    use_cache=False raises."""
    with pytest.raises(RuntimeError, match="no past_key_values"):
        forward(_RecordingLM(), {**_batch(), "past_key_values": ("kv",)})
    with pytest.raises(RuntimeError, match="returned a cache"):
        forward(_RecordingLM(cache=True), _batch())
    assert forward_kwargs({**_batch(), "use_cache": True})["use_cache"] is False


def test_pack_segments_fails_fast_on_overflow_and_empty():
    """SPEC §3.3: a packed row longer than template.max_length fails fast with a ValueError naming the lengths
    (before any rope index is computed); no segment is a ValueError; a model without get_rope_index is a
    RuntimeError."""
    segs = [{"input_ids": list(range(5))}, {"input_ids": torch.arange(4)}]
    with pytest.raises(ValueError, match=r"2 segments is 9 tokens \(encoded_len \[5, 4\]\) > template.max_length 8"):
        pack_segments(_RecordingLM(), segs, max_length=8)
    with pytest.raises(ValueError, match="no segments"):
        pack_segments(_RecordingLM(), [], max_length=8)
    with pytest.raises(RuntimeError, match="no submodule with get_rope_index"):
        pack_segments(_RecordingLM(), segs, max_length=9)
    with pytest.raises(RuntimeError, match="get_rope_index"):
        rope_module(_RecordingLM())


def test_layering():
    """ARCHITECTURE §2/§5 layering: the preamble imports only torch, the standard library and the torch-only
    ``rollout.swift_forward`` (no ms-swift, no transformers), so every trainer can use it on any wrapped model."""
    from coordexp_swift.rollout import swift_forward
    from coordexp_swift.trainers import forwards
    from tests.layering import top_level_imports

    assert top_level_imports(forwards) <= {"torch", "itertools", "dataclasses", "typing", "sys", "coordexp_swift"}
    assert top_level_imports(swift_forward) <= {"torch", "contextlib", "collections"}


def test_one_forward_preamble_for_every_trainer():
    """seed 002 4.4 (one shared forward-preamble helper): Stage-1, Channel-A and Channel-B import ``forward`` from
    ``trainers.forwards``, and nowhere in the package is a model called with keyword inputs except inside it."""
    import re
    from pathlib import Path

    pkg = Path(__import__("coordexp_swift").__file__).parent
    for name in ("stage1.py", "channel_a.py", "channel_b.py"):
        src = (pkg / "trainers" / name).read_text()
        assert re.search(r"^from coordexp_swift\.trainers\.forwards import .*\bforward\b", src, re.M), name
    direct = re.compile(r"\bmodel\(\*\*|\bmodel\((input_ids|inputs_embeds)=")
    callers = sorted(str(f.relative_to(pkg)) for f in pkg.rglob("*.py") if direct.search(f.read_text()))
    assert callers == ["trainers/forwards.py"], callers
