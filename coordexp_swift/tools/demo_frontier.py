"""Steps-vs-quality frontier of demo runs: every kept checkpoint of a run, evaluated on the held-out split.

``coordexp-swift demo-frontier RUN [RUN ...] [--variant softce_w1] [--max-new-tokens N] [--json F]``

``RUN`` is the output dir of a ``coordexp-swift demo`` run trained with its checkpoints kept (``--set save_steps=N
--set save_total_limit=100``; swift's CLI rejects ``null`` there). Each ``RUN/train_<variant>/checkpoint-K`` is
rolled out greedily on ``RUN/shapes/val.jsonl`` and scored exactly as the demo scores its final model
(``generate_and_evaluate`` + :func:`coordexp_swift.tools.demo.matched_box_stats`) into
``RUN/frontier_<variant>/checkpoint-K`` (a rerun reuses checkpoints already scored there). Writes
``RUN/frontier_<variant>.json`` and prints one markdown table, a row per step and a column group per run. A
checkpoint of a longer cosine schedule is not the model a run of that length
would give (its learning rate has not annealed), so the frontier is a lower bound for shorter runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from coordexp_swift.tools.demo import DemoData


def run_data(run: Path) -> "DemoData":
    """The shapes curriculum a demo run was trained on, from ``run/shapes/summary.json``."""
    from coordexp_swift.tools.demo import DemoData

    s = json.loads((run / "shapes" / "summary.json").read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in s["config"].items()}
    return DemoData(n_train=s["train"]["images"], n_val=s["val"]["images"], seed=s["seed"], **fields)


def evaluate_checkpoints(run: Path, *, variant: str = "softce_w1",
                         max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    """One row per checkpoint of ``run/train_<variant>`` (ascending steps): ``step``, the matched-box stats and
    ``bbox_AP``/``bbox_AP50``/``bbox_AP75``. ``max_new_tokens`` default: the demo's cap for the run's data.
    FileNotFoundError when the run has no checkpoint or no shapes split."""
    from coordexp_swift.eval.cli import generate_and_evaluate
    from coordexp_swift.tools.demo import _checkpoints, eval_max_new_tokens, matched_box_stats

    val = run / "shapes" / "val.jsonl"
    ckpts = _checkpoints(run / f"train_{variant}")
    if not val.exists() or not (run / "shapes" / "summary.json").exists() or not ckpts:
        raise FileNotFoundError(f"{run}: needs shapes/val.jsonl, shapes/summary.json and "
                                f"train_{variant}/checkpoint-* (found {len(ckpts)} checkpoints)")
    if max_new_tokens is None:
        max_new_tokens = eval_max_new_tokens(run_data(run))
    rows = []
    for step, ckpt in ckpts:
        eval_dir = run / f"frontier_{variant}" / ckpt.name
        cached = eval_dir / "frontier_row.json"
        if cached.exists():
            rows.append(json.loads(cached.read_text()))
            continue
        records, result = generate_and_evaluate(ckpt, val, eval_dir, batch_size=25, max_new_tokens=max_new_tokens,
                                                progress=False)
        row = {"step": step, **dataclasses.asdict(matched_box_stats(records)),
               **{k: float(result["metrics"][k]) for k in ("bbox_AP", "bbox_AP50", "bbox_AP75")}}
        cached.write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
    return rows


def frontier_table(per_run: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: ``| step | <run> parse / mean IoU / AP50 | ... |``; ``–`` where a run has no checkpoint."""
    steps = sorted({r["step"] for rows in per_run.values() for r in rows})
    head = "| step | " + " | ".join(f"{name}: parse / mean IoU / AP50" for name in per_run) + " |"
    lines = [head, "|---|" + "---|" * len(per_run)]
    for s in steps:
        cells = []
        for rows in per_run.values():
            r = next((x for x in rows if x["step"] == s), None)
            cells.append("–" if r is None else f"{r['parse_rate']:.2f} / {r['mean_iou']:.3f} / {r['bbox_AP50']:.3f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coordexp-swift demo-frontier", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="demo output dirs (OUT of `coordexp-swift demo`)")
    ap.add_argument("--variant", default="softce_w1", help="training run of the demo to scan (default softce_w1)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation cap (default: the demo's own for the run's data, 32 + 32 per object)")
    ap.add_argument("--json", default=None, help="also write all rows here")
    args = ap.parse_args(argv)
    per_run: dict[str, list[dict[str, Any]]] = {}
    for run in map(Path, args.runs):
        try:
            rows = evaluate_checkpoints(run, variant=args.variant, max_new_tokens=args.max_new_tokens)
        except FileNotFoundError as exc:
            print(f"coordexp-swift demo-frontier: {exc}")
            return 2
        (run / f"frontier_{args.variant}.json").write_text(json.dumps(rows, indent=2) + "\n")
        per_run[run.name] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(per_run, indent=2) + "\n")
    print(frontier_table(per_run))
    return 0
