"""``register()``: wire coordexp into ms-swift (called by ``plugins/coordexp.py``; idempotent).

1. Parse and validate the whole run config (ms-swift keys + ``custom`` / ``stage2_ab`` / ``rollout_matching``)
   from the flags ``swift sft`` expanded the YAML into; unknown keys fail here, before the model loads.
2. Point ms-swift's ``causal_lm`` trainer at the class of ``custom.trainer_variant`` (a registry, not an if-chain).
3. Register the strict JSONL loader for every ``dataset`` / ``val_dataset`` path, and the ``qwen3_vl_compact``
   template of the compact tiny model.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from coordexp_swift.compact_template import register_compact_template
from coordexp_swift.config.loader import load_yaml_file
from coordexp_swift.run_context import RunContext, build_run_context, current, parse_flag_argv, set_current

logger = logging.getLogger("coordexp_swift")

# custom.trainer_variant (resolved) -> trainer class path. Variants the config accepts but this build does not
# ship fail at register time with a clear message.
TRAINER_REGISTRY: dict[str, str] = {
    "stage1": "coordexp_swift.trainers.stage1.Stage1Trainer",
}

_REGISTERED = False


def resolve_trainer_cls(variant: str) -> str:
    """Dotted class path for a resolved variant (``stage1`` | ``stage2_two_channel`` | ``stage2_rollout_aligned``)."""
    if variant not in TRAINER_REGISTRY:
        raise ValueError(f"custom.trainer_variant={variant!r} has no trainer in this build of coordexp-swift; "
                         f"available: {sorted(TRAINER_REGISTRY)}")
    return TRAINER_REGISTRY[variant]


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def check_packing(ctx: RunContext) -> None:
    """Only ms-swift's pre-computed (static) packing is supported: streaming/iterable packing fails (SPEC §2.5)."""
    args = ctx.swift_args
    if _truthy(args.get("packing")) and _truthy(args.get("streaming")):
        raise ValueError("packing: true with streaming: true (iterable packing) is not supported by coordexp: its "
                         "packed rows are built on the fly without the per-segment metadata the coord losses need; "
                         "use static packing (streaming: false)")


def _register_datasets(ctx: RunContext) -> None:
    from swift.dataset import DatasetMeta, register_dataset

    from coordexp_swift.data.swift_loader import CoordExpDatasetLoader

    for path in ctx.dataset_paths():
        if not os.path.isfile(path):
            continue  # hub ids / directories are ms-swift's business
        register_dataset(DatasetMeta(dataset_path=path, loader=CoordExpDatasetLoader), exist_ok=True)


def register(argv: Sequence[str] | None = None) -> RunContext:
    """Validate the run config in ``argv`` (default ``sys.argv[1:]``) and register trainers and datasets."""
    global _REGISTERED
    if _REGISTERED:
        return current()
    config_path = os.environ.get("SWIFT_CONFIG_FILE")
    if config_path and os.path.isfile(config_path):
        load_yaml_file(config_path)  # duplicate keys / syntax, which ms-swift's own YAML read lets through
    flags = parse_flag_argv(sys.argv[1:] if argv is None else argv)
    ctx = build_run_context(flags, config_path=config_path)
    check_packing(ctx)
    set_current(ctx)
    from swift.trainers import TrainerFactory

    TrainerFactory.TRAINER_MAPPING["causal_lm"] = resolve_trainer_cls(ctx.config.variant)
    register_compact_template()
    _register_datasets(ctx)
    _REGISTERED = True
    logger.info("coordexp_swift registered: variant=%s config=%s", ctx.config.variant, ctx.config_path)
    return ctx
