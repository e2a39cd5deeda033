"""Stage-1 trainer: ms-swift's ``Seq2SeqTrainer`` with the coord-gated softCE + W1 objective (SPEC §2).

One forward per micro-batch. Token-mean denominators follow the ``num_items_in_batch`` convention of
ms-swift/transformers: when the framework counts items over the accumulation window (and across ranks with
``average_tokens_across_devices``), this trainer counts text targets and coord targets over the same window and
ranks (SUM all-reduce, issued by every rank even with no local coord tokens), divides each term's sum by its own
global count, and scales by ``world_size`` like the base CE. Otherwise each term is a micro-batch mean.

The base CE is split by token type (SPEC §4.1, the registry's ``partition_token_types``) into ``loss/struct_ce``
(struct + ``<|im_end|>``) and ``loss/desc_ce``, which share its denominator; with the coord loss disabled the coord
targets stay in the base CE and their part is logged as ``loss/coord_token_ce`` (plain SFT, SPEC §2.5).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.distributed as dist
from swift.trainers import Seq2SeqTrainer

from coordexp_swift.coord.vocab import coord_token_ids, id_to_bin_lookup
from coordexp_swift.losses.stage1 import (COORD_TERMS, Stage1Masks, Stage1Weights, coord_term_sums, per_token_ce,
                                          stage1_masks, text_gate_sum, token_accuracies)
from coordexp_swift.run_context import current, write_resolved_config
from coordexp_swift.teacher_forcing.token_types import DESC, offsets_from_pieces, partition_token_types, scan_coordjson

logger = logging.getLogger("coordexp_swift")

# Keys ms-swift's collator adds that the model forward must not see.
NON_FORWARD_KEYS = ("labels", "compute_loss_func", "loss_scale", "text_position_ids", "channel")


def desc_target_mask(masks: Stage1Masks, pieces: Sequence[str], coord_ids: torch.Tensor,
                     im_end_id: int) -> torch.Tensor:
    """[B,T-1] bool: supervised targets overlapping a desc value (SPEC §4.1), computed per contiguous supervised span
    (so per segment on packed rows). ``pieces[id]`` is the decoded text of one token id."""
    out = torch.zeros_like(masks.target, dtype=torch.bool)
    sup = masks.text | masks.coord
    for b in range(sup.shape[0]):
        pos = torch.nonzero(sup[b]).reshape(-1)
        if pos.numel() == 0:
            continue
        breaks = torch.nonzero(pos[1:] - pos[:-1] > 1).reshape(-1) + 1
        for span in torch.tensor_split(pos, breaks.tolist()):
            ids = masks.target[b, span].tolist()
            span_pieces = [pieces[i] for i in ids]
            types = partition_token_types(ids, offsets_from_pieces(span_pieces),
                                          scan_coordjson("".join(span_pieces)).desc_value_spans, coord_ids, im_end_id)
            out[b, span[types.to(span.device) == DESC]] = True
    return out


class Stage1Trainer(Seq2SeqTrainer):
    """``custom.trainer_variant`` omitted. Logs ``loss``, ``token_acc``, ``coord_token_acc``, ``text_token_acc``,
    ``loss/struct_ce``, ``loss/desc_ce``, ``loss/coord_reg`` and ``loss/coord_reg/<term>`` / ``loss/coord_token_ce``
    (each coord term iff its weight > 0)."""

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
        # Per-id decoded text, for the token-type split of targets (computed once; byte pieces of multi-byte
        # characters decode to U+FFFD, which keeps JSON structure and desc spans intact).
        self._pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                              clean_up_tokenization_spaces=False)
        self._window_counts: tuple[torch.Tensor, ...] | None = None  # (text, coord, text_gate) targets
        if self.args.process_index == 0:
            path = write_resolved_config(ctx, self.args.output_dir)
            logger.info("coordexp config written to %s; coord_soft_ce_w1=%s", path, asdict(self.weights))

    # --- denominators -------------------------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples, device):
        """Also count (text, coord, text-gate) targets over the accumulation window (and ranks, like the framework)."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        self._window_counts = None
        if num_items is None or any("labels" not in b for b in batch_samples):
            return num_items
        counts = torch.zeros(3, dtype=torch.long, device=device)
        for batch in batch_samples:
            m = stage1_masks(batch["labels"].to(device), self.coord_lut.to(device), self.im_end_id)
            counts += torch.stack([m.text.sum(), m.coord.sum(), m.text_gate.sum()])
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self._window_counts = tuple(counts)
        return num_items

    # --- loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        fwd = {k: v for k, v in inputs.items() if k not in NON_FORWARD_KEYS}
        outputs = model(**fwd)
        logits = outputs.logits
        if logits.shape[:2] != labels.shape[:2]:
            raise RuntimeError(f"logits {tuple(logits.shape[:2])} do not align with labels {tuple(labels.shape[:2])}")
        masks = stage1_masks(labels, self.coord_lut.to(labels.device), self.im_end_id)
        sums = self._term_sums(logits, masks)
        local = (masks.text.sum(), masks.coord.sum(), masks.text_gate.sum())
        use_window = self._window_counts is not None and num_items_in_batch is not None
        parts = self._divide(sums, self._window_counts if use_window else local)
        loss = sum(parts.values(), torch.zeros((), device=logits.device))
        if use_window and self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
            loss = loss * self.accelerator.num_processes
        with torch.no_grad():  # logged values are micro-batch means, whatever the window
            self._log_stage1(logits, masks, self._divide(sums, local) if use_window else parts)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def _term_sums(self, logits, masks: Stage1Masks) -> dict[str, tuple[torch.Tensor, str]]:
        """Weighted sums of every emitted term (SPEC §8.2 names) and the count each is a mean over
        (``"ce"``: base-CE targets, ``"coord"``: C, ``"gate"``: text-gate targets)."""
        w = self.weights
        ce = per_token_ce(logits, masks, include_coord=not self.coord_enabled)
        desc = desc_target_mask(masks, self._pieces, self.coord_ids, self.im_end_id)
        sums = {"loss/struct_ce": (ce[masks.text & ~desc].sum(), "ce"), "loss/desc_ce": (ce[desc].sum(), "ce")}
        if not self.coord_enabled:
            sums["loss/coord_token_ce"] = (ce[masks.coord].sum(), "ce")
            return sums
        coord_ids = self.coord_ids.to(logits.device)
        term_sums = coord_term_sums(logits, masks, coord_ids, w)
        for k, (name, log_key) in COORD_TERMS.items():
            if getattr(w, k) > 0:
                sums[log_key] = (getattr(w, k) * term_sums[name], "coord")
        if w.text_gate_weight > 0:
            sums["loss/coord_reg/text_gate"] = (
                w.text_gate_weight * text_gate_sum(logits, masks, coord_ids, w.temperature), "gate")
        return sums

    def _divide(self, sums: dict[str, tuple[torch.Tensor, str]], counts) -> dict[str, torch.Tensor]:
        """Contributions for token counts ``(text, coord, text_gate)``; base CE over text (+ coord when disabled)."""
        n_text, n_coord, n_gate = (c.to(torch.float32) for c in counts)
        den = {"ce": n_text if self.coord_enabled else n_text + n_coord, "coord": n_coord, "gate": n_gate}
        return {key: s / den[kind].clamp(min=1).to(s.device) for key, (s, kind) in sums.items()}

    def _log_stage1(self, logits, masks: Stage1Masks, parts: dict[str, torch.Tensor]) -> None:
        """Loss parts, their ``loss/coord_reg`` sum and the accuracies, moved to the host in ONE transfer."""
        metrics = self.custom_metrics["train" if self.model.training else "eval"]
        reg = [v for k, v in parts.items() if k.startswith("loss/coord_reg/")]
        values = dict(parts, **({"loss/coord_reg": torch.stack(reg).sum()} if reg else {}))
        accs = token_accuracies(logits, masks)
        flat = torch.stack([v.detach().float() for v in values.values()]
                           + [x.float() for hit_n in accs.values() for x in hit_n]).tolist()
        for key, val in zip(values, flat):
            metrics[key].update(val)
        for i, key in enumerate(accs):
            hit, n = flat[len(values) + 2 * i: len(values) + 2 * i + 2]
            if n > 0:  # no coord targets in this micro-batch: the key is not observed, not logged as 0
                metrics[key].update(hit / n)
