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
* ``vllm`` -> :class:`VllmRolloutBackend` (colocated ``vllm.LLM``, per-request ``SamplingParams(seed=...)``,
  greedy / sampling; construction raises ``ImportError`` with the fix when the ``vllm`` package is missing).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from coordexp_swift.rollout.prompts import EncodedPrompt, PromptEncoder, prompt_messages, template_mode
from coordexp_swift.rollout.seeds import RolloutSeeds

__all__ = [
    "BACKENDS",
    "DECODE_MODES",
    "DecodeOptions",
    "RolloutBackend",
    "RolloutOutput",
    "Sample",
    "VllmRolloutBackend",
    "build_backend",
    "finalize_response",
    "get_backend_cls",
]

DECODE_MODES: tuple[str, ...] = ("greedy", "beam")
#: A backend input: an ms-swift row (``messages``, optional ``images``) or an already encoded prompt.
Sample = Mapping[str, Any] | EncodedPrompt


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode (SPEC §3.6 B0, ``rollout_matching`` keys in brackets).

    ``mode`` [decode_mode] ``greedy`` (``num_beams`` 1) or ``beam`` (best beam only, ``num_beams`` ≥ 2);
    ``max_new_tokens`` ≥ 1; ``batch_size`` [decode_batch_size] ≥ 1 prompts per left-padded batch;
    ``temperature`` ≥ 0 — sampling iff ``> 0``; ``top_p`` in (0, 1] (1 = off); ``top_k`` -1 (off) or ≥ 1.
    """

    mode: Literal["greedy", "beam"] = "greedy"
    max_new_tokens: int = 512
    num_beams: int = 1
    batch_size: int = 4
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1

    def __post_init__(self) -> None:
        p = "rollout_matching"
        if self.mode not in DECODE_MODES:
            raise ValueError(f"{p}.decode_mode = {self.mode!r}: expected one of {', '.join(DECODE_MODES)}")
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
    """One response (see the module contract). ``truncated``: no ``<|im_end|>`` within ``max_new_tokens``."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    text: str
    truncated: bool


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
    "vllm": "coordexp_swift.rollout.backends:VllmRolloutBackend",
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


# ---------------------------------------------------------------------------------------------------------------
# vLLM (lazy; GPU only)
# ---------------------------------------------------------------------------------------------------------------


class VllmRolloutBackend:
    """Colocated vLLM rollouts with per-request seeds (SPEC §3.6 B0).

    ``model``: the trained HF model (source of :meth:`sync_weights` and, unless ``model_dir`` is given, of the
    checkpoint path the engine starts from). ``template``: the training ms-swift template; prompts are encoded in
    its ``vllm`` mode (one ``<|image_pad|>`` per image, vLLM expands it with the same image processor).
    ``vllm_config``: :class:`~coordexp_swift.config.VllmConfig`. ``llm``: an existing ``vllm.LLM`` to reuse.

    Decoding: ``SamplingParams(temperature, top_p, top_k, max_tokens, seed=request_seed, stop_token_ids=[im_end],
    ignore_eos=True)`` per request — only ``<|im_end|>`` stops, as in the HF backend. ``decode_mode: beam`` is not
    offered by this backend (``ValueError``). Raises ``ImportError`` at construction when ``vllm`` is missing.
    """

    name = "vllm"

    def __init__(self, model: Any, template: Any, *, vllm_config: Any = None, llm: Any = None,
                 model_dir: str | None = None, seed: int = 0) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "rollout_matching.rollout_backend = 'vllm' needs the `vllm` package, which is not importable "
                f"({exc}); install it (pip install vllm, GPU only) or set rollout_matching.rollout_backend: hf"
            ) from exc
        self._vllm = vllm
        self.model = model
        self.encoder = PromptEncoder(template)
        self.tokenizer = self.encoder.tokenizer
        if llm is None:
            path = model_dir or getattr(getattr(model, "config", None), "_name_or_path", None)
            if not path:
                raise ValueError("VllmRolloutBackend: cannot tell which checkpoint to start vLLM from; pass "
                                 "model_dir=<checkpoint dir>")
            kw: dict[str, Any] = {}
            if vllm_config is not None:
                kw = dict(gpu_memory_utilization=vllm_config.gpu_memory_utilization,
                          tensor_parallel_size=vllm_config.tensor_parallel_size,
                          enable_prefix_caching=vllm_config.enable_prefix_caching)
                if vllm_config.max_model_len is not None:
                    kw["max_model_len"] = vllm_config.max_model_len
            llm = vllm.LLM(model=str(path), seed=seed, limit_mm_per_prompt={"image": 1}, **kw)
        self.llm = llm

    def _request(self, sample: Sample) -> dict[str, Any]:
        if isinstance(sample, EncodedPrompt):
            raise ValueError("VllmRolloutBackend.generate takes ms-swift rows (messages + images), not "
                             "EncodedPrompt: vLLM needs the raw images")
        inputs: dict[str, Any] = {"messages": prompt_messages(sample["messages"])}
        if sample.get("images"):
            inputs["images"] = list(sample["images"])
        with template_mode(self.encoder.template, "vllm"):
            enc = self.encoder.template.encode(inputs)
        req: dict[str, Any] = {"prompt_token_ids": [int(i) for i in enc["input_ids"]]}
        images = enc.get("images") or []
        if images:
            req["multi_modal_data"] = {"image": images[0] if len(images) == 1 else list(images)}
        if enc.get("mm_processor_kwargs"):
            req["mm_processor_kwargs"] = dict(enc["mm_processor_kwargs"])
        return req

    def generate(self, samples: Sequence[Sample], *, decode: DecodeOptions,
                 seeds: RolloutSeeds) -> list[RolloutOutput]:
        if decode.mode != "greedy":
            raise ValueError("rollout_matching.decode_mode = 'beam' is not supported with rollout_backend: vllm; "
                             "use decode_mode: greedy (optionally with decoding.temperature > 0) or the hf backend")
        if not samples:
            return []
        requests = [self._request(s) for s in samples]
        params = []
        for s in seeds.request_seeds(len(samples)):
            kw: dict[str, Any] = dict(n=1, max_tokens=decode.max_new_tokens, temperature=decode.temperature,
                                      top_p=decode.top_p if decode.do_sample else 1.0, seed=s,
                                      stop_token_ids=[self.encoder.im_end_id], ignore_eos=True,
                                      skip_special_tokens=False)
            if decode.do_sample and decode.top_k > 0:
                kw["top_k"] = decode.top_k
            params.append(self._vllm.SamplingParams(**kw))
        results = self.llm.generate(requests, params, use_tqdm=False)
        outs = []
        for res in results:
            comp = res.outputs[0]
            ids = [int(i) for i in comp.token_ids]
            if comp.finish_reason == "stop" and self.encoder.im_end_id not in ids:
                ids.append(self.encoder.im_end_id)  # stop token reported by finish_reason only
            resp, truncated = finalize_response(ids, im_end_id=self.encoder.im_end_id,
                                                max_new_tokens=decode.max_new_tokens)
            outs.append(RolloutOutput(tuple(int(i) for i in res.prompt_token_ids), resp,
                                      decode_text(self.tokenizer, resp), truncated))
        return outs

    def sync_weights(self, model: Any | None = None) -> None:
        """Full-weight sync: load every parameter of the HF ``model`` (default: the constructor's) into the
        engine, then drop the prefix cache. Needs in-process vLLM workers (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
        src = self.model if model is None else model
        weights = [(n, p.detach()) for n, p in src.state_dict().items()]
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:
            engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
            engine_model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
