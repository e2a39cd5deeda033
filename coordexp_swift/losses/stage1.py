"""Stage-1 objective (SPEC §2.2-2.3): base CE on non-coord targets + coord-gated softCE / W1 / CE / gates.

Pure tensor math on ONE forward's logits. Conventions: ``labels`` [B,T] are unshifted (-100 = ignore) and aligned
with ``logits`` [B,T,V]; ``logits[:, t]`` predicts ``labels[:, t+1]``. Coord positions C = {t : labels[t+1] in V_c}.

Each term is returned as a *sum* over its positions plus the count, so that the caller picks the denominator
(local micro-batch count, or the global count over the accumulation window and ranks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coordexp_swift.losses.coord_dist import coord_terms, sanitize_logits, text_gate

IGNORE_INDEX = -100
# coord_soft_ce_w1 weight field -> coord_terms() key and §8.2 log name.
COORD_TERMS: dict[str, tuple[str, str]] = {
    "ce_weight": ("coord_ce", "loss/coord_token_ce"),
    "soft_ce_weight": ("soft_ce", "loss/coord_reg/soft_ce"),
    "w1_weight": ("w1", "loss/coord_reg/w1"),
    "gate_weight": ("coord_gate", "loss/coord_reg/coord_gate"),
}


@dataclass(frozen=True)
class Stage1Weights:
    """The §2.1 knobs (from ``custom.coord_soft_ce_w1``)."""

    ce_weight: float = 0.0
    soft_ce_weight: float = 1.0
    w1_weight: float = 1.0
    gate_weight: float = 1.0
    text_gate_weight: float = 0.0
    temperature: float = 1.0
    target_sigma: float = 2.0
    target_truncate: int | None = None


@dataclass(frozen=True)
class Stage1Masks:
    """Shifted views, all [B,T-1]: ``target`` (labels[:,1:]), ``coord`` (t in C), ``text`` (supervised, not coord),
    ``text_gate`` (text minus ``<|im_end|>``), ``bins`` (target bin where coord, else -1)."""

    target: torch.Tensor
    coord: torch.Tensor
    text: torch.Tensor
    text_gate: torch.Tensor
    bins: torch.Tensor


def stage1_masks(labels: torch.Tensor, coord_lut: torch.Tensor, im_end_id: int | None) -> Stage1Masks:
    """``coord_lut`` [V] long: bin of each vocab id, -1 for non-coord ids (``coord.vocab.id_to_bin_lookup``)."""
    target = labels[:, 1:]
    sup = target != IGNORE_INDEX
    bins = torch.where(sup, coord_lut[target.clamp(min=0)], torch.full_like(target, -1))
    coord = bins >= 0
    text = sup & ~coord
    gate = text & (target != im_end_id) if im_end_id is not None else text
    return Stage1Masks(target=target, coord=coord, text=text, text_gate=gate, bins=bins)


def target_rows(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Rows ``logits[b, t]`` [N,V] for the N targets where ``mask`` [B,T-1] is set (position t predicts t+1), and
    their ``(b, t)`` indices. Gathered by index, so backward writes a single full-size gradient buffer."""
    b, t = mask.nonzero(as_tuple=True)
    return logits[b, t], (b, t)


def per_token_ce(logits: torch.Tensor, masks: Stage1Masks, include_coord: bool) -> torch.Tensor:
    """[B,T-1] fp32 full-vocab CE at text targets (and coord targets iff ``include_coord``), 0 elsewhere.

    Only supervised rows enter the CE, so non-finite logits in ignored rows cannot reach the gradient.
    """
    keep = masks.text | masks.coord if include_coord else masks.text
    rows, idx = target_rows(logits, keep)
    ce = F.cross_entropy(rows.float(), masks.target[idx], reduction="none")
    out = torch.zeros(keep.shape, dtype=ce.dtype, device=ce.device)
    return out.index_put(idx, ce)


def coord_term_sums(logits: torch.Tensor, masks: Stage1Masks, coord_ids: torch.Tensor,
                    w: Stage1Weights) -> dict[str, torch.Tensor]:
    """Σ over C of each coord term with weight > 0 (unweighted), keyed by ``coord_terms`` names; [] tensors.

    Empty C gives exact 0.0 sums that stay connected to ``logits``' graph.
    """
    want = {COORD_TERMS[k][0] for k in COORD_TERMS if getattr(w, k) > 0}
    if not want:
        return {}
    rows, idx = target_rows(logits, masks.coord)
    terms = coord_terms(rows, coord_ids, masks.bins[idx], temperature=w.temperature,
                        sigma=w.target_sigma, truncate=w.target_truncate, want=want)
    return {name: terms[name].sum() for name in want}


def text_gate_sum(logits: torch.Tensor, masks: Stage1Masks, coord_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Σ text-gate over supervised non-coord, non-``<|im_end|>`` targets (SPEC §2.3). [] tensor."""
    rows, _ = target_rows(logits, masks.text_gate)
    return text_gate(rows, coord_ids, temperature).sum()


@torch.no_grad()
def token_accuracies(logits: torch.Tensor, masks: Stage1Masks) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(correct, count) of full-vocab argmax for ``token_acc`` (all supervised), ``coord_token_acc``, ``text_token_acc``.

    The argmax runs on supervised rows only."""
    sup = masks.text | masks.coord
    rows, idx = target_rows(logits, sup)
    hit = sanitize_logits(rows).argmax(-1) == masks.target[idx]
    out = {}
    for key, mask in (("token_acc", sup), ("coord_token_acc", masks.coord), ("text_token_acc", masks.text)):
        out[key] = ((hit & mask[idx]).sum(), mask.sum())
    return out
