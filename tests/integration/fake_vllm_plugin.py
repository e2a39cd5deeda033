"""Test-only ms-swift plugin (a second ``external_plugins`` file) for real ``swift sft`` runs with
``rollout_backend: vllm`` on the fake ``vllm`` package of ``tests/unit/fake_vllm`` (put on ``PYTHONPATH`` by the test:
vLLM cannot run here; ms-swift's real ``GRPOVllmEngine`` and weight-sync code run on top of the fake).

``COORDEXP_TEST_VLLM_TEXT``: the fake engine's greedy output (tokenised with ``COORDEXP_TEST_VLLM_MODEL``'s tokenizer).
``COORDEXP_TEST_VLLM_EVENTS``: a directory; every rank appends, in order, to ``rank<RANK>.jsonl``:

* ``{"event": "compute_loss", "step": s, "channel": "A"|"B"}`` — each trainer micro-step (two-channel trainer);
* ``{"event": "evaluate", "step": s}`` — the rollout eval step entered;
* ``{"event": "rollout", "step": s, "train_prompt_ids": [[...], ...]}`` — ``ChannelB.rollout`` entered, with the
  rows' training prompt ids;
* ``{"event": "load", "sums": {name: sum of the tensor}}`` — a weight load into the engine;
* ``{"event": "sync"}`` — the engine's prefix cache reset (once per ``_move_model_to_vllm``);
* ``{"event": "request", "prompt_token_ids": [...], "seed": ..., "temperature": ..., "max_tokens": ...}``;
* ``{"event": "targets", "response_ids": [[...]], "y_train_ids": [[...]]}`` — after a ``ChannelB.step``.
"""
from __future__ import annotations

import json
import os

import vllm
from transformers import AutoTokenizer

_DIR = os.environ["COORDEXP_TEST_VLLM_EVENTS"]
_PATH = os.path.join(_DIR, f"rank{os.environ.get('RANK', '0')}.jsonl")


def _log(**event) -> None:
    with open(_PATH, "a") as fh:
        fh.write(json.dumps(event) + "\n")


vllm.GREEDY_SCRIPT = list(AutoTokenizer.from_pretrained(os.environ["COORDEXP_TEST_VLLM_MODEL"]).encode(
    os.environ["COORDEXP_TEST_VLLM_TEXT"], add_special_tokens=False))

_add = vllm.LLMEngine.add_request


def add_request(self, request_id, inputs, params, **kw):
    _log(event="request", prompt_token_ids=[int(t) for t in inputs["prompt_token_ids"]], seed=params.seed,
         temperature=params.temperature, max_tokens=params.max_tokens)
    return _add(self, request_id, inputs, params, **kw)


vllm.LLMEngine.add_request = add_request
_reset = vllm.LLMEngine.reset_prefix_cache


def reset_prefix_cache(self):
    _log(event="sync")
    return _reset(self)


vllm.LLMEngine.reset_prefix_cache = reset_prefix_cache
_load = vllm._Model.load_weights


def load_weights(self, weights):
    weights = list(weights)
    _log(event="load", sums={name: float(t.detach().double().sum()) for name, t in weights})
    return _load(self, weights)


vllm._Model.load_weights = load_weights

from coordexp_swift.trainers.channel_b import ChannelB  # noqa: E402
from coordexp_swift.trainers.scheduler import channel_at  # noqa: E402
from coordexp_swift.trainers.stage2_two_channel import Stage2TwoChannelTrainer  # noqa: E402

_compute_loss = Stage2TwoChannelTrainer.compute_loss


def compute_loss(self, model, inputs, *args, **kwargs):
    step = int(self.state.global_step)
    _log(event="compute_loss", step=step, channel=channel_at(step, **self.schedule))
    return _compute_loss(self, model, inputs, *args, **kwargs)


Stage2TwoChannelTrainer.compute_loss = compute_loss
_rollout = ChannelB.rollout


def rollout(self, model, rows, *, step, **kwargs):
    _log(event="rollout", step=int(step), train_prompt_ids=[[int(t) for t in r.prompt_ids] for r in rows])
    return _rollout(self, model, rows, step=step, **kwargs)


ChannelB.rollout = rollout
_step = ChannelB.step


def step(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    _log(event="targets", response_ids=[list(map(int, o.response_ids)) for o in out.rollouts],
         y_train_ids=[list(map(int, t.y_train_ids)) for t in out.targets])
    return out


ChannelB.step = step

from coordexp_swift.trainers.rollout_eval import RolloutEvaluator  # noqa: E402

_evaluate = RolloutEvaluator.evaluate


def evaluate(self, model, batches, *, step, **kwargs):
    _log(event="evaluate", step=int(step))
    return _evaluate(self, model, batches, step=step, **kwargs)


RolloutEvaluator.evaluate = evaluate
