"""Box regression losses on normalised xyxy boxes (SPEC §3.5). Pure torch.

Inputs ``pred`` / ``gt`` are [N, 4] ``(x1, y1, x2, y2)`` in normalised [0, 1] units (GT bins/999, predictions from
expectation or ST decode), any float dtype; math runs in float32. Every loss first canonicalises both boxes
(``x_lo, x_hi = min, max(x1, x2)``, same for y, clamped to [0, 1]) and returns per-box values [N] (no reduction)
that are finite for swapped, degenerate (zero-area) and out-of-range boxes. N = 0 gives [0].
"""
from __future__ import annotations

import math

import torch

EPS = 1e-7
_FOUR_OVER_PI_SQ = 4.0 / (math.pi ** 2)


def _check_boxes(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2 or x.shape[-1] != 4:
        raise ValueError(f"{name} must be [N, 4] normalised xyxy boxes, got shape {tuple(x.shape)}")
    return x


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def canonicalize(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] -> [N, 4] float32 ``(min(x1,x2), min(y1,y2), max(x1,x2), max(y1,y2))`` clamped to [0, 1].

    NaN coordinates become 0 (so outputs stay finite); ±inf clamp to 1 / 0.
    """
    b = torch.nan_to_num(_check_boxes(boxes, "boxes").float(), nan=0.0).clamp(0.0, 1.0)
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack((torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)),
                       dim=-1)


def _pair(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = canonicalize(_check_boxes(pred, "pred")), canonicalize(_check_boxes(gt, "gt"))
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    return p, g


def smooth_l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean over the 4 coords of SmoothL1 (β = 1): ``r²/2`` if ``|r| < 1`` else ``|r| − 1/2``. -> [N] float32."""
    p, g = _pair(pred, gt)
    r = (p - g).abs()
    return _finite(torch.where(r < 1.0, 0.5 * r.square(), r - 0.5).mean(-1))


def l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the 4 coords. -> [N] float32."""
    p, g = _pair(pred, gt)
    return _finite((p - g).abs().mean(-1))


def _inter_union(p: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    iw = (torch.minimum(p[:, 2], g[:, 2]) - torch.maximum(p[:, 0], g[:, 0])).clamp(min=0.0)
    ih = (torch.minimum(p[:, 3], g[:, 3]) - torch.maximum(p[:, 1], g[:, 1])).clamp(min=0.0)
    inter = iw * ih
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    return inter, area_p + area_g - inter


def _enclosing(p: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height of the smallest box enclosing both."""
    cw = torch.maximum(p[:, 2], g[:, 2]) - torch.minimum(p[:, 0], g[:, 0])
    ch = torch.maximum(p[:, 3], g[:, 3]) - torch.minimum(p[:, 1], g[:, 1])
    return cw, ch


def giou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``1 − GIoU``, GIoU = IoU − (C − U)/max(C, ε), IoU = I/max(U, ε), C = enclosing area. -> [N] in [0, 2]."""
    p, g = _pair(pred, gt)
    inter, union = _inter_union(p, g)
    iou = inter / union.clamp(min=EPS)
    cw, ch = _enclosing(p, g)
    area_c = cw * ch
    return _finite(1.0 - (iou - (area_c - union) / area_c.clamp(min=EPS)))


def ciou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``1 − (IoU − ρ²/c² − α·v)`` exactly as SPEC §3.5 (ε = 1e-7). -> [N] float32.

    IoU = I/max(U, ε); ρ² = squared centre distance; c² = squared enclosing diagonal floored at ε; widths/heights
    floored at ε inside ``v = (4/π²)(atan(w_g/h_g) − atan(w_p/h_p))²``; ``α = v/(1 − IoU + v + ε)`` (not detached:
    the spec's formula, so α also carries gradient).
    """
    p, g = _pair(pred, gt)
    inter, union = _inter_union(p, g)
    iou = inter / union.clamp(min=EPS)
    cw, ch = _enclosing(p, g)
    c2 = (cw.square() + ch.square()).clamp(min=EPS)
    rho2 = ((p[:, 0] + p[:, 2] - g[:, 0] - g[:, 2]).square() + (p[:, 1] + p[:, 3] - g[:, 1] - g[:, 3]).square()) / 4.0
    wp = (p[:, 2] - p[:, 0]).clamp(min=EPS)
    hp = (p[:, 3] - p[:, 1]).clamp(min=EPS)
    wg = (g[:, 2] - g[:, 0]).clamp(min=EPS)
    hg = (g[:, 3] - g[:, 1]).clamp(min=EPS)
    v = _FOUR_OVER_PI_SQ * (torch.atan(wg / hg) - torch.atan(wp / hp)).square()
    alpha = v / (1.0 - iou + v + EPS)
    return _finite(1.0 - (iou - rho2 / c2 - alpha * v))


# name -> per-box loss; the bbox_geo module weights these by its ``<name>_weight`` config keys.
BBOX_LOSSES = {
    "smoothl1": smooth_l1,
    "ciou": ciou_loss,
    "l1": l1,
    "giou": giou_loss,
}

__all__ = ["EPS", "canonicalize", "smooth_l1", "l1", "giou_loss", "ciou_loss", "BBOX_LOSSES"]
