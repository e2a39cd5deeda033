"""``coordexp-swift eval``: offline COCO bbox evaluation (SPEC §7.2).

Modes:

- ``--pred_jsonl F --out_dir D [--iou_thrs T ...]`` evaluates an existing ``gt_vs_pred.jsonl`` and writes
  ``metrics.json`` (metrics + counters + named malformed records), ``per_class.csv``, ``per_image.json``,
  ``coco_gt.json`` and ``coco_preds.json`` into ``D``.
- ``--model CKPT --jsonl VAL --out_dir D`` first generates (greedy) one response per record of ``VAL`` with the
  checkpoint (:func:`coordexp_swift.eval.generate.generate_records`), writes ``D/gt_vs_pred.jsonl``, then evaluates
  it as above. Prompt, system prompt, field order and template default to what the run used: they are read from
  ``coordexp_config.json`` and ms-swift's ``args.json`` in the checkpoint dir or its run dir (the parent), and
  ``--template`` / ``--user_prompt`` / ``--system_prompt`` / ``--object_field_order`` override them.

Each mode is a ``_mode_<name>(args) -> int`` function chosen in :func:`main`; a generation mode adds its flags in
:func:`build_parser` and its function to :data:`MODES`.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
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
    p.add_argument("--overlays", type=int, default=8, metavar="N",
                   help="draw GT (green) and predicted (red) boxes of the first N images to overlays.png (0: none)")
    p.add_argument("--image_root", default=None,
                   help="directory relative image paths are resolved against (default: the --pred_jsonl's directory)")
    g = p.add_argument_group("generation mode (--model)")
    g.add_argument("--model", help="full checkpoint dir to generate with (needs --jsonl)")
    g.add_argument("--jsonl", help="coordexp JSONL (SPEC §1) whose records are generated for and evaluated")
    g.add_argument("--template", help="ms-swift template (default: the run's `template` from args.json, "
                                      "else qwen3_vl)")
    g.add_argument("--user_prompt", help="default: the run's custom.user_prompt (coordexp_config.json)")
    g.add_argument("--system_prompt", help="default: the run's custom.system_prompt")
    g.add_argument("--object_field_order", choices=("desc_first", "geometry_first"),
                   help="default: the run's custom.object_field_order")
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    g.add_argument("--batch_size", type=int, default=16)
    g.add_argument("--max_new_tokens", type=int, default=512)
    g.add_argument("--score_mode", choices=("constant", "token_prob"), default="constant",
                   help="per-prediction score for AP: constant 1.0 (default, SPEC §7.1) or token_prob = geometric "
                        "mean of the generated desc and coord token probabilities (coordexp_swift.eval.scores)")
    return p


@dataclass(frozen=True)
class GenerationSettings:
    """What a checkpoint must be prompted with to match its training run (``custom.*`` + ms-swift ``template``).

    ``sources``: the files the values were read from (empty when all came from flags / defaults)."""

    template_type: str
    user_prompt: str
    system_prompt: str | None
    object_field_order: str
    max_pixels: int | None
    sources: tuple[str, ...] = ()


def _find_run_file(model_dir: Path, name: str) -> Path | None:
    """``name`` in the checkpoint dir, else in its parent (ms-swift's run ``output_dir``), else None."""
    for d in (model_dir, model_dir.parent):
        if (d / name).is_file():
            return d / name
    return None


def resolve_generation_settings(model_dir: str | Path, *, template_type: str | None = None,
                                user_prompt: str | None = None, system_prompt: str | None = None,
                                object_field_order: str | None = None) -> GenerationSettings:
    """Prompting settings for ``model_dir``: explicit arguments win, then the run's ``coordexp_config.json``
    (``custom.user_prompt`` / ``system_prompt`` / ``object_field_order``) and ``args.json`` (``template``,
    ``max_pixels``), then the coordexp defaults (``DEFAULT_USER_PROMPT``, no system prompt, ``desc_first``,
    ``qwen3_vl``). Raises ValueError when a run file exists but is not a JSON object."""
    from coordexp_swift.config import DEFAULT_USER_PROMPT

    model_dir = Path(model_dir)
    sources: list[str] = []
    custom: Mapping[str, Any] = {}
    swift_args: Mapping[str, Any] = {}
    for name in ("coordexp_config.json", "args.json"):
        path = _find_run_file(model_dir, name)
        if path is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); fix or delete it, or pass the settings as flags") \
                from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        sources.append(str(path))
        if name == "coordexp_config.json":
            custom = data.get("custom") or {}
        else:
            swift_args = data
    max_pixels = swift_args.get("max_pixels")
    return GenerationSettings(
        template_type=template_type or str(swift_args.get("template") or "qwen3_vl"),
        user_prompt=user_prompt if user_prompt is not None else str(custom.get("user_prompt") or DEFAULT_USER_PROMPT),
        system_prompt=system_prompt if system_prompt is not None else custom.get("system_prompt"),
        object_field_order=object_field_order or str(custom.get("object_field_order") or "desc_first"),
        max_pixels=int(max_pixels) if isinstance(max_pixels, (int, float)) else None,
        sources=tuple(sources),
    )


def generate_and_evaluate(model_dir: str | Path, jsonl: str | Path, out_dir: str | Path, *,
                          settings: GenerationSettings | None = None, iou_thrs: Sequence[float] | None = None,
                          batch_size: int = 16, max_new_tokens: int = 512, limit: int | None = None,
                          progress: bool = True, score_mode: str = "constant",
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy rollouts of ``model_dir`` over ``jsonl`` → ``out_dir/gt_vs_pred.jsonl`` → :func:`evaluate_records`
    → the five §7.2 files in ``out_dir``. Returns ``(records, result)``. ``settings`` default: the run's own
    (:func:`resolve_generation_settings`)."""
    from coordexp_swift.eval.coco_eval import evaluate_records
    from coordexp_swift.eval.generate import generate_records

    settings = settings or resolve_generation_settings(model_dir)
    out = Path(out_dir)
    pred_jsonl = out / "gt_vs_pred.jsonl"
    records = generate_records(
        model_dir, jsonl, out_jsonl=pred_jsonl, batch_size=batch_size, max_new_tokens=max_new_tokens,
        user_prompt=settings.user_prompt, system_prompt=settings.system_prompt,
        object_field_order=settings.object_field_order, limit=limit, progress=progress,
        template_type=settings.template_type, model_kwargs={"max_pixels": settings.max_pixels},
        score_mode=score_mode)
    result = evaluate_records(records, iou_thrs)
    result["score_mode"] = score_mode
    write_outputs(result, out, source=str(pred_jsonl))
    return records, result


def write_outputs(result: Mapping[str, Any], out_dir: str | Path, source: str | None = None) -> dict[str, Path]:
    """Write the five §7.2 files for an :func:`~coordexp_swift.eval.coco_eval.evaluate_records` result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in OUTPUT_FILES}
    summary = {"metrics": result["metrics"], "f1_iou50": result.get("f1_iou50"),
               "counters": result["counters"], "iou_thrs": result["iou_thrs"], "malformed": result["malformed"],
               "source": source, "evaluator": result.get("evaluator")}
    if "score_mode" in result:
        summary["score_mode"] = result["score_mode"]
    paths["metrics.json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    # descs are arbitrary text (lone surrogates included): never let the file encoding raise
    with paths["per_class.csv"].open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(PER_CLASS_COLUMNS))
        writer.writeheader()
        writer.writerows({k: row[k] for k in PER_CLASS_COLUMNS} for row in result["per_class"])
    paths["per_image.json"].write_text(json.dumps(result["per_image"], indent=1) + "\n", encoding="utf-8")
    paths["coco_gt.json"].write_text(json.dumps(result["coco_gt"]) + "\n", encoding="utf-8")
    paths["coco_preds.json"].write_text(json.dumps(result["coco_preds"]) + "\n", encoding="utf-8")
    return paths


def format_summary(result: Mapping[str, Any], max_problems: int = 5) -> str:
    """A short human summary: headline metrics, record/object counts, non-zero drops, first problems."""
    m, c = result["metrics"], result["counters"]
    lines = [
        "bbox AP {:.4f} | AP50 {:.4f} | AP75 {:.4f} | AR100 {:.4f}".format(
            m["bbox_AP"], m["bbox_AP50"], m["bbox_AP75"], m["bbox_AR100"])
        + (" | F1@0.5 {f1:.4f} (P {precision:.4f}, R {recall:.4f})".format(**result["f1_iou50"])
           if result.get("f1_iou50") else ""),
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


def write_overlays(records: Sequence[Mapping[str, Any]], image_root: str | Path, out_dir: str | Path,
                   n: int) -> Path | None:
    """``out_dir/overlays.png`` with the first ``n`` records (None if ``n`` is 0 or nothing is drawable)."""
    from coordexp_swift.eval.visualize import draw_overlays

    if n <= 0:
        return None
    try:
        return draw_overlays(records, image_root, Path(out_dir) / "overlays.png", max_images=n)
    except ValueError as exc:
        print(f"coordexp-swift eval: no overlays ({exc})", file=sys.stderr)
        return None


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
    if read.n_lines == 0:
        print(f"coordexp-swift eval: warning: {read.path} has no records (empty file); every metric is 0.0",
              file=sys.stderr)
    paths = write_outputs(result, args.out_dir, source=read.path)
    overlay = write_overlays(read.records, args.image_root or Path(args.pred_jsonl).parent, args.out_dir,
                             args.overlays)
    print(format_summary(result))
    print(f"wrote {', '.join(paths)}{', overlays.png' if overlay else ''} to {args.out_dir}")
    return 0


def _mode_model(args: argparse.Namespace) -> int:
    if args.jsonl is None:
        print("coordexp-swift eval: --model needs --jsonl (the records to generate for)", file=sys.stderr)
        return 2
    if not Path(args.model).is_dir():
        print(f"coordexp-swift eval: --model {args.model}: not a directory (give a full checkpoint dir)",
              file=sys.stderr)
        return 2
    try:
        settings = resolve_generation_settings(args.model, template_type=args.template,
                                               user_prompt=args.user_prompt, system_prompt=args.system_prompt,
                                               object_field_order=args.object_field_order)
        print(f"generation settings: template={settings.template_type} field_order={settings.object_field_order} "
              f"prompt={settings.user_prompt!r} (from {', '.join(settings.sources) or 'flags/defaults'})")
        records, result = generate_and_evaluate(args.model, args.jsonl, args.out_dir, settings=settings,
                                                iou_thrs=args.iou_thrs, batch_size=args.batch_size,
                                                max_new_tokens=args.max_new_tokens, limit=args.limit,
                                                score_mode=args.score_mode)
    except (FileNotFoundError, ValueError) as exc:
        print(f"coordexp-swift eval: {exc}", file=sys.stderr)
        return 2
    overlay = write_overlays(records, args.image_root or Path(args.jsonl).parent, args.out_dir, args.overlays)
    print(format_summary(result))
    print(f"wrote gt_vs_pred.jsonl, {', '.join(OUTPUT_FILES)}{', overlays.png' if overlay else ''} to {args.out_dir}")
    return 0


# flag that selects the mode -> mode function
MODES: dict[str, Callable[[argparse.Namespace], int]] = {"pred_jsonl": _mode_pred_jsonl, "model": _mode_model}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    chosen = [flag for flag in MODES if getattr(args, flag, None) is not None]
    if len(chosen) != 1:
        parser.error(f"give exactly one of {', '.join('--' + f for f in MODES)} (got {len(chosen)})")
    return MODES[chosen[0]](args)


if __name__ == "__main__":
    sys.exit(main())
