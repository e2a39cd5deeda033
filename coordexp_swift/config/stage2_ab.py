"""The ``stage2_ab`` section of the two-channel trainer (SPEC §3.1, §5, §6). Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping, Optional

from coordexp_swift.config.strict import bounded

__all__ = [
    "FLAT_OBJECTIVE_KNOBS",
    "ChannelBConfig",
    "ScheduleConfig",
    "Stage2ABConfig",
]

#: ``stage2_ab`` keys that are flat objective knobs: authoring any of them next to ``stage2_ab.pipeline`` is an
#: error (SPEC §6.2). Values: where the knob lives in module config (the module's ``config`` key).
FLAT_OBJECTIVE_KNOBS: Mapping[str, str] = MappingProxyType({
    "desc_ce_weight": "token_ce.config.desc_ce_weight (and rollout_fn_desc_weight)",
    "fmt_struct_ce_weight": "token_ce.config.self_context_struct_ce_weight",
    "bbox_smoothl1_weight": "bbox_geo.config.smoothl1_weight",
    "bbox_ciou_weight": "bbox_geo.config.ciou_weight",
    "coord_ce_weight": "coord_reg.config.coord_ce_weight",
    "coord_el1_weight": "coord_reg.config.coord_el1_weight",
    "coord_ehuber_weight": "coord_reg.config.coord_ehuber_weight",
    "coord_huber_delta": "coord_reg.config.coord_huber_delta",
    "coord_entropy_weight": "coord_reg.config.coord_entropy_weight",
    "coord_gate_weight": "coord_reg.config.coord_gate_weight",
    "text_gate_weight": "coord_reg.config.text_gate_weight",
    "channel_b.drop_invalid_struct_ce_multiplier": "token_ce.config.rollout_drop_invalid_struct_ce_multiplier",
})


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """``stage2_ab.schedule`` (SPEC §3.2): exactly one of

      b_ratio: float in [0, 1]; step s runs B iff floor((s+1)·b_ratio) > floor(s·b_ratio).
      pattern: non-empty list over {"A", "B"}; step s runs pattern[s mod len(pattern)].
    """

    b_ratio: Optional[float] = bounded(None, ge=0, le=1)
    pattern: Optional[tuple[Literal["A", "B"], ...]] = None

    def validate(self, path: str) -> None:
        """Exactly one of ``b_ratio`` / ``pattern``; ``pattern`` non-empty."""
        given = [k for k in ("b_ratio", "pattern") if getattr(self, k) is not None]
        if len(given) != 1:
            which = "both are set" if given else "neither is set"
            raise ValueError(
                f"{path}: exactly one of {path}.b_ratio (float in [0, 1]) or {path}.pattern (non-empty list over "
                f"A/B) is required; {which}"
            )
        if self.pattern is not None and not self.pattern:
            raise ValueError(f"{path}.pattern: must be a non-empty list over 'A', 'B' (e.g. [A, A, B])")


@dataclass(frozen=True, kw_only=True)
class ChannelBConfig:
    """``stage2_ab.channel_b``.

      drop_invalid_struct_ce_multiplier: m in [1, 4], multiplies struct CE of a rollout sample that had dropped
        invalid records (SPEC §4.3); not applied to desc, coord or closure/eos.
    """

    drop_invalid_struct_ce_multiplier: float = bounded(1.0, ge=1, le=4)


@dataclass(frozen=True, kw_only=True)
class Stage2ABConfig:
    """``stage2_ab`` section (SPEC §3.1). All weights are ≥ 0.

    Fields:
      schedule: A/B routing (required).
      n_softctx_iter: Channel-A full forwards (int ≥ 1).
      softctx_grad_mode: ``em_detach`` (A1 + final iteration with grad) | ``unroll`` (grad everywhere).
      softctx_temperature: τ_A > 0 of the soft self-context distribution.
      coord_ctx_embed_mode: Channel-A coord rows, ``soft`` | ``st`` | ``hard`` (SPEC §5).
      coord_decode_mode: geometry decode for A and B, ``exp`` | ``st`` (SPEC §5).
      desc_ce_weight: desc CE weight (A, and B FN tail); 0 masks desc values.
      fmt_struct_ce_weight: λ_fmt, self-context struct/EOS stabilizer.
      bbox_smoothl1_weight, bbox_ciou_weight: geometry loss weights.
      coord_ce_weight, coord_el1_weight, coord_ehuber_weight, coord_entropy_weight, coord_gate_weight,
        text_gate_weight: coord_reg sub-term weights.
      coord_huber_delta: δ > 0 of the expected Huber term (normalised units).
      channel_b: Channel-B knobs.
      packing: the trainer packs each micro-step's teacher-forced segments into one padding-free row (SPEC §3.3);
        ms-swift's own dataset ``packing`` must stay off for this variant.
      pipeline: raw objective pipeline mapping (validated by ``teacher_forcing``), ``None`` = default manifest.
    """

    schedule: ScheduleConfig = field(metadata={"hint": "set stage2_ab.schedule.b_ratio or stage2_ab.schedule.pattern"})
    n_softctx_iter: int = bounded(2, ge=1)
    softctx_grad_mode: Literal["em_detach", "unroll"] = "em_detach"
    softctx_temperature: float = bounded(1.0, gt=0)
    coord_ctx_embed_mode: Literal["soft", "st", "hard"] = "st"
    coord_decode_mode: Literal["exp", "st"] = "exp"
    desc_ce_weight: float = bounded(1.0, ge=0)
    fmt_struct_ce_weight: float = bounded(0.1, ge=0)
    bbox_smoothl1_weight: float = bounded(1.0, ge=0)
    bbox_ciou_weight: float = bounded(1.0, ge=0)
    coord_ce_weight: float = bounded(0.0, ge=0)
    coord_el1_weight: float = bounded(0.0, ge=0)
    coord_ehuber_weight: float = bounded(0.0, ge=0)
    coord_entropy_weight: float = bounded(0.0, ge=0)
    coord_gate_weight: float = bounded(0.0, ge=0)
    text_gate_weight: float = bounded(0.0, ge=0)
    coord_huber_delta: float = bounded(0.001, gt=0)
    channel_b: ChannelBConfig = field(default_factory=ChannelBConfig)
    packing: bool = False
    pipeline: Optional[dict[str, Any]] = None
