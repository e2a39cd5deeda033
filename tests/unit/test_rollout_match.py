"""Hungarian matching (SPEC §3.6 B2). Goldens derived by hand in the comments; IoU checked against
torchvision.ops.box_iou; optimality checked against an exhaustive search over all partial assignments."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from coordexp_swift.rollout.match import GATED_COST, box_iou_bins, match_predictions

GT3 = [[0, 0, 100, 100], [200, 200, 300, 300], [500, 500, 700, 600]]


def test_iou_matches_torchvision_including_degenerate():
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 1000, size=(7, 2, 2)), axis=1).transpose(0, 2, 1).reshape(7, 4)  # x1<=x2, y1<=y2
    b = np.sort(rng.integers(0, 1000, size=(5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)
    a = a[:, [0, 2, 1, 3]]  # (x1, x2, y1, y2) -> (x1, y1, x2, y2)
    b = b[:, [0, 2, 1, 3]]
    a[0] = [10, 10, 10, 50]  # zero width
    ref = box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(box_iou_bins(a, b), np.nan_to_num(ref), atol=1e-12)
    # Two identical zero-area boxes: empty union -> IoU 0 (not NaN).
    assert box_iou_bins([[5, 5, 5, 5]], [[5, 5, 5, 5]]).tolist() == [[0.0]]


def test_identity():
    r = match_predictions(GT3, GT3)
    assert r.matched == ((0, 0), (1, 1), (2, 2)) and r.matched_iou == (1.0, 1.0, 1.0)
    # The GT are disjoint and k=10 >= G, so every pred also has 2 candidates at IoU 0 < 0.3: 3 * 2 rejections.
    assert r.fp == () and r.fn == () and r.gating_rejections == 6
    # candidate_top_k=1: each pred's only candidate is its own GT (IoU 1) -> no rejection.
    assert match_predictions(GT3, GT3, candidate_top_k=1).gating_rejections == 0


def test_swapped_order():
    r = match_predictions(GT3[::-1], GT3)
    assert r.matched == ((0, 2), (1, 1), (2, 0)) and r.fp == () and r.fn == ()


def test_fp_and_fn():
    # pred 0 = GT 1 exactly; pred 1 is far from every GT (IoU 0 with all -> its candidates are the nearest
    # centres, all gated). GT 0 and GT 2 are missed.
    r = match_predictions([GT3[1], [900, 900, 950, 950]], GT3)
    assert r.matched == ((0, 1),) and r.fp == (1,) and r.fn == (0, 2)
    # Rejections: pred 0 has IoU 0 with GT 0 and GT 2 (candidates, since k=10 >= G) -> 2; pred 1: all 3 -> 3.
    assert r.gating_rejections == 5


def test_gate_rejection():
    # pred [0,0,10,10] vs GT [6,0,16,10]: inter 4*10 = 40, union 100+100-40 = 160 -> IoU 0.25 < 0.3: gated.
    r = match_predictions([[0, 0, 10, 10]], [[6, 0, 16, 10]])
    assert r.matched == () and r.fp == (0,) and r.fn == (0,) and r.gating_rejections == 1
    # vs GT [5,0,15,10]: inter 50, union 150 -> IoU 1/3 >= 0.3: matched, cost 2/3.
    r = match_predictions([[0, 0, 10, 10]], [[5, 0, 15, 10]])
    assert r.matched == ((0, 0),) and r.matched_iou == pytest.approx((1 / 3,)) and r.gating_rejections == 0
    # Gate 0.2 lets the 0.25 pair through.
    assert match_predictions([[0, 0, 10, 10]], [[6, 0, 16, 10]], iou_gate=0.2).matched == ((0, 0),)


def test_iou_tie_keeps_lower_gt_index():
    # Two identical GT; candidate_top_k=1 keeps only the lower index (ties -> lower index), so GT 1 is FN.
    r = match_predictions([[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 10, 10]], candidate_top_k=1)
    assert r.matched == ((0, 0),) and r.fn == (1,)


def test_zero_iou_uses_nearest_centres_with_ties_to_lower_index():
    # Pred centre (50, 50); GT centres (5, 50) dist 45, (95, 50) dist 45, (50, 150) dist 100; all IoU 0.
    # k=1 -> only GT 0 (tie with GT 1 broken to the lower index) is a candidate -> exactly 1 gated pair.
    pred = [[45, 45, 55, 55]]
    gt = [[0, 40, 10, 60], [90, 40, 100, 60], [45, 145, 55, 155]]
    r = match_predictions(pred, gt, candidate_top_k=1)
    assert r.gating_rejections == 1 and r.matched == () and r.fp == (0,) and r.fn == (0, 1, 2)
    # With gate 0 an IoU-0 candidate costs 1 - 0 = 1 < fp + fn = 2, so the nearest centre is matched.
    r = match_predictions(pred, gt, candidate_top_k=1, iou_gate=0.0)
    assert r.matched == ((0, 0),) and r.gating_rejections == 0


def test_top_k_restricts_candidates():
    # GT0 [0,0,10,10], GT1 [0,0,10,20]. pred0 [0,0,10,11]: IoU(G0) = 100/110 = .909, IoU(G1) = 110/200 = .55.
    # pred1 [0,0,10,10]: IoU(G0) = 1, IoU(G1) = 100/200 = .5.
    # k=1: both preds only see G0; best total = pred1->G0 (0) + pred0 FP (1) + G1 FN (1) = 2
    #      (vs pred0->G0 .091 + pred1 FP + G1 FN = 2.09).
    # k=2: pred0->G1 (.45) + pred1->G0 (0) = .45.
    pred, gt = [[0, 0, 10, 11], [0, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 10, 20]]
    r1 = match_predictions(pred, gt, candidate_top_k=1)
    assert r1.matched == ((1, 0),) and r1.fp == (0,) and r1.fn == (1,) and r1.gating_rejections == 0
    r2 = match_predictions(pred, gt, candidate_top_k=2)
    assert r2.matched == ((0, 1), (1, 0)) and r2.fp == () and r2.fn == ()


def test_costs_fp_fn():
    # IoU 1/3 -> matching costs 2/3; with fp_cost = fn_cost = 0.3 leaving both unmatched costs 0.6 < 2/3.
    r = match_predictions([[0, 0, 10, 10]], [[5, 0, 15, 10]], fp_cost=0.3, fn_cost=0.3)
    assert r.matched == () and r.fp == (0,) and r.fn == (0,)


def test_empty_sides():
    r = match_predictions([], GT3)
    assert r.matched == () and r.fp == () and r.fn == (0, 1, 2) and r.gating_rejections == 0
    r = match_predictions(GT3[:2], np.zeros((0, 4)))
    assert r.fp == (0, 1) and r.fn == ()


def test_bad_shapes_and_k_raise():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        match_predictions([[1, 2, 3]], GT3)
    with pytest.raises(ValueError, match="candidate_top_k"):
        match_predictions(GT3, GT3, candidate_top_k=0)


def _brute_force_cost(pred, gt, k, gate, fp_cost=1.0, fn_cost=1.0) -> float:
    """Exhaustive minimum over injective partial maps pred -> GT using only allowed (candidate, IoU >= gate)
    pairs; candidates recomputed here with Python sorts (independent of the numpy implementation)."""
    iou = box_iou(torch.tensor(pred, dtype=torch.float64), torch.tensor(gt, dtype=torch.float64)).nan_to_num().numpy()
    allowed = set()
    for p in range(len(pred)):
        if iou[p].max() > 0:
            cands = sorted(range(len(gt)), key=lambda g: (-iou[p, g], g))[:k]
        else:
            cp = ((pred[p][0] + pred[p][2]) / 2, (pred[p][1] + pred[p][3]) / 2)
            dist = [((cp[0] - (b[0] + b[2]) / 2) ** 2 + (cp[1] - (b[1] + b[3]) / 2) ** 2) ** 0.5 for b in gt]
            cands = sorted(range(len(gt)), key=lambda g: (dist[g], g))[:k]
        allowed |= {(p, g) for g in cands if iou[p, g] >= gate}
    best = float("inf")
    options = [None] + list(range(len(gt)))
    for assign in itertools.product(options, repeat=len(pred)):
        used = [g for g in assign if g is not None]
        if len(used) != len(set(used)) or any((p, g) not in allowed for p, g in enumerate(assign) if g is not None):
            continue
        cost = sum(1 - iou[p, g] for p, g in enumerate(assign) if g is not None)
        cost += fp_cost * assign.count(None) + fn_cost * (len(gt) - len(used))
        best = min(best, cost)
    return best


def test_optimal_against_brute_force_and_deterministic():
    rnd = random.Random(0)

    def box():
        x1, y1 = rnd.randrange(0, 60), rnd.randrange(0, 60)
        return [x1, y1, x1 + rnd.randrange(0, 40), y1 + rnd.randrange(0, 40)]

    for trial in range(60):
        pred = [box() for _ in range(rnd.randrange(1, 5))]
        gt = [box() for _ in range(rnd.randrange(1, 5))]
        k = rnd.choice([1, 2, 10])
        r = match_predictions(pred, gt, candidate_top_k=k)
        assert r == match_predictions(pred, gt, candidate_top_k=k)  # deterministic
        assert sorted([p for p, _ in r.matched] + list(r.fp)) == list(range(len(pred)))
        assert sorted([g for _, g in r.matched] + list(r.fn)) == list(range(len(gt)))
        ours = sum(1 - v for v in r.matched_iou) + len(r.fp) + len(r.fn)
        assert all(v >= 0.3 for v in r.matched_iou)
        assert ours == pytest.approx(_brute_force_cost(pred, gt, k, 0.3), abs=1e-9), trial
    assert GATED_COST == 1e6
