"""Rollout backends (SPEC §3.6 B0): the interface, the shared output contract and the name -> class registry.

A backend turns ms-swift rows (``messages`` + ``images``; a trailing assistant turn is ignored) into responses::

    backend.generate(samples, decode=DecodeOptions(...), seeds=RolloutSeeds(...)) -> list[RolloutOutput]

one :class:`RolloutOutput` per sample, in input order. Response contract (every backend):

* ``response_ids`` = the generated ids **through the first** ``<|im_end|>`` (inclusive) — nothing after it, no
  padding — or, when no ``<|im_end|>`` came, the first ``max_new_tokens`` ids (``truncated=True``);
* ``text`` = those ids decoded together with special tokens kept and no clean-up (so ``parse_text`` sees the same
  characters as the token-aligned parser);
* ``prompt_ids`` = the prompt the model actually saw (training-identical encoding, image pads expanded).

Registry: :data:`BACKENDS` maps ``rollout_matching.rollout_backend`` names to ``"module:Class"`` paths imported on
first use, so neither transformers' generation code nor vLLM is imported by this module.

* ``hf``   -> :class:`coordexp_swift.rollout.hf_backend.HFRolloutBackend` (greedy / beam / sampling);
* ``vllm`` -> :class:`coordexp_swift.rollout.vllm_backend.VllmRolloutBackend` (colocated ``vllm.LLM``,
  per-request ``SamplingParams(seed=...)``, greedy / sampling; construction raises ``ImportError`` with the fix
  when the ``vllm`` package is missing).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from coordexp_swift.rollout.prompts import EncodedPrompt
from coordexp_swift.rollout.seeds import RolloutSeeds

__all__ = [
    "BACKENDS",
    "DecodeOptions",
    "RolloutBackend",
    "ROLLOUT_DECODE_MODES",
    "RolloutOutput",
    "Sample",
    "build_backend",
    "finalize_response",
    "get_backend_cls",
]

#: ``rollout_matching.decode_mode`` values (how tokens are searched; not the coord decode of ``teacher_forcing.st``).
ROLLOUT_DECODE_MODES: tuple[str, ...] = ("greedy", "beam")
#: A backend input: an ms-swift row (``messages``, optional ``images``) or an already encoded prompt.
Sample = Mapping[str, Any] | EncodedPrompt


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode (SPEC §3.6 B0, ``rollout_matching`` keys in brackets).

    ``mode`` [decode_mode] ``greedy`` (``num_beams`` 1) or ``beam`` (best beam only, ``num_beams`` ≥ 2);
    ``max_new_tokens`` ≥ 1; ``batch_size`` [decode_batch_size] ≥ 1 prompts per left-padded batch;
    ``temperature`` ≥ 0 — sampling iff ``> 0``; ``top_p`` in (0, 1] (1 = off); ``top_k`` -1 (off) or ≥ 1.
    ``logprobs``: also return :attr:`RolloutOutput.token_logprobs` (not with ``beam``).
    """

    mode: Literal["greedy", "beam"] = "greedy"
    max_new_tokens: int = 512
    num_beams: int = 1
    batch_size: int = 4
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    logprobs: bool = False

    def __post_init__(self) -> None:
        p = "rollout_matching"
        if self.mode not in ROLLOUT_DECODE_MODES:
            raise ValueError(f"{p}.decode_mode = {self.mode!r}: expected one of {', '.join(ROLLOUT_DECODE_MODES)}")
        if self.mode == "greedy" and self.num_beams != 1:
            raise ValueError(f"{p}.num_beams = {self.num_beams} with decode_mode greedy: set num_beams: 1")
        if self.mode == "beam" and self.num_beams < 2:
            raise ValueError(f"{p}.num_beams = {self.num_beams} with decode_mode beam: set num_beams >= 2")
        if self.max_new_tokens < 1:
            raise ValueError(f"{p}.max_new_tokens = {self.max_new_tokens}: must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"{p}.decode_batch_size = {self.batch_size}: must be >= 1")
        if not self.temperature >= 0:
            raise ValueError(f"{p}.decoding.temperature = {self.temperature}: must be >= 0 (0 = no sampling)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{p}.decoding.top_p = {self.top_p}: must be in (0, 1]")
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"{p}.decoding.top_k = {self.top_k}: must be -1 (off) or >= 1")
        if self.logprobs and self.mode == "beam":
            raise ValueError(f"{p}.decode_mode = beam gives no per-token log-probs (eval_detection.score_mode: "
                             "token_prob); use decode_mode: greedy")

    @property
    def do_sample(self) -> bool:
        """Sampling iff ``temperature > 0`` (SPEC §3.6 B0)."""
        return self.temperature > 0

    @classmethod
    def from_config(cls, rm: Any, *, greedy: bool = False) -> "DecodeOptions":
        """From a :class:`~coordexp_swift.config.RolloutMatchingConfig`; ``greedy=True`` forces deterministic
        greedy decoding with the same length/batch limits (the eval step, SPEC §7.1)."""
        if greedy:
            return cls(max_new_tokens=rm.max_new_tokens, batch_size=rm.decode_batch_size)
        return cls(mode=rm.decode_mode, max_new_tokens=rm.max_new_tokens, num_beams=rm.num_beams,
                   batch_size=rm.decode_batch_size, temperature=rm.decoding.temperature, top_p=rm.decoding.top_p,
                   top_k=rm.decoding.top_k)


@dataclass(frozen=True)
class RolloutOutput:
    """One response (see the module contract). ``truncated``: no ``<|im_end|>`` within ``max_new_tokens``.

    ``token_logprobs`` (only when ``DecodeOptions.logprobs``): ``[len(response_ids)]`` natural-log probability of
    each response id under the model's next-token distribution at the step that produced it (softmax of the raw
    logits, temperature 1, before any sampling warper); else None."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    text: str
    truncated: bool
    token_logprobs: tuple[float, ...] | None = None


@runtime_checkable
class RolloutBackend(Protocol):
    """What trainers and the evaluator call. Implementations never train: no grad, model mode restored."""

    name: str

    def generate(self, samples: Sequence[Sample], *, decode: DecodeOptions,
                 seeds: RolloutSeeds) -> list[RolloutOutput]:
        """One output per sample, in order (module contract)."""
        ...


def finalize_response(generated: Iterable[int], *, im_end_id: int, max_new_tokens: int) -> tuple[tuple[int, ...], bool]:
    """Cut raw generated ids to the response contract: ``(ids through the first im_end, False)`` or, without an
    ``<|im_end|>`` in the first ``max_new_tokens`` ids, ``(first max_new_tokens ids, True)``.

    Anything after the first ``<|im_end|>`` (batch padding, a second turn) is discarded.
    """
    ids = [int(i) for i in generated][:max_new_tokens]
    try:
        stop = ids.index(im_end_id)
    except ValueError:
        return tuple(ids), True
    return tuple(ids[: stop + 1]), False


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Joint decode keeping special tokens and spacing exactly (``<|im_end|>`` and coord literals stay)."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

#: ``rollout_matching.rollout_backend`` -> ``"module:Class"`` (imported lazily by :func:`get_backend_cls`).
BACKENDS: dict[str, str] = {
    "hf": "coordexp_swift.rollout.hf_backend:HFRolloutBackend",
    "vllm": "coordexp_swift.rollout.vllm_backend:VllmRolloutBackend",
}


def get_backend_cls(name: str) -> type:
    """The backend class registered under ``name``; unknown names raise ``ValueError`` listing the known ones."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"rollout_matching.rollout_backend = {name!r}: unknown backend; expected one of "
                         f"{', '.join(sorted(BACKENDS))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_backend(name: str, model: Any, template: Any, **kwargs: Any) -> RolloutBackend:
    """``get_backend_cls(name)(model, template, **kwargs)``: every backend takes the (HF) model and the ms-swift
    template used for training; backend-specific options are keyword arguments (``vllm_config=`` for vLLM)."""
    return get_backend_cls(name)(model, template, **kwargs)
