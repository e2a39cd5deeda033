"""Generation mode of the offline evaluator: rollouts over a JSONL -> ``gt_vs_pred.jsonl`` records (SPEC §7.2).

``coordexp-swift eval --model CKPT --jsonl VAL --out_dir D`` calls :func:`generate_records` and then
``evaluate_records`` on its result. The pieces compose: any :class:`~coordexp_swift.rollout.backends.RolloutBackend`
can be passed instead of a checkpoint (tests use a model-free "teacher" that answers with the GT text), and
:func:`make_record` turns one response text into one record.

Record (one per JSONL line, JSONL order)::

    {"image": abs path, "width": W, "height": H, "coord_mode": "norm1000",
     "gt":   [{"desc": str, "bbox_2d": [x1, y1, x2, y2] bins}, ...],      # poly GT keeps its "poly" key
     "pred": [{"desc": str, "bbox_2d": [x1, y1, x2, y2] bins}, ...],      # valid parsed records, text order
                                                                         # (+ "score" with score_mode token_prob)
     "errors": ["invalid_rollout" | "max_new_tokens" | "truncated_record" | "dropped:<reason>", ...],
     "parse": {"invalid_rollout": bool, "truncated_record": bool, "max_new_tokens": bool, "drop_counts": {...}},
     "raw_text": response text (through <|im_end|>), "sample_id": line index}

Bins are ints 0..999 (bin k <-> k/999); the evaluator maps them to pixels. Rollouts are greedy by default.
``score_mode="token_prob"`` asks the backend for per-token log-probs and scores each prediction with
:func:`coordexp_swift.eval.scores.token_prob_scores` (objects found by the token-aligned parser; if they do not line
up with the text parse — never seen — every pred gets 0.0 and the error ``score_unaligned``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coordexp_swift.config import DEFAULT_USER_PROMPT
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import Record, iter_jsonl
from coordexp_swift.rollout.backends import DecodeOptions, RolloutBackend
from coordexp_swift.eval.scores import token_prob_scores
from coordexp_swift.rollout.parse import DROP_REASONS, parse_rollout, parse_text
from coordexp_swift.rollout.seeds import RolloutSeeds, seed_base

__all__ = ["generate_records", "load_eval_rows", "make_record"]


def load_eval_rows(
    jsonl: str | os.PathLike[str],
    *,
    user_prompt: str = DEFAULT_USER_PROMPT,
    system_prompt: str | None = None,
    object_field_order: str = "desc_first",
    limit: int | None = None,
) -> list[tuple[Record, dict[str, Any]]]:
    """Validated records of ``jsonl`` (Stage-1 rules: polys and empty ``objects`` allowed) with their ms-swift
    rows, built exactly like training rows; at most ``limit`` (None = all)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit = {limit}: must be >= 1 (or None for every record)")
    out: list[tuple[Record, dict[str, Any]]] = []
    for rec in iter_jsonl(jsonl, stage="stage1"):
        if limit is not None and len(out) >= limit:
            break
        out.append((rec, to_swift_row(rec, user_prompt=user_prompt, system_prompt=system_prompt,
                                      field_order=object_field_order)))  # type: ignore[arg-type]
    if not out:
        raise ValueError(f"{os.path.abspath(jsonl)}: no records to evaluate")
    return out


def make_record(record: Record, text: str, *, object_field_order: str = "desc_first",
                generation_truncated: bool = False,
                scored: Sequence[tuple[tuple[int, ...], float]] | None = None) -> dict[str, Any]:
    """The §7.2 record of one image from its response ``text`` (parsed with :func:`parse_text`; an invalid
    rollout gives no predictions). ``generation_truncated``: the response hit ``max_new_tokens``. ``scored``:
    ``(bins, score)`` per valid object from the token view (``score_mode: token_prob``); each pred gets its score
    when the bins line up with the text parse, else 0.0 and the error ``score_unaligned``."""
    parsed = parse_text(text, object_field_order)
    errors: list[str] = []
    pred = [{"desc": o["desc"], "bbox_2d": [int(v) for v in o["bbox_2d"]]} for o in parsed.objects]
    if scored is not None:
        aligned = [tuple(p["bbox_2d"]) for p in pred] == [tuple(b) for b, _ in scored]
        if not aligned:
            errors.append("score_unaligned")
        for i, p in enumerate(pred):
            p["score"] = float(scored[i][1]) if aligned else 0.0
    if parsed.invalid_rollout:
        errors.append("invalid_rollout")
    if generation_truncated:
        errors.append("max_new_tokens")
    if parsed.truncated:
        errors.append("truncated_record")
    for reason in DROP_REASONS:
        errors.extend([f"dropped:{reason}"] * int(parsed.drop_counts.get(reason, 0)))
    return {
        "image": record.image,
        "width": record.width,
        "height": record.height,
        "coord_mode": "norm1000",
        "gt": [{"desc": o.desc, o.geometry: list(o.bins)} for o in record.objects],
        "pred": pred,
        "errors": errors,
        "parse": {"invalid_rollout": parsed.invalid_rollout, "truncated_record": parsed.truncated,
                  "max_new_tokens": generation_truncated, "drop_counts": dict(parsed.drop_counts)},
        "raw_text": text,
        "sample_id": record.sample_id,
    }


def generate_records(
    model_dir: str | os.PathLike[str] | None,
    jsonl: str | os.PathLike[str],
    *,
    out_jsonl: str | os.PathLike[str] | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 512,
    user_prompt: str = DEFAULT_USER_PROMPT,
    system_prompt: str | None = None,
    object_field_order: str = "desc_first",
    limit: int | None = None,
    decode: DecodeOptions | None = None,
    backend: RolloutBackend | None = None,
    seed: int = 0,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    template_type: str = "qwen3_vl",
    score_mode: str = "constant",
) -> list[dict[str, Any]]:
    """Generate a response for every record of ``jsonl`` and return (and write) the §7.2 records.

    Args:
        model_dir: full checkpoint dir loaded with :meth:`HFRolloutBackend.from_pretrained` (ignored when
            ``backend`` is given; ``model_kwargs`` are passed to it, e.g. ``max_pixels`` / ``torch_dtype``).
        jsonl: coordexp JSONL (SPEC §1.1), images relative to it.
        out_jsonl: if set, records are appended batch by batch to this file (truncated first; parent created).
        batch_size, max_new_tokens: greedy decoding limits, used unless ``decode`` is given.
        user_prompt, system_prompt, object_field_order: must match training (``custom.*``).
        limit: evaluate only the first ``limit`` records.
        backend: any rollout backend (default HF); ``seed``: seed base for sampling ``decode`` options.
        progress: show a tqdm progress bar over samples.
        template_type: the run's ms-swift ``template`` (``qwen3_vl``; ``qwen3_vl_compact`` for the compact tiny
            model); a ``template_type`` in ``model_kwargs`` wins.
        score_mode: ``constant`` (preds carry no score → 1.0 in the evaluator) or ``token_prob`` (each pred gets
            the geometric mean of its desc and coord token probabilities, :mod:`coordexp_swift.eval.scores`).
    """
    from coordexp_swift.eval.scores import SCORE_MODES

    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode {score_mode!r} is not one of {list(SCORE_MODES)}")
    pairs = load_eval_rows(jsonl, user_prompt=user_prompt, system_prompt=system_prompt,
                           object_field_order=object_field_order, limit=limit)
    decode = decode or DecodeOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
    if backend is None:
        if model_dir is None:
            raise ValueError("generate_records: pass model_dir (a checkpoint directory) or backend")
        from coordexp_swift.rollout.hf_backend import HFRolloutBackend

        backend = HFRolloutBackend.from_pretrained(model_dir, **{"template_type": template_type,
                                                                 **dict(model_kwargs or {})})
    vocab = None
    if score_mode == "token_prob":
        from coordexp_swift.coord.vocab import VocabView

        decode = dataclasses.replace(decode, logprobs=True)
        vocab = VocabView.from_tokenizer(backend.tokenizer)
    out_fh = None
    if out_jsonl is not None:
        Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
        out_fh = open(out_jsonl, "w", encoding="utf-8")
    from tqdm.auto import tqdm

    base = seed_base(seed, 0)
    records: list[dict[str, Any]] = []
    try:
        with tqdm(total=len(pairs), desc="generate", unit="img", disable=not progress) as bar:
            for micro_idx, start in enumerate(range(0, len(pairs), decode.batch_size)):
                chunk: Sequence[tuple[Record, dict[str, Any]]] = pairs[start:start + decode.batch_size]
                outs = backend.generate([row for _, row in chunk], decode=decode,
                                        seeds=RolloutSeeds(base, micro_idx=micro_idx))
                if len(outs) != len(chunk):
                    raise RuntimeError(f"backend {getattr(backend, 'name', backend)!r} returned {len(outs)} "
                                       f"outputs for {len(chunk)} samples")
                for (rec, _), out in zip(chunk, outs):
                    scored = None
                    if vocab is not None:
                        if out.token_logprobs is None:
                            raise RuntimeError(f"backend {getattr(backend, 'name', backend)!r} returned no "
                                               "token_logprobs although DecodeOptions.logprobs was set")
                        tok = parse_rollout(out.response_ids, vocab, object_field_order=object_field_order)
                        scored = list(zip((o.bins for o in tok.objects), token_prob_scores(tok, out.token_logprobs)))
                    r = make_record(rec, out.text, object_field_order=object_field_order,
                                    generation_truncated=out.truncated, scored=scored)
                    records.append(r)
                    if out_fh is not None:
                        out_fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                if out_fh is not None:
                    out_fh.flush()
                bar.update(len(chunk))
    finally:
        if out_fh is not None:
            out_fh.close()
    return records
