"""Benchmark: cost of the Stage-1 objective (SPEC §2) against plain cross-entropy, measured in one process.

(a) Coord loss alone: forward + backward of the Stage-1 objective (``teacher_forcing.stage1.Stage1Objective``,
    default weights: soft_ce + w1 + coord_gate through the registry's ``coord_reg``; building the context from the
    labels and the token accuracies included) on ``[1, T, V]`` logits whose N targets are all coord tokens, at the tiny model's real vocabulary
    (152,669), vs full-vocab ``F.cross_entropy`` on the same positions. Target ratio <= 1.25.
(b) One training step on the tiny real-vocabulary Qwen3-VL and a batch of real shapes samples encoded with the
    ms-swift ``qwen3_vl`` template: forward + ``Stage1Trainer.compute_loss`` (every emitted term, token-type split
    and metric logging included) + backward, vs forward + token-mean CE over all supervised targets + backward.
    Target ratio <= 1.10.

Candidate and baseline repetitions alternate (so load drift hits both); each reports the median after warm-up.
``os.getloadavg()`` is recorded before and after. Prints a table and writes ``bench/results/stage1.json``.
Usage: ``python bench/stage1.py [--positions 4096] [--batch 8] [--reps 5] [--model-dir DIR]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from coordexp_swift.coord.codec import NUM_BINS
from coordexp_swift.config.custom import CoordSoftCEW1Config
from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.losses.token_masks import IGNORE_INDEX, stage1_masks
from coordexp_swift.teacher_forcing.stage1 import Stage1Objective

RESULTS = Path(__file__).resolve().parent / "results" / "stage1.json"
TARGET_COORD_LOSS = 1.25
TARGET_STEP = 1.10


def _paired_medians(cand: Callable[[], None], base: Callable[[], None], reps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of ``cand`` and ``base``, alternating their order each repetition."""
    for _ in range(warmup):
        cand()
        base()
    tc, tb = [], []
    for i in range(reps):
        for fn, acc in ((cand, tc), (base, tb)) if i % 2 == 0 else ((base, tb), (cand, tc)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(tc), statistics.median(tb)


# ----------------------------------------------------------------------------------------------- (a) coord loss
def _objective(tokenizer: Any, vocab: int) -> Stage1Objective:
    """Stage-1 objective at the default weights (soft_ce 1, w1 1, coord_gate 1; ce_weight 0, text_gate 0)."""
    return Stage1Objective(CoordSoftCEW1Config(enabled=True), VocabView.from_tokenizer(tokenizer, vocab_size=vocab))


def bench_coord_loss(objective: Stage1Objective, vocab: int, n_pos: int, reps: int, warmup: int) -> dict[str, Any]:
    """Logits ``[1, n_pos + 1, vocab]`` whose first ``n_pos`` positions all predict coord tokens."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(1, n_pos + 1, vocab, generator=g) * 2).requires_grad_()
    bins = torch.randint(0, NUM_BINS, (n_pos,), generator=g)
    labels = torch.full((1, n_pos + 1), IGNORE_INDEX)
    labels[0, 1:] = objective.coord_ids[bins]
    targets = labels[0, 1:]

    def coord() -> None:
        logits.grad = None
        objective(logits, labels).loss.backward()

    def full_ce() -> None:
        logits.grad = None
        F.cross_entropy(logits[0, :-1], targets).backward()

    t_c, t_b = _paired_medians(coord, full_ce, reps, warmup)
    return {"positions": n_pos, "vocab": vocab, "coord_loss_s": t_c, "full_vocab_ce_s": t_b, "ratio": t_c / t_b,
            "target": TARGET_COORD_LOSS}


# ----------------------------------------------------------------------------------------------- (b) training step
class _Meter:
    def update(self, v: Any) -> None:
        float(v)


def _bare_trainer(model: Any, tokenizer: Any) -> Any:
    """``Stage1Trainer`` without ``__init__``: the attributes ``compute_loss`` reads (single process, defaults)."""
    from coordexp_swift.trainers.stage1 import Stage1Trainer

    t = Stage1Trainer.__new__(Stage1Trainer)
    t.args = types.SimpleNamespace(average_tokens_across_devices=True, world_size=1, n_gpu=1, process_index=0)
    t.accelerator = types.SimpleNamespace(num_processes=1, parallelism_config=None)
    t.model_accepts_loss_kwargs = True
    t.model = model
    t.objective = _objective(tokenizer, model.get_output_embeddings().weight.shape[0])
    t._window_counts = None
    t.custom_metrics = {"train": defaultdict(_Meter), "eval": defaultdict(_Meter)}
    return t


def bench_step(model_dir: Path, shapes_dir: Path, batch: int, reps: int, warmup: int) -> dict[str, Any]:
    from coordexp_swift.config import DEFAULT_USER_PROMPT
    from coordexp_swift.data.coordjson import to_swift_row
    from coordexp_swift.data.records import iter_jsonl
    from coordexp_swift.rollout.hf_backend import load_model_and_template

    model, template = load_model_and_template(model_dir)
    model.train()
    template.model = model
    template.set_mode("train")
    recs = list(iter_jsonl(shapes_dir / "train.jsonl", stage="stage1"))[:batch]
    encs = [template.encode(to_swift_row(r, user_prompt=DEFAULT_USER_PROMPT)) for r in recs]
    inputs = template.data_collator(copy.deepcopy(encs))
    labels = inputs["labels"]
    fwd = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw",
                                  "mm_token_type_ids")}
    fwd["use_cache"] = False
    trainer = _bare_trainer(model, template.tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]

    def stage1() -> None:
        for p in params:
            p.grad = None
        trainer.compute_loss(model, {**fwd, "labels": labels}).backward()

    def plain() -> None:
        for p in params:
            p.grad = None
        lg = model(**fwd).logits
        F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]).float(), labels[:, 1:].reshape(-1),
                        ignore_index=IGNORE_INDEX).backward()

    t_s, t_p = _paired_medians(stage1, plain, reps, warmup)
    m = stage1_masks(labels, trainer.objective.vocab.id_to_bin_on(labels.device), trainer.objective.eos_id)
    return {"batch": batch, "seq_len": int(labels.shape[1]), "coord_targets": int(m.coord.sum()),
            "text_targets": int(m.text.sum()), "vocab": int(model.get_output_embeddings().weight.shape[0]),
            "stage1_step_s": t_s, "plain_ce_step_s": t_p, "ratio": t_s / t_p, "target": TARGET_STEP}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--model-dir", default=None, help="tiny real-vocab model (built in a temp dir if omitted)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from coordexp_swift.data.shapes import make_shapes
    from coordexp_swift.tools.tiny_model import build_tiny_model

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else build_tiny_model(Path(tmp) / "model", seed=0)
        shapes_dir = Path(tmp) / "shapes"
        make_shapes(shapes_dir, n_train=max(args.batch, 8), n_val=1, seed=0)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        vocab = len(tok)
        a = bench_coord_loss(_objective(tok, vocab), vocab, args.positions, args.reps, args.warmup)
        b = bench_step(model_dir, shapes_dir, args.batch, args.reps, args.warmup)
    load_after = os.getloadavg()

    rows = [(f"(a) coord loss fwd+bwd, {a['positions']} pos, V={a['vocab']}", a["coord_loss_s"], a["full_vocab_ce_s"],
             a["ratio"], a["target"]),
            (f"(b) train step, batch {b['batch']} x {b['seq_len']} tok", b["stage1_step_s"], b["plain_ce_step_s"],
             b["ratio"], b["target"])]
    print(f"{'measurement':52s} {'stage1 s':>9s} {'base s':>9s} {'ratio':>7s} {'target':>7s}")
    for name, c, base, ratio, target in rows:
        print(f"{name:52s} {c:9.3f} {base:9.3f} {ratio:7.3f} {'<=' + format(target, '.2f'):>7s}"
              f"{'' if ratio <= target else '  MISSED'}")
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in load_after)}; torch threads {torch.get_num_threads()}")

    result = {"coord_loss": a, "train_step": b, "reps": args.reps, "warmup": args.warmup,
              "loadavg_before": list(load_before), "loadavg_after": list(load_after),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "cpu_count": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
