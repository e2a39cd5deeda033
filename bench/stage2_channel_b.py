"""Benchmark: one Channel-B step on the tiny model, split into generate / parse+match+targets / forward+backward, and
the rollout backend's generate throughput vs a bare ``model.generate`` on the same batch (issue 10 acceptance).

Same process, same model (compact tiny Qwen3-VL unless ``--model``), same micro-batch (shapes samples encoded by
ms-swift's template in train mode, real ``pixel_values``):

* (a) generate: ``ChannelB.rollout`` (prompt slicing + backend: left-pad collate, ``generate``, response cut, decode)
  vs bare ``model.generate(**collate_left(prompts), generation_config=<the backend's>)`` under ``no_grad`` in eval
  mode; alternating repetitions, medians; tokens/s = generated tokens / time. Target: >= 0.9x bare.
* (b) the B step split, with rollouts forced (a generation-only ``LogitsProcessor``) to a realistic answer of
  ``--objects`` records (half near a GT box, half FP, one poly drop), so the parser / matcher / target builder do
  real work: ``time/rollout_generate_s``, parse+match+targets (``rollout_targets`` + ``forward_inputs``: batch
  build, positions), forward + objective + backward. Target: parse+match+targets <= 5% of the step.

Prints a table and writes ``bench/results/stage2_channel_b.json``. ``os.getloadavg()`` is recorded (shared CPUs).
Usage: ``python bench/stage2_channel_b.py [--model DIR] [--batch 4] [--max-new-tokens 64]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


class ForceText:
    """Generation-only logits processor: the next id of ``ids`` gets 0, every other id −inf."""

    def __init__(self, ids):
        self.ids, self.start = list(ids), None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        k = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        out = torch.full_like(scores, float("-inf"))
        out[:, self.ids[k]] = 0.0
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    from transformers import LogitsProcessorList
    from transformers.generation.utils import GenerationMixin

    from coordexp_swift.config import DEFAULT_USER_PROMPT, load_coordexp_config
    from coordexp_swift.data.swift_loader import load_rows
    from coordexp_swift.coord.vocab import VocabView
    from coordexp_swift.data.shapes import make_shapes
    from coordexp_swift.rollout.hf_backend import load_model_and_template
    from coordexp_swift.rollout.prompts import collate_left
    from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config
    from coordexp_swift.teacher_forcing.manifest import resolve_pipeline
    from coordexp_swift.tools.tiny_model import build_tiny_model
    from coordexp_swift.trainers.channel_b import ChannelB, forward_inputs, gt_rows, rollout_prompts, rollout_targets
    from coordexp_swift.trainers.forwards import forward

    tmp = Path(tempfile.mkdtemp(prefix="bench_b_"))
    model_dir = a.model or build_tiny_model(tmp / "model", seed=0, vocab="compact")
    make_shapes(tmp / "shapes", n_train=max(8, a.batch), n_val=2, seed=0)
    model, template = load_model_and_template(model_dir, template_type="qwen3_vl_compact")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    template.model = model
    template.set_mode("train")
    template.remove_unused_columns = False
    rows = load_rows(str(tmp / "shapes" / "train.jsonl"), stage="stage2", user_prompt=DEFAULT_USER_PROMPT,
                     system_prompt=None, field_order="desc_first")[: a.batch]
    encoded = [template.encode(dict(r)) for r in rows]
    cfg = load_coordexp_config({"custom": {"trainer_variant": "stage2_two_channel"},
                                "stage2_ab": {"schedule": {"b_ratio": 1.0}},
                                "rollout_matching": {"max_new_tokens": a.max_new_tokens,
                                                     "decode_batch_size": a.batch}})
    pipe = ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))
    tok = template.tokenizer
    vocab = VocabView.from_tokenizer(tok, vocab_size=model.get_output_embeddings().weight.shape[0])
    cb = ChannelB(rm=cfg.rollout_matching, template=template, vocab=vocab, objective=pipe, packed=False,
                  pad_id=tok.pad_token_id, max_length=None, object_field_order="desc_first", training_seed=42)
    gts = gt_rows(encoded, vocab, object_field_order="desc_first")

    # (a) generate throughput: backend vs bare generate (random model, same prompts, same generation config)
    backend = cb.backend(model)
    gcfg = backend.generation_config(cb.decode)
    prompts = rollout_prompts(gts)

    def bare():
        batch = {k: v.to(device) for k, v in collate_left(prompts, tok.pad_token_id).items()}
        model.eval()
        with torch.no_grad():
            seqs = model.generate(**batch, generation_config=gcfg)
        model.train()
        return int(seqs.shape[0] * (seqs.shape[1] - batch["input_ids"].shape[1]))

    def ours():
        outs = cb.rollout(model, gts, step=0)
        return sum(len(o.response_ids) for o in outs)

    load0 = os.getloadavg()
    bare()
    ours()  # warm-up
    tb, to, nb, no = [], [], 0, 0
    for _ in range(a.reps):
        t = time.perf_counter(); nb = bare(); tb.append(time.perf_counter() - t)
        t = time.perf_counter(); no = ours(); to.append(time.perf_counter() - t)
    bare_tps, ours_tps = nb / statistics.median(tb), no / statistics.median(to)

    # (b) the B step split with a forced realistic answer
    recs_txt = []
    for i in range(a.objects):
        b = (100 + 37 * i, 120 + 23 * i, 400 + 11 * i, 380 + 7 * i) if i % 2 == 0 else (5, 900, 40, 990)
        recs_txt.append('{"desc": "thing %d", "bbox_2d": [%s]}' % (i, ", ".join(f"<|coord_{v}|>" for v in b)))
    recs_txt.append('{"desc": "blob", "poly": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]}')
    text = '{"objects": [' + ", ".join(recs_txt) + "]}<|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    orig = GenerationMixin.generate

    def forced(self, *args, **kw):
        return orig(self, *args, logits_processor=LogitsProcessorList([ForceText(ids)]), **kw)

    from dataclasses import replace
    cb.decode = replace(cb.decode, max_new_tokens=max(a.max_new_tokens, len(ids) + 2))
    GenerationMixin.generate = forced
    split = {"generate": [], "parse_match_targets": [], "forward_backward": []}
    try:
        for r in range(a.reps + 1):
            t0 = time.perf_counter()
            outs = cb.rollout(model, gts, step=r)
            t1 = time.perf_counter()
            targets = rollout_targets(gts, [o.response_ids for o in outs], vocab=vocab, rm=cfg.rollout_matching)
            b = forward_inputs(model, targets, gts, vocab=vocab, ce_table=pipe.ce_table, packed=False,
                               pad_id=tok.pad_token_id, max_length=None, device=device)
            t2 = time.perf_counter()
            logits = forward(model, b.model_inputs, input_ids=b.input_ids, position_ids=b.position_ids).logits
            res = pipe(b.batch.with_logits(rollout=logits))
            _ = res.metrics
            res.total.backward()
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            t3 = time.perf_counter()
            if r:  # first = warm-up
                split["generate"].append(t1 - t0)
                split["parse_match_targets"].append(t2 - t1)
                split["forward_backward"].append(t3 - t2)
    finally:
        GenerationMixin.generate = orig
    med = {k: statistics.median(v) for k, v in split.items()}
    step = sum(med.values())
    counts = {k: sum(t.counts[k] for t in targets) for k in ("matched", "fp", "fn", "dropped")}
    result = {
        "device": device, "platform": platform.processor() or platform.machine(), "batch": a.batch,
        "max_new_tokens": a.max_new_tokens, "load_before_after": [load0, os.getloadavg()],
        "generate_tokens_per_s": {"backend": ours_tps, "bare_generate": bare_tps, "ratio": ours_tps / bare_tps,
                                  "target_min": 0.9},
        "b_step_split_s": med, "parse_match_targets_frac": med["parse_match_targets"] / step, "target_max_frac": 0.05,
        "forced_answer_tokens": len(ids), "rollout_counts": counts,
    }
    print(f"generate tokens/s: backend {ours_tps:.1f} vs bare {bare_tps:.1f} -> {ours_tps / bare_tps:.3f}x "
          "(target >= 0.9)")
    for k, v in med.items():
        print(f"  {k:22s} {v * 1000:9.1f} ms  {v / step:6.1%}")  # norm1000-lint: ok (seconds -> ms)
    print(f"parse+match+targets = {med['parse_match_targets'] / step:.2%} of the step (target <= 5%); counts {counts}")
    RESULTS.mkdir(exist_ok=True)
    name = f"stage2_channel_b{'_' + a.tag if a.tag else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
