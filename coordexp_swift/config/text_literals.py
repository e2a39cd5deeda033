"""Literals that must never appear inside free text we put in a training target or prompt (SPEC §1.1).

A tokenizer turns a special/added-token literal found in text (``"red<|im_end|>square"``) into that token, so a desc
or prompt containing one would put an end-of-answer / vision / tool token in the middle of the sequence; ms-swift's
template additionally rewrites its media and grounding tags (``<image>``, ``<bbox>``, …) wherever they occur.

``QWEN3_VL_SPECIAL_LITERALS``: the special/added tokens of the Qwen3-VL tokenizer other than the coord tokens (used
when the run's tokenizer files cannot be read, and by the CoordJSON renderer, which has no tokenizer).
``SWIFT_TEMPLATE_TAGS``: ms-swift's template tags. :func:`tokenizer_added_literals` reads a checkpoint's own added
tokens (``tokenizer.json`` / ``tokenizer_config.json``) without importing transformers. Standard library only.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

__all__ = ["FORBIDDEN_LITERALS", "QWEN3_VL_SPECIAL_LITERALS", "SWIFT_TEMPLATE_TAGS", "find_forbidden_literal",
           "find_lone_surrogate", "tokenizer_added_literals"]

QWEN3_VL_SPECIAL_LITERALS: frozenset[str] = frozenset({
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
})
SWIFT_TEMPLATE_TAGS: frozenset[str] = frozenset({"<image>", "<video>", "<audio>", "<ref-object>", "<bbox>"})
FORBIDDEN_LITERALS: frozenset[str] = QWEN3_VL_SPECIAL_LITERALS | SWIFT_TEMPLATE_TAGS

_COORD_LITERAL = re.compile(r"<\|coord_[0-9]+\|>")


def find_forbidden_literal(text: str, literals: Iterable[str] = FORBIDDEN_LITERALS) -> str | None:
    """The first literal of ``literals`` contained in ``text`` (leftmost occurrence), else ``None``."""
    if "<" not in text:
        return None
    hits = [(text.find(lit), lit) for lit in literals if lit in text]
    return min(hits)[1] if hits else None


def find_lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate code point (U+D800..U+DFFF) in ``text`` (not encodable as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def tokenizer_added_literals(model_dir: str | os.PathLike[str] | None) -> frozenset[str]:
    """Every added/special token literal of the checkpoint at ``model_dir`` except the coord tokens, plus
    :data:`SWIFT_TEMPLATE_TAGS`; :data:`FORBIDDEN_LITERALS` when ``model_dir`` is not a local directory or its
    tokenizer files cannot be read."""
    if model_dir is None or not os.path.isdir(model_dir):
        return FORBIDDEN_LITERALS
    found: set[str] = set()
    try:
        tok_json = os.path.join(model_dir, "tokenizer.json")
        if os.path.isfile(tok_json):
            with open(tok_json, encoding="utf-8") as f:
                found |= {t["content"] for t in json.load(f).get("added_tokens", []) if isinstance(t, dict)}
        tok_cfg = os.path.join(model_dir, "tokenizer_config.json")
        if os.path.isfile(tok_cfg):
            with open(tok_cfg, encoding="utf-8") as f:
                decoder = json.load(f).get("added_tokens_decoder") or {}
            found |= {t["content"] for t in decoder.values() if isinstance(t, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return FORBIDDEN_LITERALS
    if not found:
        return FORBIDDEN_LITERALS
    return frozenset(t for t in found if isinstance(t, str) and t and not _COORD_LITERAL.fullmatch(t)) \
        | SWIFT_TEMPLATE_TAGS
