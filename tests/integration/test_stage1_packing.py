"""Packed = unpacked Stage-1 losses on the tiny real-vocabulary Qwen3-VL (SPEC §2.5; §9 rows 000 1.4, 002 7B.2).

Three shapes samples (1, 3 and 2 objects) are encoded with the real ms-swift ``qwen3_vl`` template in train mode and
collated twice by the template's own collator: (a) right-padded (``padding_free=False``) and (b) one padding-free
packed row (``padding_free=True``). The packed row is run the CPU way of ARCHITECTURE §3: no ``attention_mask``,
4-row ``position_ids = [text_position_ids; mRoPE t,h,w]`` restarting at 0 per segment (HF's sdpa path then builds
the block-diagonal causal mask from the restarts; that detection also needs ``use_cache=False``, since a
``DynamicCache`` created by default turns it off). The tiny model runs on both (no labels to the model) and the
Stage-1 math is applied to each; golden values are the padded run's, compared position by position.
"""
from __future__ import annotations

import copy
import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from coordexp_swift.config import DEFAULT_USER_PROMPT
from coordexp_swift.coord.vocab import coord_token_ids, id_to_bin_lookup
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import iter_jsonl
from coordexp_swift.losses.coord_dist import coord_terms, text_gate
from coordexp_swift.config.custom import CoordSoftCEW1Config
from coordexp_swift.losses.token_masks import IGNORE_INDEX, stage1_masks
from coordexp_swift.teacher_forcing.stage1 import Stage1Objective

pytestmark = pytest.mark.integration

RECORDS = (0, 2, 4)  # 1, 3 and 2 objects in the conftest shapes set (seed 0)
WEIGHTS = CoordSoftCEW1Config(enabled=True, ce_weight=0.5, soft_ce_weight=1.0, w1_weight=1.0, gate_weight=1.0, text_gate_weight=0.3)


class _Meter:
    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, v) -> None:
        self.values.append(float(v))


def _bare_trainer(model, tokenizer, pieces):
    """A ``Stage1Trainer`` without ``__init__``: the attributes ``compute_loss`` reads (single process)."""
    from coordexp_swift.trainers.stage1 import Stage1Trainer

    t = Stage1Trainer.__new__(Stage1Trainer)
    t.args = types.SimpleNamespace(average_tokens_across_devices=True, world_size=1, n_gpu=1, process_index=0)
    t.accelerator = types.SimpleNamespace(num_processes=1, parallelism_config=None)
    t.model_accepts_loss_kwargs = True
    t.model = model
    t.objective = Stage1Objective(WEIGHTS, coord_ids=coord_token_ids(tokenizer),
                                  vocab_size=model.get_output_embeddings().weight.shape[0],
                                  eos_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pieces=pieces)
    t._window_counts = None
    t.custom_metrics = {"train": defaultdict(_Meter), "eval": defaultdict(_Meter)}
    return t


@pytest.fixture(scope="module")
def packed_and_padded(tiny_model_dir, shapes_dir):
    from coordexp_swift.rollout.hf_backend import load_model_and_template

    model, template = load_model_and_template(tiny_model_dir)
    model.eval()  # no dropout (the tiny config has none; belt and braces)
    template.model = model  # mRoPE positions from this model's get_rope_index
    template.set_mode("train")
    recs = list(iter_jsonl(shapes_dir / "train.jsonl", stage="stage1"))
    encs = [template.encode(to_swift_row(recs[i], user_prompt=DEFAULT_USER_PROMPT), return_length=True)
            for i in RECORDS]
    padded = template.data_collator(copy.deepcopy(encs))
    template.padding_free = True
    try:
        packed = template.data_collator(copy.deepcopy(encs))
    finally:
        template.padding_free = False
    tok = template.tokenizer
    pieces = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)
    return model, tok, pieces, encs, padded, packed


def _forward_inputs(batch: dict, packed: bool) -> dict:
    keep = ("input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    out = {k: batch[k] for k in keep if k in batch}
    out["use_cache"] = False  # a DynamicCache (use_cache defaults to True) disables HF's packed-sequence detection
    if packed:  # CPU/sdpa packing: no mask, 4-row positions (text row first) restarting per segment
        out["position_ids"] = torch.cat([batch["text_position_ids"][None], batch["position_ids"]], dim=0)
    else:
        out["attention_mask"] = batch["attention_mask"]
        out["position_ids"] = batch["position_ids"]
    return out


def test_packed_row_layout_has_no_cross_segment_targets(packed_and_padded):
    """seed 000 1.4 / 002 7B.2 (SPEC §2.5): the packed row is the samples back to back; text positions restart at 0
    at each segment start; every segment begins with -100 prompt labels, so its first target is preceded by -100
    and no logit predicts a token of the next segment. Seed rows: seed 000 1.4, seed 002 7B.2."""
    _, _, _, encs, padded, packed = packed_and_padded
    lens = [len(e["input_ids"]) for e in encs]
    starts = [sum(lens[:i]) for i in range(len(lens))]
    tpos = packed["text_position_ids"][0]
    assert packed["input_ids"].shape == (1, sum(lens))
    assert torch.nonzero(tpos == 0).reshape(-1).tolist() == starts
    labels = packed["labels"][0]
    for s, n, e in zip(starts, lens, encs):
        assert labels[s:s + n].tolist() == list(e["labels"])
        first = s + next(j for j, y in enumerate(e["labels"]) if y != IGNORE_INDEX)
        assert first > s and bool((labels[s:first] == IGNORE_INDEX).all())
        assert int(labels[s]) == IGNORE_INDEX  # the target of the previous segment's last logit is ignored
    assert "attention_mask" not in packed and padded["attention_mask"].shape[0] == len(encs)


def test_packed_equals_unpacked_per_token_and_token_mean(packed_and_padded):
    """seed 000 1.4 / 002 7B.2 (SPEC §2.5): per-token base CE, softCE, W1, coord-CE, gate and text gate are equal
    (1e-5) at every supervised position of the padded and the packed run, and so are the Stage-1 token-mean
    losses of the trainer (total and every logged term)."""
    model, tok, pieces, encs, padded, packed = packed_and_padded
    coord_ids = coord_token_ids(tok)
    vocab = model.get_output_embeddings().weight.shape[0]
    lut = id_to_bin_lookup(coord_ids, vocab)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        lg_pad = model(**_forward_inputs(padded, packed=False)).logits
        lg_pack = model(**_forward_inputs(packed, packed=True)).logits
    per: dict[str, list[torch.Tensor]] = {}
    for name, lg, labels in (("pad", lg_pad, padded["labels"]), ("pack", lg_pack, packed["labels"])):
        m = stage1_masks(labels, lut, im_end)
        ce = torch.zeros(m.target.shape)
        ce[m.text] = F.cross_entropy(lg[:, :-1][m.text].float(), m.target[m.text], reduction="none")
        terms = coord_terms(lg[:, :-1][m.coord], coord_ids, m.bins[m.coord], want={"soft_ce", "w1", "coord_ce",
                                                                                    "coord_gate"})
        per[name] = [ce[m.text], *(terms[k] for k in sorted(terms)), text_gate(lg[:, :-1][m.text_gate], coord_ids),
                     m.target[m.text | m.coord]]
    n_sup = sum(sum(1 for y in e["labels"][1:] if y != IGNORE_INDEX) for e in encs)
    assert per["pad"][-1].numel() == per["pack"][-1].numel() == n_sup
    assert torch.equal(per["pad"][-1], per["pack"][-1])  # same targets in the same order
    for a, b in zip(per["pad"][:-1], per["pack"][:-1]):
        assert a.shape == b.shape and a.numel() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)

    # the trainer's token-mean objective and its logged terms, padded vs packed
    runs = {}
    for name, batch, is_packed in (("pad", padded, False), ("pack", packed, True)):
        tr = _bare_trainer(model, tok, pieces)
        inputs = _forward_inputs(batch, packed=is_packed)
        inputs["labels"] = batch["labels"]
        with torch.no_grad():
            loss = tr.compute_loss(model, inputs)
        runs[name] = (float(loss), {k: v.values[-1] for k, v in tr.custom_metrics["eval"].items()})
    assert runs["pack"][0] == pytest.approx(runs["pad"][0], rel=1e-5)
    assert set(runs["pack"][1]) == set(runs["pad"][1]) >= {"loss/struct_ce", "loss/desc_ce", "loss/coord_reg/w1"}
    for key, val in runs["pad"][1].items():
        assert runs["pack"][1][key] == pytest.approx(val, rel=1e-5, abs=1e-6), key

