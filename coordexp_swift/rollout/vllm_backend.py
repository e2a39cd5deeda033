"""vLLM rollout backend (SPEC §3.6 B0): colocated ``vllm.LLM``, per-request seeds, greedy / sampling.

Registered as ``rollout_matching.rollout_backend: vllm`` in :data:`coordexp_swift.rollout.backends.BACKENDS`; the
response contract is the one in :mod:`coordexp_swift.rollout.backends`. Importing this module does not import
``vllm`` (it is imported when the backend is constructed; GPU only, the optional ``vllm`` extra).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordexp_swift.rollout.backends import (
    DecodeOptions,
    RolloutOutput,
    Sample,
    decode_text,
    finalize_response,
)
from coordexp_swift.rollout.prompts import EncodedPrompt, PromptEncoder, prompt_messages, template_mode
from coordexp_swift.rollout.seeds import RolloutSeeds

__all__ = ["VllmRolloutBackend"]


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
