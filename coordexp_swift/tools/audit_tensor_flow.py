"""``coordexp-swift audit-tensor-flow --config YAML [--steps N] [--rows K]``: real Stage-2 steps with the tensor-flow
invariants of SPEC §3.3 / §3.6 B4 checked on every forward (seed 001 2.3; issue 9 item 7, issue 10 item 4).

The YAML goes through the same validation as ``validate-config`` (:func:`validate_file`); the model and template
named there are loaded as ``swift sft`` loads them (``load_model_and_template``, CPU), the first K rows of the first
``dataset`` entry are read by the plugin's own loader (``load_rows``) and encoded by the template in train mode with
``remove_unused_columns=False`` — the list of encoded rows the trainer's identity collator hands ``compute_loss``.
For optimizer steps ``s = 0..N−1`` the step is routed with ``channel_at(s, <stage2_ab.schedule>)``
(``stage2_rollout_aligned``: B every step); an A step runs :func:`~coordexp_swift.trainers.channel_a.audit_a_step`
with the run's ``n_softctx_iter`` / ``softctx_grad_mode`` / ``coord_ctx_embed_mode`` / ``softctx_temperature``,
packed per ``stage2_ab.packing``; a B step runs :func:`~coordexp_swift.trainers.channel_b.audit_b_step` on the
run's Channel-B object. No optimizer step is taken (the model is the loaded checkpoint on every step).

Prints ONE JSON object ``{"config", "variant", "rows", "steps": [{"step", "channel", "checks": {name: bool},
"counts": {...}, "failed": [names]}], "ok"}``; a step that raises ``RuntimeError`` (an invariant the step enforces
itself, e.g. the B4 prompt-ids check) is reported as ``failed: ["step_ran"]`` with its ``error``. Exit 0 when every
check holds, 1 on any violation, 2 on a usage or config error (``invalid: <file>: <problem>`` on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace
from typing import Any, Sequence

STAGE2_VARIANTS = ("stage2_two_channel", "stage2_rollout_aligned")


def _load(ctx: Any, n_rows: int | None) -> dict[str, Any]:
    """Model, template, encoded rows and the run's objective / Channel-B objects, built as the trainers build them."""
    import torch

    from coordexp_swift.config.text_literals import tokenizer_added_literals
    from coordexp_swift.coord.vocab import VocabView
    from coordexp_swift.data.swift_loader import check_dataset_entries, load_rows
    from coordexp_swift.rollout.hf_backend import load_model_and_template
    from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config
    from coordexp_swift.teacher_forcing.manifest import resolve_pipeline
    from coordexp_swift.trainers.channel_b import ChannelB

    cfg, ns = ctx.config, ctx.swift_namespace
    src = ctx.config_path
    if getattr(ns, "remove_unused_columns", True):
        raise ValueError(f"{src}: remove_unused_columns: the Stage-2 trainers need `remove_unused_columns: false` "
                         f"(they read each row's assistant_payload, SPEC §3.3)")
    if not ns.dataset:
        raise ValueError(f"{src}: dataset: no training dataset entry")
    try:
        path, sample = check_dataset_entries([ns.dataset[0]])[0]
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from None
    custom = cfg.custom
    k = int(n_rows if n_rows is not None else ns.per_device_train_batch_size or 1)
    if k < 1:
        raise ValueError(f"--rows must be >= 1, got {k}")
    rows = load_rows(path, stage="stage2", user_prompt=custom.user_prompt, system_prompt=custom.system_prompt,
                     field_order=custom.object_field_order, literals=tokenizer_added_literals(ns.model),
                     on_bad_sample=custom.data.on_bad_sample)
    rows = rows[: min(k, sample) if sample else k]
    if not rows:
        raise ValueError(f"{src}: dataset {path}: no rows to audit")
    dtype = ns.torch_dtype if isinstance(getattr(ns, "torch_dtype", None), torch.dtype) else torch.float32
    model, template = load_model_and_template(ns.model, template_type=ns.template or "qwen3_vl",
                                              model_type=ns.model_type or "qwen3_vl", torch_dtype=dtype,
                                              max_pixels=getattr(ns, "max_pixels", None))
    model.train()
    template.model = model
    template.max_length = getattr(ns, "max_length", None)
    template.set_mode("train")
    template.remove_unused_columns = False
    encoded = [template.encode(dict(r)) for r in rows]
    weight = model.get_output_embeddings().weight
    vocab = VocabView.from_tokenizer(template.tokenizer, vocab_size=int(weight.shape[0]))
    objective = ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))
    packed = cfg.variant == "stage2_two_channel" and bool(getattr(cfg.stage2_ab, "packing", False))
    fake_trainer = SimpleNamespace(template=template, args=SimpleNamespace(
        seed=int(ns.seed), world_size=1, process_index=0, per_device_train_batch_size=len(encoded)))
    cb = ChannelB.from_trainer(fake_trainer, cfg, objective, vocab, packed=packed)
    return {"model": model, "template": template, "encoded": encoded, "vocab": vocab, "objective": objective,
            "packed": packed, "cb": cb}


def _a_step(run: dict[str, Any], s2: Any) -> dict[str, Any]:
    from coordexp_swift.trainers.channel_a import audit_a_step, build_channel_a_inputs, encode_gt_targets

    model, template, vocab = run["model"], run["template"], run["vocab"]
    tok = template.tokenizer
    pairs = encode_gt_targets(run["encoded"], vocab, object_field_order=run["cb"].field_order)
    contexts = ("gt",) if s2.n_softctx_iter == 1 else ("gt", "self_context")
    a = build_channel_a_inputs(model, pairs, vocab=vocab, ce_table=run["objective"].ce_table, contexts=contexts,
                               packed=run["packed"],
                               pad_id=int(tok.pad_token_id if tok.pad_token_id is not None else vocab.eos_id),
                               max_length=template.max_length, device=next(model.parameters()).device)
    return audit_a_step(model, a, n_iter=s2.n_softctx_iter, grad_mode=s2.softctx_grad_mode,
                        embed_mode=s2.coord_ctx_embed_mode, temperature=s2.softctx_temperature)


def audit(ctx: Any, *, steps: int, rows: int | None) -> dict[str, Any]:
    """The report of ``steps`` audited steps of the validated run ``ctx`` (see the module docstring)."""
    from coordexp_swift.trainers.channel_b import audit_b_step
    from coordexp_swift.trainers.scheduler import channel_at

    cfg = ctx.config
    run = _load(ctx, rows)
    schedule: dict[str, Any] = {}
    if cfg.variant == "stage2_two_channel":
        sch = cfg.stage2_ab.schedule
        schedule = {"b_ratio": sch.b_ratio} if sch.pattern is None else {"pattern": tuple(sch.pattern)}
    out = []
    for s in range(steps):
        channel = channel_at(s, **schedule) if schedule else "B"
        try:
            rep = _a_step(run, cfg.stage2_ab) if channel == "A" else audit_b_step(run["cb"], run["model"],
                                                                                  run["encoded"], step=s)
        except RuntimeError as exc:  # a runtime invariant the step itself enforces (e.g. §3.6 B4 prompt ids)
            out.append({"step": s, "channel": channel, "checks": {"step_ran": False}, "counts": {},
                        "failed": ["step_ran"], "error": f"{type(exc).__name__}: {exc}"})
            continue
        checks = {k: bool(v) for k, v in rep.items() if k not in ("failed", "counts")}
        out.append({"step": s, "channel": channel, "checks": checks, "counts": _jsonable(rep.get("counts", {})),
                    "failed": list(rep["failed"])})
    return {"config": ctx.config_path, "variant": cfg.variant, "rows": len(run["encoded"]),
            "packed": run["packed"], "steps": out, "ok": all(not st["failed"] for st in out)}


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (bool, int, float, str)) or d is None:
        return d
    try:
        return float(d)
    except (TypeError, ValueError):
        return str(d)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coordexp-swift audit-tensor-flow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="Stage-2 run YAML (the file given to `swift sft`)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps to audit (routed by the schedule)")
    ap.add_argument("--rows", type=int, default=None,
                    help="rows per step (default: per_device_train_batch_size)")
    try:
        args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.steps < 1:
        print(f"invalid: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    from coordexp_swift.tools.validate_config import validate_file

    try:
        ctx = validate_file(args.config)
        if ctx.config.variant not in STAGE2_VARIANTS:
            raise ValueError(f"{args.config}: custom.trainer_variant: {ctx.config.variant!r} has no Stage-2 tensor "
                             f"flow to audit; accepted {', '.join(STAGE2_VARIANTS)}")
        report = audit(ctx, steps=args.steps, rows=args.rows)
    except (ValueError, OSError) as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=False))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
