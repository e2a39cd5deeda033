"""Benchmark: the unified loss registry vs a bare token CE over the same logits (SPEC §4, §6).

One packed row of S segments (default 16 × 300 tokens: 40 prompt tokens, then an assistant target with B = 40 boxes:
per box one struct + one desc token and 4 coord tokens, an opener, the closure and ``<|im_end|>``), random fp32
logits ``[1, S·300, V]`` (default V = 152,669, the real Qwen3-VL + coord vocabulary) as a leaf with grad. Measured
in one process, forward + backward, median of ``--repeats``:

- ``bare_ce``: ``F.cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=-100)`` over every assistant target —
  the baseline;
- ``registry_default``: context views (layout, §4.3 weights) built from the meta + the default two-channel objective
  modules (``token_ce``, ``bbox_geo``, ``coord_reg``) on a Channel-B rollout context (FP records included);
- ``registry_softce_w1``: the same with ``coord_reg`` softCE + W1 + gate enabled (a heavier coord regime);
- ``registry_with_diag``: default objective + ``coord_diag`` + ``token_type_diag``.

Prints a table of times and ratios vs ``bare_ce`` (target ≤ 1.15 for the default) and writes
``bench/results/registry.json``. Usage: ``python bench/registry.py [--vocab V] [--segments S] [--repeats R]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from coordexp_swift.coord.codec import NUM_BINS
from coordexp_swift.teacher_forcing import ObjectivePipeline, RunSettings, TeacherForcingContext, parse_pipeline
from coordexp_swift.teacher_forcing.meta import BBoxGroups, SegmentMeta
from coordexp_swift.teacher_forcing.token_types import COORD, DESC, EOS, STRUCT

RESULTS = Path(__file__).resolve().parent / "results" / "registry.json"
PROMPT, SEG_LEN, BOXES = 40, 300, 40
VARIANT = "stage2_two_channel"


def synthetic_row(segments: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, tuple[SegmentMeta, ...],
                                                                     torch.Tensor, torch.Tensor]:
    """``(input_ids [1, S·300], metas, labels [1, S·300], coord_ids)``; half the boxes of each segment are matched
    prefix records, a quarter FP, a quarter FN (tail); every segment has one dropped record."""
    g = torch.Generator().manual_seed(seed)
    coord_ids = torch.arange(vocab - NUM_BINS - 1, vocab - 1)
    eos_id = vocab - 1
    train_len = SEG_LEN - PROMPT
    ids_all, metas, labels_all = [], [], []
    for _ in range(segments):
        types = torch.full((train_len,), STRUCT, dtype=torch.int8)
        opener = train_len - BOXES * 6 - 2
        bins = torch.randint(0, NUM_BINS, (BOXES, 4), generator=g)
        slot = torch.zeros(BOXES, 4, dtype=torch.long)
        rec_start = []
        for b in range(BOXES):
            base = opener + 6 * b
            rec_start.append(base)
            types[base + 1] = DESC
            types[base + 2: base + 6] = COORD
            slot[b] = torch.arange(base + 2, base + 6)
        types[-1] = EOS
        ids = torch.randint(0, vocab - NUM_BINS - 1, (train_len,), generator=g)
        ids[slot.reshape(-1)] = coord_ids[bins.reshape(-1)]
        ids[-1] = eos_id
        n_pre = BOXES * 3 // 4  # matched (first half) + FP (next quarter) in the prefix
        prefix_len = rec_start[n_pre]
        matched = list(range(BOXES // 2))
        m_pos = torch.cat([torch.arange(rec_start[b], rec_start[b] + 6) for b in matched])
        m_struct = m_pos[(types[m_pos] == STRUCT)]
        fn = list(range(n_pre, BOXES))
        tail_desc = torch.tensor([rec_start[b] + 1 for b in fn])
        metas.append(SegmentMeta(
            prompt_len=PROMPT, prefix_len=prefix_len, train_len=train_len, encoded_len=SEG_LEN,
            prefix_struct_pos=m_struct + PROMPT, prefix_coord_pos=slot[matched].reshape(-1) + PROMPT,
            tail_desc_pos=tail_desc + PROMPT, tail_closure_pos=torch.tensor([train_len - 2, train_len - 1]) + PROMPT,
            bbox_groups_prefix=BBoxGroups(slot[matched] + PROMPT, bins[matched]),
            bbox_groups_fn=BBoxGroups(slot[fn] + PROMPT, bins[fn]), n_drop_invalid=1, invalid_rollout=False,
            token_types=types, prefix_matched_pos=m_pos + PROMPT))
        prompt = torch.randint(0, vocab - NUM_BINS - 1, (PROMPT,), generator=g)
        ids_all.append(torch.cat([prompt, ids]))
        labels_all.append(torch.cat([torch.full((PROMPT,), -100), ids]))
    return torch.cat(ids_all)[None], tuple(metas), torch.cat(labels_all)[None], coord_ids


def _time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=152_669)
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.manual_seed(0)
    input_ids, metas, labels, coord_ids = synthetic_row(args.segments, args.vocab)
    logits = torch.randn(*input_ids.shape, args.vocab).requires_grad_(True)

    def bare() -> None:
        logits.grad = None
        loss = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
        loss.backward()

    def registry(pipe: ObjectivePipeline) -> Callable[[], None]:
        def run() -> None:
            logits.grad = None
            ctx = TeacherForcingContext(channel="B", input_ids=input_ids, logits={"rollout": logits}, meta=metas,
                                        coord_ids=coord_ids, packed=True)
            pipe(ctx).total.backward()
        return run

    default_obj = [{"name": "token_ce"}, {"name": "bbox_geo"}, {"name": "coord_reg"}]
    soft = [{"name": "token_ce"}, {"name": "bbox_geo"},
            {"name": "coord_reg", "config": {"soft_ce_weight": 1.0, "w1_weight": 1.0, "coord_gate_weight": 1.0}}]
    settings = RunSettings(variant=VARIANT)

    def make(obj: list, diag: list) -> ObjectivePipeline:
        return ObjectivePipeline(parse_pipeline({"objective": obj, "diagnostics": diag}, VARIANT,
                                                {"variant": VARIANT}), settings)

    rows = {"bare_ce": _time(bare, args.repeats)}
    rows["registry_default"] = _time(registry(make(default_obj, [])), args.repeats)
    rows["registry_softce_w1"] = _time(registry(make(soft, [])), args.repeats)
    rows["registry_with_diag"] = _time(registry(make(default_obj, [{"name": "coord_diag"},
                                                                   {"name": "token_type_diag"}])), args.repeats)
    base = rows["bare_ce"]
    print(f"registry bench: {args.segments} segments x {SEG_LEN} tokens, {BOXES} boxes each, V={args.vocab}, "
          f"fp32, forward+backward, median of {args.repeats}")
    print(f"{'case':<22}{'seconds':>10}{'ratio':>8}")
    for name, t in rows.items():
        print(f"{name:<22}{t:>10.3f}{t / base:>8.3f}")
    out = {"vocab": args.vocab, "segments": args.segments, "segment_len": SEG_LEN, "boxes": BOXES,
           "repeats": args.repeats, "seconds": rows, "ratio_vs_bare_ce": {k: v / base for k, v in rows.items()},
           "target_ratio_default": 1.15, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
