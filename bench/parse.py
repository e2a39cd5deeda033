"""Benchmark: the strict rollout parser (SPEC §3.6 B1) now vs the parser before issue 8 item 4, in one process.

Workload: 256 rollouts of 40 objects each, tokenised by the tiny model's real Qwen byte-level BPE (152,669 ids with
the coord tokens): canonical CoordJSON with some non-ASCII descs, one dropped record in every fourth rollout (poly,
wrong arity or a quoted coord) and every fifth rollout truncated inside its last record (no ``<|im_end|>``).

Baseline: ``coordexp_swift/rollout/parse.py`` as of commit :data:`BASELINE_COMMIT` (the last commit before the
rewrite), loaded from git into a temporary module and called the way its callers called it (one
``tokenizer.decode([id])`` per token, a dict ``coord_id_to_bin``). Candidate: today's ``parse_rollout`` with the
run's ``VocabView`` (built once, as a trainer does; its build time is reported but not counted). Both parse the same
256 rollouts per repetition; repetitions alternate and report medians. The two must agree on every rollout
(objects, drop counts, prefix ids, truncation) or the bench fails. Target: baseline / candidate ≥ 3.

Prints a line and writes ``bench/results/parse.json``. Usage: ``python bench/parse.py [--rollouts 256]
[--objects 40] [--reps 3]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coordexp_swift.coord.vocab import VocabView, coord_token_ids  # noqa: E402
from coordexp_swift.data.coordjson import render_object  # noqa: E402
from coordexp_swift.data.records import GTObject  # noqa: E402
from coordexp_swift.rollout.parse import parse_rollout  # noqa: E402
from coordexp_swift.tools.tiny_model import build_tokenizer  # noqa: E402

RESULTS = REPO / "bench" / "results" / "parse.json"
BASELINE_COMMIT = "d29035bc7f88155a2d796ad4dfa0b1c761b27007"
TARGET = 3.0
WORDS = ["red", "blue", "green", "circle", "square", "triangle", "large", "small", "cat", "dog", "person", "car",
         "traffic light", "猫", "красный", "café", "🚗", "striped", "shiny"]
BAD = ['{"desc": "x", "poly": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>, <|coord_5|>, <|coord_6|>]}',
       '{"desc": "x", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>]}',
       '{"desc": "x", "bbox_2d": ["<|coord_1|>", "<|coord_2|>", "<|coord_3|>", "<|coord_4|>"]}']


def _load_baseline():
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:coordexp_swift/rollout/parse.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "parse_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("parse_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["parse_baseline"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def make_rollouts(tok, n: int, n_obj: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for r in range(n):
        recs = []
        for _ in range(n_obj):
            x1, x2 = sorted(rng.randrange(1000) for _ in range(2))
            y1, y2 = sorted(rng.randrange(1000) for _ in range(2))
            desc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
            recs.append(render_object(GTObject(desc, "bbox_2d", (x1, y1, x2, y2))))
        if r % 4 == 1:
            recs[rng.randrange(n_obj)] = rng.choice(BAD)
        text = '{"objects": [' + ", ".join(recs) + "]}"
        ids = tok.encode(text, add_special_tokens=False)
        if r % 5 == 2:  # truncated inside the last record (max_new_tokens hit)
            last = len(tok.encode(", " + recs[-1] + "]}", add_special_tokens=False))
            ids = ids[: len(ids) - rng.randint(3, last - 1)]
        else:
            ids = ids + [eos]
        out.append(ids)
    return out


def _summary(p) -> tuple:
    return (tuple((o.desc, tuple(o.bins), tuple(o.slot_token_idx)) for o in p.objects),
            tuple(sorted(p.drop_counts.items())), tuple(p.prefix_token_ids), p.truncated, p.invalid_rollout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=256)
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    tok = build_tokenizer()
    t0 = time.perf_counter()
    view = VocabView.from_tokenizer(tok)
    view_s = time.perf_counter() - t0
    old = _load_baseline()
    ids_of = coord_token_ids(tok).tolist()
    old_kw = {
        "decode_token": lambda i: tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False),
        "encode": lambda s: tok.encode(s, add_special_tokens=False),
        "coord_id_to_bin": {t: k for k, t in enumerate(ids_of)},
        "im_end_id": view.eos_id,
        "decode_ids": lambda x: tok.decode(list(x), skip_special_tokens=False, clean_up_tokenization_spaces=False),
    }
    rollouts = make_rollouts(tok, args.rollouts, args.objects)
    n_tokens = sum(map(len, rollouts))

    def run_new():
        return [parse_rollout(r, view) for r in rollouts]

    def run_old():
        return [old.parse_rollout(r, **old_kw) for r in rollouts]

    new_res, old_res = run_new(), run_old()  # warm-up + agreement check
    mismatch = [i for i, (a, b) in enumerate(zip(new_res, old_res)) if _summary(a) != _summary(b)]
    if mismatch:
        raise SystemExit(f"parse results differ from the baseline on rollouts {mismatch[:10]}")
    t_new, t_old = [], []
    for i in range(args.reps):
        for fn, acc in ((run_new, t_new), (run_old, t_old)) if i % 2 == 0 else ((run_old, t_old), (run_new, t_new)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    new_s, old_s = statistics.median(t_new), statistics.median(t_old)
    res = {
        "rollouts": args.rollouts, "objects_per_rollout": args.objects, "tokens": n_tokens,
        "truncated": sum(p.truncated for p in new_res), "dropped": sum(p.n_drop_invalid for p in new_res),
        "baseline_commit": BASELINE_COMMIT, "baseline_s": old_s, "candidate_s": new_s, "ratio": old_s / new_s,
        "target": TARGET, "vocab_view_build_s": view_s, "reps": args.reps,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "machine": platform.machine(),
        "python": platform.python_version(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(f"parse_rollout x{args.rollouts} ({n_tokens} tokens): baseline {old_s:.3f}s, now {new_s:.3f}s, "
          f"ratio {old_s / new_s:.1f}x (target >= {TARGET}); VocabView build {view_s:.2f}s once")
    return 0 if old_s / new_s >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
