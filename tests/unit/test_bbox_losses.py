"""Box losses on normalised xyxy boxes (SPEC §3.5; seed 001 1.4.2).

Golden values: hand calculations (shown inline) and torchvision.ops (``generalized_box_iou_loss``,
``complete_box_iou_loss``) as an independent implementation on canonical, non-degenerate boxes.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvo

from coordexp_swift.losses import bbox

LOSSES = {"smoothl1": bbox.smooth_l1, "l1": bbox.l1, "giou": bbox.giou_loss, "ciou": bbox.ciou_loss}


def _random_canonical(n: int, seed: int, min_side: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (1 - min_side)
    wh = min_side + torch.rand(n, 2, generator=g) * (1 - min_side - xy)
    return torch.cat([xy, xy + wh], dim=-1)


def test_canonicalize():
    """§3.5: x_lo, x_hi = min, max(x1, x2) (same for y), clamped to [0, 1]; fp32 out."""
    b = torch.tensor([[0.6, 0.7, 0.4, 0.1], [-0.5, 0.2, 1.5, 0.8], [0.3, 0.3, 0.3, 0.3],
                      [float("nan"), float("inf"), 0.5, float("-inf")]], dtype=torch.float64)
    c = bbox.canonicalize(b)
    assert c.dtype == torch.float32
    torch.testing.assert_close(c, torch.tensor([[0.4, 0.1, 0.6, 0.7], [0.0, 0.2, 1.0, 0.8], [0.3, 0.3, 0.3, 0.3],
                                                [0.0, 0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        bbox.canonicalize(torch.zeros(3, 5))


def test_hand_values_disjoint_and_identical():
    """seed 001 1.4.2: hand values. pred [0,0,.2,.2] vs gt [.4,.4,.6,.6]: IoU 0, enclosing 0.36, union 0.08 ->
    GIoU loss 1 + 0.28/0.36 = 1.7778; ρ² = 2·0.4² = 0.32, c² = 2·0.6² = 0.72, v = 0 -> CIoU loss 1.4444;
    all |Δ| = 0.4 -> SmoothL1 0.5·0.16 = 0.08, L1 0.4. Identical boxes give 0 for every loss."""
    p = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.1, 0.2, 0.5, 0.9]])
    g = torch.tensor([[0.4, 0.4, 0.6, 0.6], [0.1, 0.2, 0.5, 0.9]])
    assert bbox.giou_loss(p, g).tolist() == pytest.approx([1 + 0.28 / 0.36, 0.0], abs=1e-6)
    assert bbox.ciou_loss(p, g).tolist() == pytest.approx([1 + 0.32 / 0.72, 0.0], abs=1e-6)
    assert bbox.smooth_l1(p, g).tolist() == pytest.approx([0.08, 0.0], abs=1e-7)
    assert bbox.l1(p, g).tolist() == pytest.approx([0.4, 0.0], abs=1e-7)


def test_ciou_aspect_term_by_hand():
    """§3.5: nested boxes with different aspect. gt [0,0,.4,.2] (w/h = 2), pred [0,0,.2,.2] (w/h = 1):
    IoU = .04/.08 = .5, ρ² = .1² = .01, c² = .4² + .2² = .2, v = (4/π²)(atan 2 − atan 1)², α = v/(.5 + v + ε)."""
    p = torch.tensor([[0.0, 0.0, 0.2, 0.2]])
    g = torch.tensor([[0.0, 0.0, 0.4, 0.2]])
    v = 4 / math.pi ** 2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (1 - 0.5 + v + 1e-7)
    assert bbox.ciou_loss(p, g).item() == pytest.approx(1 - (0.5 - 0.01 / 0.2 - alpha * v), abs=1e-6)


def test_giou_matches_torchvision():
    """seed 001 1.4.2: GIoU loss = torchvision.ops.generalized_box_iou_loss on canonical non-degenerate boxes.
    Tolerance 1e-5: torchvision adds ε = 1e-7 to union and enclosing area, SPEC floors them at ε (max(·, ε)); with
    sides >= 0.05 the areas are >= 2.5e-3, so the difference is <= 1e-7/2.5e-3 = 4e-5 relative on ratios <= 1."""
    p, g = _random_canonical(256, 1), _random_canonical(256, 2)
    pa, pb = p.clone().requires_grad_(), p.clone().requires_grad_()
    ours = bbox.giou_loss(pa, g)
    ref = tvo.generalized_box_iou_loss(pb, g, reduction="none", eps=1e-7)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-4)


def test_ciou_matches_torchvision():
    """seed 001 1.4.2: CIoU loss value = torchvision.ops.complete_box_iou_loss on canonical non-degenerate boxes.
    Tolerance 1e-5 for the ε placement (torchvision: +ε on union and diagonal, unfloored w/h; SPEC: max(·, ε)
    floors). Gradients are not compared: torchvision detaches α, SPEC §3.5's formula does not."""
    p, g = _random_canonical(256, 3), _random_canonical(256, 4)
    ours = bbox.ciou_loss(p, g)
    ref = tvo.complete_box_iou_loss(p, g, reduction="none", eps=1e-7)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_smooth_l1_and_l1_match_torch():
    """§3.5: SmoothL1 (β = 1) and L1, mean over the 4 coords = torch.nn.functional with reduction none."""
    p, g = _random_canonical(64, 5), _random_canonical(64, 6)
    ref = torch.nn.functional.smooth_l1_loss(p, g, reduction="none", beta=1.0).mean(-1)
    torch.testing.assert_close(bbox.smooth_l1(p, g), ref)
    torch.testing.assert_close(bbox.l1(p, g), (p - g).abs().mean(-1))
    big = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # |Δ| = 1 on x2, y2 after clamp: 1 − 0.5 = 0.5 (linear branch)
    assert bbox.smooth_l1(big, torch.zeros(1, 4)).item() == pytest.approx((0 + 0 + 0.5 + 0.5) / 4)


def test_swapped_boxes_equal_canonical():
    """§3.5: losses canonicalise both boxes, so swapped corners give the canonical loss exactly."""
    p, g = _random_canonical(32, 7), _random_canonical(32, 8)
    p_sw = p[:, [2, 3, 0, 1]]
    g_sw = g[:, [2, 1, 0, 3]]
    for name, fn in LOSSES.items():
        assert torch.equal(fn(p_sw, g_sw), fn(p, g)), name


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_on_swapped_degenerate_out_of_range(dt):
    """seed 001 1.4.2: every loss and its gradient is finite for swapped, degenerate (zero width/height/area,
    identical points), out-of-range and non-finite boxes; fp32 outputs whatever the input dtype."""
    p = torch.tensor([[0.6, 0.6, 0.4, 0.4], [0.3, 0.3, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5], [-1.0, -2.0, 3.0, 4.0],
                      [0.2, 0.2, 0.2, 0.2], [1.2, 1.3, 1.5, 1.9], [float("nan"), 0.1, 0.5, float("inf")],
                      [0.0, 0.0, 0.0, 0.0]], dtype=dt).requires_grad_()
    g = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.4, 0.4],
                      [0.7, 0.7, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2], [1.0, 1.0, 1.0, 1.0]],
                     dtype=dt)
    total = 0
    for name, fn in LOSSES.items():
        out = fn(p, g)
        assert out.dtype == torch.float32 and out.shape == (8,) and torch.isfinite(out).all(), name
        assert torch.all(out >= 0), name
        total = total + out.sum()
    total.backward()
    assert torch.isfinite(p.grad.float()).all()
    # identical degenerate points: IoU = 0/ε = 0, no centre distance, v = 0 -> GIoU and CIoU losses are exactly 1
    assert bbox.giou_loss(p[2:3].detach(), g[2:3])[0].item() == 1.0
    assert bbox.ciou_loss(p[2:3].detach(), g[2:3])[0].item() == 1.0
    # out-of-range coordinates are clamped: [-1,-2,3,4] -> the unit box
    torch.testing.assert_close(bbox.giou_loss(p[3:4].detach(), g[3:4]),
                               bbox.giou_loss(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), g[3:4].float()))


def test_ranges_and_empty():
    """§3.5: GIoU loss in [0, 2], CIoU loss in [0, 3) on random (also swapped) boxes; N = 0 gives [0]."""
    g = torch.Generator().manual_seed(9)
    p, q = torch.rand(512, 4, generator=g) * 1.4 - 0.2, torch.rand(512, 4, generator=g)
    gi, ci = bbox.giou_loss(p, q), bbox.ciou_loss(p, q)
    assert torch.all((gi >= 0) & (gi <= 2)) and torch.all((ci >= 0) & (ci < 3))
    for fn in LOSSES.values():
        e = fn(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4))
        assert e.shape == (0,) and e.sum().item() == 0.0


def test_registry_and_shape_errors():
    """§3.5 / §6.1 bbox_geo: the registry names the four per-box losses; mismatched shapes raise ValueError."""
    assert set(bbox.BBOX_LOSSES) == {"smoothl1", "ciou", "l1", "giou"}
    with pytest.raises(ValueError, match="same shape"):
        bbox.l1(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"pred must be \[N, 4\]"):
        bbox.ciou_loss(torch.zeros(4), torch.zeros(4))
