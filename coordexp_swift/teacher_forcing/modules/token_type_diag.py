"""``token_type_diag`` diagnostics: per-context counts of supervised tokens (CE weight > 0) by type.

Keys ``token_type_diag/<context>/<type>_tokens_total`` (counters) for type in struct, desc, coord, eos, using the
run's CE table (``ctx.ce_table``), counted on the host when the batch was built (no device read). Read-only:
toggling it never changes the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from coordexp_swift.teacher_forcing.context import CONTEXTS, TeacherForcingContext
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule
from coordexp_swift.teacher_forcing.token_types import TYPE_NAMES

__all__ = ["DIAG_CONFIG_CLASSES", "EmptyDiagConfig", "TokenTypeDiagModule"]


@dataclass(frozen=True, kw_only=True)
class EmptyDiagConfig:
    """Diagnostics without config keys (``config: {}`` only)."""


#: variant -> config class of a diagnostics module without config keys (shared by the built-in diagnostics).
DIAG_CONFIG_CLASSES: Mapping[str, type] = {
    "stage2_two_channel": EmptyDiagConfig,
    "stage2_rollout_aligned": EmptyDiagConfig,
    "stage1": EmptyDiagConfig,
}


class TokenTypeDiagModule(PipelineModule):
    """``token_type_diag`` (diagnostics); see the module docstring."""

    name: ClassVar[str] = "token_type_diag"
    kind: ClassVar[str] = "diagnostics"
    config_classes: ClassVar[Mapping[str, type]] = DIAG_CONFIG_CLASSES

    @torch.no_grad()
    def __call__(self, ctx: TeacherForcingContext) -> ModuleOutput:
        metrics: dict[str, torch.Tensor | float] = {}
        for context in CONTEXTS:
            if context not in ctx.logits:
                continue
            counts = ctx.index(context).type_counts
            for name in TYPE_NAMES.values():
                if name == "none":
                    continue
                metrics[f"token_type_diag/{context}/{name}_tokens_total"] = float(counts[name])
        return ModuleOutput(metrics=metrics)
