"""HF ``generate`` rollout backend (SPEC §3.6 B0).

Prompts are encoded by :class:`~coordexp_swift.rollout.prompts.PromptEncoder` (training-identical ids), split into
batches of at most ``decode.batch_size`` in input order, LEFT-padded, and decoded with ``model.generate`` (KV cache
on) under ``torch.no_grad()`` with the model in eval mode. Only ``<|im_end|>`` stops a sequence. Afterwards every
submodule's train/eval flag and the model's cached mRoPE deltas are restored, so a following training forward is
unaffected.

Decoding: greedy (``do_sample=False, num_beams=1``), beam (``num_beams`` ≥ 2, best beam only) or sampling iff
``decode.temperature > 0`` (``top_p``; ``top_k`` -1 = off). Sampling seeds the global torch RNG once per
:meth:`HFRolloutBackend.generate` call with ``seeds.hf_seed() = seed_base + micro_idx``; greedy and beam touch no
RNG. Every generation knob is set explicitly, so a checkpoint's own ``generation_config`` (e.g. a sampling default
or a repetition penalty) never leaks into rollouts.

``decode.logprobs``: a logits processor (:class:`_ChosenLogprobs`) keeps the step's ``log_softmax`` of the raw
logits (HF applies custom processors before the sampling warpers, and no other processor is configured) and, at the
next step, gathers the id that was chosen — O(batch) memory per step on the device, one host copy per batch.

DeepSpeed ZeRO-3: the trained model's weights are partitioned over the ranks, and its forward hooks all-gather every
submodule's weights per forward and release them after (one collective per submodule per generated token, in
lockstep across ranks). :meth:`HFRolloutBackend.generate` therefore runs inside ms-swift's
``swift.utils.unwrap_model_for_generation(engine, accelerator)`` (TRL's: gather every parameter once with
``deepspeed.zero.GatheredParameters``, remove the ZeRO-3 hooks, re-add them after), as ms-swift's own GRPO and
``predict_with_generate`` do. The engine comes from the trainer's ``accelerator`` (``deepspeed_engine_wrapped``),
passed as ``HFRolloutBackend(model, template, accelerator=...)``; a model with partitioned (``ds_id``) parameters
and no DeepSpeed accelerator raises ``RuntimeError``. Every rank must call ``generate`` the same number of times (the
gather is a collective); transformers' ``synced_gpus`` (on under ZeRO-3) keeps the ranks' decode loops in step.
Without ZeRO-3 (DDP, ZeRO-2, one process) this is a no-op.

ms-swift's Qwen3-VL forward patch: ms-swift 4.6 replaces ``Qwen3VLModel.forward`` and keeps transformers' as the
instance attribute ``origin_forward``; with DeepSpeed on, its replacement encodes ``pixel_values`` itself and treats a
call without them as text-only (a dummy image for ZeRO-3 lockstep). transformers 5.19's ``generate`` encodes the
images up front and hands ``Qwen3VLModel`` ``mm_encoder_outputs`` with ``pixel_values=None``, so under DeepSpeed the
image features were silently never inserted (every prompt of a batch decoded the same text; measured on the tiny
model). ``generate`` therefore runs transformers' own forward (``rollout.swift_forward.transformers_forward``, the
helper the training forwards use for ``inputs_embeds`` too): every rollout prompt has its image, and inside
``generate`` no forward issues a collective (ZeRO-2 has none; ZeRO-3 weights are gathered and its hooks removed), so
ms-swift's lockstep branch has nothing to do there.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from coordexp_swift.rollout.backends import (
    DecodeOptions,
    RolloutOutput,
    Sample,
    decode_text,
    finalize_response,
)
from coordexp_swift.rollout.prompts import PromptEncoder, collate_left
from coordexp_swift.rollout.seeds import RolloutSeeds
from coordexp_swift.rollout.swift_forward import transformers_forward

__all__ = ["HFRolloutBackend", "load_model_and_template"]


def load_model_and_template(
    model_dir: str | os.PathLike[str],
    *,
    template_type: str = "qwen3_vl",
    model_type: str = "qwen3_vl",
    torch_dtype: torch.dtype | None = torch.float32,
    device_map: Any = None,
    max_pixels: int | None = None,
) -> tuple[Any, Any]:
    """Load a full checkpoint and its ms-swift template exactly as ``swift sft`` does (``--model_type qwen3_vl
    --template <template_type>``; pass the training ``max_pixels`` if it was set). ``template_type`` is the run's
    ``template`` (``qwen3_vl``, or ``qwen3_vl_compact`` for the compact tiny model, registered here on demand).
    Returns ``(model, template)``."""
    from swift.model import get_model_processor
    from swift.template import get_template

    from coordexp_swift.compact_template import register_compact_template

    register_compact_template()  # idempotent; makes `qwen3_vl_compact` resolvable outside `swift sft`

    model, processor = get_model_processor(str(model_dir), model_type=model_type, torch_dtype=torch_dtype,
                                           device_map=device_map, load_model=True)
    template = get_template(processor, template_type=template_type, max_pixels=max_pixels)
    return model, template


class _ChosenLogprobs:
    """HF logits processor: log-prob of each generated id under the raw next-token distribution. Call ``finish``
    with the final sequences to get ``[B, n_generated]`` (float32, device of the logits)."""

    def __init__(self) -> None:
        self._prev: torch.Tensor | None = None
        self._out: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prev is not None:  # input_ids[:, -1] is the id chosen from the previous step's distribution
            self._out.append(self._prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self._prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, seqs: torch.Tensor) -> torch.Tensor:
        if self._prev is not None:
            self._out.append(self._prev.gather(1, seqs[:, -1:]).squeeze(1))
        self._prev = None
        out, self._out = self._out, []
        return torch.stack(out, dim=1) if out else seqs.new_zeros((seqs.shape[0], 0), dtype=torch.float32)


class HFRolloutBackend:
    """Rollouts with ``transformers`` ``generate``. ``model``: a Qwen3-VL ``PreTrainedModel`` (possibly wrapped by
    PEFT); ``template``: the ms-swift template used for training (its mode and forward hooks are restored)."""

    name = "hf"

    def __init__(self, model: Any, template: Any, *, accelerator: Any = None) -> None:
        self.model = model
        self.template = template
        self.accelerator = accelerator  # the trainer's (ZeRO-3: gather around generate); None outside a trainer
        self.encoder = PromptEncoder(template)
        self.tokenizer = self.encoder.tokenizer

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str], **kwargs: Any) -> "HFRolloutBackend":
        """``HFRolloutBackend(*load_model_and_template(model_dir, **kwargs))``."""
        return cls(*load_model_and_template(model_dir, **kwargs))

    def generation_config(self, decode: DecodeOptions) -> Any:
        """The full ``GenerationConfig`` of ``decode`` (stop = ``<|im_end|>`` only, pad = tokenizer pad)."""
        from transformers import GenerationConfig

        kw: dict[str, Any] = dict(
            max_new_tokens=decode.max_new_tokens, min_new_tokens=0, do_sample=decode.do_sample,
            num_beams=decode.num_beams, num_return_sequences=1, eos_token_id=self.encoder.im_end_id,
            pad_token_id=self.encoder.pad_id, use_cache=True, return_dict_in_generate=False,
            repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0, early_stopping=False,
        )
        if decode.do_sample:
            kw.update(temperature=decode.temperature, top_p=decode.top_p,
                      top_k=0 if decode.top_k == -1 else decode.top_k)
        return GenerationConfig(**kw)

    @contextlib.contextmanager
    def _inference_state(self) -> Iterator[None]:
        """Eval mode + no grad + the template's generate context; restores per-module modes and rope deltas."""
        modes = [(m, m.training) for m in self.model.modules()]
        rope = [(m, m.rope_deltas) for m in self.model.modules() if hasattr(m, "rope_deltas")]
        gen_ctx = getattr(self.template, "generate_context", None)
        self.model.eval()
        try:
            with torch.no_grad(), (gen_ctx() if gen_ctx is not None else contextlib.nullcontext()):
                yield
        finally:
            for m, flag in modes:
                m.training = flag
            for m, value in rope:
                m.rope_deltas = value

    @contextlib.contextmanager
    def _gathered_weights(self) -> Iterator[None]:
        """Full weights on every rank for the block under DeepSpeed ZeRO-3 (module docstring); a no-op otherwise."""
        engine = getattr(getattr(self.accelerator, "deepspeed_engine_wrapped", None), "engine", None)
        if engine is None:
            if any(hasattr(p, "ds_id") for p in self.model.parameters()):
                raise RuntimeError("the model's parameters are ZeRO-3 partitions (ds_id) but the HF rollout backend "
                                   "has no DeepSpeed accelerator to gather them around generate: build it with "
                                   "HFRolloutBackend(model, template, accelerator=trainer.accelerator)")
            yield
            return
        from swift.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(engine, self.accelerator) as unwrapped:
            if unwrapped is not self.model:
                raise RuntimeError("the DeepSpeed engine of the accelerator does not wrap the rollout model")
            yield

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, samples: Sequence[Sample], *, decode: DecodeOptions,
                 seeds: RolloutSeeds) -> list[RolloutOutput]:
        """One :class:`RolloutOutput` per sample, in order (contract in :mod:`coordexp_swift.rollout.backends`)."""
        prompts = self.encoder.encode_many(samples)
        if not prompts:
            return []
        cfg = self.generation_config(decode)
        if decode.do_sample:
            torch.manual_seed(seeds.hf_seed())
        device = self._device()
        outputs: list[RolloutOutput] = []
        with self._gathered_weights(), self._inference_state(), transformers_forward(self.model):
            for start in range(0, len(prompts), decode.batch_size):
                chunk = prompts[start:start + decode.batch_size]
                batch = {k: v.to(device) for k, v in collate_left(chunk, self.encoder.pad_id).items()}
                if "pixel_values" in batch:
                    batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
                extra: dict[str, Any] = {}
                if decode.logprobs:
                    from transformers import LogitsProcessorList

                    recorder = _ChosenLogprobs()
                    extra["logits_processor"] = LogitsProcessorList([recorder])
                seqs = self.model.generate(**batch, generation_config=cfg, **extra)
                generated = seqs[:, batch["input_ids"].shape[1]:].tolist()
                logprobs = recorder.finish(seqs).tolist() if decode.logprobs else [None] * len(chunk)
                for prompt, row, lp in zip(chunk, generated, logprobs):
                    ids, truncated = finalize_response(row, im_end_id=self.encoder.im_end_id,
                                                       max_new_tokens=decode.max_new_tokens)
                    if truncated and len(ids) != decode.max_new_tokens:
                        raise RuntimeError(
                            f"HF generate stopped after {len(ids)} tokens without <|im_end|> although "
                            f"max_new_tokens = {decode.max_new_tokens}; another stopping criterion is active")
                    outputs.append(RolloutOutput(prompt.input_ids, ids, decode_text(self.tokenizer, ids),
                                                 truncated, None if lp is None else tuple(lp[:len(ids)])))
        return outputs
