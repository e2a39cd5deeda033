"""``coord_diag`` diagnostics (SPEC §8.2): calibration of the coord distribution at supervised slots, per context.

Values are 0-d tensors (moved to the host with the step's other logged values), counters host numbers.
For every context c with logits and ≥ 1 slot (``ctx.coord_slots(c)``), under ``torch.no_grad`` with
``P = softmax(z[pos − 1, coord_ids])`` and GT bin b:
``coord_diag/<c>/coord_tokens_total`` (slots, counter), ``acc_top5_mean`` (b among the 5 largest P),
``p_gt_mean`` (P(b)), ``expected_bin_mae_mean`` (|E_P[k] − b| in bins), ``w1_to_delta_mean`` (W1(P, δ_b), normalised),
``coord_vocab_mass_mean`` (full-vocab probability of the coord vocabulary), ``st_decode_gap_mean``
(|x_hard − x_exp|, normalised); and for ``self_context`` with ``ctx.coord_embeddings`` set,
``st_embed_gap_mean`` (‖e_hard − e_soft‖/‖e_hard‖ with ``P = softmax(s/τ_A)``).
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.teacher_forcing import st
from coordexp_swift.teacher_forcing.context import CONTEXTS, TeacherForcingContext
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule
from coordexp_swift.teacher_forcing.modules.token_type_diag import DIAG_CONFIG_CLASSES

__all__ = ["CoordDiagModule", "coord_slot_stats"]

_CHUNK = 1024


def coord_slot_stats(coord_logits: torch.Tensor, lse_full: torch.Tensor, target_bins: torch.Tensor,
                     ) -> dict[str, torch.Tensor]:
    """Per-slot statistics ``[N]`` (fp32) from coord-slice logits ``[N, NUM_BINS]``, full-vocab LSE ``[N]`` and GT
    bins ``[N]``: ``acc_top5``, ``p_gt``, ``expected_bin_mae`` (bins), ``w1_to_delta``, ``coord_vocab_mass``,
    ``st_decode_gap`` (normalised)."""
    s = coord_logits.float()
    logp = torch.log_softmax(s, dim=-1)
    p = logp.exp()
    b = target_bins.long()
    grid = torch.arange(NUM_BINS, device=s.device, dtype=torch.float32)
    e_bin = (p * grid).sum(-1)
    top5 = torch.topk(s, k=5, dim=-1).indices
    delta_cdf = (grid[None, :] >= b[:, None].float()).float()
    x_exp = st.decode(s, "exp")
    x_hard = st.hard_index(s).float() / MAX_BIN
    return {
        "acc_top5": (top5 == b[:, None]).any(-1).float(),
        "p_gt": p.gather(-1, b[:, None]).squeeze(-1),
        "expected_bin_mae": (e_bin - b.float()).abs(),
        "w1_to_delta": (p.cumsum(-1) - delta_cdf).abs().sum(-1) / MAX_BIN,
        "coord_vocab_mass": torch.exp(torch.logsumexp(s, dim=-1) - lse_full.float()).clamp(max=1.0),
        "st_decode_gap": (x_hard - x_exp).abs(),
    }


class CoordDiagModule(PipelineModule):
    """``coord_diag`` (diagnostics); see the module docstring."""

    name: ClassVar[str] = "coord_diag"
    kind: ClassVar[str] = "diagnostics"
    config_classes: ClassVar[Mapping[str, type]] = DIAG_CONFIG_CLASSES

    @torch.no_grad()
    def __call__(self, ctx: TeacherForcingContext) -> ModuleOutput:
        metrics: dict[str, torch.Tensor | float] = {}
        for context in CONTEXTS:
            if context not in ctx.logits:
                continue
            idx = ctx.index(context)
            prefix = f"coord_diag/{context}"
            metrics[f"{prefix}/coord_tokens_total"] = float(idx.n_slots)
            if idx.n_slots == 0:
                continue
            flat = idx.slot_flat
            s = ctx.coord_logits_flat(context, flat)
            lse = torch.cat([torch.logsumexp(ctx.rows_flat(context, flat[i:i + _CHUNK]).float(), dim=-1)
                             for i in range(0, idx.n_slots, _CHUNK)])
            stats = coord_slot_stats(s, lse, idx.slot_bins)
            for name, v in stats.items():
                metrics[f"{prefix}/{name}_mean"] = v.mean()
            if context == "self_context" and ctx.coord_embeddings is not None:
                e_c = ctx.coord_embeddings.float()
                tau = self.settings.softctx_temperature
                e_soft = st.embed(s, e_c, "soft", tau)
                e_hard = st.embed(s, e_c, "hard", tau)
                gap = (e_hard - e_soft).norm(dim=-1) / e_hard.norm(dim=-1).clamp_min(1e-12)
                metrics[f"{prefix}/st_embed_gap_mean"] = gap.mean()
        return ModuleOutput(metrics=metrics)
