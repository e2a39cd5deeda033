"""Fake vLLM (test boundary). ``LLMEngine`` 'generates' deterministically from the request, without a model:

* greedy (temperature 0): ``GREEDY_SCRIPT(prompt_token_ids)`` — the test sets it (a list of ids or a function);
* sampling: ids derived from the request's ``seed`` (``SEED_SCRIPT(seed)``), so seeds are observable;
* stop: generation ends at the first id in ``stop_token_ids`` (included in ``token_ids`` unless
  ``OMIT_STOP_ID``), else after ``max_tokens`` ids (``finish_reason`` ``stop`` / ``length``);
* logprobs (``SamplingParams.logprobs == 0``): ``-0.1·(k+1)`` for the k-th generated id;
* requests finish in REVERSED submission order (the backend must restore input order).

Everything is recorded in ``EVENTS`` (requests, params, weight loads, cache resets).
"""
from __future__ import annotations

__version__ = "0.33.0"

EVENTS: dict = {"requests": [], "loads": [], "reset_prefix_cache": 0, "reset_encoder_cache": 0, "engines": []}
GREEDY_SCRIPT = None
SEED_SCRIPT = None
OMIT_STOP_ID = False


class SamplingParams:
    n = 1
    best_of = None
    seed = None
    presence_penalty = 0.0
    frequency_penalty = 0.0

    def __init__(self, n=1, best_of=None, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
                 temperature=1.0, top_p=1.0, top_k=-1, min_p=0.0, seed=None, stop=None, stop_token_ids=None,
                 ignore_eos=False, max_tokens=16, logprobs=None, prompt_logprobs=None, skip_special_tokens=True):
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})


class EngineArgs:
    def __init__(self, model=None, dtype=None, gpu_memory_utilization=0.9, tensor_parallel_size=1,
                 pipeline_parallel_size=1, max_model_len=None, max_num_seqs=256, disable_log_stats=True,
                 disable_custom_all_reduce=True, enforce_eager=False, trust_remote_code=True,
                 distributed_executor_backend=None, limit_mm_per_prompt=None, enable_sleep_mode=False,
                 disable_cascade_attn=False, load_format="auto", mm_processor_cache_gb=None, logprobs_mode=None,
                 seed=None, enable_prefix_caching=None, enable_lora=False, max_loras=1, max_lora_rank=16,
                 hf_overrides=None, quantization=None, speculative_config=None, enable_expert_parallel=False):
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})


AsyncEngineArgs = EngineArgs


class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


class _Completion:
    def __init__(self, token_ids, finish_reason, logprobs):
        self.index, self.token_ids, self.finish_reason, self.logprobs = 0, token_ids, finish_reason, logprobs
        self.text, self.cumulative_logprob, self.stop_reason = "", 0.0, None


class _RequestOutput:
    def __init__(self, request_id, prompt_token_ids, completion):
        self.request_id, self.prompt_token_ids, self.outputs = request_id, prompt_token_ids, [completion]
        self.finished, self.prompt_logprobs = True, None


class _Model:
    def load_weights(self, weights):
        names = []
        for name, tensor in weights:
            names.append((name, float(tensor.detach().float().sum())))
        EVENTS["loads"].append(names)
        return {n for n, _ in names}


class _ModelConfig:
    dtype = None


class LLMEngine:
    def __init__(self, args):
        self.args, self._pending = args, []
        self.model_config = _ModelConfig()
        runner = type("R", (), {"model": _Model()})()
        worker = type("W", (), {"model_runner": runner})()
        self.model_executor = type("E", (), {"driver_worker": type("D", (), {"worker": worker})()})()
        EVENTS["engines"].append(args)

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    def add_request(self, request_id, inputs, params, **kw):
        EVENTS["requests"].append({"request_id": request_id, "inputs": inputs, "params": params})
        self._pending.append((request_id, inputs, params))

    def has_unfinished_requests(self):
        return bool(self._pending)

    def _generate(self, inputs, params):
        if params.temperature and params.temperature > 0:
            ids = list(SEED_SCRIPT(params.seed))
        else:
            ids = list(GREEDY_SCRIPT(inputs["prompt_token_ids"]) if callable(GREEDY_SCRIPT) else GREEDY_SCRIPT)
        out, reason = [], "length"
        for t in ids[: params.max_tokens]:
            if t in (params.stop_token_ids or []):
                reason = "stop"
                if not OMIT_STOP_ID:
                    out.append(t)
                break
            out.append(t)
        lps = None if params.logprobs is None else [{t: _Logprob(-0.1 * (k + 1))} for k, t in enumerate(out)]
        return _Completion(out, reason, lps)

    def step(self):
        pending, self._pending = self._pending[::-1], []
        return [_RequestOutput(rid, list(inp["prompt_token_ids"]), self._generate(inp, p)) for rid, inp, p in pending]

    def reset_prefix_cache(self):
        EVENTS["reset_prefix_cache"] += 1

    def reset_encoder_cache(self):
        EVENTS["reset_encoder_cache"] += 1

    def reset_mm_cache(self):
        pass

    def list_loras(self):
        return []


class AsyncLLMEngine(LLMEngine):
    pass
