"""Losses on the coord-vocabulary distribution (SPEC §2.3, §2.4, §4.2 ``coord_reg``, §5 expectation decode).

Pure tensor math, no orchestration. Conventions shared by every function:

- ``full_logits`` [N, V] are full-vocabulary logits at N positions that each predict a coord token (position t
  predicts token t+1; the caller has already applied that shift). ``coord_ids`` [1000] long holds the vocab id of
  ``<|coord_k|>`` at index k. ``coord_logits`` [..., 1000] is the gate slice ``z[coord_ids]`` ordered by bin.
- Bins are integers 0..999; normalised coordinates are ``k/999`` in [0, 1] (``MAX_BIN`` = 999).
- Whatever the input dtype (fp32/bf16/fp16), math runs in float32 (float64 for the gates' LSE bookkeeping) on
  *sanitised* logits (NaN -> 0, ±inf -> ±1e4, clamp to ±1e4; sanitised entries get zero gradient) and
  per-position outputs are ``nan_to_num``-ed, so every output is finite. ``temperature`` τ > 0 divides logits
  before every softmax / LSE.
- Per-position terms return [N] (no reduction). N = 0 gives [0] outputs whose ``.sum()`` is exactly 0.0 and is
  still connected to the input's graph.
- softCE, W1, coord-CE, entropy and the expectation terms read only the coord slice: zero gradient to non-coord
  logits. Only the gates (``coord_gate``, ``text_gate``) use the full-vocabulary LSE.
- Each term has ONE implementation (``_<term>_core`` on log-probabilities); the standalone functions and the fused
  :func:`coord_terms` both call it.
- No host synchronisation: shape/dtype checks only. Checks on VALUES (bins in 0..999, coord ids inside the
  vocabulary) read the device and run only when :data:`DEBUG_CHECKS` is true (set it, or export
  ``COORDEXP_DEBUG_CHECKS=1`` before ``coordexp_swift.teacher_forcing`` is imported).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from coordexp_swift.losses.blocks import rows_per_block

NUM_BINS = 1000  # == coordexp_swift.coord.codec.NUM_BINS (losses/ imports only torch)
MAX_BIN = NUM_BINS - 1
LOGIT_BOUND = 1e4
TEXT_GATE_FLOOR = 1e-6
#: Run value checks that need a device read (a host sync on GPU): bins range, coord-id range. Off on the hot path.
DEBUG_CHECKS = False


# ----------------------------------------------------------------------------------------------- validation
def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    return t


def _check_coord_last_dim(x: torch.Tensor, name: str) -> None:
    if x.dim() < 1 or x.shape[-1] != NUM_BINS:
        raise ValueError(f"{name} must have last dim {NUM_BINS} (one entry per bin), got shape {tuple(x.shape)}")


def _check_rows(x: torch.Tensor, name: str, width: int | None = None) -> None:
    if x.dim() != 2 or (width is not None and x.shape[1] != width):
        want = f"[N, {width}]" if width is not None else "[N, V]"
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")


def _check_bins(target_bins: torch.Tensor, n: int | None = None) -> None:
    if target_bins.dim() != 1 or (n is not None and target_bins.shape[0] != n):
        raise ValueError(f"target_bins must be [N{'' if n is None else f'={n}'}] bins, got shape "
                         f"{tuple(target_bins.shape)}")
    if target_bins.dtype.is_floating_point or target_bins.dtype == torch.bool:
        raise ValueError(f"target_bins must be an integer tensor of bins 0..{MAX_BIN}, got {target_bins.dtype}")
    if DEBUG_CHECKS and target_bins.numel() and bool(((target_bins < 0) | (target_bins > MAX_BIN)).any()):
        raise ValueError(f"target_bins outside norm1000 range 0..{MAX_BIN}: min {int(target_bins.min())}, "
                         f"max {int(target_bins.max())}")


def _check_coord_ids(coord_ids: torch.Tensor, vocab: int) -> None:
    if coord_ids.shape != (NUM_BINS,) or coord_ids.dtype != torch.long:
        raise ValueError(f"coord_ids must be a [{NUM_BINS}] long tensor, got {tuple(coord_ids.shape)} "
                         f"{coord_ids.dtype}")
    if DEBUG_CHECKS and (bool((coord_ids < 0).any()) or int(coord_ids.max()) >= vocab):
        raise ValueError(f"coord_ids must index the vocabulary [0, {vocab}), got range "
                         f"[{int(coord_ids.min())}, {int(coord_ids.max())}]")


# ----------------------------------------------------------------------------------------------- primitives
def sanitize_logits(x: torch.Tensor) -> torch.Tensor:
    """float32 copy of ``x`` with NaN -> 0, ±inf -> ±1e4, clamped to [-1e4, 1e4] (zero grad where replaced)."""
    return torch.nan_to_num(x.float(), nan=0.0, posinf=LOGIT_BOUND, neginf=-LOGIT_BOUND).clamp(-LOGIT_BOUND,
                                                                                                LOGIT_BOUND)


def _clean_out(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _bin_values(device: torch.device) -> torch.Tensor:
    """[1000] float32 normalised bin values k/999 (bin 999 -> exactly 1.0)."""
    return torch.arange(NUM_BINS, device=device, dtype=torch.float64).div_(MAX_BIN).float()


def coord_probs(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(sanitize(z)/τ)`` over the last (bin) dim: [..., 1000] -> [..., 1000] float32."""
    _check_coord_last_dim(coord_logits, "coord_logits")
    return torch.softmax(sanitize_logits(coord_logits) / _check_temperature(temperature), dim=-1)


def _coord_log_probs(coord_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    _check_coord_last_dim(coord_logits, "coord_logits")
    return torch.log_softmax(sanitize_logits(coord_logits) / _check_temperature(temperature), dim=-1)


def gaussian_soft_labels(target_bins: torch.Tensor, sigma: float, truncate: int | None = None) -> torch.Tensor:
    """Soft targets q [N, 1000] float32: ``q(k) ∝ exp(−(k−b)²/(2σ²))``, 0 where ``|k−b| > truncate``, Σ_k q = 1.

    ``sigma`` (bins) > 0; ``truncate`` None (no cut) or an int >= 0 (kernel radius in bins; 0 gives a one-hot).
    Near 0 / 999 the kernel is cut by the bin range and renormalised (SPEC §2.3 edge targets).
    """
    s = float(sigma)
    if not (math.isfinite(s) and s > 0.0):
        raise ValueError(f"target_sigma must be a finite float > 0 (bins), got {sigma!r}")
    if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int) or truncate < 0):
        raise ValueError(f"target_truncate must be null or an int >= 0 (bins), got {truncate!r}")
    _check_bins(target_bins)
    k = torch.arange(NUM_BINS, device=target_bins.device, dtype=torch.float32)
    d = k.unsqueeze(0) - target_bins.to(torch.float32).unsqueeze(1)
    logq = d.square().mul_(-0.5 / (s * s))
    if truncate is not None:
        logq = logq.masked_fill(d.abs() > truncate, float("-inf"))
    return torch.softmax(logq, dim=-1)  # the k = b entry is exp(0) = 1 before normalising: never 0/0


# The one implementation of each slice term, on fp32 log-probabilities / probabilities (unsanitised outputs).
def _soft_ce_core(q: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return -(q * logp).sum(-1)


def _w1_core(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p.cumsum(-1) - q.cumsum(-1)).abs().sum(-1) / MAX_BIN


def _coord_ce_core(logp: torch.Tensor, target_bins: torch.Tensor) -> torch.Tensor:
    return -logp.gather(-1, target_bins.unsqueeze(-1)).squeeze(-1)


def _entropy_core(logp: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return -(p * logp).sum(-1)


def _coord_gate_core(log_p_coord: torch.Tensor) -> torch.Tensor:
    return (-log_p_coord).float().clamp(min=0.0)


def soft_ce(coord_logits: torch.Tensor, q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``−Σ_k q(k)·log p(k)`` with ``p = softmax(z/τ)``: coord_logits [N,1000], q [N,1000] -> [N] float32."""
    _check_coord_last_dim(q, "q")
    return _clean_out(_soft_ce_core(q.float(), _coord_log_probs(coord_logits, temperature)))


def w1_cdf(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """1-D Wasserstein-1 on the bin grid in normalised units: ``(1/999)·Σ_i |F_p(i) − F_q(i)|``.

    p, q [N, 1000] probabilities (rows sum to 1); CDFs via cumsum. -> [N] float32 in [0, 1]; W1(δ_i, δ_j) = |i−j|/999.
    """
    _check_coord_last_dim(p, "p")
    _check_coord_last_dim(q, "q")
    return _clean_out(_w1_core(p.float(), q.float()))


def coord_ce(coord_logits: torch.Tensor, target_bins: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hard CE on the gate slice ``−log p(b)``: coord_logits [N,1000], target_bins [N] long -> [N] float32."""
    _check_rows(coord_logits, "coord_logits", NUM_BINS)
    _check_bins(target_bins, coord_logits.shape[0])
    return _clean_out(_coord_ce_core(_coord_log_probs(coord_logits, temperature), target_bins))


def entropy(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``−Σ_k P(k)·log P(k)`` (nats) of ``P = softmax(z/τ)``: [..., 1000] -> [...] float32."""
    logp = _coord_log_probs(coord_logits, temperature)
    return _clean_out(_entropy_core(logp, logp.exp()))


def expectation_decode(coord_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Expected normalised coordinate ``Σ_k P(k)·k/999`` (not argmax): [..., 1000] -> [...] float32 in [0, 1]."""
    p = coord_probs(coord_logits, temperature)
    return _clean_out((p * _bin_values(p.device)).sum(-1)).clamp(0.0, 1.0)


def _check_target(target: torch.Tensor, n: int) -> torch.Tensor:
    if target.shape != (n,):
        raise ValueError(f"target must be [N={n}] normalised coordinates in [0, 1], got shape {tuple(target.shape)}")
    return target.float()


def expected_l1(coord_logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``Σ_k P(k)·|k/999 − g|`` with g = ``target`` [N] normalised: coord_logits [N,1000] -> [N] float32."""
    _check_rows(coord_logits, "coord_logits", NUM_BINS)
    g = _check_target(target, coord_logits.shape[0])
    p = coord_probs(coord_logits, temperature)
    r = _bin_values(p.device).unsqueeze(0) - g.unsqueeze(1)
    return _clean_out((p * r.abs()).sum(-1))


def expected_huber(coord_logits: torch.Tensor, target: torch.Tensor, delta: float,
                   temperature: float = 1.0) -> torch.Tensor:
    """``Σ_k P(k)·Huber_δ(k/999 − g)``, Huber_δ(r) = r²/2 if |r| < δ else δ(|r| − δ/2); normalised units. -> [N]."""
    dl = float(delta)
    if not (math.isfinite(dl) and dl > 0.0):
        raise ValueError(f"coord_huber_delta must be a finite float > 0 (normalised units), got {delta!r}")
    _check_rows(coord_logits, "coord_logits", NUM_BINS)
    g = _check_target(target, coord_logits.shape[0])
    p = coord_probs(coord_logits, temperature)
    r = (_bin_values(p.device).unsqueeze(0) - g.unsqueeze(1)).abs()
    hub = torch.where(r < dl, 0.5 * r.square(), dl * (r - 0.5 * dl))
    return _clean_out((p * hub).sum(-1))


# ----------------------------------------------------------------------------------------------- fused gather + LSE


class _LogPCoord(torch.autograd.Function):
    """``(s, log_p_coord)`` from full logits z [N, V]:

    - ``s = sanitize(z)[:, coord_ids]`` [N, 1000] float32 (the gate slice, ordered by bin);
    - ``log_p_coord = LSE(s/τ) − LSE(sanitize(z)/τ)`` [N] float64 (≤ 0), accurate both when p_coord → 1 (formed as
      ``log1p(−p_text)`` from a separately accumulated text mass, no cancellation) and when p_coord → 0.

    The full-vocab passes run over row blocks through one reused fp32 work block, so neither direction holds an
    extra [N, V] tensor: forward keeps only per-row stats (max, masses) and backward recomputes ``exp`` block by
    block, writing straight into the single [N, V] gradient it must return (in the input dtype). Gradient:
    ``∂ log_p_coord/∂z = (1/τ)(𝟙_C·softmax(s/τ) − softmax(z/τ))``, plus ``g_s`` on the coord columns; entries that
    sanitisation replaced get zero gradient (as autograd through nan_to_num/clamp would give). Every block is
    sanitised (no per-row "is it dirty?" test: that would read the device, a host sync per call).
    """

    @staticmethod
    def forward(ctx, full: torch.Tensor, coord_ids: torch.Tensor, temperature: float):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        n, v = full.shape
        raw_c = full[:, coord_ids]
        s = sanitize_logits(raw_c)
        y_c = s / temperature
        rows_per = rows_per_block(v, full.device)
        work = torch.empty((min(rows_per, n), v), dtype=torch.float32, device=full.device)
        m = torch.empty(n, dtype=torch.float32, device=full.device)
        text_mass = torch.empty(n, dtype=torch.float32, device=full.device)
        for r0 in range(0, n, rows_per):
            r1 = min(n, r0 + rows_per)
            blk = work[: r1 - r0]
            m[r0:r1] = _exp_block(blk, full[r0:r1], temperature, None)
            text_mass[r0:r1] = blk.index_fill_(1, coord_ids, 0.0).sum(-1)
        # coord mass relative to the same row max, in float64 from the exact slice (no underflow before e^-745)
        coord_mass = ((s.double() - m.double().unsqueeze(-1)) / temperature).exp().sum(-1)
        total = text_mass.double() + coord_mass  # >= 1: the row max contributes exp(0)
        p_text = text_mass.double() / total
        lse_full = m.double() / temperature + total.log()
        lse_c = torch.logsumexp(y_c.double(), dim=-1)
        log_p_coord = torch.where(p_text < 0.5, torch.log1p(-p_text), lse_c - lse_full).clamp(max=0.0)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(full)
            ctx.stats = (coord_ids, m, total, torch.softmax(y_c, dim=-1), raw_c.abs() <= LOGIT_BOUND)
            ctx.temperature, ctx.rows_per = temperature, rows_per
        return s, log_p_coord

    @staticmethod
    @once_differentiable
    def backward(ctx, g_s: torch.Tensor | None, g_lpc: torch.Tensor | None):  # type: ignore[override]
        (full,) = ctx.saved_tensors
        coord_ids, m, total, p_c, keep_c = ctx.stats
        tau, rows_per = ctx.temperature, ctx.rows_per
        n, v = full.shape
        # coord-column part, fp32 [N, 1000]: (g/τ)·softmax(s/τ) + g_s, zeroed where sanitisation replaced a value
        add_c = torch.zeros_like(p_c)
        if g_lpc is not None:
            add_c += (g_lpc.double() / tau).float().unsqueeze(-1) * p_c
        if g_s is not None:
            add_c += g_s.float()
        add_c *= keep_c
        grad = torch.empty_like(full)
        if g_lpc is None:  # only the slice is used: the gradient lives on the coord columns
            grad.zero_()
            grad.index_copy_(1, coord_ids, add_c.to(grad.dtype))
            return grad, None, None
        coef = (-g_lpc.double() / (tau * total)).float().unsqueeze(-1)  # −(g/τ)·softmax(z/τ) = coef·exp((z−m)/τ)
        work = None if full.dtype == torch.float32 else torch.empty(
            (min(rows_per, n), v), dtype=torch.float32, device=full.device)
        drop_work = torch.empty((min(rows_per, n), v), dtype=torch.bool, device=full.device)
        for r0 in range(0, n, rows_per):
            r1 = min(n, r0 + rows_per)
            blk = grad[r0:r1] if work is None else work[: r1 - r0]
            drop = _clamp_block(blk, full[r0:r1], drop_work[: r1 - r0])  # entries sanitisation replaces
            blk.sub_(m[r0:r1].unsqueeze(-1))
            if tau != 1.0:
                blk.div_(tau)
            blk.exp_().mul_(coef[r0:r1]).masked_fill_(drop, 0.0)  # zero gradient (and no NaN) where replaced
            blk.index_add_(1, coord_ids, add_c[r0:r1])
            if work is not None:
                grad[r0:r1].copy_(blk)
        return grad, None, None


def _clamp_block(dst: torch.Tensor, src: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor | None:
    """In place ``dst <- clamp(src, ±1e4)`` (dst fp32 work block; ±inf -> ±1e4, NaN stays NaN); with ``drop``
    (a bool block), also ``drop <- dst != src``: the entries sanitisation replaces (NaN, ±inf, |x| > 1e4)."""
    if src.dtype == dst.dtype:
        torch.clamp(src, -LOGIT_BOUND, LOGIT_BOUND, out=dst)
    else:
        dst.copy_(src).clamp_(-LOGIT_BOUND, LOGIT_BOUND)
    if drop is None:
        return None
    return torch.ne(dst, src, out=drop)


def _sanitize_block(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """In place ``dst <- sanitize(src)`` (dst fp32 work block): clamp maps ±inf to ±1e4, then NaN -> 0."""
    _clamp_block(dst, src)
    return dst.nan_to_num_(nan=0.0)


def _exp_block(dst: torch.Tensor, src: torch.Tensor, temperature: float, m: torch.Tensor | None) -> torch.Tensor:
    """In place ``dst <- exp((sanitize(src) − m)/τ)`` (dst fp32 [r, V]); ``m`` [r] defaults to the sanitised row max.

    Returns ``m``.
    """
    _sanitize_block(dst, src)
    if m is None:
        m = dst.amax(-1)
    dst.sub_(m.unsqueeze(-1))
    if temperature != 1.0:
        dst.div_(temperature)
    dst.exp_()
    return m


def _slice_and_log_p_coord(full_logits: torch.Tensor, coord_ids: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check_rows(full_logits, "full_logits")
    _check_coord_ids(coord_ids, full_logits.shape[1])
    return _LogPCoord.apply(full_logits, coord_ids.to(full_logits.device), temperature)


def coord_gate(full_logits: torch.Tensor, coord_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``max(0, LSE(z/τ) − LSE(z[coord_ids]/τ))`` = −log p_coord: full_logits [N,V] -> [N] float32."""
    t = _check_temperature(temperature)
    _, log_p_coord = _slice_and_log_p_coord(full_logits, coord_ids, t)
    return _clean_out(_coord_gate_core(log_p_coord))


def text_gate(full_logits: torch.Tensor, coord_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``−log(clamp(1 − p_coord, 1e-6, 1))``, p_coord = exp(LSE(s/τ) − LSE(z/τ)): [N,V] -> [N] float32.

    Used at supervised text (non-coord, non-``<|im_end|>``) targets; 1 − p_coord is formed as −expm1(log p_coord).
    """
    t = _check_temperature(temperature)
    _, log_p_coord = _slice_and_log_p_coord(full_logits, coord_ids, t)
    p_text = torch.clamp(-torch.expm1(log_p_coord), TEXT_GATE_FLOOR, 1.0)
    return _clean_out(-torch.log(p_text).float())


# ----------------------------------------------------------------------------------------------- fused Stage-1 terms
class _CoordView:
    """Memoised views of one batch of coord positions; ``term_<name>`` methods are the ``COORD_TERMS`` entries."""

    def __init__(self, full_logits: torch.Tensor, coord_ids: torch.Tensor, target_bins: torch.Tensor,
                 temperature: float, sigma: float, truncate: int | None, need_lse: bool) -> None:
        self.temperature, self.sigma, self.truncate = temperature, sigma, truncate
        self.target_bins = target_bins
        self.log_p_coord: torch.Tensor | None = None
        if need_lse:
            self.s, self.log_p_coord = _slice_and_log_p_coord(full_logits, coord_ids, temperature)
        else:
            _check_coord_ids(coord_ids, full_logits.shape[1])
            self.s = sanitize_logits(full_logits[:, coord_ids.to(full_logits.device)])
        self.y = self.s / temperature
        self.logp = torch.log_softmax(self.y, dim=-1)
        self._p: torch.Tensor | None = None
        self._q: torch.Tensor | None = None

    @property
    def p(self) -> torch.Tensor:
        if self._p is None:
            self._p = self.logp.exp()
        return self._p

    @property
    def q(self) -> torch.Tensor:
        if self._q is None:
            self._q = gaussian_soft_labels(self.target_bins, self.sigma, self.truncate)
        return self._q

    def term_soft_ce(self) -> torch.Tensor:
        return _soft_ce_core(self.q, self.logp)

    def term_w1(self) -> torch.Tensor:
        return _w1_core(self.p, self.q)

    def term_coord_ce(self) -> torch.Tensor:
        return _coord_ce_core(self.logp, self.target_bins)

    def term_coord_gate(self) -> torch.Tensor:
        if self.log_p_coord is None:
            raise RuntimeError("coord_gate requested without the full-vocabulary LSE")
        return _coord_gate_core(self.log_p_coord)

    def term_entropy(self) -> torch.Tensor:
        return _entropy_core(self.logp, self.p)


# Registry: term name -> (needs the full-vocab LSE, needs target bins); computed by ``_CoordView.term_<name>``.
COORD_TERMS: dict[str, tuple[bool, bool]] = {
    "soft_ce": (False, True),
    "w1": (False, True),
    "coord_ce": (False, True),
    "coord_gate": (True, False),
    "entropy": (False, False),
}


def coord_terms(full_logits: torch.Tensor, coord_ids: torch.Tensor, target_bins: torch.Tensor, *,
                temperature: float = 1.0, sigma: float = 2.0, truncate: int | None = None,
                want: set[str] | frozenset[str]) -> dict[str, torch.Tensor]:
    """Requested subset of {soft_ce, w1, coord_ce, coord_gate, entropy} at N coord positions, fused.

    full_logits [N, V] (row t = logits predicting the coord token at t+1), coord_ids [1000] long, target_bins [N]
    long in 0..999. One gather of the coord slice + one log-softmax over it; the full-vocab LSE (row-blocked passes,
    no extra [N, V] tensor; backward writes the one [N, V] gradient) only if ``coord_gate`` is wanted.
    Returns ``{name: [N] float32}`` with exactly the wanted keys, unweighted and unreduced; the values equal the
    standalone functions'. ``sigma``/``truncate`` (bins) shape the §2.3 soft target used by soft_ce and w1.
    """
    unknown = sorted(set(want) - COORD_TERMS.keys())
    if unknown:
        raise ValueError(f"unknown coord term(s) {unknown}; known: {sorted(COORD_TERMS)}")
    t = _check_temperature(temperature)
    _check_rows(full_logits, "full_logits")
    if not want:
        return {}
    if any(COORD_TERMS[name][1] for name in want):
        _check_bins(target_bins, full_logits.shape[0])
    need_lse = any(COORD_TERMS[name][0] for name in want)
    view = _CoordView(full_logits, coord_ids, target_bins, t, sigma, truncate, need_lse)
    return {name: _clean_out(getattr(view, f"term_{name}")()) for name in sorted(want)}


__all__ = [
    "NUM_BINS", "MAX_BIN", "LOGIT_BOUND", "TEXT_GATE_FLOOR", "COORD_TERMS", "sanitize_logits", "coord_probs",
    "gaussian_soft_labels", "soft_ce", "w1_cdf", "coord_ce", "entropy", "expectation_decode", "expected_l1",
    "expected_huber", "coord_gate", "text_gate", "coord_terms",
]
