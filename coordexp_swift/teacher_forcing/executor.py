"""Pipeline executor (SPEC §6.1): runs a manifest's modules on a ``TeacherForcingContext``.

Rules: list order; disabled entries and entries whose ``channels`` exclude ``ctx.channel`` are skipped;
``total = Σ weight · loss_module`` over objective modules; every ``loss/*`` key is a post-weighting value
(``weight ·`` the module's unweighted term), the §8.2 contributions sum to ``total``, and a key is emitted iff its
effective weight is > 0 (entries with weight 0 emit nothing). Objective modules fail fast (exceptions propagate).
Diagnostics are best-effort: on the first exception of a diagnostics module, one warning is logged,
``diag/<name>_failed_count`` = 1 is emitted for that step, and the module is disabled for the rest of the run.
Modules issue no collectives; the executor issues none either. Nothing here reads the device: values (losses and
diagnostics) stay tensors until :attr:`PipelineResult.metrics` moves them to the host in one transfer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import torch

from coordexp_swift.teacher_forcing.context import CEWeightTable, TeacherForcingContext
from coordexp_swift.teacher_forcing.modules.base import PipelineModule, RunSettings, graph_zero
from coordexp_swift.teacher_forcing.manifest import PipelineEntry, PipelineManifest
from coordexp_swift.teacher_forcing.registry import ModuleSpec, module_registry

__all__ = ["CONTRIBUTION_KEYS", "ObjectivePipeline", "PipelineResult", "settings_from_config"]

logger = logging.getLogger(__name__)

#: §8.2 contribution keys (post-weighting; sum to ``loss``).
CONTRIBUTION_KEYS: tuple[str, ...] = ("loss/struct_ce", "loss/desc_ce", "loss/coord_token_ce", "loss/coord_reg",
                                      "loss/geo")


@dataclass(frozen=True)
class PipelineResult:
    """``total``: scalar loss (graph-connected); ``terms``: post-weighting contribution tensors (sum to ``total``);
    ``breakdown``: post-weighting breakdown tensors; ``diagnostics``: diagnostics values (0-d tensors, or host numbers
    such as counters) and failure counters; ``denominators``: key -> mean name (``ModuleOutput.denominators``).
    ``metrics`` (computed on first access, in one device-to-host transfer): every emitted key -> Python float."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    breakdown: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor | float] = field(default_factory=dict)
    denominators: dict[str, str] = field(default_factory=dict)

    @cached_property
    def metrics(self) -> dict[str, float]:
        emitted = {**self.terms, **self.breakdown,
                   **{k: v for k, v in self.diagnostics.items() if isinstance(v, torch.Tensor)}}
        values = torch.stack([v.detach().float().reshape(()).to(self.total.device)
                              for v in emitted.values()]).tolist() if emitted else []
        plain = {k: float(v) for k, v in self.diagnostics.items() if not isinstance(v, torch.Tensor)}
        return {**dict(zip(emitted, values)), **plain}


def settings_from_config(cfg: object) -> RunSettings:
    """``RunSettings`` of a loaded ``CoordExpConfig`` (ST modes per variant, §5)."""
    variant = cfg.variant  # type: ignore[attr-defined]
    s2 = getattr(cfg, "stage2_ab", None)
    rm = getattr(cfg, "rollout_matching", None)
    if s2 is not None:
        return RunSettings(variant=variant, coord_decode_mode=s2.coord_decode_mode,
                           coord_ctx_embed_mode=s2.coord_ctx_embed_mode, softctx_temperature=s2.softctx_temperature)
    if rm is not None:
        return RunSettings(variant=variant, coord_decode_mode=rm.coord_decode_mode)
    return RunSettings(variant=variant)


class ObjectivePipeline:
    """Instantiated manifest; call it with a context to get a :class:`PipelineResult`."""

    def __init__(self, manifest: PipelineManifest, settings: Optional[RunSettings] = None,
                 registry: Optional[dict[str, ModuleSpec]] = None) -> None:
        self.manifest = manifest
        self.settings = settings or RunSettings(variant=manifest.variant)
        reg = module_registry() if registry is None else registry
        self._objective = [(e, reg[e.name].cls(e.config, self.settings)) for e in manifest.objective]
        self._diagnostics = [(e, reg[e.name].cls(e.config, self.settings)) for e in manifest.diagnostics]
        self.disabled_diagnostics: set[str] = set()
        token_ce = manifest.entry("token_ce")
        self.ce_table: CEWeightTable = token_ce.config.table() if token_ce is not None else CEWeightTable()

    @staticmethod
    def _runs(entry: PipelineEntry, channel: str) -> bool:
        return entry.enabled and channel in entry.channels

    def __call__(self, ctx: TeacherForcingContext) -> PipelineResult:
        runnable = [(e, m) for e, m in self._objective if self._runs(e, ctx.channel) and e.weight > 0]
        ctx = ctx.prepared(self.ce_table, gather_slot_rows=any(m.reads_slot_rows(ctx) for _, m in runnable))
        total = torch.zeros((), dtype=torch.float32, device=ctx.target_ids.device)
        terms: dict[str, torch.Tensor] = {}
        breakdown: dict[str, torch.Tensor] = {}
        denominators: dict[str, str] = {}
        for entry, module in runnable:
            out = module(ctx)
            if out.loss is None:
                raise RuntimeError(f"objective module {entry.name!r} returned no loss")
            total = total + entry.weight * out.loss
            for key, value in out.terms.items():
                terms[key] = terms[key] + entry.weight * value if key in terms else entry.weight * value
            for key, value in out.breakdown.items():
                breakdown[key] = breakdown[key] + entry.weight * value if key in breakdown else entry.weight * value
            denominators.update(out.denominators)
        first = next(iter(ctx.logits.values()))
        if not total.requires_grad and first.requires_grad:  # nothing supervised: still a backward-able exact 0.0
            total = total + graph_zero(first)
        diagnostics: dict[str, torch.Tensor | float] = {}
        for entry, module in self._diagnostics:
            if not self._runs(entry, ctx.channel) or entry.name in self.disabled_diagnostics:
                continue
            diagnostics.update(self._run_diagnostic(entry, module, ctx))
        return PipelineResult(total=total, terms=terms, breakdown=breakdown, diagnostics=diagnostics,
                              denominators=denominators)

    def _run_diagnostic(self, entry: PipelineEntry, module: PipelineModule,
                        ctx: TeacherForcingContext) -> dict[str, torch.Tensor | float]:
        try:
            return dict(module(ctx).metrics)
        except Exception as exc:  # noqa: BLE001 - diagnostics are best-effort by contract (SPEC §6.1)
            self.disabled_diagnostics.add(entry.name)
            logger.warning("diagnostics module %r failed (%s: %s); it is disabled for the rest of the run, "
                           "training continues", entry.name, type(exc).__name__, exc)
            return {f"diag/{entry.name}_failed_count": 1.0}
