"""``coord_reg`` objective (SPEC §2.3, §4.2): regularisers on the coord-vocabulary distribution at supervised slots.

Slots come from the geometry context (``ctx.coord_slots(ctx.geo_context)``: box-group slots with their GT bins;
every coord target for ``gt``). With ``P = softmax(z[pos − 1, coord_ids]/τ)`` and GT bin b (g = b/MAX_BIN):
``soft_ce`` (Gaussian target σ, optional truncation), ``w1`` (CDF distance / MAX_BIN), ``coord_gate``
(−log p_coord), ``entropy`` (−Σ P log P), ``el1`` (Σ P(k)·|k/MAX_BIN − g|), ``ehuber`` (Σ P(k)·Huber_δ) — each a
mean over slots — and ``text_gate`` (mean over anchor-context positions with CE weight > 0, excluding coord and
eos). Means use ``ctx.mean("coord" | "text_gate", …)``: local unless the caller gave global denominators.
``coord_ce`` (hard CE on the coord slice) is reported as its own component ``loss/coord_token_ce``; the other
sub-terms sum to ``loss/coord_reg``. In ``self_context`` softCE uses ``self_context_soft_ce_weight``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping, Optional

import torch

from coordexp_swift.config.strict import bounded
from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.losses.coord_dist import coord_terms, expected_huber, expected_l1, text_gate
from coordexp_swift.teacher_forcing.context import TeacherForcingContext
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule, plain_zero

__all__ = ["COORD_REG_TERMS", "CoordRegConfig", "CoordRegModule", "CoordRegTwoChannelConfig"]


@dataclass(frozen=True, kw_only=True)
class CoordRegConfig:
    """``coord_reg`` config of ``stage2_rollout_aligned`` (and Stage-1) (SPEC §6.1). Weights ≥ 0.

      coord_ce_weight, soft_ce_weight, w1_weight, coord_gate_weight, text_gate_weight: sub-term weights.
      temperature: τ > 0 on the coord slice and full logits; target_sigma: σ > 0 in bins;
      target_truncate: ``None`` or kernel radius in bins (int ≥ 0).
    """

    coord_ce_weight: float = bounded(0.0, ge=0)
    soft_ce_weight: float = bounded(0.0, ge=0)
    w1_weight: float = bounded(0.0, ge=0)
    coord_gate_weight: float = bounded(0.0, ge=0)
    text_gate_weight: float = bounded(0.0, ge=0)
    temperature: float = bounded(1.0, gt=0)
    target_sigma: float = bounded(2.0, gt=0)
    target_truncate: Optional[int] = bounded(None, ge=0)


@dataclass(frozen=True, kw_only=True)
class CoordRegTwoChannelConfig(CoordRegConfig):
    """``coord_reg`` config of ``stage2_two_channel``: the rollout-aligned keys plus

      self_context_soft_ce_weight: softCE weight in context ``self_context`` (Channel-A final iteration).
      coord_el1_weight, coord_ehuber_weight, coord_entropy_weight: expectation-L1 / -Huber / entropy weights.
      coord_huber_delta: δ > 0 of the expected Huber (normalised units).
    """

    self_context_soft_ce_weight: float = bounded(0.05, ge=0)
    coord_el1_weight: float = bounded(0.0, ge=0)
    coord_ehuber_weight: float = bounded(0.0, ge=0)
    coord_entropy_weight: float = bounded(0.0, ge=0)
    coord_huber_delta: float = bounded(0.001, gt=0)


#: sub-term -> (config weight field, §8.2 key). ``soft_ce`` switches field in ``self_context``.
COORD_REG_TERMS: Mapping[str, tuple[str, str]] = {
    "coord_ce": ("coord_ce_weight", "loss/coord_token_ce"),
    "soft_ce": ("soft_ce_weight", "loss/coord_reg/soft_ce"),
    "w1": ("w1_weight", "loss/coord_reg/w1"),
    "coord_gate": ("coord_gate_weight", "loss/coord_reg/coord_gate"),
    "text_gate": ("text_gate_weight", "loss/coord_reg/text_gate"),
    "entropy": ("coord_entropy_weight", "loss/coord_reg/entropy"),
    "el1": ("coord_el1_weight", "loss/coord_reg/el1"),
    "ehuber": ("coord_ehuber_weight", "loss/coord_reg/ehuber"),
}
_FUSED = frozenset({"coord_ce", "soft_ce", "w1", "coord_gate", "entropy"})


class CoordRegModule(PipelineModule):
    """``coord_reg`` (objective); see the module docstring."""

    name: ClassVar[str] = "coord_reg"
    kind: ClassVar[str] = "objective"
    config_classes: ClassVar[Mapping[str, type]] = {
        "stage2_two_channel": CoordRegTwoChannelConfig,
        "stage2_rollout_aligned": CoordRegConfig,
        "stage1": CoordRegConfig,
    }

    def weights(self, context: str) -> dict[str, float]:
        """Effective sub-term weights (> 0 only) in ``context``."""
        out = {}
        for term, (field_name, _) in COORD_REG_TERMS.items():
            if term == "soft_ce" and context == "self_context":
                field_name = "self_context_soft_ce_weight"
            w = float(getattr(self.config, field_name, 0.0))
            if w > 0:
                out[term] = w
        return out

    def __call__(self, ctx: TeacherForcingContext) -> ModuleOutput:
        context = ctx.geo_context
        weights = self.weights(context)
        zero = plain_zero(ctx.logits[context])
        if not weights:
            return ModuleOutput(loss=zero)
        values = self._slot_terms(ctx, context, weights, zero)
        if "text_gate" in weights:
            values["text_gate"] = self._text_gate(ctx, zero)
        terms: dict[str, torch.Tensor] = {}
        breakdown: dict[str, torch.Tensor] = {}
        denominators: dict[str, str] = {}
        reg = zero
        for term, w in weights.items():
            value = w * values[term]
            key = COORD_REG_TERMS[term][1]
            denominators[key] = "text_gate" if term == "text_gate" else "coord"
            if term == "coord_ce":
                terms[key] = value
            else:
                breakdown[key] = value
                reg = reg + value
        if breakdown:
            terms["loss/coord_reg"] = reg
        total = zero
        for v in terms.values():
            total = total + v
        return ModuleOutput(loss=total, terms=terms, breakdown=breakdown, denominators=denominators)

    def _slot_terms(self, ctx: TeacherForcingContext, context: str, weights: Mapping[str, float],
                    zero: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        slot_terms = {t for t in weights if t != "text_gate"}
        if not slot_terms:
            return {}
        slots = ctx.coord_slots(context)
        if len(slots) == 0:
            return {t: zero for t in slot_terms}
        out: dict[str, torch.Tensor] = {}
        fused = slot_terms & _FUSED
        if fused:
            gathered = ctx.gathered(context)
            if "coord_gate" in fused:  # full rows at the slots: from the shared gather when the executor asked
                rows = gathered.slot_rows
                if rows is None:
                    rows = ctx.rows_flat(context, ctx.index(context).slot_flat)
                ids = ctx.coord_ids
            else:  # the coord slice alone (identity ids)
                rows = gathered.slot_coord
                ids = torch.arange(NUM_BINS, device=rows.device)
            got = coord_terms(rows, ids, slots.target_bins, temperature=cfg.temperature, sigma=cfg.target_sigma,
                              truncate=cfg.target_truncate, want=frozenset(fused))
            out.update({t: ctx.mean("coord", v.sum(), v.numel(), context) for t, v in got.items()})
        if {"el1", "ehuber"} & slot_terms:
            s = ctx.gathered(context).slot_coord
            g = slots.target_bins.to(s.device, torch.float32) / MAX_BIN
            if "el1" in slot_terms:
                out["el1"] = ctx.mean("coord", expected_l1(s, g, cfg.temperature).sum(), g.numel(), context)
            if "ehuber" in slot_terms:
                out["ehuber"] = ctx.mean("coord", expected_huber(s, g, cfg.coord_huber_delta, cfg.temperature).sum(),
                                         g.numel(), context)
        return out

    def reads_slot_rows(self, ctx: TeacherForcingContext) -> bool:
        return "coord_gate" in self.weights(ctx.geo_context)

    def _text_gate(self, ctx: TeacherForcingContext, zero: torch.Tensor) -> torch.Tensor:
        """Rows with CE weight > 0 (the anchor context's shared gather) whose target is neither coord nor eos
        (selected by the batch's host-built ``gate_sel``)."""
        anchor = ctx.anchor_context
        idx = ctx.index(anchor)
        if idx.n_gate == 0:
            return zero
        rows = ctx.gathered(anchor).rows
        if idx.n_gate != idx.n_ce:
            rows = rows.index_select(0, idx.gate_sel)
        return ctx.mean("text_gate", text_gate(rows, ctx.coord_ids, self.config.temperature).sum(), idx.n_gate,
                        anchor)
