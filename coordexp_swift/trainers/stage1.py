"""Stage-1 trainer: ms-swift's ``Seq2SeqTrainer`` with the coord-gated softCE + W1 objective (SPEC §2).

One forward per micro-batch. Token-mean denominators follow the ``num_items_in_batch`` convention of
ms-swift/transformers: when the framework counts items over the accumulation window (and across ranks with
``average_tokens_across_devices``), this trainer counts text targets and coord targets over the same window and
ranks (SUM all-reduce, issued by every rank even with no local coord tokens), divides each term's sum by its own
global count, and scales by ``world_size`` like the base CE. Otherwise each term is a micro-batch mean.
"""
from __future__ import annotations

import logging
from dataclasses import asdict

import torch
import torch.distributed as dist
from swift.trainers import Seq2SeqTrainer

from coordexp_swift.coord.vocab import coord_token_ids, id_to_bin_lookup
from coordexp_swift.losses.stage1 import (COORD_TERMS, Stage1Weights, base_ce_sum, coord_term_sums, stage1_masks,
                                          text_gate_sum, token_accuracies)
from coordexp_swift.run_context import current, write_resolved_config

logger = logging.getLogger("coordexp_swift")

# Keys ms-swift's collator adds that the model forward must not see.
NON_FORWARD_KEYS = ("labels", "compute_loss_func", "loss_scale", "text_position_ids", "channel")


class Stage1Trainer(Seq2SeqTrainer):
    """``custom.trainer_variant`` omitted. Logs ``loss``, ``token_acc``, ``coord_token_acc``, ``text_token_acc``,
    ``loss/coord_reg`` and ``loss/coord_reg/<term>`` / ``loss/coord_token_ce`` (each iff its weight > 0)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ctx = current()
        cfg = ctx.config.custom.coord_soft_ce_w1
        self.coord_enabled = bool(cfg.enabled)
        self.weights = Stage1Weights(**{k: getattr(cfg, k) for k in Stage1Weights.__dataclass_fields__})
        tokenizer = self.template.tokenizer
        self.coord_ids = coord_token_ids(tokenizer)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if int(self.coord_ids.max()) >= vocab:
            raise ValueError(f"coord token id {int(self.coord_ids.max())} is outside the model's output vocab ({vocab}); "
                             "resize the checkpoint with `coordexp-swift expand-vocab`")
        self.coord_lut = id_to_bin_lookup(self.coord_ids, max(vocab, len(tokenizer)))
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._window_counts: tuple[torch.Tensor, ...] | None = None  # (text, coord, text_gate) targets
        if self.args.process_index == 0:
            path = write_resolved_config(ctx, self.args.output_dir)
            logger.info("coordexp config written to %s; coord_soft_ce_w1=%s", path, asdict(self.weights))

    # --- denominators -------------------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples, device):
        """Also count (text, coord) targets over the accumulation window (and ranks, like the framework)."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        self._window_counts = None
        if num_items is None or not self.coord_enabled:
            return num_items
        counts = torch.zeros(3, dtype=torch.long, device=device)
        for batch in batch_samples:
            if "labels" not in batch:
                return num_items
            m = stage1_masks(batch["labels"].to(device), self.coord_lut.to(device), self.im_end_id)
            counts += torch.stack([m.text.sum(), m.coord.sum(), m.text_gate.sum()])
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self._window_counts = tuple(counts)
        return num_items

    # --- loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.coord_enabled:  # plain SFT: coord tokens stay in ms-swift's native CE
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        fwd = {k: v for k, v in inputs.items() if k not in NON_FORWARD_KEYS}
        outputs = model(**fwd)
        logits = outputs.logits
        if logits.shape[:2] != labels.shape[:2]:
            raise RuntimeError(f"logits {tuple(logits.shape[:2])} do not align with labels {tuple(labels.shape[:2])}")
        lut = self.coord_lut.to(labels.device)
        coord_ids = self.coord_ids.to(labels.device)
        masks = stage1_masks(labels, lut, self.im_end_id)
        w = self.weights

        use_window = self._window_counts is not None and num_items_in_batch is not None
        local = (masks.text.sum(), masks.coord.sum(), masks.text_gate.sum())
        n_text, n_coord, n_gate = self._window_counts if use_window else local

        ce_sum = base_ce_sum(logits, masks, include_coord=False)
        term_sums = coord_term_sums(logits, masks, coord_ids, w)
        sums = {log_key: (getattr(w, k), term_sums[name]) for k, (name, log_key) in COORD_TERMS.items()
                if getattr(w, k) > 0}
        text_sums = {}
        if w.text_gate_weight > 0:
            text_sums["loss/coord_reg/text_gate"] = (
                w.text_gate_weight, text_gate_sum(logits, masks, coord_ids, w.temperature))

        def contributions(den_coord, den_gate) -> dict[str, torch.Tensor]:
            dc = den_coord.clamp(min=1).to(logits.device, torch.float32)
            dg = den_gate.clamp(min=1).to(logits.device, torch.float32)
            out = {key: wt * s / dc for key, (wt, s) in sums.items()}
            out.update({key: wt * s / dg for key, (wt, s) in text_sums.items()})
            return out

        parts = contributions(n_coord, n_gate)
        loss = ce_sum / n_text.clamp(min=1).to(logits.device, torch.float32) + sum(
            parts.values(), torch.zeros((), device=logits.device))
        if use_window and self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
            loss = loss * self.accelerator.num_processes
        self._log_stage1(logits, masks, contributions(local[1], local[2]))
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _log_stage1(self, logits, masks, parts: dict[str, torch.Tensor]) -> None:
        """Micro-batch means (post-weighting contributions), so logged values do not depend on the window size."""
        metrics = self.custom_metrics["train" if self.model.training else "eval"]
        for key, val in parts.items():
            metrics[key].update(val.detach())
        reg = [v.detach() for k, v in parts.items() if k.startswith("loss/coord_reg/")]
        if reg:
            metrics["loss/coord_reg"].update(torch.stack(reg).sum())
        for key, (hit, n) in token_accuracies(logits, masks).items():
            if int(n) > 0:
                metrics[key].update(hit.float() / n)
