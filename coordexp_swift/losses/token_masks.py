"""Stage-1 target masks (SPEC §2.2) on ONE forward's labels.

Conventions: ``labels`` [B,T] are unshifted (-100 = ignore) and aligned with ``logits`` [B,T,V]; ``logits[:, t]``
predicts ``labels[:, t+1]``. Coord positions C = {t : labels[t+1] in V_c}. The loss terms themselves are the
registry's modules (``teacher_forcing.stage1``); these masks give the counts behind their denominators (the
accuracies of SPEC §2.5 are computed by the objective's metrics, ``teacher_forcing.stage1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


IGNORE_INDEX = -100


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

