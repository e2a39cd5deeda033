"""Straight-through bridge (SPEC §5): geometry decode and Channel-A coord-row embedding from coord-slice logits.

ST identity ``y = y_hard + (y_soft − sg(y_soft))``: the forward value is ``y_hard``, the gradient is ``y_soft``'s
(``sg`` = detach). ``k* = argmax_k s_k`` with the first index on ties (``torch.argmax`` semantics).

Units: ``decode`` returns normalised coordinates in [0, 1] (bin k ↦ k/MAX_BIN), never bins or pixels.
Inputs are coord-slice logits ``s`` (``full_logits[..., coord_ids]``, ordered by bin), not full-vocab logits.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.losses.coord_dist import expectation_decode

__all__ = ["COORD_DECODE_MODES", "EMBED_MODES", "decode", "embed", "expectation", "hard_index"]


def _check_last_dim(coord_logits: torch.Tensor, what: str) -> None:
    if coord_logits.shape[-1] != NUM_BINS:
        raise ValueError(f"{what}: coord_logits must have last dim {NUM_BINS} (one per bin), got "
                         f"{tuple(coord_logits.shape)}")


def hard_index(coord_logits: torch.Tensor) -> torch.Tensor:
    """``k* = argmax_k s_k`` over the last dim (first index on ties) -> long [...]."""
    return torch.argmax(coord_logits, dim=-1)


def expectation(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``x_exp = Σ_k softmax(s/τ)(k)·k/MAX_BIN`` in fp32 -> [...], differentiable, in [0, 1] (the shared
    ``losses.coord_dist.expectation_decode``)."""
    return expectation_decode(coord_logits, temperature)


def _decode_exp(coord_logits: torch.Tensor) -> torch.Tensor:
    return expectation(coord_logits)


def _decode_st(coord_logits: torch.Tensor) -> torch.Tensor:
    x_exp = expectation(coord_logits)
    x_hard = hard_index(coord_logits).to(x_exp.dtype) / MAX_BIN
    return x_hard + (x_exp - x_exp.detach())


#: ``coord_decode_mode`` -> decoder ``coord_logits[..., NUM_BINS] -> x[...]`` (normalised, fp32).
COORD_DECODE_MODES: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = {"exp": _decode_exp, "st": _decode_st}


def decode(coord_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Decode coord-slice logits ``[..., NUM_BINS]`` to normalised coordinates ``[...]`` (fp32, temperature 1.0).

    ``exp``: ``x = Σ_k P(k)·k/MAX_BIN``. ``st``: forward ``k*/MAX_BIN``, gradient of ``exp`` (ST identity).
    """
    _check_last_dim(coord_logits, "st.decode")
    try:
        fn = COORD_DECODE_MODES[mode]
    except KeyError:
        raise ValueError(f"coord_decode_mode {mode!r} is not supported; accepted values: "
                         f"{', '.join(sorted(COORD_DECODE_MODES))}") from None
    return fn(coord_logits)


def _soft_rows(coord_logits: torch.Tensor, coord_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    probs = torch.softmax(coord_logits.float() / temperature, dim=-1).to(coord_embeddings.dtype)
    return probs @ coord_embeddings


def _hard_rows(coord_logits: torch.Tensor, coord_embeddings: torch.Tensor) -> torch.Tensor:
    return coord_embeddings[hard_index(coord_logits)]


def _embed_soft(s: torch.Tensor, e: torch.Tensor, tau: float) -> torch.Tensor:
    return _soft_rows(s, e, tau)


def _embed_st(s: torch.Tensor, e: torch.Tensor, tau: float) -> torch.Tensor:
    soft = _soft_rows(s, e, tau)
    return _hard_rows(s, e) + (soft - soft.detach())


def _embed_hard(s: torch.Tensor, e: torch.Tensor, tau: float) -> torch.Tensor:
    return _hard_rows(s.detach(), e)


#: ``coord_ctx_embed_mode`` -> builder ``(coord_logits[N,NUM_BINS], E_c[NUM_BINS,H], τ) -> rows[N,H]``.
EMBED_MODES: Mapping[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "soft": _embed_soft, "st": _embed_st, "hard": _embed_hard,
}


def embed(coord_logits: torch.Tensor, coord_embeddings: torch.Tensor, mode: str,
          temperature: float = 1.0) -> torch.Tensor:
    """Channel-A context rows ``[N, H]`` from slot logits ``[N, NUM_BINS]`` and ``E_c = embed(coord_ids)``
    ``[NUM_BINS, H]`` with ``P = softmax(s/τ_A)``.

    ``soft``: ``Σ_k P(k)·E_c[k]``; ``st``: forward ``E_c[k*]``, gradient of ``soft``; ``hard``: ``E_c[k*]`` with no
    gradient through ``P`` (debug only). Output dtype = ``coord_embeddings.dtype``.
    """
    _check_last_dim(coord_logits, "st.embed")
    if coord_embeddings.dim() != 2 or coord_embeddings.shape[0] != NUM_BINS:
        raise ValueError(f"st.embed: coord_embeddings must be [{NUM_BINS}, H], got {tuple(coord_embeddings.shape)}")
    if not temperature > 0:
        raise ValueError(f"st.embed: temperature must be > 0, got {temperature!r}")
    try:
        fn = EMBED_MODES[mode]
    except KeyError:
        raise ValueError(f"coord_ctx_embed_mode {mode!r} is not supported; accepted values: "
                         f"{', '.join(sorted(EMBED_MODES))}") from None
    return fn(coord_logits, coord_embeddings, temperature)
