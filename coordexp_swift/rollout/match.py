"""Deterministic Hungarian matching of valid predictions to GT (SPEC §3.6 B2).

All boxes are ``(x1, y1, x2, y2)`` norm1000 bins (ints or floats in 0..999). IoU is computed in bin space, which
equals IoU in normalised [0, 1] space (the common 1/999 scale cancels). Widths/heights are clipped at 0 and an
empty union gives IoU 0, so degenerate (zero-area) boxes are allowed.

Cost construction, per prediction p:

1. Candidates: the ``candidate_top_k`` GT with the highest IoU (ties -> lower GT index); if p's best IoU is 0,
   the ``candidate_top_k`` GT with the nearest box centres instead (Euclidean, ties -> lower GT index).
2. For a candidate g: cost ``1 - IoU(p, g)`` if ``IoU >= iou_gate`` else :data:`GATED_COST`. A **gating
   rejection** is exactly one (p, candidate g) pair with ``IoU < iou_gate``; non-candidate pairs also cost
   :data:`GATED_COST` but are not counted.
3. The square matrix ``[[C, fp_cost], [fn_cost, 0]]`` of size P+G (C is P×G; every entry of the P×P block is
   ``fp_cost``, of the G×G block ``fn_cost``, of the G×P block 0) is solved by
   ``scipy.optimize.linear_sum_assignment``.

p is **matched** to g iff the assignment puts p on real column g with a finite (non-gated) cost; other predictions
are FP; GT without a match are FN. Outputs are sorted (matched by pred index, FP ascending, FN in GT order).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["GATED_COST", "MatchResult", "box_iou_bins", "match_predictions"]

#: Cost of a gated or non-candidate (pred, GT) pair.
GATED_COST = 1e6


@dataclass(frozen=True)
class MatchResult:
    """``matched``: (pred_idx, gt_idx) pairs sorted by pred_idx; ``matched_iou``: their IoUs (same order);
    ``fp``: unmatched pred indices ascending; ``fn``: unmatched GT indices ascending (= append order);
    ``gating_rejections``: number of (pred, candidate GT) pairs with IoU < gate."""

    matched: tuple[tuple[int, int], ...]
    matched_iou: tuple[float, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    gating_rejections: int


def _as_boxes(x: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2 bins), got {tuple(a.shape)}")
    return a


def box_iou_bins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [A, B] float64 of boxes ``a`` [A, 4] and ``b`` [B, 4] (x1, y1, x2, y2 in bins)."""
    a = _as_boxes(a, "a")
    b = _as_boxes(b, "b")
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _candidates(iou: np.ndarray, pred: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """[P, G] bool: the candidate GT of each prediction (see module doc)."""
    n_pred, n_gt = iou.shape
    k = min(k, n_gt)
    # Stable sorts on the negated key keep the lower GT index first among ties.
    by_iou = np.argsort(-iou, axis=1, kind="stable")[:, :k]
    centre_p = (pred[:, :2] + pred[:, 2:]) / 2
    centre_g = (gt[:, :2] + gt[:, 2:]) / 2
    dist = np.sqrt(((centre_p[:, None, :] - centre_g[None, :, :]) ** 2).sum(-1))
    by_dist = np.argsort(dist, axis=1, kind="stable")[:, :k]
    chosen = np.where((iou.max(axis=1) > 0)[:, None], by_iou, by_dist)
    mask = np.zeros((n_pred, n_gt), dtype=bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


def match_predictions(
    pred_bins: Sequence[Sequence[float]] | np.ndarray,
    gt_bins: Sequence[Sequence[float]] | np.ndarray,
    *,
    candidate_top_k: int = 10,
    iou_gate: float = 0.3,
    fp_cost: float = 1.0,
    fn_cost: float = 1.0,
) -> MatchResult:
    """Match ``pred_bins`` [P, 4] to ``gt_bins`` [G, 4] (bins, x1 y1 x2 y2) per SPEC §3.6 B2; deterministic."""
    if candidate_top_k < 1:
        raise ValueError(f"candidate_top_k must be >= 1 (rollout_matching.candidate_top_k), got {candidate_top_k}")
    pred = _as_boxes(pred_bins, "pred_bins")
    gt = _as_boxes(gt_bins, "gt_bins")
    n_pred, n_gt = len(pred), len(gt)
    if n_pred == 0 or n_gt == 0:
        return MatchResult((), (), tuple(range(n_pred)), tuple(range(n_gt)), 0)

    iou = box_iou_bins(pred, gt)
    cand = _candidates(iou, pred, gt, candidate_top_k)
    passes = iou >= iou_gate
    gating_rejections = int((cand & ~passes).sum())
    finite = cand & passes
    cost = np.where(finite, 1.0 - iou, GATED_COST)

    n = n_pred + n_gt
    full = np.zeros((n, n), dtype=np.float64)
    full[:n_pred, :n_gt] = cost
    full[:n_pred, n_gt:] = fp_cost
    full[n_pred:, :n_gt] = fn_cost
    rows, cols = linear_sum_assignment(full)

    matched: list[tuple[int, int]] = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        if r < n_pred and c < n_gt and finite[r, c]:
            matched.append((r, c))
    matched.sort()
    got_pred = {p for p, _ in matched}
    got_gt = {g for _, g in matched}
    return MatchResult(
        matched=tuple(matched),
        matched_iou=tuple(float(iou[p, g]) for p, g in matched),
        fp=tuple(p for p in range(n_pred) if p not in got_pred),
        fn=tuple(g for g in range(n_gt) if g not in got_gt),
        gating_rejections=gating_rejections,
    )
