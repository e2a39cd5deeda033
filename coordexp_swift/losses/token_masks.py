"""Stage-1 target masks and token accuracies (SPEC §2.2, §2.5) on ONE forward's logits.

Conventions: ``labels`` [B,T] are unshifted (-100 = ignore) and aligned with ``logits`` [B,T,V]; ``logits[:, t]``
predicts ``labels[:, t+1]``. Coord positions C = {t : labels[t+1] in V_c}. The loss terms themselves are the
registry's modules (``teacher_forcing.stage1``); these masks give the counts behind their denominators and the
accuracies.
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


def target_rows(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Rows ``logits[b, t]`` [N,V] for the N targets where ``mask`` [B,T-1] is set (position t predicts t+1), and
    their ``(b, t)`` indices. Gathered by index, so backward writes a single full-size gradient buffer."""
    b, t = mask.nonzero(as_tuple=True)
    return logits[b, t], (b, t)


@torch.no_grad()
def token_accuracies(logits: torch.Tensor, masks: Stage1Masks) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(correct, count) of full-vocab argmax for ``token_acc`` (all supervised), ``coord_token_acc``, ``text_token_acc``.

    The argmax runs on supervised rows only, on the raw logits (one read pass, no sanitised copy); a row whose
    maximum is NaN counts as wrong."""
    sup = masks.text | masks.coord
    rows, idx = target_rows(logits, sup)
    pred = rows.argmax(-1)
    hit = (pred == masks.target[idx]) & ~torch.isnan(rows.gather(-1, pred[:, None])[:, 0])
    out = {}
    for key, mask in (("token_acc", sup), ("coord_token_acc", masks.coord), ("text_token_acc", masks.text)):
        out[key] = ((hit & mask[idx]).sum(), mask.sum())
    return out
