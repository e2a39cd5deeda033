"""Stage-2 Rollout-Aligned Teacher Forcing: ``custom.trainer_variant: stage2_rollout_aligned`` (SPEC §3.7).

Channel-B on every optimizer step, with exactly the parser, matcher, targets, packer, registry and eval of the
two-channel trainer's B steps: the step is the shared :class:`~coordexp_swift.trainers.channel_b.ChannelB` object
and the eval step the shared :class:`~coordexp_swift.trainers.rollout_eval.RolloutEvalMixin`. The objective is
``rollout_matching.pipeline`` (or the §6.3 rollout-aligned default), geometry decoded per
``rollout_matching.coord_decode_mode``; every module runs as channel ``"B"``. Harness as the two-channel trainer
(identity collator, ``remove_unused_columns: false``, ms-swift packing off; the Channel-B forward is unpacked here:
``rollout_matching`` has no packing key).

Init log (rank 0, ms-swift's logger): modules + checksum + config path + run name + seed (``write_manifest``), the
rollout backend / decode settings, and the resolved config written beside the outputs.
"""
from __future__ import annotations

import logging

from swift.trainers import Seq2SeqTrainer

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.run_context import current, write_resolved_config
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config
from coordexp_swift.teacher_forcing.manifest import resolve_pipeline, write_manifest
from coordexp_swift.trainers.channel_b import ChannelB
from coordexp_swift.trainers.host_rows import host_rows_collator
from coordexp_swift.trainers.rollout_eval import RolloutEvalMixin, RolloutEvaluator
from coordexp_swift.trainers.step_metrics import StepMetrics

__all__ = ["Stage2RolloutAlignedTrainer"]

logger = logging.getLogger("swift.coordexp_swift")


def check_harness(trainer, variant: str) -> None:
    """SPEC §3.3 harness: ``remove_unused_columns: false`` and ms-swift packing off (``ValueError`` naming the fix)."""
    if getattr(trainer.template, "remove_unused_columns", True):
        raise ValueError(f"custom.trainer_variant: {variant} needs `remove_unused_columns: false` in the run YAML "
                         "(the trainer reads each row's assistant_payload, SPEC §1.4/§3.3)")
    if getattr(trainer.template, "packing", False) or getattr(trainer.template, "padding_free", False):
        raise ValueError(f"packing / padding_free: true (ms-swift dataset packing) is not supported by {variant}: "
                         "the trainer builds its own rows after the rollouts; set `packing: false`")


def output_vocab(trainer) -> VocabView:
    weight = trainer.model.get_output_embeddings().weight
    size = int(getattr(weight, "ds_shape", weight.shape)[0])
    vocab = VocabView.from_tokenizer(trainer.template.tokenizer, vocab_size=size)
    if int(vocab.coord_ids.max()) >= size:
        raise ValueError(f"coord token id {int(vocab.coord_ids.max())} is outside the model's output vocab ({size}); "
                         "resize the checkpoint with `coordexp-swift expand-vocab`")
    return vocab


class Stage2RolloutAlignedTrainer(RolloutEvalMixin, Seq2SeqTrainer):
    """``compute_loss`` = one Channel-B micro-step (rollout → parse → match → FN append → one forward → pipeline).

    Logs on every step (they all ran a rollout): ``loss`` and its §8.2 contributions, the §8.1 rollout counters,
    ``rollout/fn_appended_per_sample_mean``, ``stage2/raw_rollouts_total``, ``time/{rollout_generate,
    rollout_parse_match,forward}_s``, ``packing/*``; eval: :mod:`~coordexp_swift.trainers.rollout_eval`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ctx = current()
        cfg = ctx.config
        if cfg.rollout_matching is None:
            raise ValueError("custom.trainer_variant: stage2_rollout_aligned needs a rollout_matching section")
        check_harness(self, "stage2_rollout_aligned")
        self.cfg = cfg
        self.vocab = output_vocab(self)
        self.manifest = resolve_pipeline(cfg)
        self.objective = ObjectivePipeline(self.manifest, settings_from_config(cfg))
        self.channel_b = ChannelB.from_trainer(self, cfg, self.objective, self.vocab, packed=False)
        self.rollout_evaluator = RolloutEvaluator(self.channel_b, cfg.rollout_matching.eval_detection,
                                                  output_dir=self.args.output_dir)
        self._rollout_eval_setup()
        self.step_metrics = StepMetrics()
        self._micro = (-1, 0)
        if self.args.process_index == 0:
            rm = cfg.rollout_matching
            path = write_resolved_config(ctx, self.args.output_dir)
            mpath, _ = write_manifest(self.args.output_dir, self.manifest, config_path=ctx.config_path,
                                      run_name=getattr(self.args, "run_name", None), seed=self.args.seed, log=logger)
            logger.info("coordexp config written to %s; pipeline manifest %s; stage2_rollout_aligned: Channel-B every "
                        "step (modules run as 'B'); rollout_backend=%s decode_mode=%s max_new_tokens=%d "
                        "decode_batch_size=%d coord_decode_mode=%s eval_detection.enabled=%s", path, mpath,
                        rm.rollout_backend, rm.decode_mode, rm.max_new_tokens, rm.decode_batch_size,
                        rm.coord_decode_mode, rm.eval_detection.enabled)

    def _get_data_collator(self, args, template):
        return host_rows_collator

    def _prepare_inputs(self, inputs):
        return inputs

    def _micro_idx(self, step: int) -> int:
        """Micro-step index within optimizer step ``step`` (0, 1, ... across the accumulation window)."""
        last, idx = self._micro
        self._micro = (step, idx + 1 if last == step else 0)
        return self._micro[1]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = int(self.state.global_step)
        out = self.channel_b.step(model, inputs, step=step, micro_idx=self._micro_idx(step))
        self.step_metrics.observe(out.metrics, weight=out.weight, mode="train" if model.training else "eval")
        return (out.loss, {"logits": out.logits}) if return_outputs else out.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Reduce the buffered micro-batch metrics (every rank, every call; SPEC §8.3) and log them."""
        mode = "train" if self.model.training else "eval"
        logs.update(self.step_metrics.logs(mode))
        return super().log(logs, *args, **kwargs)
