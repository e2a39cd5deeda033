"""Stage-2 Two-Channel Teacher Forcing (Expectation/Rollout): ``custom.trainer_variant: stage2_two_channel``
(SPEC §3; ARCHITECTURE §7).

One optimizer step runs one channel, ``channel_at(global_step, b_ratio=..|pattern=..)`` (``trainers/scheduler.py``):

* **A** (iterative soft self-context, SPEC §3.4; the functions live in ``trainers/channel_a.py``, free of ms-swift
  imports): :meth:`Stage2TwoChannelTrainer._build_batch` turns the
  micro-batch's encoded rows into the GT targets and the host-built ``TeacherForcingBatch`` (before any forward);
  :func:`channel_a_forwards` runs A1 with ``input_ids`` (context ``gt``) and iterations 1..n−1 with
  ``inputs_embeds`` (context ``self_context`` = the last one); the objective pipeline reads both.
* **B** (rollouts): the shared :class:`~coordexp_swift.trainers.channel_b.ChannelB` step (rollout → parse →
  match → FN append → one forward); a failing B step raises, never reroutes. Eval: ``RolloutEvalMixin``.

Harness (SPEC §3.3). ``swift sft`` encodes every row with the run's ``qwen3_vl`` template in train mode
(``LazyLLMDataset``); with ``remove_unused_columns: false`` the row's ``assistant_payload`` / ``sample_id`` ride in
``encoded['_extra_kwargs']``. This trainer's collator is the identity, so ``compute_loss`` receives the list of
encoded rows and builds the forward inputs itself. The training encoding up to the first labelled position IS the
generation prompt (``rollout/prompts.py``): the GT target is ``rollout.targets.build_gt_target`` on that prompt,
and its ``Y_train`` must equal the template's own assistant tokens (``RuntimeError`` naming the sample otherwise),
so Channel-B slices the same prompt ids and never re-encodes. ms-swift's dataset packing must be off; the trainer
packs after encoding under ``stage2_ab.packing`` (default false): all segments of a micro-step in one padding-free
row with ``position_ids [4, 1, T]`` (``trainers/forwards.pack_segments``). Unpacked: right-padded rows with an
``attention_mask`` and positions from ``positions_for`` (computed once, before A1, from ``input_ids``).

Logits convention: ``logits[b, t]`` predicts the token at ``t + 1``; a coord slot at input position p reads the
logits at p − 1. Metrics: each micro-batch's pipeline metrics + ``time/forward_s`` + ``stage2/b_ratio_realized``
go to :class:`~coordexp_swift.trainers.step_metrics.StepMetrics` (weight = segment count) and are reduced in
:meth:`Stage2TwoChannelTrainer.log` on every rank (SPEC §8.3).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import torch
from swift.trainers import Seq2SeqTrainer

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.run_context import current, write_resolved_config
from coordexp_swift.teacher_forcing.batch import TeacherForcingBatch
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, PipelineResult, settings_from_config
from coordexp_swift.teacher_forcing.manifest import resolve_pipeline, write_manifest
from coordexp_swift.trainers.channel_a import (
    GRAD_MODES,
    ChannelAInputs,
    build_channel_a_inputs,
    channel_a_forwards,
    encode_gt_targets,
)
from coordexp_swift.trainers.channel_b import ChannelB
from coordexp_swift.trainers.host_rows import host_rows_collator
from coordexp_swift.trainers.rollout_eval import RolloutEvalMixin, RolloutEvaluator
from coordexp_swift.trainers.scheduler import b_ratio_realized, channel_at
from coordexp_swift.trainers.step_metrics import StepMetrics

__all__ = ["ChannelAInputs", "GRAD_MODES", "Stage2TwoChannelTrainer", "build_channel_a_inputs",
           "channel_a_forwards", "encode_gt_targets"]

# a child of ms-swift's logger, so the init line reaches its (INFO) handler
logger = logging.getLogger("swift.coordexp_swift")



# --- the trainer ------------------------------------------------------------------------------------------------
class Stage2TwoChannelTrainer(RolloutEvalMixin, Seq2SeqTrainer):
    """``custom.trainer_variant: stage2_two_channel``. Reads like TRL: ``compute_loss`` → ``channel_at`` →
    ``_build_batch`` → ``_channel_a_forwards`` → ``_compute_objective`` → ``step_metrics.observe``.

    Logs (SPEC §8.2): ``loss`` and its contributions ``loss/{struct_ce,desc_ce,coord_reg,geo,...}`` (each iff its
    effective weight > 0; they add up to ``loss``), breakdowns ``loss/struct_ce/self_context``,
    ``loss/geo/<term>``, ``loss/coord_reg/<term>``, diagnostics ``coord_diag/<context>/*``, ``time/forward_s``,
    ``stage2/b_ratio_realized``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ctx = current()
        cfg = ctx.config
        s2 = cfg.stage2_ab
        if s2 is None:
            raise ValueError("custom.trainer_variant: stage2_two_channel needs a stage2_ab section")
        if getattr(self.template, "remove_unused_columns", True):
            raise ValueError("custom.trainer_variant: stage2_two_channel needs `remove_unused_columns: false` in the "
                             "run YAML (the trainer reads each row's assistant_payload, SPEC §1.4/§3.3)")
        if str(ctx.swift_args.get("packing", "false")).strip().lower() in ("true", "1", "yes") \
                or getattr(self.template, "packing", False) or getattr(self.template, "padding_free", False):
            raise ValueError("packing / padding_free: true (ms-swift dataset packing) is not supported by "
                             "stage2_two_channel: the trainer packs after encoding; set `packing: false` and "
                             "`stage2_ab.packing: true` instead (SPEC §3.3)")
        self.s2 = s2
        self.schedule = {"b_ratio": s2.schedule.b_ratio} if s2.schedule.pattern is None \
            else {"pattern": tuple(s2.schedule.pattern)}
        self.field_order = cfg.custom.object_field_order
        self.packed = bool(getattr(s2, "packing", False))
        tokenizer = self.template.tokenizer
        weight = self.model.get_output_embeddings().weight
        size = int(getattr(weight, "ds_shape", weight.shape)[0])
        self.vocab = VocabView.from_tokenizer(tokenizer, vocab_size=size)
        if int(self.vocab.coord_ids.max()) >= size:
            raise ValueError(f"coord token id {int(self.vocab.coord_ids.max())} is outside the model's output vocab "
                             f"({size}); resize the checkpoint with `coordexp-swift expand-vocab`")
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.vocab.eos_id)
        self.manifest = resolve_pipeline(cfg)
        self.objective = ObjectivePipeline(self.manifest, settings_from_config(cfg))
        self.contexts = ("gt",) if s2.n_softctx_iter == 1 else ("gt", "self_context")
        self.step_metrics = StepMetrics()
        # Channel-B and the eval step: the objects shared with stage2_rollout_aligned (issue 10)
        self.channel_b = ChannelB.from_trainer(self, cfg, self.objective, self.vocab, packed=self.packed)
        self.rollout_evaluator = RolloutEvaluator(self.channel_b, cfg.rollout_matching.eval_detection,
                                                  output_dir=self.args.output_dir)
        self._rollout_eval_setup()
        self._b_micro = (-1, 0)
        if self.args.process_index == 0:
            path = write_resolved_config(ctx, self.args.output_dir)
            mpath, _ = write_manifest(self.args.output_dir, self.manifest, config_path=ctx.config_path,
                                      run_name=getattr(self.args, "run_name", None), seed=self.args.seed, log=logger)
            logger.info("coordexp config written to %s; pipeline manifest %s; schedule %s; n_softctx_iter=%d "
                        "softctx_grad_mode=%s coord_ctx_embed_mode=%s coord_decode_mode=%s stage2_ab.packing=%s",
                        path, mpath, self.schedule, s2.n_softctx_iter, s2.softctx_grad_mode,
                        s2.coord_ctx_embed_mode, s2.coord_decode_mode, self.packed)

    # --- harness ------------------------------------------------------------------------------------------------
    def _fix_gradient_checkpointing(self):
        """Under DeepSpeed, non-reentrant gradient checkpointing unless the run sets ``use_reentrant`` itself.

        ms-swift picks reentrant checkpointing under DeepSpeed (non-reentrant under DDP). A Channel-A step
        backpropagates through two forwards of the same layers (A1 and the final iteration); with reentrant
        checkpointing each forward's recomputation runs its own nested backward, so every parameter's gradient is
        accumulated, and DeepSpeed's post-accumulate hook fires, once per forward: ZeRO-2 then stops with "has already
        been reduced". Non-reentrant checkpointing accumulates once per backward (same gradient values)."""
        kwargs = dict(self.args.gradient_checkpointing_kwargs or {})
        if self.is_deepspeed_enabled and kwargs.get("use_reentrant") is None:
            self.args.gradient_checkpointing_kwargs = {**kwargs, "use_reentrant": False}
        return super()._fix_gradient_checkpointing()

    def _get_data_collator(self, args, template):
        return host_rows_collator

    def _prepare_inputs(self, inputs):
        """The micro-batch stays the encoded rows on the host (:class:`~.host_rows.HostRows`, which the prepared
        dataloader does not move); :meth:`_build_batch` moves what the forwards need in one go."""
        return inputs

    # --- one step -----------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = int(self.state.global_step)
        channel = channel_at(step, **self.schedule)
        if channel == "B":
            return self._channel_b_step(model, inputs)
        a = self._build_batch(model, inputs)
        t0 = time.perf_counter()
        logits = self._channel_a_forwards(model, a)
        forward_s = time.perf_counter() - t0
        result = self._compute_objective(a.batch, logits)
        metrics = dict(result.metrics)  # the step's one device-to-host transfer
        metrics["time/forward_s"] = forward_s
        metrics["stage2/b_ratio_realized"] = b_ratio_realized(step, **self.schedule)
        self.step_metrics.observe(metrics, weight=a.batch.num_segments,
                                  mode="train" if model.training else "eval")
        loss = result.total
        return (loss, {"logits": logits["gt"]}) if return_outputs else loss

    def _build_batch(self, model, inputs: Sequence[Mapping[str, Any]]) -> ChannelAInputs:
        """GT targets (``_encode_gt``) → host-built batch + forward inputs, before the first forward."""
        pairs = self._encode_gt(inputs)
        return build_channel_a_inputs(model, pairs, vocab=self.vocab, ce_table=self.objective.ce_table,
                                      contexts=self.contexts, packed=self.packed, pad_id=self.pad_id,
                                      max_length=self.template.max_length, device=self.args.device)

    def _encode_gt(self, inputs: Sequence[Mapping[str, Any]]):
        return encode_gt_targets(inputs, self.vocab, object_field_order=self.field_order)

    def _channel_a_forwards(self, model, a: ChannelAInputs) -> dict[str, torch.Tensor]:
        s2 = self.s2
        return channel_a_forwards(model, a, n_iter=s2.n_softctx_iter, grad_mode=s2.softctx_grad_mode,
                                  embed_mode=s2.coord_ctx_embed_mode, temperature=s2.softctx_temperature)

    def _compute_objective(self, batch: TeacherForcingBatch, logits: Mapping[str, torch.Tensor]) -> PipelineResult:
        return self.objective(batch.with_logits(**logits))

    def _channel_b_step(self, model, inputs):
        """One Channel-B micro-step through the shared :class:`ChannelB` (SPEC §3.6); failures raise (no reroute)."""
        step = int(self.state.global_step)
        last, idx = self._b_micro
        self._b_micro = (step, idx + 1 if last == step else 0)
        out = self.channel_b.step(model, inputs, step=step, micro_idx=self._b_micro[1])
        metrics = dict(out.metrics)
        metrics["stage2/b_ratio_realized"] = b_ratio_realized(step, **self.schedule)
        self.step_metrics.observe(metrics, weight=out.weight, mode="train" if model.training else "eval")
        return out.loss

    # --- logging --------------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Reduce the buffered micro-batch metrics over the window and the ranks (every rank, every call) and log
        them with ms-swift's own keys."""
        mode = "train" if self.model.training else "eval"
        logs.update(self.step_metrics.logs(mode))
        return super().log(logs, *args, **kwargs)
