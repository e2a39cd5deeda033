"""Stage-1 trainer: ms-swift's ``Seq2SeqTrainer`` with the coord-gated softCE + W1 objective (SPEC §2).

One forward per micro-batch; the loss is ``teacher_forcing.stage1.Stage1Objective``: the registry's ``token_ce``
(+ ``coord_reg``) modules on the micro-batch's ``gt`` context (SPEC §2.5, §4). This class only orchestrates.

Denominators follow the ``num_items_in_batch`` convention of ms-swift/transformers: when the framework counts
items over the accumulation window (and across ranks with ``average_tokens_across_devices``), this trainer counts
the objective's means (CE targets, coord targets, text-gate targets) over the same window and ranks (SUM
all-reduce, issued by every rank even with no local coord tokens), the objective divides by those counts, and the
loss is scaled by ``world_size`` like the base CE. Otherwise each term is a micro-batch mean. Logged values are
micro-batch means either way.
"""
from __future__ import annotations

import logging
from dataclasses import asdict

import torch
import torch.distributed as dist
from swift.trainers import Seq2SeqTrainer

from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.run_context import current, write_resolved_config
from coordexp_swift.teacher_forcing.manifest import write_manifest
from coordexp_swift.teacher_forcing.stage1 import Stage1Objective, Stage1Step
from coordexp_swift.trainers.forwards import forward

logger = logging.getLogger("coordexp_swift")


class Stage1Trainer(Seq2SeqTrainer):
    """``custom.trainer_variant`` omitted. Logs ``loss``, ``token_acc``, ``coord_token_acc``, ``text_token_acc``,
    ``loss/struct_ce``, ``loss/desc_ce``, ``loss/coord_reg`` and ``loss/coord_reg/<term>`` / ``loss/coord_token_ce``
    (each coord term iff its weight > 0)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ctx = current()
        soft = ctx.config.custom.coord_soft_ce_w1
        tokenizer = self.template.tokenizer
        weight = self.model.get_output_embeddings().weight
        vocab = int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 partitions it: shape is (0,) there
        # The run's one vocabulary view (coord ids, id -> bin tables, per-id decoded pieces for the token-type
        # split, <|im_end|>), built once.
        self.vocab = VocabView.from_tokenizer(tokenizer, vocab_size=vocab)
        if int(self.vocab.coord_ids.max()) >= vocab:
            raise ValueError(f"coord token id {int(self.vocab.coord_ids.max())} is outside the model's output vocab "
                             f"({vocab}); resize the checkpoint with `coordexp-swift expand-vocab`")
        self.objective = Stage1Objective(soft, self.vocab)
        self._window_counts: torch.Tensor | None = None
        if self.args.process_index == 0:
            path = write_resolved_config(ctx, self.args.output_dir)
            logger.info("coordexp config written to %s; coord_soft_ce_w1=%s; objective modules: %s", path,
                        asdict(soft), ", ".join(self.objective.manifest.module_lines()))
            # the objective's identity, like every trainer: <output_dir>/pipeline_manifest.json + the init log line
            # (modules, checksum, config path, run name, seed) on ms-swift's logger (issue 9 item 5)
            write_manifest(self.args.output_dir, self.objective.manifest, config_path=ctx.config_path,
                           run_name=getattr(self.args, "run_name", None), seed=self.args.seed,
                           log=logging.getLogger("swift.coordexp_swift"))

    # --- denominators -------------------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples, device):
        """Also count the objective's means over the accumulation window (and ranks, like the framework)."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        self._window_counts = None
        if num_items is None or any("labels" not in b for b in batch_samples):
            return num_items
        counts = sum(self.objective.counts(b["labels"].to(device)) for b in batch_samples)
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self._window_counts = counts
        return num_items

    # --- loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        batch = self.objective.batch(labels, inputs.get("logits_to_keep"))  # host work, before the forward is queued
        # the preamble (trainers/forwards.py); ms-swift's logits_to_keep passes through: guard logits vs labels
        outputs = forward(model, inputs, sft_labels=labels)
        logits = outputs.logits
        use_window = self._window_counts is not None and num_items_in_batch is not None
        step = self.objective(logits, batch=batch, window_counts=self._window_counts if use_window else None)
        loss = step.loss
        if use_window and self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
            loss = loss * self.accelerator.num_processes
        self._log_stage1(step)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def _log_stage1(self, step: Stage1Step) -> None:
        """Loss parts and accuracy hits, moved to the host in ONE transfer (the step's only device read); an
        accuracy with no targets in this micro-batch (host count 0) is not observed (rather than logged as 0)."""
        metrics = self.custom_metrics["train" if self.model.training else "eval"]
        flat = torch.stack([v.float() for v in step.logged.values()]
                           + [hit.float() for hit, _ in step.accuracies.values()]).tolist()
        for key, val in zip(step.logged, flat):
            metrics[key].update(val)
        for i, (key, (_, n)) in enumerate(step.accuracies.items()):
            if n > 0:
                metrics[key].update(flat[len(step.logged) + i] / n)
