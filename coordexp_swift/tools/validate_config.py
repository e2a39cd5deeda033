"""``coordexp-swift validate-config FILE [--data]``: the plugin's run-config validation, without training.

Runs :func:`coordexp_swift.run_context.validate_run` — the same function the plugin runs when ``swift sft`` starts —
on the flags ``swift sft FILE`` would pass: every top-level key against ms-swift's arguments and the coordexp
sections (file, dotted key and closest keys on a typo), every ms-swift value through ms-swift's own argument parser
(type, single value, range), the plugin/``ignore_args_error`` requirements, and the sections; prints the resolved
variant. ``--data`` also checks every ``dataset`` / ``val_dataset`` entry (a local JSONL file or ``file.jsonl#N``;
relative paths resolve against the **working directory**, as at run time, so run it from where you run
``swift sft``) and validates each file as training reads it (SPEC §1, file:line errors, image files exist).
Exit 0 when valid, 2 with the error otherwise (``invalid: <file>: <problem>``).
"""
from __future__ import annotations

import argparse
import json
import sys

from coordexp_swift.config.loader import load_yaml_file
from coordexp_swift.run_context import RunContext, validate_run, yaml_to_argv


def validate_file(path: str, *, check_data: bool = False) -> RunContext:
    """Validate the run YAML at ``path`` (and its JSONL files if ``check_data``); raise ValueError on problems."""
    top = load_yaml_file(path)
    ctx = validate_run(yaml_to_argv(top), config_path=path, top_level=top)
    if check_data:
        check_run_data(ctx)
    return ctx


def check_run_data(ctx: RunContext) -> dict[str, dict[str, int]]:
    """Validate every dataset entry of ``ctx`` as the run's loader reads it; returns ``{file: skipped counts}``
    (non-empty only under ``custom.data.on_bad_sample: skip``). ValueError names the config file and the entry."""
    from coordexp_swift.config.text_literals import tokenizer_added_literals
    from coordexp_swift.data.records import load_records
    from coordexp_swift.data.swift_loader import check_dataset_entries

    src = ctx.config_path or "the run arguments"
    stage = "stage1" if ctx.config.variant == "stage1" else "stage2"
    literals = tokenizer_added_literals(getattr(ctx.swift_namespace, "model", None))
    skipped: dict[str, dict[str, int]] = {}
    try:
        entries = check_dataset_entries(ctx.dataset_entries())
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from None
    for data_path, _n in entries:
        loaded = load_records(data_path, stage=stage, literals=literals,
                              on_bad_sample=ctx.config.custom.data.on_bad_sample)
        if loaded.skipped:
            skipped[loaded.path] = dict(loaded.skipped)
    return skipped


def describe(ctx: RunContext) -> list[str]:
    """``variant: ...``; for Stage-2 also the resolved modules and ``pipeline_checksum: <hex>`` on its own line."""
    lines = [f"variant: {ctx.config.variant}"]
    if ctx.config.variant != "stage1":
        from coordexp_swift.teacher_forcing.manifest import describe_pipeline

        try:
            modules, checksum = describe_pipeline(ctx.config)
        except ValueError as exc:
            raise ValueError(f"{ctx.config_path or 'the run arguments'}: {exc}") from None
        lines += [*modules, f"pipeline_checksum: {checksum}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coordexp-swift validate-config", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="run YAML (the file given to `swift sft`)")
    ap.add_argument("--data", action="store_true", help="also validate the dataset JSONL files (SPEC §1)")
    ap.add_argument("--print-resolved", action="store_true", help="print the resolved coordexp sections as JSON")
    args = ap.parse_args(argv)
    try:
        ctx = validate_file(args.config)
        lines = describe(ctx)
        skipped = check_run_data(ctx) if args.data else {}
    except ValueError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    for path, counts in skipped.items():
        print(f"skipped (custom.data.on_bad_sample: skip): {path}: {counts}")
    if args.print_resolved:
        print(json.dumps(ctx.config.to_dict(), indent=2, sort_keys=True))
    print(f"ok: {args.config}")
    return 0
