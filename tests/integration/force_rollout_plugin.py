"""Test-only ms-swift plugin (a second ``external_plugins`` file): a model whose rollouts we control (issue 10
acceptance: matched / FP / FN paths run for real in ``swift sft``).

``COORDEXP_TEST_FORCED_ROLLOUT`` = a response text (ending with ``<|im_end|>``): every ``generate`` call gets one
extra ``LogitsProcessor`` that puts −inf on every id except the next id of that text (tokenised with the model
directory's own tokenizer), so greedy decoding emits exactly it. It acts at generation only: the teacher-forced
training forward and its logits are untouched. ``COORDEXP_TEST_FAIL_MAP_CALLS=N``: the first N calls of the
shared ``evaluate_records`` raise ``ZeroDivisionError`` (the forced eval failure of seed 002 6B.3).
"""
from __future__ import annotations

import functools
import os

import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList
from transformers.generation.utils import GenerationMixin


class ForceText(LogitsProcessor):
    def __init__(self, ids):
        self.ids = list(ids)
        self.start = None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        k = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[k]] = 0.0
        return forced


@functools.lru_cache(maxsize=4)
def _ids(model_dir: str, text: str):
    return tuple(AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False))


_TEXT = os.environ.get("COORDEXP_TEST_FORCED_ROLLOUT")
if _TEXT and not getattr(GenerationMixin.generate, "_forced", False):
    _orig = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        lp = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        lp.append(ForceText(_ids(self.config._name_or_path, _TEXT)))
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
