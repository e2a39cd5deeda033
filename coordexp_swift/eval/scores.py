"""Per-object detection scores for AP (``rollout_matching.eval_detection.score_mode``, ``eval --score_mode``).

* ``constant`` (default, SPEC §7.1): every prediction gets ``constant_score`` (1.0); COCO then ranks
  predictions by output order (stable sort on ties), so AP depends on the order the model writes objects in.
* ``token_prob``: score of a valid predicted object = the **geometric mean of the probabilities of its generated
  desc and coord tokens** = ``exp(mean(log p_t))`` over ``t`` ∈ {tokens overlapping the desc value (inside the
  quotes)} ∪ {its 4 coord slot tokens}, with ``log p_t`` the log-probability the model gave the generated id at
  that step (raw logits, temperature 1: :attr:`RolloutOutput.token_logprobs`). Structure tokens (keys, quotes,
  brackets) are left out: they are near-certain and would flatten the ranking; the geometric mean (not the
  product) keeps long descs from being penalised for their length. The score is in (0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from coordexp_swift.data.coordjson_scan import token_range
from coordexp_swift.rollout.parse import ParsedRollout

__all__ = ["SCORE_MODES", "object_token_indices", "token_prob_scores"]

SCORE_MODES: tuple[str, ...] = ("constant", "token_prob")


def object_token_indices(parsed: ParsedRollout) -> list[np.ndarray]:
    """For each valid object of ``parsed`` (appearance order): int64 indices into the response ids of its desc
    value tokens followed by its 4 coord slot tokens (the tokens scored by ``token_prob``)."""
    out = []
    for obj in parsed.objects:
        qa, qb = obj.desc_char_span  # the string literal incl. quotes
        lo, hi = token_range(parsed.token_char_offsets, (qa + 1, qb - 1))
        out.append(np.concatenate([np.arange(lo, hi, dtype=np.int64),
                                   np.asarray(obj.slot_token_idx, dtype=np.int64)]))
    return out


def token_prob_scores(parsed: ParsedRollout, token_logprobs: Sequence[float]) -> list[float]:
    """``token_prob`` score of each valid object of ``parsed`` (module docstring). ``token_logprobs``: one
    natural-log probability per response id (the rollout's ``token_logprobs``). RuntimeError when it is shorter
    than the tokens an object spans (the rollout and its log-probs do not belong together)."""
    lp = np.asarray(token_logprobs, dtype=np.float64).reshape(-1)
    scores = []
    for idx in object_token_indices(parsed):
        if idx.size == 0 or int(idx.max()) >= lp.size:
            raise RuntimeError(f"token_prob score: object tokens {idx.tolist()} outside the {lp.size} log-probs "
                               "of the response")
        scores.append(math.exp(float(lp[idx].mean())))
    return scores
