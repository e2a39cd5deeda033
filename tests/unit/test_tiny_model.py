"""The offline tiny Qwen3-VL: tokenizer ids, determinism, and that transformers loads it as Qwen3-VL."""
from __future__ import annotations

import hashlib

import torch

from coordexp_swift.coord.codec import all_coord_tokens
from coordexp_swift.coord.vocab import coord_token_ids
from coordexp_swift.tools.tiny_model import COORD_START_ID, IMAGE_PAD_ID, build_tiny_model


def test_special_and_coord_ids(tiny_tokenizer):
    """seed 000 2.1: the tokenizer carries Qwen3-VL's real special ids and 1000 coord tokens at 151669..152668."""
    tok = tiny_tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD_ID == 151655
    assert tok.convert_tokens_to_ids("<|video_pad|>") == 151656
    ids = coord_token_ids(tok)
    assert ids.tolist() == list(range(COORD_START_ID, COORD_START_ID + 1000))
    # Non-special: decoding with skip_special_tokens keeps coord literals, drops <|im_end|>.
    text = "".join(all_coord_tokens()[:3]) + "<|im_end|>"
    enc = tok.encode(text, add_special_tokens=False)
    assert enc == [151669, 151670, 151671, 151645]
    assert tok.decode(enc, skip_special_tokens=True) == "<|coord_0|><|coord_1|><|coord_2|>"


def test_real_qwen_bpe(tiny_tokenizer):
    """The base vocabulary is the real Qwen byte-level BPE (151,643 ranks): known merges and byte fallback."""
    tok = tiny_tokenizer
    assert len(tok) == 152669
    # ids of the Qwen BPE are stable facts: "Hello" -> 9707, " world" -> 1879 in Qwen2/Qwen3 tokenizers.
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    text = '{"objects": [{"desc": "red circle", "bbox_2d": [<|coord_12|>, <|coord_999|>]}]}'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    """Same seed -> byte-identical weights; the model loads as a real Qwen3VLForConditionalGeneration."""
    from transformers import AutoModelForImageTextToText

    other = build_tiny_model(tmp_path / "again", seed=0)
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(other) == digest(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    n_params = sum(p.numel() for p in model.parameters())
    assert 15e6 < n_params < 40e6


def test_coord_rows_are_smooth(tiny_model_dir):
    """Neighbouring coord bins start with related embeddings: cos(e_k, e_k+1) >> cos(e_k, e_k+500)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    emb = model.get_input_embeddings().weight[COORD_START_ID:COORD_START_ID + 1000]
    centred = emb - emb.mean(0)
    cos = torch.nn.functional.cosine_similarity
    near = cos(centred[:-1], centred[1:]).mean()
    far = cos(centred[:500], centred[500:]).mean()
    assert near > 0.95 and far < 0.5
