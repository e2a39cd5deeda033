"""Coord-distribution loss math (SPEC §2.3, §2.4, §4.2 coord_reg, §5 expectation decode).

Golden values come from (a) hand calculation, (b) ``scipy.stats.wasserstein_distance`` / ``scipy.special`` and
(c) ``_reference``: an independent float64 re-implementation of the SPEC formulas written out term by term in this
file (explicit sanitisation with ``torch.where``, explicit Gaussian, explicit CDF sums), differentiated by autograd.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from coordexp_swift.losses import blocks
from coordexp_swift.losses import coord_dist as cd

V = 1300  # small vocabulary: 300 "text" ids + 1000 coord ids placed non-contiguously
ALL_TERMS = {"soft_ce", "w1", "coord_ce", "coord_gate", "entropy"}


def _coord_ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(V, generator=g)[:1000]  # bin k -> a random vocab id; order matters


def _non_coord_mask(coord_ids: torch.Tensor) -> torch.Tensor:
    m = torch.ones(V, dtype=torch.bool)
    m[coord_ids] = False
    return m


def _logits(n: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * scale


def _reference(full: torch.Tensor, coord_ids: torch.Tensor, bins: torch.Tensor, tau: float, sigma: float,
               truncate: int | None) -> dict[str, torch.Tensor]:
    """Float64 SPEC §2.3 formulas, one line each (independent of the package)."""
    z = full.double()
    z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
    z = torch.where(z > 1e4, torch.full_like(z, 1e4), z)
    z = torch.where(z < -1e4, torch.full_like(z, -1e4), z)
    s = z[:, coord_ids] / tau
    logp = s - torch.logsumexp(s, -1, keepdim=True)
    p = logp.exp()
    k = torch.arange(1000, dtype=torch.float64)
    d = k[None, :] - bins[:, None].double()
    w = torch.exp(-d ** 2 / (2 * sigma ** 2))
    if truncate is not None:
        w = torch.where(d.abs() > truncate, torch.zeros_like(w), w)
    q = w / w.sum(-1, keepdim=True)
    fp, fq = torch.cumsum(p, -1), torch.cumsum(q, -1)
    return {
        "soft_ce": -(q * logp).sum(-1),
        "w1": (fp - fq).abs().sum(-1) / 999,
        "coord_ce": -logp[torch.arange(len(bins)), bins],
        "coord_gate": torch.clamp(torch.logsumexp(z / tau, -1) - torch.logsumexp(s, -1), min=0),
        "entropy": -(p * logp).sum(-1),
    }


# --------------------------------------------------------------------------------------------- sanitisation
def test_sanitize_logits_values():
    """seed 000 1.2 (§2.4): NaN -> 0, ±inf -> ±1e4, clamp ±1e4, float32 out for bf16/fp16/fp32 in."""
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.tensor([float("nan"), float("inf"), float("-inf"), 3.0, -2.0e4 if dt != torch.float16 else -6e4,
                          -5.0], dtype=dt)
        y = cd.sanitize_logits(x)
        assert y.dtype == torch.float32
        assert y.tolist() == [0.0, 1e4, -1e4, 3.0, -1e4, -5.0]


def _dirty(n: int, dt: torch.dtype, coord_ids: torch.Tensor) -> torch.Tensor:
    x = _logits(n, seed=3)
    x[0, coord_ids[5]] = float("nan")
    x[1, coord_ids[7]] = float("inf")
    x[2, coord_ids[9]] = float("-inf")
    x[3, 11 if not bool((coord_ids == 11).any()) else int(_non_coord_mask(coord_ids).nonzero()[0])] = float("inf")
    x[4, :] = float("nan")
    x[5, coord_ids] = float("-inf")  # all coord logits -inf, text finite
    x[6, int(_non_coord_mask(coord_ids).nonzero()[1])] = 5e4 if dt != torch.float16 else float("inf")
    return x.to(dt)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_helpers_finite_on_nan_inf_low_precision(dt):
    """seed 000 1.2: every helper is finite (values and grads) on NaN/inf bf16/fp16 logits, and equals the float64
    reference computed on the explicitly sanitised logits."""
    cid = _coord_ids()
    x = _dirty(8, dt, cid).requires_grad_()
    bins = torch.tensor([0, 999, 500, 3, 996, 17, 250, 750])
    out = cd.coord_terms(x, cid, bins, temperature=0.7, sigma=2.0, truncate=None, want=ALL_TERMS)
    ref = _reference(x.detach(), cid, bins, 0.7, 2.0, None)
    for name in ALL_TERMS:
        assert out[name].dtype == torch.float32 and torch.isfinite(out[name]).all(), name
        torch.testing.assert_close(out[name].double(), ref[name], rtol=1e-4, atol=1e-4, msg=name)
    sl = x[:, cid]
    tg = cd.text_gate(x, cid, 0.7)
    others = [cd.coord_gate(x, cid, 0.7), tg, cd.expectation_decode(sl), cd.entropy(sl), cd.coord_ce(sl, bins),
              cd.soft_ce(sl, cd.gaussian_soft_labels(bins, 2.0)), cd.w1_cdf(cd.coord_probs(sl), cd.coord_probs(sl)),
              cd.expected_l1(sl, bins / 999), cd.expected_huber(sl, bins / 999, 0.001)]
    for o in others:
        assert o.dtype == torch.float32 and torch.isfinite(o).all()
    total = sum(v.sum() for v in out.values()) + sum(o.sum() for o in others)
    total.backward()
    assert x.grad.dtype == dt and torch.isfinite(x.grad.float()).all()
    # entries replaced by sanitisation get zero gradient (like autograd through nan_to_num + clamp)
    g = x.grad.float()
    assert g[0, cid[5]] == 0 and g[1, cid[7]] == 0 and g[2, cid[9]] == 0 and torch.all(g[4] == 0)
    assert torch.all(g[5, cid] == 0)


@pytest.mark.parametrize("block_rows", [None, 3])
def test_fused_gradient_matches_reference_including_dirty_rows(block_rows, monkeypatch):
    """seed 000 1.2 / 1.3: the fused coord_terms backward equals float64 autograd through the SPEC formulas, also
    on rows with NaN/inf/out-of-range entries (which get zero gradient), with one row block or several (3 rows per
    block: clean and dirty blocks mixed)."""
    if block_rows is not None:
        monkeypatch.setattr(blocks, "_BLOCK_ELEMS", block_rows * V)
    cid = _coord_ids(1)
    x = _dirty(8, torch.float32, cid)
    bins = torch.tensor([0, 999, 500, 3, 996, 17, 250, 750])
    wts = {"soft_ce": 0.3, "w1": 2.0, "coord_ce": 0.5, "coord_gate": 1.5, "entropy": 0.25}
    a = x.clone().requires_grad_()
    out = cd.coord_terms(a, cid, bins, temperature=1.3, sigma=1.5, truncate=4, want=ALL_TERMS)
    sum(wts[k] * out[k].sum() for k in wts).backward()
    b = x.double().requires_grad_()
    ref = _reference(b, cid, bins, 1.3, 1.5, 4)
    sum(wts[k] * ref[k].sum() for k in wts).backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_retained_graph_second_backward_is_identical():
    """§2.4 (robustness): backward keeps no state it consumes (it recomputes exp block by block), so a second
    backward through a retained graph yields the same gradient."""
    cid = _coord_ids()
    x = _logits(6).requires_grad_()
    out = cd.coord_terms(x, cid, torch.arange(6) * 150, want={"coord_gate", "w1"})
    loss = out["coord_gate"].sum() + out["w1"].sum()
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2)


# --------------------------------------------------------------------------------------------- soft labels
@pytest.mark.parametrize("sigma,truncate", [(2.0, None), (0.5, None), (5.0, 3), (2.0, 0), (30.0, None)])
def test_soft_labels_unimodal_normalised_peak_at_target(sigma, truncate):
    """seed 000 1.7: q is unimodal, sums to 1, peaks at the target, incl. edge targets b = 0 and b = 999; values
    equal the hand formula exp(−(k−b)²/2σ²)/Z with the truncation zeros."""
    bins = torch.tensor([0, 1, 2, 499, 500, 997, 998, 999])
    q = cd.gaussian_soft_labels(bins, sigma, truncate)
    assert q.shape == (8, 1000) and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(-1), torch.ones(8), rtol=0, atol=1e-6)
    assert torch.equal(q.argmax(-1), bins)
    for i, b in enumerate(bins.tolist()):
        row = q[i].double()
        assert torch.all(row[1:b + 1] >= row[:b]) and torch.all(row[b + 1:] <= row[b:-1])  # unimodal
        ks = np.arange(1000)
        w = np.exp(-(ks - b) ** 2 / (2 * sigma ** 2))
        if truncate is not None:
            w[np.abs(ks - b) > truncate] = 0.0
        np.testing.assert_allclose(row.numpy(), w / w.sum(), rtol=1e-5, atol=1e-7)
        if truncate is not None:
            assert torch.all(row[(torch.arange(1000) - b).abs() > truncate] == 0)
    if truncate == 0:
        assert torch.equal(q, torch.nn.functional.one_hot(bins, 1000).float())


def test_soft_labels_edge_renormalisation_raises_peak():
    """SPEC §2.3 edge targets: the cut kernel is renormalised, so the edge peak is higher than an interior one.
    Hand value at σ=2: Z_edge = Σ_{k≥0} e^{−k²/8} = 3.00662..., Z_mid = Σ_k e^{−k²/8} = 2·Z_edge − 1 = 5.01325...,
    so q_0(0)/q_500(500) = Z_mid/Z_edge = 1.6674 ("roughly doubles")."""
    q = cd.gaussian_soft_labels(torch.tensor([0, 500, 999]), 2.0)
    z_edge = sum(math.exp(-k * k / 8) for k in range(1000))
    assert q[0, 0].item() == pytest.approx(1 / z_edge, rel=1e-6)
    assert (q[0, 0] / q[1, 500]).item() == pytest.approx((2 * z_edge - 1) / z_edge, rel=1e-5)
    assert q[2, 999].item() == pytest.approx(q[0, 0].item(), rel=1e-6)  # symmetric edges


def test_soft_labels_validation(monkeypatch):
    """§2.1 knobs: σ > 0, truncate null or int >= 0, bins within 0..999 (the range check reads the values: it runs
    under the debug flag, issue 8 item 5)."""
    monkeypatch.setattr(cd, "DEBUG_CHECKS", True)
    b = torch.tensor([3])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="target_sigma"):
            cd.gaussian_soft_labels(b, bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="target_truncate"):
            cd.gaussian_soft_labels(b, 2.0, bad)
    for bad in (torch.tensor([1000]), torch.tensor([-1])):
        with pytest.raises(ValueError, match="norm1000 range 0..999"):
            cd.gaussian_soft_labels(bad, 2.0)


# --------------------------------------------------------------------------------------------- W1
def test_w1_between_deltas_is_bin_distance_over_999():
    """seed 000 1.7: W1(δ_i, δ_j) = |i − j|/999 (normalised units), incl. the full range 0 ↔ 999 = 1.0."""
    pairs = torch.tensor([[0, 999], [0, 0], [3, 10], [998, 999], [500, 123], [999, 0]])
    eye = torch.eye(1000)
    w = cd.w1_cdf(eye[pairs[:, 0]], eye[pairs[:, 1]])
    expect = (pairs[:, 0] - pairs[:, 1]).abs().double() / 999
    torch.testing.assert_close(w.double(), expect, rtol=0, atol=1e-7)
    assert w[0].item() == pytest.approx(1.0, abs=1e-7)


def test_w1_self_distance_zero_and_symmetric():
    """seed 000 1.7 / §2.4: W1(p, p) = 0 within 1e-6 (random p, also p from logits in bf16); W1 is symmetric."""
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(torch.randn(16, 1000, generator=g) * 4, -1)
    assert cd.w1_cdf(p, p).abs().max().item() <= 1e-6
    pb = cd.coord_probs(torch.randn(4, 1000, generator=g).bfloat16())
    assert cd.w1_cdf(pb, pb).abs().max().item() <= 1e-6
    q = torch.softmax(torch.randn(16, 1000, generator=g), -1)
    assert torch.allclose(cd.w1_cdf(p, q), cd.w1_cdf(q, p), atol=1e-7)


def test_w1_matches_scipy_wasserstein():
    """seed 000 1.7: W1 equals scipy.stats.wasserstein_distance with support k/999 and weights p, q."""
    rng = np.random.default_rng(7)
    support = np.arange(1000) / 999
    for sharp in (0.3, 3.0, 20.0):
        p_np = scipy.special.softmax(rng.normal(size=(6, 1000)) * sharp, axis=-1)
        q_np = scipy.special.softmax(rng.normal(size=(6, 1000)) * sharp, axis=-1)
        got = cd.w1_cdf(torch.tensor(p_np, dtype=torch.float32), torch.tensor(q_np, dtype=torch.float32))
        want = [scipy.stats.wasserstein_distance(support, support, p_np[i], q_np[i]) for i in range(6)]
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=2e-6)


# --------------------------------------------------------------------------------------------- CE-type terms
def test_soft_ce_and_coord_ce_values():
    """§2.3: softCE = −Σ q log softmax(s/τ); CEc = −log p(b). Golden via scipy.special.log_softmax in float64."""
    g = torch.Generator().manual_seed(5)
    s = torch.randn(5, 1000, generator=g) * 2
    bins = torch.tensor([0, 999, 10, 500, 777])
    tau = 0.8
    q = cd.gaussian_soft_labels(bins, 2.0)
    logp = scipy.special.log_softmax(s.double().numpy() / tau, axis=-1)
    np.testing.assert_allclose(cd.soft_ce(s, q, tau).numpy(), -(q.double().numpy() * logp).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(cd.coord_ce(s, bins, tau).numpy(), -logp[np.arange(5), bins.numpy()], rtol=1e-5)
    # truncate=0 makes q one-hot, so softCE reduces to the hard coord CE
    q0 = cd.gaussian_soft_labels(bins, 2.0, truncate=0)
    torch.testing.assert_close(cd.soft_ce(s, q0, tau), cd.coord_ce(s, bins, tau))


def test_gates_values():
    """§2.3: gate = max(0, LSE(z/τ) − LSE(s/τ)) = −log p_coord; text gate = −log(clamp(1 − p_coord, 1e-6, 1)).
    Golden via scipy.special.logsumexp in float64."""
    cid = _coord_ids(2)
    x = _logits(6, seed=6)
    x[0, cid] += 30.0  # p_coord ≈ 1: 1 − p_coord ≈ 1.6e-6 at τ = 2.5 (just above the floor), < 1e-6 at τ = 1
    x[1, cid] -= 30.0  # p_coord ≈ 0: coord gate large, text gate ≈ 0
    for tau in (1.0, 2.5):
        z = x.double().numpy() / tau
        lse_full = scipy.special.logsumexp(z, axis=-1)
        lse_c = scipy.special.logsumexp(z[:, cid.numpy()], axis=-1)
        gate = cd.coord_gate(x, cid, tau)
        np.testing.assert_allclose(gate.numpy(), np.maximum(lse_full - lse_c, 0), rtol=1e-5, atol=1e-5)
        p_text = -np.expm1(lse_c - lse_full)  # 1 − p_coord
        tg = cd.text_gate(x, cid, tau)
        # rtol 1e-4: near the floor (1 − p_coord ≈ 1.6e-6) the fp32 exp() rounding of the coord terms (~6e-8
        # relative) is amplified by 1/(1 − p_coord); the float64 LSE pairing keeps it at ~3e-5 relative.
        np.testing.assert_allclose(tg.numpy(), -np.log(np.clip(p_text, 1e-6, 1)), rtol=1e-4, atol=1e-5)
        assert torch.all(gate >= 0)
    assert cd.text_gate(x, cid)[0].item() == pytest.approx(-math.log(1e-6), rel=1e-6)
    # coord-only vocabulary: p_coord = 1, gate 0 up to fp32 exp() rounding of the work buffer, never negative
    g0 = cd.coord_gate(torch.randn(3, 1000), torch.arange(1000))
    assert torch.all(g0 >= 0) and g0.max().item() < 1e-7


def test_entropy_values():
    """§4.2 entropy = −Σ P log P: uniform logits -> log(1000); one dominant bin -> ~0."""
    ent = cd.entropy(torch.zeros(2, 1000))
    torch.testing.assert_close(ent, torch.full((2,), math.log(1000)))
    peaked = torch.zeros(1, 1000)
    peaked[0, 3] = 100.0
    assert cd.entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------- expectation decode
def test_expectation_decode_spec_checks():
    """seed 001 1.7.6 / 001 1.4.1 / §5: P(0) = P(999) = 0.5 -> 0.5; all mass on bin 999 (GT 999) -> 1.0;
    always within [0, 1]; expectation of bin k alone = k/999. Seed rows: seed 001 1.7.6, seed 001 1.4.1."""
    two = torch.full((1000,), -1e4)
    two[0] = two[999] = 0.0
    assert cd.expectation_decode(two).item() == pytest.approx(0.5, abs=1e-6)
    top = torch.full((1000,), -1e4)
    top[999] = 0.0
    assert cd.expectation_decode(top).item() == 1.0
    bot = torch.full((1000,), -1e4)
    bot[0] = 0.0
    assert cd.expectation_decode(bot).item() == 0.0
    one = torch.full((3, 1000), -1e4)
    one[torch.arange(3), torch.tensor([1, 500, 998])] = 0.0
    torch.testing.assert_close(cd.expectation_decode(one).double(),
                               torch.tensor([1 / 999, 500 / 999, 998 / 999], dtype=torch.float64), rtol=0, atol=1e-7)
    g = torch.Generator().manual_seed(9)
    r = cd.expectation_decode(torch.randn(2, 7, 1000, generator=g) * 10, temperature=0.5)
    assert r.shape == (2, 7) and torch.all((r >= 0) & (r <= 1))
    # the decoded value lives in [0, 1] space: comparing with GT 999 means comparing with decode(999) = 1.0
    assert cd.expected_l1(top[None], torch.tensor([1.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_expected_l1_and_huber_brute_force():
    """§4.2 el1 = Σ_k P(k)|k/999 − g|, ehuber = Σ_k P(k) Huber_δ(k/999 − g); golden: explicit float64 loops."""
    g = torch.Generator().manual_seed(11)
    s = torch.randn(3, 1000, generator=g) * 3
    tgt = torch.tensor([0.0, 0.5, 1.0])
    delta = 0.05
    p = scipy.special.softmax(s.double().numpy(), axis=-1)
    k = np.arange(1000) / 999
    el1 = [float(np.sum(p[i] * np.abs(k - tgt[i].item()))) for i in range(3)]
    r = [np.abs(k - tgt[i].item()) for i in range(3)]
    hub = [float(np.sum(p[i] * np.where(r[i] < delta, 0.5 * r[i] ** 2, delta * (r[i] - 0.5 * delta))))
           for i in range(3)]
    np.testing.assert_allclose(cd.expected_l1(s, tgt).numpy(), el1, rtol=1e-5)
    np.testing.assert_allclose(cd.expected_huber(s, tgt, delta).numpy(), hub, rtol=1e-5)
    with pytest.raises(ValueError, match="coord_huber_delta"):
        cd.expected_huber(s, tgt, 0.0)


# --------------------------------------------------------------------------------------------- fused terms
@pytest.mark.parametrize("tau,sigma,truncate", [(1.0, 2.0, None), (0.5, 3.0, 2), (2.0, 1.0, 0)])
def test_coord_terms_equal_standalone_and_reference(tau, sigma, truncate):
    """§2.3: the fused coord_terms equals the standalone functions and the float64 reference, for each subset."""
    cid = _coord_ids()
    x = _logits(7, seed=12)
    bins = torch.tensor([0, 999, 1, 998, 500, 42, 900])
    ref = _reference(x, cid, bins, tau, sigma, truncate)
    out = cd.coord_terms(x, cid, bins, temperature=tau, sigma=sigma, truncate=truncate, want=ALL_TERMS)
    assert set(out) == ALL_TERMS
    for name in ALL_TERMS:
        torch.testing.assert_close(out[name].double(), ref[name], rtol=1e-5, atol=2e-5, msg=name)
    s = x[:, cid]
    q = cd.gaussian_soft_labels(bins, sigma, truncate)
    standalone = {"soft_ce": cd.soft_ce(s, q, tau), "w1": cd.w1_cdf(cd.coord_probs(s, tau), q),
                  "coord_ce": cd.coord_ce(s, bins, tau), "coord_gate": cd.coord_gate(x, cid, tau),
                  "entropy": cd.entropy(s, tau)}
    for name in ALL_TERMS:
        torch.testing.assert_close(out[name], standalone[name], rtol=1e-5, atol=1e-6, msg=name)
        only = cd.coord_terms(x, cid, bins, temperature=tau, sigma=sigma, truncate=truncate, want={name})
        assert set(only) == {name}
        torch.testing.assert_close(only[name], out[name], rtol=0, atol=1e-6, msg=name)


def test_coord_losses_ignore_non_coord_logits():
    """seed 000 1.3 / 000 1.7: softCE, W1, coord CE and entropy are unchanged when the non-coord logits at coord
    positions change, and give exactly zero gradient to them; only the coord gate reads (and grads) them."""
    cid = _coord_ids()
    text = _non_coord_mask(cid)
    bins = torch.tensor([0, 999, 321, 654])
    x1 = _logits(4, seed=13)
    x2 = x1.clone()
    x2[:, text] = torch.randn(4, int(text.sum())) * 50  # wildly different text logits, same coord logits
    non_gate = ALL_TERMS - {"coord_gate"}
    o1 = cd.coord_terms(x1, cid, bins, want=ALL_TERMS)
    o2 = cd.coord_terms(x2, cid, bins, want=ALL_TERMS)
    for name in non_gate:
        assert torch.equal(o1[name], o2[name]), name
    assert not torch.allclose(o1["coord_gate"], o2["coord_gate"])
    for want in (non_gate, ALL_TERMS):  # gate computed in the same fused call but not used in the loss
        x = x1.clone().requires_grad_()
        out = cd.coord_terms(x, cid, bins, want=want)
        sum(out[n].sum() for n in non_gate).backward()
        assert torch.all(x.grad[:, text] == 0)
        assert x.grad[:, cid].abs().sum() > 0
    x = x1.clone().requires_grad_()
    cd.coord_terms(x, cid, bins, want={"coord_gate"})["coord_gate"].sum().backward()
    assert x.grad[:, text].abs().sum() > 0  # the gate is defined on the full LSE
    # standalone helpers take the coord slice, so they cannot see text logits at all
    xs = x1.clone().requires_grad_()
    sl = xs[:, cid]
    (cd.soft_ce(sl, cd.gaussian_soft_labels(bins, 2.0)).sum() + cd.coord_ce(sl, bins).sum()
     + cd.w1_cdf(cd.coord_probs(sl), cd.gaussian_soft_labels(bins, 2.0)).sum()).backward()
    assert torch.all(xs.grad[:, text] == 0)


def test_empty_positions_give_exact_zero_connected_to_graph():
    """§2.4: empty C gives [0] outputs whose sum is exactly 0.0 and stays connected to the input graph."""
    cid = _coord_ids()
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(0, V, dtype=dt, requires_grad=True)
        out = cd.coord_terms(x, cid, torch.zeros(0, dtype=torch.long), want=ALL_TERMS)
        outs = list(out.values()) + [cd.coord_gate(x, cid), cd.text_gate(x, cid)]
        for o in outs:
            assert o.shape == (0,) and o.dtype == torch.float32
            assert o.sum().item() == 0.0 and o.sum().requires_grad and o.sum().grad_fn is not None
        loss = sum(o.sum() for o in outs)
        loss.backward()
        assert x.grad is not None and x.grad.shape == (0, V)


@pytest.mark.parametrize("block_rows", [None, 1])
def test_bf16_input_gives_bf16_grad_and_fp32_math(block_rows, monkeypatch):
    """§2.4: bf16 logits are computed in fp32 (equal to the fp32 result on the same values) with bf16 gradients
    (one row block, or one row per block through the fp32 work block)."""
    if block_rows is not None:
        monkeypatch.setattr(blocks, "_BLOCK_ELEMS", block_rows * V)
    cid = _coord_ids()
    bins = torch.tensor([5, 995, 400])
    xb = _logits(3, seed=14).bfloat16().requires_grad_()
    xf = xb.detach().float().requires_grad_()
    ob = cd.coord_terms(xb, cid, bins, want=ALL_TERMS)
    of = cd.coord_terms(xf, cid, bins, want=ALL_TERMS)
    for name in ALL_TERMS:
        torch.testing.assert_close(ob[name], of[name], rtol=0, atol=0, msg=name)
    sum(v.sum() for v in ob.values()).backward()
    sum(v.sum() for v in of.values()).backward()
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad.float(), xf.grad.bfloat16().float(), rtol=0, atol=0)


def test_validation_errors(monkeypatch):
    """§2.1 / contracts: unknown term names list the known ones; bad τ, shapes and bins raise ValueError. Checks on
    values (bins range, coord-id range) need a device read: they run only under ``DEBUG_CHECKS`` (issue 8 item 5),
    so without it out-of-range bins pass unchecked."""
    cid = _coord_ids()
    x = _logits(2)
    monkeypatch.setattr(cd, "DEBUG_CHECKS", False)
    cd.coord_terms(x, cid, torch.tensor([1, 1000]).clamp(max=999), want={"soft_ce"})
    cd.gaussian_soft_labels(torch.tensor([1000]), 2.0)  # no value check (and no host sync) without the flag
    monkeypatch.setattr(cd, "DEBUG_CHECKS", True)
    with pytest.raises(ValueError, match="coord_ids must index the vocabulary"):
        cd.coord_terms(x, torch.arange(1000) + V - 999, torch.tensor([1, 2]), want={"w1"})
    cid = _coord_ids()
    x = _logits(2)
    b = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"unknown coord term\(s\) \['gate'\]; known: \['coord_ce'"):
        cd.coord_terms(x, cid, b, want={"gate", "w1"})
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            cd.coord_terms(x, cid, b, temperature=bad, want={"w1"})
    with pytest.raises(ValueError, match="norm1000 range 0..999"):
        cd.coord_terms(x, cid, torch.tensor([1, 1000]), want={"soft_ce"})
    with pytest.raises(ValueError, match="target_bins must be"):
        cd.coord_terms(x, cid, torch.tensor([1.0, 2.0]), want={"coord_ce"})
    with pytest.raises(ValueError, match="coord_ids"):
        cd.coord_terms(x, cid[:999], b, want={"w1"})
    with pytest.raises(ValueError, match="last dim 1000"):
        cd.entropy(torch.zeros(2, 999))


# --------------------------------------------------------------------------------------------- edge-target minimiser
@pytest.fixture
def one_thread():
    """Tiny tensors + many steps: intra-op threads only add barrier waits (badly so on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _minimise(bins: torch.Tensor, truncate: int | None, steps: int = 200) -> torch.Tensor:
    """Free logits [N,1000] (coord-only vocabulary) trained by Adam on softCE + W1 (σ = 2); returns P.

    lr 1.0 with β2 = 0.99 converges in 200 steps (far-bin logits keep falling; W1(p, q) ~1e-6 at the end)."""
    z = torch.zeros(len(bins), 1000, requires_grad=True)
    opt = torch.optim.Adam([z], lr=1.0, betas=(0.9, 0.99))
    ids = torch.arange(1000)
    for _ in range(steps):
        out = cd.coord_terms(z, ids, bins, sigma=2.0, truncate=truncate, want={"soft_ce", "w1"})
        loss = out["soft_ce"].sum() + out["w1"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(z.detach().double(), -1)


def _half_kernel_mean(sigma: float, truncate: int | None) -> float:
    """Hand value: mean distance (bins) from an edge target of the renormalised edge kernel, Σ k w_k / Σ w_k."""
    ks = range(1000 if truncate is None else truncate + 1)
    w = [math.exp(-k * k / (2 * sigma * sigma)) for k in ks]
    return sum(k * wk for k, wk in zip(ks, w)) / sum(w)


def test_edge_target_minimiser_does_not_drift_to_the_edge(one_thread):
    """SPEC §2.3 edge targets (seed 000 1.7 follow-up): minimise softCE + W1 over free logits for targets
    b = 0 and b = 999 with σ = 2 (200 Adam steps) and look at where the minimiser's mass sits.

    Findings (documented, asserted):
    - Both terms are minimised by p = q, and Adam reaches it (W1(p, q) < 2e-5, i.e. < 0.02 bin).
    - The mode stays exactly at the target (argmax = b), so greedy decoding of a *trained-to-optimum* position does
      not drift; the renormalised edge kernel does not pull the minimiser beyond/towards bin 0 or 999.
    - The expectation is biased *inwards* (away from the edge), by the mean of the one-sided kernel:
      Σ k e^{−k²/8} / Σ e^{−k²/8} = 1.302 bins at σ = 2 (hand value from the formula). That is more than the
      1-bin budget for the expectation (decode used by Stage-2 geometry), so with untruncated σ = 2 an edge
      expectation lands ~1.3 bins inside the image.
    - ``target_truncate = 2`` brings the edge bias to 0.842 bins (within 1 bin); σ = 1 would give 0.52 bins.
    - An interior target (b = 500) has no bias (symmetric kernel).
    So the calibration run's collapse to <|coord_0|> is not explained by the per-target optimum of these losses;
    it must come from elsewhere (e.g. the marginal a non-localising model fits, or decoding without the gate).
    """
    bins = torch.tensor([0, 999, 500])
    p = _minimise(bins, None)
    q = cd.gaussian_soft_labels(bins, 2.0).double()
    assert cd.w1_cdf(p, q).max().item() < 2e-5
    assert torch.equal(p.argmax(-1), bins)
    e = (p * torch.arange(1000, dtype=torch.float64)).sum(-1)  # expectation in bins
    bias = _half_kernel_mean(2.0, None)
    assert bias == pytest.approx(1.302, abs=1e-3)
    assert e[0].item() == pytest.approx(0 + bias, abs=0.02)      # inward from bin 0
    assert e[1].item() == pytest.approx(999 - bias, abs=0.02)    # inward from bin 999
    assert e[2].item() == pytest.approx(500.0, abs=0.02)
    assert abs(e[0].item() - 0) > 1.0  # the 1-bin budget is exceeded by the untruncated kernel at σ = 2
    pt = _minimise(bins[:2], 2)
    et = (pt * torch.arange(1000, dtype=torch.float64)).sum(-1)
    bias_t = _half_kernel_mean(2.0, 2)
    assert bias_t == pytest.approx(0.842, abs=1e-3)
    assert torch.equal(pt.argmax(-1), bins[:2])
    assert et[0].item() == pytest.approx(bias_t, abs=0.02) and et[0].item() < 1.0
    assert et[1].item() == pytest.approx(999 - bias_t, abs=0.02) and 999 - et[1].item() < 1.0


def test_losses_import_only_torch_and_math():
    """Layering (ARCHITECTURE §2): losses/coord_dist.py, losses/bbox.py and losses/token_ce.py import only torch,
    math and other ``coordexp_swift.losses`` modules (the shared row-block size)."""
    import ast
    import inspect

    from coordexp_swift.losses import bbox
    from coordexp_swift.losses import token_ce as tce
    from tests.layering import top_level_imports

    for mod in (cd, bbox, tce):
        mods = top_level_imports(mod)
        assert mods <= {"torch", "math", "coordexp_swift"}, (mod.__name__, mods)
        own = {n.module for n in ast.walk(ast.parse(inspect.getsource(mod)))
               if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("coordexp_swift")}
        assert all(m.startswith("coordexp_swift.losses.") for m in own), (mod.__name__, own)


# --------------------------------------------------------------------------------------------- blocked token CE
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_rows", [None, 2])
def test_blocked_token_ce_equals_float64_reference_with_dirty_rows(dt, block_rows, monkeypatch):
    """issue 8 item 6 / SPEC §4.4: ``losses.token_ce.token_ce_rows`` (blocked, no fp32 [N, V] copy) equals a
    float64 autograd reference ``logsumexp(z) − z[target]`` on explicitly sanitised logits (NaN -> 0, ±inf ->
    ±1e4, clamp), values and gradients, with one block or 2 rows per block; replaced entries get zero gradient and
    the gradient keeps the input dtype."""
    from coordexp_swift.losses import token_ce as tce

    if block_rows is not None:
        monkeypatch.setattr(blocks, "_BLOCK_ELEMS", block_rows * V)
    cid = _coord_ids(2)
    x = _dirty(7, dt, cid)
    targets = torch.tensor([0, 5, cid[3].item(), 17, 1299, 2, 640])
    a = x.clone().requires_grad_()
    ce = tce.token_ce_rows(a, targets)
    assert ce.dtype == torch.float32 and ce.shape == (7,)
    wts = torch.linspace(0.5, 2.0, 7)
    (ce * wts).sum().backward()
    z = x.double().requires_grad_()
    zs = torch.where(torch.isnan(z), torch.zeros_like(z), z)
    zs = torch.where(zs > 1e4, torch.full_like(zs, 1e4), zs)
    zs = torch.where(zs < -1e4, torch.full_like(zs, -1e4), zs)
    ref = torch.logsumexp(zs, -1) - zs[torch.arange(7), targets]
    (ref * wts.double()).sum().backward()
    torch.testing.assert_close(ce.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    assert a.grad.dtype == dt
    tol = dict(rtol=1e-4, atol=1e-6) if dt == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(a.grad.double(), z.grad.to(dt).double(), **tol)
    bad = ~(x.float().abs() <= 1e4)
    assert bad.any() and torch.all(a.grad[bad] == 0)
    assert tce.token_ce_rows(torch.zeros(0, V, requires_grad=True), torch.zeros(0, dtype=torch.long)).shape == (0,)


# ------------------------------------------------------------------------- edge collapse of a non-localising model
def _lattice_x1_marginal(image_size: int = 128, side_px: tuple[int, int] = (26, 51)) -> tuple[list[int], list[float]]:
    """Exact GT x1 marginal of a shapes image (one square of side ~ U{side_px}, left edge x0 ~ U{0..size−side}):
    bins round(999·x0/(size−1)), written out independently of the codec (pixel lattice: 999/127 = 7.87 bins apart)."""
    mass: dict[int, float] = {}
    sides = range(side_px[0], side_px[1] + 1)
    for s in sides:
        for x0 in range(image_size - s + 1):
            b = int(math.floor(999 * x0 / (image_size - 1) + 0.5))
            mass[b] = mass.get(b, 0.0) + 1.0 / (len(sides) * (image_size - s + 1))
    return sorted(mass), [mass[b] for b in sorted(mass)]


def _mixture_mode(bins: list[int], mass: list[float], sigma: float) -> int:
    """argmax_k Σ_b m_b·q_b(k), q_b the range-cut, renormalised Gaussian (numpy, not the project's helper): the
    minimiser of the expected softCE over the marginal (E_b[−Σ q_b log p] is minimised by p = E_b[q_b])."""
    k = np.arange(1000, dtype=float)
    q = np.exp(-((k[None, :] - np.asarray(bins, float)[:, None]) ** 2) / (2 * sigma * sigma))
    q /= q.sum(1, keepdims=True)
    return int(np.argmax(np.asarray(mass) @ q))


@pytest.mark.parametrize("sigma,mode_bin", [(2.0, 0), (4.0, 1)])
def test_non_localising_model_decodes_to_the_edge_on_a_pixel_lattice(one_thread, sigma, mode_bin):
    """SPEC §2.3 edge targets (issue 11): where greedy outputs at <|coord_0|> come from.

    A model that cannot localise yet outputs one distribution p for every image: the minimiser of the expected
    softCE + W1 over the GT marginal. For the x1 of one square in a 128-px image that marginal *decreases* from
    the left edge (x0 ~ U{0..128−side}: small x0 fit every side), so its mode — what greedy decoding emits — is at
    the edge, while the mean is 352 bins. With σ = 2 the GT bins form a comb 999/127 = 7.87 bins apart and the
    renormalised edge tooth (×1.67, test above) is the highest: mode exactly bin 0. σ = 4 (≥ half the lattice
    spacing) merges the teeth and moves the mode to bin 1 only: a wider σ does not remove the edge outputs; a
    model that localises does (the per-target minimiser above keeps argmax = target).
    Golden mode: the numpy mixture (argmin of the expected softCE is p = E_b[q_b]); asserted: the Adam minimiser
    of softCE + W1 through the project's fused terms (exact expectation over the marginal) has that mode, and
    its expectation is the GT mean (352.0 bins by hand from the marginal) within 2 bins (W1 pulls it towards
    the median, 346)."""
    bins, mass = _lattice_x1_marginal()
    assert _mixture_mode(bins, mass, sigma) == mode_bin
    mean = sum(b * m for b, m in zip(bins, mass))
    assert mean == pytest.approx(352.0, abs=0.05)
    b = torch.tensor(bins)
    w = torch.tensor(mass, dtype=torch.float32)
    z = torch.zeros(1, 1000, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.5, betas=(0.9, 0.99))
    for _ in range(300):
        out = cd.coord_terms(z.expand(len(bins), 1000), torch.arange(1000), b, sigma=sigma, want={"soft_ce", "w1"})
        loss = (w * (out["soft_ce"] + out["w1"])).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = torch.softmax(z.detach().double()[0], -1)
    assert int(p.argmax()) == mode_bin
    assert (p * torch.arange(1000, dtype=torch.float64)).sum().item() == pytest.approx(mean, abs=2.0)
