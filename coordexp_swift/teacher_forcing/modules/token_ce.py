"""``token_ce`` objective (SPEC §4.2-4.4): weighted token CE per context, split into struct / desc / coord parts.

Per context c: ``token_ce_c = scale_c · Σ_t w_t·CE_t / max(Σ_t w_t, 1e-6)`` over positions with ``w_t > 0`` (0 if
none; ``Σ_t w_t`` is replaced by the caller's global count when the context carries ``denominators["token_ce"]``),
``CE_t = −log softmax(z[t−1])[id_t]`` (full vocabulary, fp32, sanitised logits; ``losses.token_ce.token_ce_rows``,
blocked, no fp32 ``[N, V]`` copy). The CE rows, targets and per-part weights come from the batch's host-built
index (``ctx.index(context)``). The parts share the denominator:
``loss/struct_ce`` (struct + eos), ``loss/desc_ce``, ``loss/coord_token_ce`` (Stage-1 with the coord loss off); the
``self_context`` stabilizer adds to ``loss/struct_ce`` and is broken out as ``loss/struct_ce/self_context``.
A key is emitted iff its effective weight is > 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from coordexp_swift.config.strict import bounded
from coordexp_swift.losses.token_ce import token_ce_rows
from coordexp_swift.teacher_forcing.context import CONTEXTS, CEWeightTable, ContextIndex, TeacherForcingContext
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule, plain_zero

__all__ = ["Stage1TokenCEConfig", "TokenCEConfig", "TokenCEModule", "TokenCETwoChannelConfig"]

_PART_KEYS = {"struct": "loss/struct_ce", "desc": "loss/desc_ce", "coord": "loss/coord_token_ce"}


@dataclass(frozen=True, kw_only=True)
class TokenCEConfig:
    """``token_ce`` config of ``stage2_rollout_aligned`` (SPEC §6.1): rollout ablation weights.

      rollout_fn_desc_weight: desc CE weight in the FN tail (≥ 0).
      rollout_matched_prefix_struct_weight: struct CE weight on matched prefix records (≥ 0; times m).
      rollout_drop_invalid_struct_ce_multiplier: m in [1, 4] for samples with dropped invalid records.
    """

    rollout_fn_desc_weight: float = bounded(1.0, ge=0)
    rollout_matched_prefix_struct_weight: float = bounded(1.0, ge=0)
    rollout_drop_invalid_struct_ce_multiplier: float = bounded(1.0, ge=1, le=4)

    def table(self) -> CEWeightTable:
        """The §4.3 weight table of this config."""
        return CEWeightTable(
            desc_ce_weight=getattr(self, "desc_ce_weight", 1.0),
            self_context_struct_ce_weight=getattr(self, "self_context_struct_ce_weight", 0.0),
            rollout_fn_desc_weight=self.rollout_fn_desc_weight,
            rollout_matched_prefix_struct_weight=self.rollout_matched_prefix_struct_weight,
            rollout_drop_invalid_struct_ce_multiplier=self.rollout_drop_invalid_struct_ce_multiplier,
        )


@dataclass(frozen=True, kw_only=True)
class TokenCETwoChannelConfig(TokenCEConfig):
    """``token_ce`` config of ``stage2_two_channel``: the rollout weights plus

      desc_ce_weight: desc CE weight in context ``gt`` (Channel-A A1) (≥ 0).
      self_context_struct_ce_weight: λ_fmt of the self-context struct/eos stabilizer (≥ 0).
    """

    desc_ce_weight: float = bounded(1.0, ge=0)
    self_context_struct_ce_weight: float = bounded(0.1, ge=0)


@dataclass(frozen=True, kw_only=True)
class Stage1TokenCEConfig:
    """``token_ce`` as used by Stage-1 (context ``gt`` only; not a pipeline config, never checksummed).

      desc_ce_weight: desc CE weight (Stage-1: 1.0).
      coord_token_ce_weight: 1.0 when the coord loss is off (coord tokens stay in the base CE), else 0.0.
    """

    desc_ce_weight: float = bounded(1.0, ge=0)
    coord_token_ce_weight: float = bounded(0.0, ge=0)

    def table(self) -> CEWeightTable:
        """The §4.3 weight table of this config."""
        return CEWeightTable(desc_ce_weight=self.desc_ce_weight, coord_token_ce_weight=self.coord_token_ce_weight)


def _parts(ctx: TeacherForcingContext, context: str, z: torch.Tensor, idx: ContextIndex) -> dict[str, torch.Tensor]:
    """Parts ``{struct, desc, coord}`` of ``Σ w·CE / den`` (unscaled) over the CE rows of ``idx``, whose predicting
    logits rows are ``z [N, V]``; ``den`` = ``ctx.mean("token_ce", …)`` (Σ w of these positions unless the caller
    gave a global one)."""
    if idx.n_ce == 0:
        zero = plain_zero(z)
        return {k: zero for k in _PART_KEYS}
    wce = idx.ce_part_w * token_ce_rows(z, idx.ce_target)  # [3, N]: struct+eos, desc, coord
    sums = wce.sum(-1)
    return {k: ctx.mean("token_ce", sums[i], idx.ce_w_sum, context) for i, k in enumerate(_PART_KEYS)}


def _context_parts(ctx: TeacherForcingContext, context: str, table: CEWeightTable) -> dict[str, torch.Tensor]:
    """CE parts of ``context`` under ``table``: from the context's cached fused gather when ``table`` is the run's
    table, else from the batch's index for ``table`` (built on the host on first use)."""
    if table == ctx.ce_table:
        return _parts(ctx, context, ctx.gathered(context).rows, ctx.index(context))
    idx = ctx.batch.index_for(context, table)
    return _parts(ctx, context, ctx.rows_flat(context, idx.ce_flat), idx)


class TokenCEModule(PipelineModule):
    """``token_ce`` (objective); see the module docstring."""

    name: ClassVar[str] = "token_ce"
    kind: ClassVar[str] = "objective"
    config_classes: ClassVar[Mapping[str, type]] = {
        "stage2_two_channel": TokenCETwoChannelConfig,
        "stage2_rollout_aligned": TokenCEConfig,
        "stage1": Stage1TokenCEConfig,
    }

    def __call__(self, ctx: TeacherForcingContext) -> ModuleOutput:
        table = self.config.table()
        terms: dict[str, torch.Tensor] = {}
        breakdown: dict[str, torch.Tensor] = {}
        denominators: dict[str, str] = {}
        total = plain_zero(next(iter(ctx.logits.values())))
        for context in CONTEXTS:
            if context not in ctx.logits:
                continue
            comp = table.component_weights(context)
            scale = ctx.batch.index_for(context, table).scale
            if scale <= 0 or all(v <= 0 for v in comp.values()):
                continue
            parts = _context_parts(ctx, context, table)
            for part, value in parts.items():
                if comp[part] <= 0:
                    continue
                value = value * scale
                key = _PART_KEYS[part]
                terms[key] = terms[key] + value if key in terms else value
                denominators[key] = "token_ce"
                total = total + value
                if context == "self_context":
                    breakdown[f"{key}/self_context"] = value
                    denominators[f"{key}/self_context"] = "token_ce"
        return ModuleOutput(loss=total, terms=terms, breakdown=breakdown, denominators=denominators)
