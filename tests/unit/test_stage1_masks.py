"""Stage-1 target masks and the ``gt`` context built from labels, on the shared token-type code (seed 002 7B.1-7B.3,
9.3C)."""
from __future__ import annotations

import pytest
import torch

from coordexp_swift.config import load_coordexp_config
from coordexp_swift.coord.vocab import coord_token_ids, id_to_bin_lookup
from coordexp_swift.losses.token_masks import stage1_masks
from coordexp_swift.teacher_forcing.stage1 import (PieceTable, gt_context_from_labels, gt_meta_from_labels,
                                                  supervised_runs)
from tests.unit.stage1_scenarios import _compact

TEXT_1 = ('{"objects": [{"desc": "red circle", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_30|>, '
          '<|coord_40|>]}]}')
TEXT_2 = ('{"objects": [{"desc": "a \\"b\\"", "bbox_2d": [<|coord_5|>, <|coord_6|>, <|coord_7|>, <|coord_8|>]}]}')
# Frozen expectation (read off the real Qwen BPE tokens, by eye): the tokens overlapping each desc *value*
# (quotes excluded; a token straddling the value boundary counts as desc).
DESC_TOKENS_1 = ["red", "Ġcircle"]
DESC_TOKENS_2 = ["a", 'Ġ\\"', "b", '\\"",']


def _segment(tok, text):
    prompt = tok.encode("<|im_start|>user\nfind shapes<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = tok.encode(text + "<|im_end|>", add_special_tokens=False)
    return prompt + answer, [-100] * len(prompt) + answer


def desc_target_mask(labels, pieces, coord_ids, im_end, kept=None):
    """[B, T-1] desc mask over shifted targets, read off the registry context built from ``labels``."""
    meta = gt_meta_from_labels(labels, coord_ids=coord_ids, eos_id=im_end, pieces=pieces, kept=kept)
    ctx = gt_context_from_labels(torch.zeros(*labels.shape, 1), labels, meta, coord_ids=coord_ids)
    return ctx.type_mask("desc")[:, 1:]


def _types(tok, masks, desc, row, coord_ids):
    """(token, type) per supervised target of ``row`` in order."""
    out = []
    for t in torch.nonzero((masks.text | masks.coord)[row]).reshape(-1).tolist():
        tid = int(masks.target[row, t])
        kind = ("eos" if tid == tok.convert_tokens_to_ids("<|im_end|>") else
                "coord" if bool(masks.coord[row, t]) else "desc" if bool(desc[row, t]) else "struct")
        out.append((tok.convert_ids_to_tokens(tid), kind))
    return out


def test_stage1_masks_packed_equal_unpacked_and_frozen(tiny_tokenizer):
    """seed 002 9.3C / 7B.2: on a packed row of two segments the Stage-1 masks (coord, text, text-gate, desc) equal
    the unpacked ones token for token and match the frozen expectation; no target crosses segments."""
    tok = tiny_tokenizer
    coord_ids = coord_token_ids(tok)
    lut = id_to_bin_lookup(coord_ids, len(tok))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    (ids1, lab1), (ids2, lab2) = _segment(tok, TEXT_1), _segment(tok, TEXT_2)
    width = max(len(lab1), len(lab2))
    pad = lambda lab: lab + [-100] * (width - len(lab))  # noqa: E731
    unpacked = torch.tensor([pad(lab1), pad(lab2)])
    packed = torch.tensor([lab1 + lab2])
    pieces = PieceTable(tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False))  # as the trainer builds it

    m_u = stage1_masks(unpacked, lut, im_end)
    m_p = stage1_masks(packed, lut, im_end)
    d_u = desc_target_mask(unpacked, pieces, coord_ids, im_end)
    d_p = desc_target_mask(packed, pieces, coord_ids, im_end)
    types_u = _types(tok, m_u, d_u, 0, coord_ids) + _types(tok, m_u, d_u, 1, coord_ids)
    types_p = _types(tok, m_p, d_p, 0, coord_ids)
    assert types_p == types_u
    # ms-swift's batch-size-1 logits_to_keep compaction: the segments become adjacent; the kept-position mask
    # recovers them and the types are unchanged
    compact = _compact({"labels": packed.clone()})
    assert supervised_runs(packed[0]) == supervised_runs(packed[0], None)
    assert len(supervised_runs(compact["labels"][0], compact["logits_to_keep"])) == 2
    assert len(supervised_runs(compact["labels"][0])) == 1  # without the mask they would merge
    m_c = stage1_masks(compact["labels"], lut, im_end)
    d_c = desc_target_mask(compact["labels"], pieces, coord_ids, im_end, kept=compact["logits_to_keep"])
    assert _types(tok, m_c, d_c, 0, coord_ids) == types_u

    seg1 = _types(tok, m_u, d_u, 0, coord_ids)
    assert [t for t, k in seg1 if k == "desc"] == DESC_TOKENS_1
    assert [t for t, k in _types(tok, m_u, d_u, 1, coord_ids) if k == "desc"] == DESC_TOKENS_2
    assert [k for _, k in seg1].count("coord") == 4 and seg1[-1] == ("<|im_end|>", "eos")
    # coord bins are read from the ids: 1, 2, 30, 40
    assert m_u.bins[0][m_u.coord[0]].tolist() == [1, 2, 30, 40]
    # text gate excludes <|im_end|>; text excludes coord
    assert int(m_u.text_gate[0].sum()) == int(m_u.text[0].sum()) - 1
    # the first target of segment 2 in the packed row is preceded by -100 prompt labels: position t predicts
    # token t+1, so the logit just before segment 2's answer is at a prompt position, never at segment 1's tail
    start2 = len(lab1) + lab2.index(next(x for x in lab2 if x != -100))
    assert packed[0, start2 - 1] == -100


def test_stage1_declines_a_pipeline():
    """seed 002 7B.3: Stage-1 has no objective pipeline; `custom.pipeline` is an unknown key and
    `custom.coord_soft_ce_w1` stays the Stage-1 knob."""
    with pytest.raises(ValueError, match="custom.pipeline"):
        load_coordexp_config({"custom": {"pipeline": {"objective": [{"name": "token_ce"}]}}})
    with pytest.raises(ValueError, match="stage2_ab"):
        load_coordexp_config({"custom": {}, "stage2_ab": {"schedule": {"b_ratio": 0.5}}})
    cfg = load_coordexp_config({"custom": {"coord_soft_ce_w1": {"enabled": True, "w1_weight": 0.5}}})
    assert cfg.variant == "stage1" and cfg.custom.coord_soft_ce_w1.w1_weight == 0.5
