"""Straight-through bridge (SPEC §5): seed 002 2.2, 2.3, 9.3."""
from __future__ import annotations

import math

import pytest
import torch

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.teacher_forcing import st


def two_peak_logits() -> torch.Tensor:
    """P = 0.5 at bins 0 and MAX_BIN (ties: k* = 0, the first index)."""
    s = torch.full((1, NUM_BINS), -1e4)
    s[0, 0] = s[0, MAX_BIN] = 0.0
    return s


def test_decode_two_peak_check():
    """seed 002 9.3 / 2.3 / 001 1.7.6: P(0)=P(999)=.5 -> exp 0.5; st forward 0.0 (first index on ties) with ∂x/∂s
    equal to exp's (compared with torch.autograd)."""
    s_exp = two_peak_logits().requires_grad_(True)
    s_st = two_peak_logits().requires_grad_(True)
    x_exp, x_st = st.decode(s_exp, "exp"), st.decode(s_st, "st")
    assert float(x_exp.detach()) == pytest.approx(0.5, abs=1e-6)
    assert float(x_st.detach()) == 0.0
    (g_exp,) = torch.autograd.grad(x_exp.sum(), s_exp)
    (g_st,) = torch.autograd.grad(x_st.sum(), s_st)
    assert torch.allclose(g_exp, g_st, atol=0, rtol=0)
    # by hand: dx/ds_k = P(k)(k/999 - x): ±0.25 at the two peaks
    assert float(g_exp[0, 0]) == pytest.approx(-0.25, abs=1e-6) and float(g_exp[0, MAX_BIN]) == pytest.approx(0.25)


def test_decode_random_forward_and_grad():
    """seed 002 2.3: st forward = argmax/999 ≠ exp forward; gradients identical to the expectation path."""
    torch.manual_seed(0)
    s = torch.randn(3, 4, NUM_BINS) * 3
    a, b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    x_exp, x_st = st.decode(a, "exp"), st.decode(b, "st")
    assert torch.equal(x_st.detach(), s.argmax(-1).float() / MAX_BIN)
    p = torch.softmax(s.double(), -1)
    assert torch.allclose(x_exp.double(), (p * torch.arange(NUM_BINS).double() / MAX_BIN).sum(-1), atol=1e-6)
    assert not torch.allclose(x_st, x_exp)
    w = torch.randn(3, 4)
    (ga,) = torch.autograd.grad((x_exp * w).sum(), a)
    (gb,) = torch.autograd.grad((x_st * w).sum(), b)
    assert torch.equal(ga, gb)


def test_embed_modes():
    """seed 002 2.2 / 9.3: `st` embed forward = E_c[argmax] (≠ soft), gradient to the logits = soft's (to E_c: soft's
    plus the upstream on the selected rows, since E_c[k*] is an ordinary lookup); `hard` passes no gradient to the
    logits; `soft` = P @ E_c."""
    torch.manual_seed(1)
    s0, e0 = torch.randn(5, NUM_BINS) * 2, torch.randn(NUM_BINS, 8)
    s0[2, 7] = s0[2, 9] = s0[2].max() + 1  # tie -> first index 7
    grads, outs = {}, {}
    for mode in ("soft", "st", "hard"):
        s, e = s0.clone().requires_grad_(True), e0.clone().requires_grad_(True)
        out = st.embed(s, e, mode, temperature=0.7)
        outs[mode] = out.detach()
        out.pow(2).sum().backward() if mode != "st" else (out * outs["soft"]).sum().backward()
        grads[mode] = (s.grad, e.grad)
    p = torch.softmax(s0 / 0.7, -1)
    assert torch.allclose(outs["soft"], p @ e0, atol=1e-5)
    k = s0.argmax(-1)
    assert int(k[2]) == 7
    assert torch.equal(outs["st"], e0[k]) and torch.equal(outs["hard"], e0[k])
    assert not torch.allclose(outs["st"], outs["soft"])
    # gradient of st with upstream g equals soft's with the same upstream g
    s, e = s0.clone().requires_grad_(True), e0.clone().requires_grad_(True)
    (st.embed(s, e, "soft", 0.7) * outs["soft"]).sum().backward()
    assert torch.equal(grads["st"][0], s.grad)
    lookup = torch.zeros_like(e0).index_add_(0, k, outs["soft"])
    assert torch.allclose(grads["st"][1], e.grad + lookup, atol=1e-6)
    assert grads["hard"][0] is None or float(grads["hard"][0].abs().sum()) == 0.0


def test_bad_modes_and_shapes_fail():
    """seed 002 2.1: unknown modes list the accepted values; wrong last dim fails."""
    with pytest.raises(ValueError, match="accepted values: exp, st"):
        st.decode(torch.zeros(2, NUM_BINS), "argmax")
    with pytest.raises(ValueError, match="hard, soft, st"):
        st.embed(torch.zeros(2, NUM_BINS), torch.zeros(NUM_BINS, 3), "mix")
    with pytest.raises(ValueError, match="last dim"):
        st.decode(torch.zeros(2, NUM_BINS - 1), "exp")
    assert math.isclose(float(st.decode(torch.zeros(NUM_BINS), "exp")), 0.5, abs_tol=1e-6)
