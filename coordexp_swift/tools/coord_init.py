"""Initialisation of coord-token embedding rows so that neighbouring bins start out related.

Row k (k = 0..999) is ``mu + s * sum_f (cos(pi*f*k/999) * a_f + sin(pi*f*k/999) * b_f) / sqrt(2F)`` with random
directions ``a_f, b_f ~ N(0, I)`` for frequencies f = 1..F. ``mu`` and ``s`` are the mean row and the mean per-dim
std of the *existing* (non-coord) rows, so the new rows live at the scale of the vocabulary. Low frequencies make
the cosine similarity of rows k and k+d decay smoothly with d, which gives the model a head start on ordinal
structure compared with i.i.d. rows (the naive choice, under which bin 500 is as far from 501 as from 3).
"""
from __future__ import annotations

import math

import torch

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS


@torch.no_grad()
def init_coord_rows(weight: torch.Tensor, coord_ids: torch.Tensor, *, n_freqs: int = 8,
                    generator: torch.Generator | None = None) -> None:
    """In place: set ``weight[coord_ids[k]]`` (``weight`` [V,H], ``coord_ids`` [1000] long) to the smooth code above."""
    if coord_ids.numel() != NUM_BINS:
        raise ValueError(f"expected {NUM_BINS} coord ids, got {coord_ids.numel()}")
    keep = torch.ones(weight.shape[0], dtype=torch.bool)
    keep[coord_ids] = False
    base = weight[keep].float()
    mu, scale = base.mean(0), base.std(0).mean()
    hidden = weight.shape[1]
    k = torch.arange(NUM_BINS, dtype=torch.float32) / MAX_BIN
    freqs = torch.arange(1, n_freqs + 1, dtype=torch.float32)
    phase = math.pi * k[:, None] * freqs[None, :]  # [1000, F]
    dirs_c = torch.randn(n_freqs, hidden, generator=generator)
    dirs_s = torch.randn(n_freqs, hidden, generator=generator)
    code = (torch.cos(phase) @ dirs_c + torch.sin(phase) @ dirs_s) / math.sqrt(2 * n_freqs)
    weight[coord_ids] = (mu + scale * code).to(weight.dtype)
