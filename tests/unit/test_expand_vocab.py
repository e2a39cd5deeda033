"""`expand-vocab` on a tiny Qwen3-VL built without coord tokens (seed 000 2.1)."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from coordexp_swift.coord.vocab import coord_token_ids
from coordexp_swift.tools.expand_vocab import expand_vocab, main
from coordexp_swift.tools.tiny_model import build_tiny_model


def test_expand_vocab_adds_contiguous_coord_rows(tmp_path):
    """seed 000 2.1: coord tokens get contiguous single ids after the old vocab; old rows are bitwise unchanged;
    new rows are smooth in k; the expanded checkpoint passes the coord-vocab check used at trainer init."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    src = build_tiny_model(tmp_path / "src", seed=3, with_coord_tokens=False)
    assert main(["--src", str(src), "--dst", str(tmp_path / "dst")]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "dst")
    ids = coord_token_ids(tok)
    assert ids.tolist() == list(range(151669, 152669))
    assert tok.decode(ids[:2].tolist(), skip_special_tokens=True) == "<|coord_0|><|coord_1|>"

    old = load_file(src / "model.safetensors")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst")
    emb = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    old_emb = next(v for k, v in old.items() if k.endswith("embed_tokens.weight"))
    old_head = next(v for k, v in old.items() if k.endswith("lm_head.weight"))
    n_old = old_emb.shape[0]
    assert emb.shape[0] == head.shape[0] == 152669
    assert torch.equal(emb[:n_old], old_emb) and torch.equal(head[:n_old], old_head)
    new = emb[ids] - emb[ids].mean(0)
    cos = torch.nn.functional.cosine_similarity
    assert cos(new[:-1], new[1:]).mean() > 0.95
    # scale matches the old rows (per-dim std within a factor 3)
    ratio = float(emb[ids].std(0).mean() / old_emb.std(0).mean())
    assert 1 / 3 < ratio < 3


def test_expand_vocab_refuses_a_second_time(tmp_path, tiny_model_dir):
    """A checkpoint that already has coord tokens is refused with a clear message."""
    import pytest

    with pytest.raises(ValueError, match="already has 1000 coord tokens"):
        expand_vocab(tiny_model_dir, tmp_path / "dst")
