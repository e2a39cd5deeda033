"""vLLM rollout backend (SPEC §3.6 B0) on ms-swift's colocated vLLM machinery — nothing of it is re-implemented.

Registered as ``rollout_matching.rollout_backend: vllm`` in :data:`coordexp_swift.rollout.backends.BACKENDS`; the
response contract is the one in :mod:`coordexp_swift.rollout.backends`. Importing this module imports neither
``vllm`` nor ms-swift's vLLM code (both load when the backend is constructed; GPU only, the optional ``vllm`` extra).

What ms-swift does here (its GRPO colocate path, ``swift.rlhf_trainers.rollout_mixin.RolloutTrainerMixin``):

* **engine**: ``swift.infer_engine.GRPOVllmEngine`` built with the kwargs of ``_prepare_vllm_engine``
  (``distributed_executor_backend='external_launcher'`` under torch.distributed, so every training rank owns an
  in-process engine; ``use_async_engine=False``; the training template copied with ``padding_free`` off);
  ``logprobs_mode='raw_logprobs'`` so ``token_logprobs`` are the model's T=1 log-probs, as in the HF backend.
* **requests**: ``engine.infer([InferRequest(messages, images)], RequestConfig(...))`` — ms-swift encodes with the
  template in ``vllm`` mode and gives request ``i`` of a call the seed ``RequestConfig.seed + i``.
* **weight sync**: ``RolloutTrainerMixin._move_model_to_vllm`` run on a small state object
  (:class:`_SwiftVllmSync`): full weights batch-wise (ZeRO-3 partitions gathered with ``GatheredParameters``), PEFT
  LoRA merged/unmerged around the copy (or the adapter moved when the engine has LoRA on), ``process_weights_after_
  loading``, then the prefix/encoder caches reset.

Contracts this module adds (SPEC §3.6 B0):

* **Seeds**: request ``j`` of a call gets ``seeds.request_seeds(n)[j]`` = ``norm(seed_base + i)``,
  ``i = (micro_idx·world_size + rank)·per_device_bs + j``. Runs of consecutive seeds go to ms-swift in one
  ``infer`` call with ``seed`` = the run's first seed (ms-swift adds ``j``); the 31-bit wrap (``norm``) starts a new
  run, so every request gets exactly its SPEC seed. Greedy (``temperature 0``) never reads a seed.
* **Prompt ids**: before a request is sent, its ``vllm``-mode encoding (one ``<|image_pad|>`` per image, vLLM
  expands it) is checked against the training encoding — the sample's ``prompt_ids`` when given (the trainer passes
  the training row's own prompt ids, :func:`coordexp_swift.trainers.channel_b.rollout_requests`), else
  :class:`~coordexp_swift.rollout.prompts.PromptEncoder` on the row (image pads expanded) — with every run of
  image pads collapsed to one: RuntimeError naming the sample if the text ids differ or the training prompt has
  not one image-pad run per image. ``RolloutOutput.prompt_ids`` is the training encoding.
* **Stop**: response = generated ids through the first ``<|im_end|>`` (appended when vLLM reports
  ``finish_reason == 'stop'`` without returning the stop id) or the first ``max_new_tokens`` ids (``truncated``).
* **Order**: outputs in input order whatever order the engine finishes requests in.
* **Weight sync** — ``sync_weights(step)``: the Channel-B code calls it before the first rollout of every optimizer
  step ``step`` whose rollouts must see the current weights (the engine starts from the checkpoint on disk, so a
  run's first B step needs it too). Idempotent per step: a second call with the same ``step`` (gradient
  accumulation micro-steps, the eval step) copies nothing. Every rank must call it (ZeRO-3 gathers are
  collectives); ``ChannelB.prepare_rollouts`` does, before each step's first rollout. ``force=True`` syncs again
  (e.g. after loading a checkpoint). Under ZeRO-3 (the trainer's ``accelerator`` has a stage-3 DeepSpeed plugin)
  the parameters are gathered group by group with ms-swift's ``split_batches`` (one decoder layer per group), so
  no rank materialises the whole model at once.
* ``decode_mode: beam`` is not offered by this backend (``ValueError``); ``EncodedPrompt`` inputs neither (vLLM
  takes the raw images: pass ms-swift rows — ``messages`` + ``images``, optionally ``prompt_ids``).
"""
from __future__ import annotations

from collections.abc import Sequence
from copy import copy
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

__all__ = ["VllmRolloutBackend", "collapse_runs", "seed_runs"]

IMAGE_PAD = "<|image_pad|>"


def seed_runs(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop)]`` index ranges of ``seeds`` where each seed is the previous one + 1 (one ms-swift ``infer``
    call each: it gives request ``j`` of a call ``seed + j``)."""
    runs: list[tuple[int, int]] = []
    start = 0
    for j in range(1, len(seeds) + 1):
        if j == len(seeds) or seeds[j] != seeds[j - 1] + 1:
            runs.append((start, j))
            start = j
    return runs


def collapse_runs(ids: Sequence[int], token_id: int) -> tuple[tuple[int, ...], list[int]]:
    """``ids`` with every run of ``token_id`` collapsed to one, and the run lengths in order."""
    out: list[int] = []
    runs: list[int] = []
    for t in ids:
        t = int(t)
        if t == token_id and out and out[-1] == token_id:
            runs[-1] += 1
            continue
        if t == token_id:
            runs.append(1)
        out.append(t)
    return tuple(out), runs


class _SwiftVllmSync:
    """State object on which ms-swift's ``RolloutTrainerMixin`` weight-sync methods run unchanged (colocate mode,
    no FSDP2, whole model in one parameter group). Built lazily: importing ms-swift's rollout mixin needs vLLM."""

    @staticmethod
    def build(model: Any, engine: Any, accelerator: Any = None) -> Any:
        """The sync state. Parameter groups: one group (ms-swift's default) unless ZeRO-3 partitions the weights;
        then ms-swift's own ``split_batches`` with ``move_model_batches`` = the language model's layer count, so
        each ``GatheredParameters`` holds one decoder layer (then the embeddings + final norm, then the rest:
        vision tower, ``lm_head``)."""
        from types import SimpleNamespace

        from swift.rlhf_trainers.rollout_mixin import RolloutTrainerMixin

        class Sync(RolloutTrainerMixin):
            def __init__(self) -> None:
                """ms-swift's trainer ``__init__`` is deliberately not run: only the sync state below is set."""

        s = Sync()
        s.model = model
        s.engine = engine
        s.vllm_mode = "colocate"
        s._is_fsdp2 = False
        s.rollout_enable_lora = False
        s.base_sync_done = False
        s.parameter_groups, s.parameter_groups_no_lora = [None], [None]
        s.args = SimpleNamespace(async_generate=False, tuner_type="lora" if hasattr(model, "peft_config") else "full",
                                 sleep_level=0, report_to=[], move_model_batches=None)
        if accelerator is None:  # no trainer: one process, no DeepSpeed
            accelerator = SimpleNamespace(device=next(model.parameters()).device, unwrap_model=lambda m: m,
                                          is_main_process=True, state=SimpleNamespace(deepspeed_plugin=None))
        s.accelerator = accelerator
        plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", 0) == 3 and hasattr(model, "model_meta"):
            s.args.move_model_batches = _num_llm_layers(model)
            s.parameter_groups, s.parameter_groups_no_lora = s.split_batches()
        return s


def _num_llm_layers(model: Any) -> int | None:
    """Decoder layer count of the (possibly multimodal) model's language model, from its config."""
    cfg = getattr(model, "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        n = getattr(c, "num_hidden_layers", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


class VllmRolloutBackend:
    """Colocated vLLM rollouts through ms-swift's engine (module docstring has the contracts).

    ``model``: the trained HF model (possibly PEFT-wrapped; source of :meth:`sync_weights`; its ``model_dir`` or
    ``config._name_or_path`` is the checkpoint the engine starts from unless ``model_dir`` is given).
    ``template``: the training ms-swift template. ``vllm_config``: :class:`~coordexp_swift.config.VllmConfig`.
    ``engine``: an existing ``GRPOVllmEngine`` to reuse. ``accelerator``: the trainer's (ZeRO-3 detection, device).
    Raises ``ImportError`` at construction when ``vllm`` is missing.
    """

    name = "vllm"

    def __init__(self, model: Any, template: Any, *, vllm_config: Any = None, engine: Any = None,
                 model_dir: str | None = None, seed: int | None = None, accelerator: Any = None) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "rollout_matching.rollout_backend = 'vllm' needs the `vllm` package, which is not importable "
                f"({exc}); install it (pip install vllm, GPU only) or set rollout_matching.rollout_backend: hf"
            ) from exc
        self.model = model
        self.template = template
        self.encoder = PromptEncoder(template)
        self.tokenizer = self.encoder.tokenizer
        self.image_pad_id = int(self.tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        self.engine = engine if engine is not None else self._build_engine(model, template, vllm_config, model_dir,
                                                                            seed)
        self.accelerator = accelerator
        self._sync = None
        self.synced_step: int | None = None
        self.sync_count = 0

    @staticmethod
    def _build_engine(model: Any, template: Any, vllm_config: Any, model_dir: str | None, seed: int | None) -> Any:
        """ms-swift's ``GRPOVllmEngine`` as its GRPO colocate mode builds it (``_prepare_vllm_engine``)."""
        import torch
        from swift.infer_engine.grpo_vllm_engine import GRPOVllmEngine

        path = model_dir or getattr(model, "model_dir", None) or getattr(getattr(model, "config", None),
                                                                          "_name_or_path", None)
        if not path:
            raise ValueError("VllmRolloutBackend: cannot tell which checkpoint to start vLLM from; pass "
                             "model_dir=<checkpoint dir>")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        tp = int(getattr(vllm_config, "tensor_parallel_size", 1) or 1)
        rank = torch.distributed.get_rank() if dist else 0
        vllm_template = copy(template)
        vllm_template.padding_free = False
        vllm_template.sequence_parallel_size = 1
        kw: dict[str, Any] = dict(
            torch_dtype=getattr(model, "dtype", None), use_async_engine=False, template=vllm_template,
            limit_mm_per_prompt={"image": 1}, seed=rank // tp if seed is None else seed, tensor_parallel_size=tp,
            distributed_executor_backend="external_launcher" if dist else None, logprobs_mode="raw_logprobs")
        if vllm_config is not None:
            kw.update(gpu_memory_utilization=vllm_config.gpu_memory_utilization,
                      enable_prefix_caching=vllm_config.enable_prefix_caching,
                      max_model_len=vllm_config.max_model_len)
        return GRPOVllmEngine(str(path), **kw)

    # --- prompts -------------------------------------------------------------------------------------------------
    def _request(self, index: int, sample: Sample) -> tuple[Any, tuple[int, ...]]:
        """(ms-swift ``InferRequest``, training prompt ids) of one row, after the prompt-id check."""
        from swift.infer_engine import InferRequest

        if isinstance(sample, EncodedPrompt):
            raise ValueError("VllmRolloutBackend.generate takes ms-swift rows (messages + images), not "
                             "EncodedPrompt: vLLM needs the raw images")
        messages = prompt_messages(sample["messages"])
        images = list(sample.get("images") or [])
        # the trainer passes the row's training prompt ids; otherwise encode the row like training does
        train_ids = sample.get("prompt_ids") or self.encoder.encode(sample).input_ids
        with template_mode(self.template, "vllm"):
            vllm_ids = self.template.encode({"messages": messages, **({"images": images} if images else {})})[
                "input_ids"]
        t_ids, t_runs = collapse_runs(train_ids, self.image_pad_id)
        v_ids, v_runs = collapse_runs(vllm_ids, self.image_pad_id)
        if t_ids != v_ids or len(t_runs) != len(images) or any(r != 1 for r in v_runs):
            raise RuntimeError(f"sample {index}: the vLLM prompt ids differ from the training encoding (image pads "
                               f"collapsed: {len(t_ids)} vs {len(v_ids)} ids, image runs {t_runs} vs {v_runs}); "
                               "the rollout would not see the training prompt (SPEC §3.6 B4)")
        return InferRequest(messages=messages, images=images), tuple(int(i) for i in train_ids)

    # --- generation ----------------------------------------------------------------------------------------------
    def generate(self, samples: Sequence[Sample], *, decode: DecodeOptions,
                 seeds: RolloutSeeds) -> list[RolloutOutput]:
        """One :class:`RolloutOutput` per sample, in input order (module contracts)."""
        from swift.infer_engine import RequestConfig

        if decode.mode != "greedy":
            raise ValueError("rollout_matching.decode_mode = 'beam' is not supported with rollout_backend: vllm; "
                             "use decode_mode: greedy (optionally with decoding.temperature > 0) or the hf backend")
        if not samples:
            return []
        built = [self._request(i, s) for i, s in enumerate(samples)]
        request_seeds = seeds.request_seeds(len(samples))
        im_end = self.encoder.im_end_id
        outs: list[RolloutOutput] = []
        for a, b in seed_runs(request_seeds):
            cfg = RequestConfig(max_tokens=decode.max_new_tokens, temperature=decode.temperature,
                                top_p=decode.top_p if decode.do_sample else 1.0,
                                top_k=decode.top_k if decode.do_sample else -1, min_p=0.0, repetition_penalty=1.0,
                                seed=request_seeds[a], logprobs=decode.logprobs, return_details=True)
            results = self.engine.infer([r for r, _ in built[a:b]], cfg, use_tqdm=False)
            if len(results) != b - a:
                raise RuntimeError(f"vLLM engine returned {len(results)} results for {b - a} requests")
            for (_, prompt_ids), res in zip(built[a:b], results):
                choice = res.response.choices[0]
                ids = [int(i) for i in choice.token_ids]
                lps = None
                if decode.logprobs:
                    lps = [float(c["logprob"]) for c in (choice.logprobs or {}).get("content", [])]
                if choice.finish_reason == "stop" and im_end not in ids:
                    ids.append(im_end)  # stop token reported by finish_reason only
                    if lps is not None and len(lps) < len(ids):
                        lps.append(0.0)
                resp, truncated = finalize_response(ids, im_end_id=im_end, max_new_tokens=decode.max_new_tokens)
                outs.append(RolloutOutput(prompt_ids, resp, decode_text(self.tokenizer, resp), truncated,
                                          None if lps is None else tuple(lps[:len(resp)])))
        return outs

    # --- weights -------------------------------------------------------------------------------------------------
    def sync_weights(self, step: int | None = None, model: Any | None = None, *, force: bool = False) -> bool:
        """Copy the trained weights into the engine through ms-swift's ``_move_model_to_vllm`` (module docstring:
        contract). Returns True if weights were copied, False when ``step`` was already synced."""
        if not force and step is not None and step == self.synced_step:
            return False
        src = self.model if model is None else model
        if self._sync is None or self._sync.model is not src:
            self._sync = _SwiftVllmSync.build(src, self.engine, self.accelerator)
        self._sync._move_model_to_vllm(skip_async_check=True)
        self.synced_step = step
        self.sync_count += 1
        return True
