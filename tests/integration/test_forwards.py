"""Explicit mRoPE positions and the packed row on the tiny real-vocabulary Qwen3-VL (issue 8 item 3; SPEC §3.3;
SPEC §9 seed 001 1.3.2; ARCHITECTURE §3 rope_deltas trap).

Two samples go through ms-swift's real ``qwen3_vl`` template ``encode`` (train mode, real ``pixel_values``): A, a
128 px shapes image (grid 1×8×8, 16 image tokens), and B, another shapes image resized to 64×192 px (grid 1×12×4),
so the two have different mRoPE deltas. References are the model's own ``input_ids`` forwards (it computes the
positions itself from ``input_ids`` + grid); template positions come from the template's own data collator
(padded, and ``padding_free=True``), whose rope index is this model's (``template.model = model``).
"""
from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from coordexp_swift.config import DEFAULT_USER_PROMPT
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import iter_jsonl
from coordexp_swift.trainers.forwards import forward, pack_segments, positions_for

pytestmark = pytest.mark.integration

VISION = ("pixel_values", "image_grid_thw", "mm_token_type_ids")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, shapes_dir, tmp_path_factory):
    from coordexp_swift.rollout.hf_backend import load_model_and_template

    model, template = load_model_and_template(tiny_model_dir)
    model.eval()
    template.model = model  # the template's rope index is this model's (not a meta-device dummy)
    template.set_mode("train")
    recs = list(iter_jsonl(shapes_dir / "train.jsonl", stage="stage1"))
    row_a = to_swift_row(recs[0], user_prompt=DEFAULT_USER_PROMPT)
    row_b = to_swift_row(recs[2], user_prompt=DEFAULT_USER_PROMPT)
    other = tmp_path_factory.mktemp("other_image") / "b.png"
    Image.open(recs[2].image).convert("RGB").resize((64, 192)).save(other)
    row_b["images"] = [str(other)]
    encs = [template.encode(r, return_length=True) for r in (row_a, row_b)]
    assert encs[0]["image_grid_thw"].tolist() == [[1, 8, 8]] and encs[1]["image_grid_thw"].tolist() == [[1, 12, 4]]
    singles = [template.data_collator([copy.deepcopy(e)]) for e in encs]
    return model, template, encs, singles


def _vision(batch: dict) -> dict:
    return {k: batch[k] for k in VISION}


def _ids_forward(model, batch: dict) -> torch.Tensor:
    """Reference: the model computes positions itself from input_ids + grid (and caches rope_deltas)."""
    return forward(model, {"input_ids": batch["input_ids"], **_vision(batch)}).logits


@torch.no_grad()
def test_inputs_embeds_forward_with_explicit_positions_equals_ids_forward(tiny):
    """issue 8 item 3 / seed 001 1.3.2: an inputs_embeds forward (embeddings from the model's input-embedding module
    called on the ids) with positions_for's positions equals the input_ids forward (1e-5) — right after A's own
    forward and right after a forward on a different image B (which leaves B's rope_deltas in the model's cache);
    the helper neither reads nor writes that cache. Without explicit positions the same forward differs (the trap
    is real, so the test can fail)."""
    model, _, _, (a, b) = tiny
    ref_a = _ids_forward(model, a)
    pos_a = positions_for(model, a)
    assert pos_a.shape == (4, 1, a["input_ids"].shape[1])
    embed = model.get_input_embeddings()
    got = forward(model, _vision(a), inputs_embeds=embed(a["input_ids"]), position_ids=pos_a).logits
    torch.testing.assert_close(got, ref_a, rtol=0, atol=1e-5)

    _ids_forward(model, b)  # a forward on another image: the cache now holds B's delta
    delta_b = model.model.rope_deltas.clone()
    assert int(pos_a[1:].max()) + 1 - a["input_ids"].shape[1] == -12 and delta_b.tolist() == [[-6]]
    got = forward(model, _vision(a), inputs_embeds=embed(a["input_ids"]), position_ids=pos_a).logits
    torch.testing.assert_close(got, ref_a, rtol=0, atol=1e-5)
    assert torch.equal(model.model.rope_deltas, delta_b)  # explicit positions leave the cache alone

    # the same forward without explicit positions (bypassing the preamble, which refuses it) is wrong
    stale = model(inputs_embeds=embed(a["input_ids"]), use_cache=False, **_vision(a)).logits
    assert (stale - ref_a).abs().max() > 1e-2


@torch.no_grad()
def test_packed_row_of_two_segments_equals_unpacked_forwards(tiny):
    """issue 8 item 3 / SPEC §3.3: A and B packed into one padding-free row (bsz 1, no attention_mask, [4,1,T]
    positions, row 0 restarting per segment) give, per position, the logits of the two unpacked forwards (1e-5);
    offsets / encoded_len locate each segment and the labels are the segments' labels back to back. An
    inputs_embeds forward on the row (its own positions) gives the same logits."""
    model, _, encs, singles = tiny
    lens = [len(e["input_ids"]) for e in encs]
    row = pack_segments(model, encs, max_length=sum(lens))
    assert row.offsets == (0, lens[0]) and row.encoded_len == tuple(lens) and row.length == sum(lens)
    assert "attention_mask" not in row.inputs and row.inputs["input_ids"].shape == (1, sum(lens))
    assert row.inputs["position_ids"].shape == (4, 1, sum(lens))
    assert torch.nonzero(row.inputs["position_ids"][0, 0] == 0).reshape(-1).tolist() == [0, lens[0]]
    assert row.inputs["labels"][0].tolist() == list(encs[0]["labels"]) + list(encs[1]["labels"])
    packed = forward(model, row.inputs).logits
    assert packed.shape[:2] == (1, sum(lens))
    for i, single in enumerate(singles):
        torch.testing.assert_close(packed[:, row.segment(i)], _ids_forward(model, single), rtol=0, atol=1e-5)
    # seed 001 1.3.2: a Channel-A iteration on the packed row (inputs_embeds, the row's own 4-row positions)
    embeds = model.get_input_embeddings()(row.inputs["input_ids"])
    torch.testing.assert_close(forward(model, row.inputs, inputs_embeds=embeds).logits, packed, rtol=0, atol=1e-5)


@torch.no_grad()
def test_positions_equal_ms_swift_template(tiny):
    """issue 8 item 3: positions_for on the template's right-padded batch of A and B equals the collator's
    ``[text_position_ids; position_ids]``; pack_segments' row equals the template's padding-free collation of the
    same samples (input_ids, 4-row positions, mm_token_type_ids, pixel_values, grids, labels). Also the padded batch
    run with the helper's 4-row positions equals the model computing its own positions (attention_mask kept)."""
    model, template, encs, _ = tiny
    padded = template.data_collator(copy.deepcopy(encs))
    want = torch.cat([padded["text_position_ids"][None], padded["position_ids"]])
    assert want.shape == (4, 2, max(len(e["input_ids"]) for e in encs))
    assert torch.equal(positions_for(model, padded), want)

    template.padding_free = True
    try:
        pf = template.data_collator(copy.deepcopy(encs))
    finally:
        template.padding_free = False
    row = pack_segments(model, encs, max_length=None)
    assert torch.equal(row.inputs["position_ids"], torch.cat([pf["text_position_ids"][None], pf["position_ids"]]))
    for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw", "labels"):
        assert torch.equal(row.inputs[key], pf[key]), key

    own = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False,
                **_vision(padded)).logits
    mine = forward(model, {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
                           **_vision(padded)}, position_ids=positions_for(model, padded)).logits
    keep = padded["attention_mask"].bool()
    torch.testing.assert_close(mine[keep], own[keep], rtol=0, atol=1e-5)


def test_pack_segments_overflow_names_lengths(tiny):
    """SPEC §3.3: total length one past template.max_length fails fast (ValueError with the lengths); exactly
    max_length packs."""
    model, _, encs, _ = tiny
    lens = [len(e["input_ids"]) for e in encs]
    with pytest.raises(ValueError, match=rf"is {sum(lens)} tokens \(encoded_len \[{lens[0]}, {lens[1]}\]\) > "
                                         rf"template.max_length {sum(lens) - 1}"):
        pack_segments(model, encs, max_length=sum(lens) - 1)
    assert pack_segments(model, encs, max_length=sum(lens)).length == sum(lens)
