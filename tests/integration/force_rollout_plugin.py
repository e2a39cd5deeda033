"""Test-only ms-swift plugin (a second ``external_plugins`` file): a model whose rollouts we control (issue 10
acceptance: matched / FP / FN paths run for real in ``swift sft``).

``COORDEXP_TEST_FORCED_ROLLOUT`` = a response text (ending with ``<|im_end|>``), or
``COORDEXP_TEST_FORCED_ROLLOUT_BY_RANK`` = JSON ``{"<rank>": [text of row 0, text of row 1, ...]}`` (per rank, per
row of a generate batch): every ``generate`` call
gets one extra ``LogitsProcessor`` that puts −inf on every id except the next id of that row's text (tokenised with
the model directory's own tokenizer), so greedy decoding emits exactly it. It acts at generation only: the teacher-forced
training forward and its logits are untouched. ``COORDEXP_TEST_LOG_DIR``: every rank appends each reduced
``StepMetrics.logs`` dict to ``rank<RANK>.jsonl`` there (to compare what the ranks log).
``COORDEXP_TEST_FAIL_MAP_CALLS=N``: the first N calls of the
shared ``evaluate_records`` raise ``ZeroDivisionError`` (the forced eval failure of seed 002 6B.3).
``COORDEXP_TEST_FAIL_B_STEP=1``: every Channel-B step raises ``RuntimeError`` (a failing B step must stop the run).
"""
from __future__ import annotations

import functools
import json
import os

import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList
from transformers.generation.utils import GenerationMixin


class ForceText(LogitsProcessor):
    """``rows``: one id sequence per batch row (the last one repeats for extra rows)."""

    def __init__(self, rows):
        self.rows = [list(r) for r in rows]
        self.start = None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for b in range(scores.shape[0]):
            ids = self.rows[min(b, len(self.rows) - 1)]
            forced[b, ids[min(step, len(ids) - 1)]] = 0.0
        return forced


def _texts() -> list:
    by_rank = os.environ.get("COORDEXP_TEST_FORCED_ROLLOUT_BY_RANK")
    if by_rank:
        return list(json.loads(by_rank)[os.environ.get("RANK", "0")])
    return [os.environ["COORDEXP_TEST_FORCED_ROLLOUT"]]


@functools.lru_cache(maxsize=4)
def _ids(model_dir: str, text: str):
    return tuple(AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False))


_TEXT = os.environ.get("COORDEXP_TEST_FORCED_ROLLOUT") or os.environ.get("COORDEXP_TEST_FORCED_ROLLOUT_BY_RANK")
if _TEXT and not getattr(GenerationMixin.generate, "_forced", False):
    _orig = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        lp = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        lp.append(ForceText([_ids(self.config._name_or_path, t) for t in _texts()]))
        return _orig(self, *args, logits_processor=lp, **kwargs)

    generate._forced = True
    GenerationMixin.generate = generate

_FAILS = int(os.environ.get("COORDEXP_TEST_FAIL_MAP_CALLS", "0"))
if _FAILS:
    from coordexp_swift.eval import coco_eval

    _real = coco_eval.evaluate_records
    _calls = [0]

    def evaluate_records(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] <= _FAILS:
            raise ZeroDivisionError("forced evaluate_records failure (test plugin)")
        return _real(*args, **kwargs)

    coco_eval.evaluate_records = evaluate_records

_LOG_DIR = os.environ.get("COORDEXP_TEST_LOG_DIR")
if _LOG_DIR:
    from coordexp_swift.trainers.step_metrics import StepMetrics

    _logs = StepMetrics.logs

    def logs(self, mode="train"):
        out = _logs(self, mode)
        with open(os.path.join(_LOG_DIR, f"rank{os.environ.get('RANK', '0')}.jsonl"), "a") as fh:
            fh.write(json.dumps({"mode": mode, **out}, sort_keys=True) + "\n")
        return out

    StepMetrics.logs = logs

if os.environ.get("COORDEXP_TEST_FAIL_B_STEP"):
    from coordexp_swift.trainers.channel_b import ChannelB

    def _failing_step(self, *args, **kwargs):
        raise RuntimeError("forced Channel-B failure (test plugin)")

    ChannelB.step = _failing_step
