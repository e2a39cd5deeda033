"""``coordexp-swift validate-config FILE [--data]``: the plugin's run-config validation, without training.

Checks every top-level key against ms-swift's arguments and the coordexp sections (dotted path + closest key on a
typo), resolves the sections, and prints the resolved variant. ``--data`` also validates every ``dataset`` /
``val_dataset`` JSONL against SPEC §1 (file:line errors). Exit 0 when valid, 2 with the error otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from coordexp_swift.config.loader import load_yaml_file
from coordexp_swift.run_context import RunContext, build_run_context


def validate_file(path: str, *, check_data: bool = False) -> RunContext:
    """Validate the run YAML at ``path`` (and its JSONL files if ``check_data``); raise ValueError on problems."""
    top = load_yaml_file(path)
    ctx = build_run_context(top, config_path=path)
    if check_data:
        from coordexp_swift.data.records import iter_jsonl

        stage = "stage1" if ctx.config.variant == "stage1" else "stage2"
        base = os.path.dirname(os.path.abspath(path))
        for data_path in ctx.dataset_paths():
            resolved = data_path if os.path.isabs(data_path) or os.path.exists(data_path) else os.path.join(base, data_path)
            sum(1 for _ in iter_jsonl(resolved, stage=stage))
    return ctx


def describe(ctx: RunContext) -> list[str]:
    """``variant: ...``; for Stage-2 also the resolved modules and ``pipeline_checksum: <hex>`` on its own line."""
    lines = [f"variant: {ctx.config.variant}"]
    if ctx.config.variant != "stage1":
        from coordexp_swift.teacher_forcing.manifest import describe_pipeline

        modules, checksum = describe_pipeline(ctx.config)
        lines += [*modules, f"pipeline_checksum: {checksum}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coordexp-swift validate-config", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="run YAML (the file given to `swift sft`)")
    ap.add_argument("--data", action="store_true", help="also validate the dataset JSONL files (SPEC §1)")
    ap.add_argument("--print-resolved", action="store_true", help="print the resolved coordexp sections as JSON")
    args = ap.parse_args(argv)
    try:
        ctx = validate_file(args.config, check_data=args.data)
    except ValueError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    for line in describe(ctx):
        print(line)
    if args.print_resolved:
        print(json.dumps(ctx.config.to_dict(), indent=2, sort_keys=True))
    print(f"ok: {args.config}")
    return 0
