"""``bbox_geo`` objective (SPEC §3.5, §4.2): box loss on boxes decoded from coord-slot logits.

On the geometry context (``self_context`` for Channel-A n ≥ 2, ``rollout`` for Channel-B, else ``gt``) each
supervised box group (matched prefix ∪ FN/GT groups; never FP) is decoded from ``z[pos − 1, coord_ids]`` with
``st.decode(·, coord_decode_mode)`` (temperature 1.0) into normalised xyxy, canonicalised and clamped to [0, 1]
together with the GT (``gt_bins / MAX_BIN``). ``geo = mean_i Σ_j w_j·term_j(i)`` over boxes (0 if none); the
breakdown ``loss/geo/<term>`` = ``w_j · mean_i term_j(i)`` for each weight > 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

import torch

from coordexp_swift.config.strict import bounded
from coordexp_swift.coord.codec import MAX_BIN
from coordexp_swift.losses import bbox as bbox_losses
from coordexp_swift.teacher_forcing import st
from coordexp_swift.teacher_forcing.context import TeacherForcingContext
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule, plain_zero

__all__ = ["BBOX_TERMS", "BBoxGeoConfig", "BBoxGeoModule", "decode_boxes"]


@dataclass(frozen=True, kw_only=True)
class BBoxGeoConfig:
    """``bbox_geo`` config (SPEC §6.1): per-box term weights (≥ 0). Defaults SmoothL1 1.0 + CIoU 1.0; L1 + GIoU
    (the first-version recipe) are 0.0."""

    smoothl1_weight: float = bounded(1.0, ge=0)
    ciou_weight: float = bounded(1.0, ge=0)
    l1_weight: float = bounded(0.0, ge=0)
    giou_weight: float = bounded(0.0, ge=0)


#: config weight field -> (breakdown key, per-box loss ``(pred[N,4], gt[N,4]) -> [N]``).
BBOX_TERMS: Mapping[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "smoothl1_weight": ("loss/geo/bbox_smoothl1", lambda p, g: bbox_losses.smooth_l1(p, g)),
    "ciou_weight": ("loss/geo/bbox_ciou", lambda p, g: bbox_losses.ciou_loss(p, g)),
    "l1_weight": ("loss/geo/bbox_l1", lambda p, g: bbox_losses.l1(p, g)),
    "giou_weight": ("loss/geo/bbox_giou", lambda p, g: bbox_losses.giou_loss(p, g)),
}


def decode_boxes(ctx: TeacherForcingContext, context: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred [G, 4], gt [G, 4])`` normalised xyxy of every supervised box group, canonicalised and clamped."""
    groups = ctx.bbox_groups()
    if context == "gt":  # gt slots are every coord target (Stage-1 polygons), not only the groups
        s = ctx.coord_logits_flat(context, ctx.batch.group_flat)
    else:  # group slots, in group order: the context's shared fused gather
        s = ctx.gathered(context).slot_coord
    coord_logits = s.reshape(-1, 4, s.shape[-1])
    pred = st.decode(coord_logits, mode)
    gt = groups.gt_bins.to(pred.device, torch.float32) / MAX_BIN
    return bbox_losses.canonicalize(pred), bbox_losses.canonicalize(gt)


class BBoxGeoModule(PipelineModule):
    """``bbox_geo`` (objective); see the module docstring."""

    name: ClassVar[str] = "bbox_geo"
    kind: ClassVar[str] = "objective"
    config_classes: ClassVar[Mapping[str, type]] = {
        "stage2_two_channel": BBoxGeoConfig,
        "stage2_rollout_aligned": BBoxGeoConfig,
        "stage1": BBoxGeoConfig,
    }

    def __call__(self, ctx: TeacherForcingContext) -> ModuleOutput:
        context = ctx.geo_context
        active = {k: getattr(self.config, k) for k in BBOX_TERMS if getattr(self.config, k) > 0}
        zero = plain_zero(ctx.logits[context])
        if not active:
            return ModuleOutput(loss=zero)
        groups = ctx.bbox_groups()
        breakdown: dict[str, torch.Tensor] = {}
        if len(groups) == 0:
            breakdown = {BBOX_TERMS[k][0]: zero for k in active}
            return ModuleOutput(loss=zero, terms={"loss/geo": zero}, breakdown=breakdown)
        pred, gt = decode_boxes(ctx, context, self.settings.coord_decode_mode)
        total = zero
        for field_name, weight in active.items():
            key, fn = BBOX_TERMS[field_name]
            value = weight * torch.nan_to_num(fn(pred, gt)).mean()
            breakdown[key] = value
            total = total + value
        return ModuleOutput(loss=total, terms={"loss/geo": total}, breakdown=breakdown)
