"""``register()``: wire coordexp into ms-swift (called by ``plugins/coordexp.py``; idempotent).

1. Parse and validate the whole run config (ms-swift keys + ``custom`` / ``stage2_ab`` / ``rollout_matching``)
   from the flags ``swift sft`` expanded the YAML into; unknown keys fail here, before the model loads.
2. Point ms-swift's ``causal_lm`` trainer at the class of ``custom.trainer_variant`` (a registry, not an if-chain).
3. Register the strict JSONL loader for every ``dataset`` / ``val_dataset`` path, and the ``qwen3_vl_compact``
   template of the compact tiny model.
4. DeepSpeed on CPU (``deepspeed`` + ``use_cpu: true`` under torchrun): initialise ``deepspeed.comm`` (gloo) now,
   see :func:`prepare_cpu_deepspeed`.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Sequence

from coordexp_swift.compact_template import register_compact_template
from coordexp_swift.run_context import RunContext, current, set_current, validate_run

logger = logging.getLogger("coordexp_swift")

# custom.trainer_variant (resolved) -> trainer class path. Variants the config accepts but this build does not
# ship fail at register time with a clear message.
TRAINER_REGISTRY: dict[str, str] = {
    "stage1": "coordexp_swift.trainers.stage1.Stage1Trainer",
    "stage2_two_channel": "coordexp_swift.trainers.stage2_two_channel.Stage2TwoChannelTrainer",
    "stage2_rollout_aligned": "coordexp_swift.trainers.stage2_rollout_aligned.Stage2RolloutAlignedTrainer",
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


def _flag_true(args, key: str) -> bool:
    """ms-swift bool flag: ``--key`` alone (parsed as ``None``) or ``--key true|1|yes``."""
    if key not in args:
        return False
    val = args[key]
    val = val[-1] if isinstance(val, list) and val else val
    return val is None or str(val).strip().lower() in ("true", "1", "yes", "y", "t", "on")


def prepare_cpu_deepspeed(ctx: RunContext) -> bool:
    """DeepSpeed with ``use_cpu: true``: make it run (ZeRO-2 and ZeRO-3) on gloo processes. Returns whether it acted.

    - Precision: ms-swift resolves ``fp16`` to true for float32 weights on any device and DeepSpeed's ``auto`` then
      enables fp16, which its CPU accelerator refuses. The argv hook appends ``fp16 false`` when ``fp16`` is not
      given; an explicit true (or a run without the hook) fails here naming the fix.
    - World size: on the CPU path transformers builds accelerate's state with ``cpu=True``, which initialises the
      torch process group but never ``deepspeed.comm`` (only the GPU path calls ``deepspeed.init_distributed``).
      ZeRO-3's ``zero.Init`` at model load then builds its ``DeepSpeedConfig`` before initialising
      ``deepspeed.comm`` itself, reads world size 1 and fails the batch-size check ("4 != 2 * 1 * 1"). Initialising
      ``deepspeed.comm`` here (the plugin runs inside the arguments' ``__post_init__``, before the model loads and
      before accelerate) gives it the real world size; accelerate then finds the process group initialised and
      reuses it.
    """
    args = ctx.swift_args
    ds = args.get("deepspeed")
    ds = ds[-1] if isinstance(ds, list) and ds else ds
    if not ds or str(ds).strip().lower() in ("none", "null") or not _flag_true(args, "use_cpu"):
        return False
    if "fp16" not in args or _flag_true(args, "fp16"):
        given = "fp16 is not set (ms-swift then resolves it to true for float32 weights)" if "fp16" not in args \
            else "fp16: true"
        raise ValueError(f"deepspeed with use_cpu: true and {given}: DeepSpeed's CPU accelerator has no fp16 "
                         "(\"Type fp16 is not supported on your device\"); set `fp16: false` (and `bf16: false` "
                         "for float32 training). The coordexp argv hook adds `--fp16 false` itself when the "
                         "package's coordexp_swift_argv.pth is active.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import deepspeed
        import deepspeed.comm as ds_comm

        if not ds_comm.is_initialized():
            from datetime import timedelta

            backend = args.get("ddp_backend") or "gloo"
            timeout = timedelta(seconds=int(args.get("ddp_timeout") or 18000000))  # ms-swift's default
            deepspeed.init_distributed(dist_backend=str(backend), auto_mpi_discovery=False, timeout=timeout)
    return True


def _register_datasets(ctx: RunContext) -> None:
    """Every entry must be a local JSONL (``file.jsonl#N`` ok): see ``data.swift_loader.register_datasets``."""
    from coordexp_swift.data.swift_loader import register_datasets

    register_datasets(ctx)


def destroy_gloo_group_at_exit() -> None:
    """``atexit``: destroy a gloo default process group while the interpreter is still alive. ms-swift never calls
    ``destroy_process_group``; gloo's worker threads can then free tensors of finished collectives during interpreter
    finalisation and abort the process (SIGABRT after a successful run; pytorch/pytorch#179291, seen here on
    2-process CPU runs ending with an eval step). Gloo only: destroying it is local; NCCL is left alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and str(dist.get_backend()).lower() == "gloo":
        dist.destroy_process_group()


def register(argv: Sequence[str] | None = None) -> RunContext:
    """Validate the run config in ``argv`` (default ``sys.argv[1:]``) and register trainers and datasets."""
    global _REGISTERED
    if _REGISTERED:
        return current()
    config_path = os.environ.get("SWIFT_CONFIG_FILE")
    if not (config_path and os.path.isfile(config_path)):
        config_path = None
    # the one validation path, shared with `coordexp-swift validate-config` (re-reads the YAML strictly; also
    # checks packing + streaming)
    ctx = validate_run(sys.argv[1:] if argv is None else list(argv), config_path=config_path)
    prepare_cpu_deepspeed(ctx)
    set_current(ctx)
    from swift.trainers import TrainerFactory

    TrainerFactory.TRAINER_MAPPING["causal_lm"] = resolve_trainer_cls(ctx.config.variant)
    register_compact_template()
    _register_datasets(ctx)
    atexit.register(destroy_gloo_group_at_exit)
    _REGISTERED = True
    logger.info("coordexp_swift registered: variant=%s config=%s", ctx.config.variant, ctx.config_path)
    return ctx
