"""``coordexp-swift eval``: offline COCO bbox evaluation (SPEC §7.2).

Mode implemented here: ``--pred_jsonl F --out_dir D [--iou_thrs T ...]`` evaluates an existing
``gt_vs_pred.jsonl`` and writes ``metrics.json`` (metrics + counters + named malformed records),
``per_class.csv``, ``per_image.json``, ``coco_gt.json`` and ``coco_preds.json`` into ``D``.

Each mode is a ``_mode_<name>(args) -> int`` function chosen in :func:`main`; a generation mode adds its flags in
:func:`build_parser` and its function to :data:`MODES`.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

OUTPUT_FILES: tuple[str, ...] = ("metrics.json", "per_class.csv", "per_image.json", "coco_gt.json",
                                 "coco_preds.json")
PER_CLASS_COLUMNS: tuple[str, ...] = ("category_id", "name", "num_gt", "num_pred", "AP", "AP50", "AP75")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordexp-swift eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--pred_jsonl", help="gt_vs_pred.jsonl to evaluate (one record per image, SPEC §7.2)")
    p.add_argument("--out_dir", required=True, help="directory for metrics.json, per_class.csv, per_image.json, "
                                                    "coco_gt.json, coco_preds.json (created if missing)")
    p.add_argument("--iou_thrs", type=float, nargs="+", default=None,
                   help="IoU thresholds averaged into AP/AR (default COCO 0.50:0.05:0.95)")
    return p


def write_outputs(result: Mapping[str, Any], out_dir: str | Path, source: str | None = None) -> dict[str, Path]:
    """Write the five §7.2 files for an :func:`~coordexp_swift.eval.coco_eval.evaluate_records` result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in OUTPUT_FILES}
    summary = {"metrics": result["metrics"], "counters": result["counters"], "iou_thrs": result["iou_thrs"],
               "malformed": result["malformed"], "source": source}
    paths["metrics.json"].write_text(json.dumps(summary, indent=2) + "\n")
    with paths["per_class.csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(PER_CLASS_COLUMNS))
        writer.writeheader()
        writer.writerows({k: row[k] for k in PER_CLASS_COLUMNS} for row in result["per_class"])
    paths["per_image.json"].write_text(json.dumps(result["per_image"], indent=1) + "\n")
    paths["coco_gt.json"].write_text(json.dumps(result["coco_gt"]) + "\n")
    paths["coco_preds.json"].write_text(json.dumps(result["coco_preds"]) + "\n")
    return paths


def format_summary(result: Mapping[str, Any], max_problems: int = 5) -> str:
    """A short human summary: headline metrics, record/object counts, non-zero drops, first problems."""
    m, c = result["metrics"], result["counters"]
    lines = [
        "bbox AP {:.4f} | AP50 {:.4f} | AP75 {:.4f} | AR100 {:.4f}".format(
            m["bbox_AP"], m["bbox_AP50"], m["bbox_AP75"], m["bbox_AR100"]),
        f"records {c['records_evaluated']}/{c['records_total']} evaluated | gt objects {c['gt_objects']} | "
        f"pred objects {c['pred_objects']} | categories {c['categories']}",
    ]
    drops = {k: v for k, v in c.items() if v and k not in (
        "records_total", "records_evaluated", "gt_objects", "pred_objects", "categories")}
    if drops:
        lines.append("counted: " + ", ".join(f"{k}={v}" for k, v in drops.items()))
    for prob in result["malformed"][:max_problems]:
        lines.append(f"  not evaluated: {prob['location']}: {prob['reason']}")
    if len(result["malformed"]) > max_problems:
        lines.append(f"  … and {len(result['malformed']) - max_problems} more (see metrics.json)")
    return "\n".join(lines)


def _mode_pred_jsonl(args: argparse.Namespace) -> int:
    from coordexp_swift.eval.coco_eval import evaluate_records
    from coordexp_swift.eval.records_io import read_gt_vs_pred

    try:
        read = read_gt_vs_pred(args.pred_jsonl)
        result = evaluate_records(read.records, args.iou_thrs, locations=read.locations,
                                  upstream_malformed=read.malformed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"coordexp-swift eval: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(result, args.out_dir, source=read.path)
    print(format_summary(result))
    print(f"wrote {', '.join(paths)} to {args.out_dir}")
    return 0


# flag that selects the mode -> mode function
MODES: dict[str, Callable[[argparse.Namespace], int]] = {"pred_jsonl": _mode_pred_jsonl}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    chosen = [flag for flag in MODES if getattr(args, flag, None) is not None]
    if len(chosen) != 1:
        parser.error(f"give exactly one of {', '.join('--' + f for f in MODES)} (got {len(chosen)})")
    return MODES[chosen[0]](args)


if __name__ == "__main__":
    sys.exit(main())
