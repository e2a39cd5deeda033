"""Generation prompts encoded exactly like training (SPEC §3.6 B0/B4: prompt ids MUST equal generation prompt ids).

Training encodes a row (system?, user ``"<image>" + prompt``, assistant CoordJSON) with the ms-swift ``qwen3_vl``
template in ``train`` mode. :class:`PromptEncoder` encodes the same row **without its assistant turn** with the
same template object in ``transformers`` (inference) mode: the result is the training ``input_ids`` up to and
including ``<|im_start|>assistant\\n`` (the first labelled position), with the same number of ``<|image_pad|>``
tokens (one per merged vision patch) and the same ``pixel_values`` / ``image_grid_thw``.

:func:`collate_left` pads a batch of prompts on the LEFT for generation; every tensor it returns is ``[B, T]``
(``input_ids`` / ``attention_mask`` / ``mm_token_type_ids``, ``torch.long``) or concatenated over images
(``pixel_values [ΣP, D]``, ``image_grid_thw [N_img, 3]``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "IMAGE_PAD_TOKEN",
    "IM_END_TOKEN",
    "EncodedPrompt",
    "PromptEncoder",
    "collate_left",
    "prompt_messages",
    "template_mode",
]

IMAGE_PAD_TOKEN = "<|image_pad|>"
IM_END_TOKEN = "<|im_end|>"


@dataclass(frozen=True, eq=False)
class EncodedPrompt:
    """One generation prompt.

    ``input_ids``: the prompt token ids (image pads already expanded), ending with ``<|im_start|>assistant\\n``.
    ``pixel_values`` ``[P, D]`` float, ``image_grid_thw`` ``[N_img, 3]`` long and ``mm_token_type_ids`` ``[T]``
    (0 text, 1 image) are ``None`` for a text-only prompt. ``n_image_tokens``: count of ``<|image_pad|>`` ids.
    """

    input_ids: tuple[int, ...]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    mm_token_type_ids: torch.Tensor | None
    n_image_tokens: int

    def __len__(self) -> int:
        return len(self.input_ids)


def prompt_messages(messages: Sequence[Mapping[str, Any]], *, where: str = "row") -> list[dict[str, Any]]:
    """The messages of a generation prompt: ``messages`` without a trailing assistant turn.

    Raises ``ValueError`` if what remains does not end with a user turn.
    """
    msgs = [dict(m) for m in messages]
    if msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    if not msgs or msgs[-1].get("role") != "user":
        roles = [m.get("role") for m in messages]
        raise ValueError(f"{where}: messages roles {roles} must end with a user turn (optionally followed by the "
                         "assistant answer, which is dropped for generation)")
    return msgs


@contextlib.contextmanager
def template_mode(template: Any, mode: str) -> Iterator[None]:
    """Temporarily switch an ms-swift template's mode (``train`` / ``transformers`` / ``vllm``); restored after."""
    old = template.mode
    template.set_mode(mode)
    try:
        yield
    finally:
        template.set_mode(old)


class PromptEncoder:
    """Encodes ms-swift rows into generation prompts with a given ms-swift template (the training one).

    ``template``: an initialised ms-swift ``Template`` (e.g. ``swift.template.get_template(processor,
    template_type="qwen3_vl")``); its mode is switched to ``transformers`` only for the duration of an encode.
    """

    def __init__(self, template: Any) -> None:
        self.template = template
        tok = template.tokenizer
        self.tokenizer = tok
        self.image_pad_id: int = _token_id(tok, IMAGE_PAD_TOKEN)
        self.im_end_id: int = _token_id(tok, IM_END_TOKEN)
        pad = tok.pad_token_id
        if pad is None:
            raise ValueError("the tokenizer has no pad_token_id; left-padded generation needs one (set pad_token)")
        self.pad_id: int = int(pad)

    def encode(self, row: Mapping[str, Any], *, mode: str = "transformers") -> EncodedPrompt:
        """Encode ``row`` (``messages``, optional ``images``) without its assistant turn.

        ``mode='vllm'`` leaves image pads unexpanded and images unprocessed (vLLM expands them itself); the
        returned ``pixel_values`` are then ``None``.
        """
        where = f"sample_id {row.get('sample_id')}" if "sample_id" in row else "row"
        inputs: dict[str, Any] = {"messages": prompt_messages(row["messages"], where=where)}
        images = row.get("images") or []
        if images:
            inputs["images"] = list(images)
        with template_mode(self.template, mode):
            enc = self.template.encode(inputs)
        ids = tuple(int(i) for i in enc["input_ids"])
        mm = enc.get("mm_token_type_ids")
        return EncodedPrompt(
            input_ids=ids,
            pixel_values=enc.get("pixel_values"),
            image_grid_thw=enc.get("image_grid_thw"),
            mm_token_type_ids=None if mm is None else torch.as_tensor(mm, dtype=torch.long).reshape(-1),
            n_image_tokens=sum(1 for i in ids if i == self.image_pad_id),
        )

    def encode_many(self, rows: Sequence[Mapping[str, Any] | EncodedPrompt]) -> list[EncodedPrompt]:
        """:meth:`encode` every row; already-encoded prompts pass through unchanged."""
        return [r if isinstance(r, EncodedPrompt) else self.encode(r) for r in rows]


def _token_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {token} token; a Qwen3-VL tokenizer is required")
    return int(tid)


def collate_left(prompts: Sequence[EncodedPrompt], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad ``prompts`` into one generation batch.

    Returns ``input_ids`` ``[B, T]`` (pads = ``pad_id``), ``attention_mask`` ``[B, T]`` (0 on pads), and when the
    prompts carry images ``mm_token_type_ids`` ``[B, T]`` (0 on pads), ``pixel_values`` (rows concatenated in batch
    order) and ``image_grid_thw``. Mixed image / text-only batches raise ``ValueError``.
    """
    if not prompts:
        raise ValueError("collate_left: empty batch")
    width = max(len(p) for p in prompts)
    b = len(prompts)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    has_mm = [p.mm_token_type_ids is not None for p in prompts]
    if any(has_mm) and not all(has_mm):
        raise ValueError("collate_left: a batch mixes prompts with and without images; batch them separately")
    mm = torch.zeros((b, width), dtype=torch.long) if all(has_mm) else None
    for r, p in enumerate(prompts):
        n = len(p)
        input_ids[r, width - n:] = torch.tensor(p.input_ids, dtype=torch.long)
        attention_mask[r, width - n:] = 1
        if mm is not None:
            mm[r, width - n:] = p.mm_token_type_ids  # type: ignore[assignment]
    batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if mm is not None:
        batch["mm_token_type_ids"] = mm
    pv = [p.pixel_values for p in prompts if p.pixel_values is not None]
    if pv:
        batch["pixel_values"] = torch.cat(pv, dim=0)
        batch["image_grid_thw"] = torch.cat([p.image_grid_thw for p in prompts if p.image_grid_thw is not None], 0)
    return batch
