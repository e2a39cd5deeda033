"""Objective / diagnostics modules and the executor (SPEC §4.2-4.4, §6.1, §8.2) on synthetic contexts; reference
values are recomputed in the test by per-position loops (float64) and torchvision.ops for CIoU."""
from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvo
from torch.utils._python_dispatch import TorchDispatchMode

from coordexp_swift.coord.codec import MAX_BIN, NUM_BINS
from coordexp_swift.teacher_forcing import (
    CEWeightTable,
    ObjectivePipeline,
    PipelineEntry,
    PipelineManifest,
    RunSettings,
    TeacherForcingContext,
    parse_pipeline,
)
from coordexp_swift.teacher_forcing.modules.base import ModuleOutput, PipelineModule
from coordexp_swift.teacher_forcing.modules.token_type_diag import EmptyDiagConfig
from coordexp_swift.teacher_forcing.registry import BUILTIN_MODULES, spec_of
from test_tf_meta import OBJS, PROMPT, ROLL_FN, ROLL_PRED, gt_meta, rollout_meta, segment_ids
from test_tf_support import COORD_IDS, VOCAB, make_rollout, reference_types

TWO = "stage2_two_channel"
RA = "stage2_rollout_aligned"
ALLOWED = re.compile(r"^loss/(struct_ce(/self_context)?|desc_ce|coord_token_ce|coord_reg(/(soft_ce|w1|coord_gate|"
                     r"text_gate|entropy|el1|ehuber))?|geo(/bbox_(smoothl1|ciou|l1|giou))?)$|^coord_diag/"
                     r"(gt|self_context|rollout)/(coord_tokens_total|acc_top5_mean|p_gt_mean|expected_bin_mae_mean|"
                     r"w1_to_delta_mean|coord_vocab_mass_mean|st_decode_gap_mean|st_embed_gap_mean)$|"
                     r"^token_type_diag/(gt|self_context|rollout)/(struct|desc|coord|eos)_tokens_total$")


def a_context(seed=0, contexts=("gt", "self_context"), packed=False, n=2, embeddings=False, grad=False):
    metas = [gt_meta(OBJS[: 1 + i % 3], seed=seed + i) for i in range(n)]
    rows = [segment_ids(ids) for _, ids, _, _ in metas]
    g = torch.Generator().manual_seed(seed)
    if packed:
        input_ids = torch.tensor([[t for r in rows for t in r]])
    else:
        T = max(map(len, rows))
        input_ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    logits = {c: (torch.randn(*input_ids.shape, VOCAB, generator=g) * 2).requires_grad_(grad) for c in contexts}
    e_c = torch.randn(NUM_BINS, 6, generator=g) if embeddings else None
    return TeacherForcingContext(channel="A", input_ids=input_ids, logits=logits, meta=tuple(m[3] for m in metas),
                                 coord_ids=COORD_IDS, packed=packed, coord_embeddings=e_c), metas


def b_context(seed=0, n_drop=(1, 0)):
    cases = [make_rollout(ROLL_PRED, ROLL_FN, dropped=True, seed=seed), make_rollout(ROLL_PRED[:1], ROLL_FN[:1],
                                                                                    seed=seed + 5)]
    metas = [rollout_meta(c, n_drop=d) for c, d in zip(cases, n_drop)]
    rows = [segment_ids(c.ids, 0) for c in cases]
    T = max(map(len, rows))
    input_ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    g = torch.Generator().manual_seed(seed)
    logits = {"rollout": torch.randn(*input_ids.shape, VOCAB, generator=g) * 2}
    return TeacherForcingContext(channel="B", input_ids=input_ids, logits=logits, meta=tuple(metas),
                                 coord_ids=COORD_IDS), cases


def pipeline(variant, objective, diagnostics=(), extra=None, settings=None):
    m = parse_pipeline({"objective": list(objective), "diagnostics": list(diagnostics)}, variant,
                       extra or {"variant": variant})
    return ObjectivePipeline(m, settings or RunSettings(variant=variant))


def test_token_ce_channel_a_matches_reference():
    """seed 002 5.1 / 3.4.6: gt CE = Σw·CE/Σw with struct/eos 1, desc desc_ce_weight (0.5), coord 0; self-context
    stabilizer = λ_fmt · mean CE over struct+eos; parts add up (reference: per-token float64 loop)."""
    ctx, metas = a_context()
    pipe = pipeline(TWO, [{"name": "token_ce", "config": {"desc_ce_weight": 0.5,
                                                           "self_context_struct_ce_weight": 0.3}}])
    res = pipe(ctx)
    num = {"struct": 0.0, "desc": 0.0}
    den = 0.0
    sc_num, sc_den = 0.0, 0
    for b, (r, ids, pieces, meta) in enumerate(metas):
        for i, t in enumerate(reference_types(pieces, r.desc_ranges)):
            pos = PROMPT + i
            lp = torch.log_softmax(ctx.logits["gt"][b, pos - 1].double(), -1)
            ce = -float(lp[ids[i]])
            w = {"struct": 1.0, "eos": 1.0, "desc": 0.5, "coord": 0.0}[t]
            if w:
                num["desc" if t == "desc" else "struct"] += w * ce
                den += w
            if t in ("struct", "eos"):
                sc_num += -float(torch.log_softmax(ctx.logits["self_context"][b, pos - 1].double(), -1)[ids[i]])
                sc_den += 1
    sc = 0.3 * sc_num / sc_den
    assert res.metrics["loss/desc_ce"] == pytest.approx(num["desc"] / den, rel=1e-5)
    assert res.metrics["loss/struct_ce/self_context"] == pytest.approx(sc, rel=1e-5)
    assert res.metrics["loss/struct_ce"] == pytest.approx(num["struct"] / den + sc, rel=1e-5)
    assert float(res.total) == pytest.approx(res.metrics["loss/struct_ce"] + res.metrics["loss/desc_ce"], rel=1e-6)
    assert "loss/coord_token_ce" not in res.metrics


def test_token_ce_desc_weight_zero_drops_key_and_desc():
    """seed 001 1.6.2 / 002 8.2: desc_ce_weight 0 masks desc (no loss/desc_ce key) and leaves struct CE unchanged
    relative to its own denominator."""
    ctx, _ = a_context(contexts=("gt",))
    res = pipeline(TWO, [{"name": "token_ce", "config": {"desc_ce_weight": 0.0}}])(ctx)
    assert "loss/desc_ce" not in res.metrics and "loss/struct_ce/self_context" not in res.metrics
    w, _ = ctx.ce_weights("gt", CEWeightTable(desc_ce_weight=0.0))
    assert float(w[ctx.type_mask("desc")].sum()) == 0.0


def test_token_ce_rollout_ablation_weights_and_fp_neutral():
    """seed 002 5.1 / 1.4 / 9.3B: rollout CE uses the §4.3 weights; FP / dropped-record logits do not move the loss,
    FN desc logits do; m=2 multiplies struct of the sample with dropped records only."""
    ctx, cases = b_context()
    pipe = pipeline(RA, [{"name": "token_ce", "config": {"rollout_drop_invalid_struct_ce_multiplier": 2.0}}])
    base = pipe(ctx)
    w, _ = ctx.ce_weights("rollout", pipe.ce_table)
    # reference: loop with the validated weights
    num = den = 0.0
    for b in range(2):
        for t in range(1, ctx.input_ids.shape[1]):
            if w[b, t] > 0:
                lp = torch.log_softmax(ctx.logits["rollout"][b, t - 1].double(), -1)
                num += float(w[b, t]) * -float(lp[ctx.input_ids[b, t]])
                den += float(w[b, t])
    assert float(base.total) == pytest.approx(num / den, rel=1e-5)
    m_struct = ctx.type_mask("struct") & ctx.subset_mask("fn") & ~ctx.layout.closure
    assert set(w[0][m_struct[0]].tolist()) == {2.0} and set(w[1][m_struct[1]].tolist()) == {1.0}
    fp = ctx.subset_mask("fp")
    z = ctx.logits["rollout"].clone()
    rows, cols = torch.nonzero(fp, as_tuple=True)
    z[rows, cols - 1] += torch.randn(rows.numel(), VOCAB) * 5
    moved = TeacherForcingContext(channel="B", input_ids=ctx.input_ids, logits={"rollout": z}, meta=ctx.meta,
                                  coord_ids=COORD_IDS)
    assert float(pipe(moved).total) == float(base.total)
    fn_desc = ctx.type_mask("desc") & ctx.subset_mask("fn")
    z2 = ctx.logits["rollout"].clone()
    rows, cols = torch.nonzero(fn_desc, as_tuple=True)
    z2[rows, cols - 1] += torch.randn(rows.numel(), VOCAB) * 5
    moved2 = TeacherForcingContext(channel="B", input_ids=ctx.input_ids, logits={"rollout": z2}, meta=ctx.meta,
                                   coord_ids=COORD_IDS)
    assert float(pipe(moved2).total) != float(base.total)


def _expected_boxes(ctx, context, rows, pos):
    s = ctx.logits[context][rows[:, None], (pos - 1), :][..., COORD_IDS].double()
    return (torch.softmax(s, -1) * torch.arange(NUM_BINS).double() / MAX_BIN).sum(-1)


def test_bbox_geo_channel_b_matched_and_fn_never_fp():
    """seed 002 5.2 / 001 1.5: geo = mean over matched ∪ FN boxes of SmoothL1 + CIoU (reference: F.smooth_l1_loss and
    torchvision.ops.complete_box_iou_loss on expectation-decoded boxes); FP slots never matter; logits are read at
    pos−1 (changing logits at pos does nothing)."""
    ctx, cases = b_context(seed=2)
    pipe = pipeline(RA, [{"name": "bbox_geo"}])
    res = pipe(ctx)
    g = ctx.bbox_groups()
    assert len(g) == 2 + 2 + 1 + 1  # sample 0: 2 matched + 2 FN; sample 1: 1 matched + 1 FN
    pred = _expected_boxes(ctx, "rollout", g.row, g.pos).float()
    gt = g.gt_bins.float() / MAX_BIN
    lo, hi = torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])
    pc = torch.cat([lo, hi], 1)
    sl1 = F.smooth_l1_loss(pc, gt, beta=1.0, reduction="none").mean(1)
    ciou = tvo.complete_box_iou_loss(pc.double(), gt.double(), reduction="none", eps=1e-7).float()
    assert res.metrics["loss/geo/bbox_smoothl1"] == pytest.approx(float(sl1.mean()), rel=1e-4)
    assert res.metrics["loss/geo/bbox_ciou"] == pytest.approx(float(ciou.mean()), rel=1e-4)
    assert res.metrics["loss/geo"] == pytest.approx(float((sl1 + ciou).mean()), rel=1e-4)
    # FP record slots (the 'ghost' record of sample 0) and logits at the slot positions themselves do not matter
    fp_coord = ctx.subset_mask("fp") & ctx.type_mask("coord")
    z = ctx.logits["rollout"].clone()
    r, c = torch.nonzero(fp_coord, as_tuple=True)
    z[r, c - 1] = torch.randn(r.numel(), VOCAB) * 9
    z[g.row.repeat_interleave(4), g.pos.reshape(-1)] += 7.0
    moved = TeacherForcingContext(channel="B", input_ids=ctx.input_ids, logits={"rollout": z}, meta=ctx.meta,
                                  coord_ids=COORD_IDS)
    assert float(pipe(moved).total) == pytest.approx(float(res.total), abs=1e-6)


def test_bbox_geo_channel_a_identity_and_st_mode():
    """seed 002 5.2 / 001 1.4: A uses all GT boxes on the self_context logits; `st` decode changes the forward value
    (argmax boxes) but not the gradient path's existence. Seed rows: seed 002 5.2, seed 001 1.4."""
    ctx, metas = a_context(seed=3)
    exp_res = pipeline(TWO, [{"name": "bbox_geo", "config": {"ciou_weight": 0.0, "l1_weight": 1.0}}])(ctx)
    st_pipe = pipeline(TWO, [{"name": "bbox_geo", "config": {"ciou_weight": 0.0, "l1_weight": 1.0}}],
                       settings=RunSettings(variant=TWO, coord_decode_mode="st"))
    st_res = st_pipe(ctx)
    g = ctx.bbox_groups()
    assert len(g) == sum(len(m[3].bbox_groups_fn) for m in metas)
    hard = ctx.logits["self_context"][g.row[:, None], g.pos - 1][..., COORD_IDS].argmax(-1).float() / MAX_BIN
    lo, hi = torch.minimum(hard[:, :2], hard[:, 2:]), torch.maximum(hard[:, :2], hard[:, 2:])
    l1 = (torch.cat([lo, hi], 1) - g.gt_bins.float() / MAX_BIN).abs().mean(1).mean()
    assert st_res.metrics["loss/geo/bbox_l1"] == pytest.approx(float(l1), rel=1e-5)
    assert st_res.metrics["loss/geo"] != exp_res.metrics["loss/geo"]


def _gauss(b, sigma=2.0):
    k = torch.arange(NUM_BINS).double()
    q = torch.exp(-(k - b) ** 2 / (2 * sigma ** 2))
    return q / q.sum()


def test_coord_reg_softce_w1_and_self_context_weight():
    """seed 002 5.3 / 3.4.6: softCE (weighted by self_context_soft_ce_weight in self_context) and W1 at GT slots;
    coord_ce reported as loss/coord_token_ce; reference by hand (Gaussian q, CDF sums, float64)."""
    ctx, _ = a_context(seed=4)
    cfg = {"soft_ce_weight": 0.7, "self_context_soft_ce_weight": 0.2, "w1_weight": 0.5, "coord_ce_weight": 0.3}
    res = pipeline(TWO, [{"name": "coord_reg", "config": cfg}])(ctx)
    slots = ctx.coord_slots("self_context")
    s = ctx.logits["self_context"][slots.row, slots.pos - 1][:, COORD_IDS].double()
    logp = torch.log_softmax(s, -1)
    soft = torch.stack([-(_gauss(int(b)) * lp).sum() for b, lp in zip(slots.target_bins, logp)]).mean()
    w1 = torch.stack([(lp.exp().cumsum(0) - _gauss(int(b)).cumsum(0)).abs().sum() / MAX_BIN
                      for b, lp in zip(slots.target_bins, logp)]).mean()
    ce = -logp.gather(1, slots.target_bins[:, None]).mean()
    assert res.metrics["loss/coord_reg/soft_ce"] == pytest.approx(0.2 * float(soft), rel=1e-5)
    assert res.metrics["loss/coord_reg/w1"] == pytest.approx(0.5 * float(w1), rel=1e-5)
    assert res.metrics["loss/coord_reg"] == pytest.approx(0.2 * float(soft) + 0.5 * float(w1), rel=1e-5)
    assert res.metrics["loss/coord_token_ce"] == pytest.approx(0.3 * float(ce), rel=1e-5)
    n1, _ = a_context(seed=4, contexts=("gt",))
    res1 = pipeline(TWO, [{"name": "coord_reg", "config": cfg}])(n1)  # n = 1: z⁰, plain soft_ce_weight
    slots = n1.coord_slots("gt")
    logp = torch.log_softmax(n1.logits["gt"][slots.row, slots.pos - 1][:, COORD_IDS].double(), -1)
    soft = torch.stack([-(_gauss(int(b)) * lp).sum() for b, lp in zip(slots.target_bins, logp)]).mean()
    assert res1.metrics["loss/coord_reg/soft_ce"] == pytest.approx(0.7 * float(soft), rel=1e-5)


def test_coord_reg_text_gate_and_gates_follow_masks():
    """seed 002 5.3 / 3.5: text_gate runs on z⁰ positions with CE weight > 0, excluding coord/eos (desc excluded when
    desc_ce_weight = 0); coord_gate = −log p_coord at the slots (reference by hand)."""
    ctx, _ = a_context(seed=5)
    for desc_w in (1.0, 0.0):
        res = pipeline(TWO, [{"name": "token_ce", "config": {"desc_ce_weight": desc_w}},
                             {"name": "coord_reg", "config": {"text_gate_weight": 1.0, "coord_gate_weight": 1.0}}])(ctx)
        w, _ = ctx.ce_weights("gt", CEWeightTable(desc_ce_weight=desc_w))
        sel = (w > 0) & ~ctx.type_mask("coord") & ~ctx.type_mask("eos")
        r, c = torch.nonzero(sel, as_tuple=True)
        z = ctx.logits["gt"][r, c - 1].double()
        p_coord = torch.exp(torch.logsumexp(z[:, COORD_IDS], -1) - torch.logsumexp(z, -1))
        tg = -torch.log((1 - p_coord).clamp(1e-6, 1)).mean()
        assert res.metrics["loss/coord_reg/text_gate"] == pytest.approx(float(tg), rel=1e-5)
        slots = ctx.coord_slots("self_context")
        zs = ctx.logits["self_context"][slots.row, slots.pos - 1].double()
        gate = (torch.logsumexp(zs, -1) - torch.logsumexp(zs[:, COORD_IDS], -1)).clamp_min(0).mean()
        assert res.metrics["loss/coord_reg/coord_gate"] == pytest.approx(float(gate), rel=1e-5)


def test_all_keys_are_spec_names_and_contributions_sum():
    """seed 002 5.5 / 9.3D / 8.2: with every weight > 0 only §8.2 names appear; contributions sum to the total
    (1e-5 relative); entry weights scale every key."""
    ctx, _ = a_context(seed=6, embeddings=True, grad=True)
    reg = {k: 0.3 for k in ("coord_ce_weight", "soft_ce_weight", "w1_weight", "coord_gate_weight", "text_gate_weight",
                            "coord_el1_weight", "coord_ehuber_weight", "coord_entropy_weight")}
    objective = [{"name": "token_ce", "weight": 2.0}, {"name": "bbox_geo", "config": {"l1_weight": 1, "giou_weight": 1}},
                 {"name": "coord_reg", "weight": 0.5, "config": reg}]
    res = pipeline(TWO, objective, [{"name": "coord_diag"}, {"name": "token_type_diag"}])(ctx)
    assert all(ALLOWED.match(k) for k in res.metrics), sorted(k for k in res.metrics if not ALLOWED.match(k))
    contrib = [k for k in res.metrics if k.count("/") == 1]
    assert sorted(contrib) == ["loss/coord_reg", "loss/coord_token_ce", "loss/desc_ce", "loss/geo", "loss/struct_ce"]
    assert sum(res.metrics[k] for k in contrib) == pytest.approx(float(res.total.detach()), rel=1e-5)
    assert {f"loss/coord_reg/{s}" for s in ("soft_ce", "w1", "coord_gate", "text_gate", "entropy", "el1", "ehuber")} \
        <= set(res.metrics)
    assert "coord_diag/self_context/st_embed_gap_mean" in res.metrics
    assert res.metrics["coord_diag/gt/coord_tokens_total"] == float(len(ctx.coord_slots("gt")))
    single = pipeline(TWO, [{"name": "token_ce"}])(ctx)
    assert res.metrics["loss/desc_ce"] == pytest.approx(2.0 * single.metrics["loss/desc_ce"], rel=1e-6)
    res.total.backward()  # graph-connected
    assert float(ctx.logits["gt"].grad.abs().sum()) > 0 and float(ctx.logits["self_context"].grad.abs().sum()) > 0


def test_coord_diag_values_by_hand():
    """seed 002 8.2: coord_diag p_gt / expected-bin MAE / top-5 / st_decode_gap match a hand computation."""
    ctx, _ = a_context(seed=7, contexts=("gt",))
    res = pipeline(TWO, [{"name": "token_ce"}], [{"name": "coord_diag"}])(ctx)
    slots = ctx.coord_slots("gt")
    s = ctx.logits["gt"][slots.row, slots.pos - 1][:, COORD_IDS].double()
    p = torch.softmax(s, -1)
    b = slots.target_bins
    e = (p * torch.arange(NUM_BINS).double()).sum(-1)
    assert res.metrics["coord_diag/gt/p_gt_mean"] == pytest.approx(float(p.gather(1, b[:, None]).mean()), rel=1e-5)
    assert res.metrics["coord_diag/gt/expected_bin_mae_mean"] == pytest.approx(float((e - b).abs().mean()), rel=1e-5)
    top5 = float((s.topk(5, -1).indices == b[:, None]).any(-1).double().mean())
    assert res.metrics["coord_diag/gt/acc_top5_mean"] == pytest.approx(top5)
    gap = (s.argmax(-1).double() / MAX_BIN - e / MAX_BIN).abs().mean()
    assert res.metrics["coord_diag/gt/st_decode_gap_mean"] == pytest.approx(float(gap), rel=1e-5)


def test_packed_equals_unpacked_losses():
    """seed 002 4.1 / 1.1: a packed row gives the same total and per-key losses as the padded batch (segment-local)."""
    up, _ = a_context(seed=8, n=3)
    pk, _ = a_context(seed=8, n=3, packed=True)
    # same logits per segment: copy the unpacked logits into the packed layout
    cols = []
    for b, m in enumerate(up.meta):
        cols.append({c: up.logits[c][b, : m.encoded_len] for c in up.logits})
    logits = {c: torch.cat([x[c] for x in cols])[None] for c in up.logits}
    pk = TeacherForcingContext(channel="A", input_ids=pk.input_ids, logits=logits, meta=pk.meta, coord_ids=COORD_IDS,
                               packed=True)
    objective = [{"name": "token_ce"}, {"name": "bbox_geo"}, {"name": "coord_reg", "config": {"w1_weight": 1.0}}]
    a, b = pipeline(TWO, objective)(up), pipeline(TWO, objective)(pk)
    assert float(a.total) == pytest.approx(float(b.total), rel=1e-6)
    for k in a.metrics:
        assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-6, abs=1e-9), k


class _Recorder(PipelineModule):
    name, kind = "rec_a", "objective"
    config_classes = {TWO: EmptyDiagConfig, RA: EmptyDiagConfig}
    calls: list = []

    def __call__(self, ctx):
        _Recorder.calls.append(self.name)
        return ModuleOutput(loss=torch.tensor(1.0), terms={"loss/struct_ce": torch.tensor(1.0)})


class _RecorderB(_Recorder):
    name = "rec_b"

    def __call__(self, ctx):
        _Recorder.calls.append(self.name)
        return ModuleOutput(loss=torch.tensor(2.0), terms={"loss/desc_ce": torch.tensor(2.0)})


class _Boom(PipelineModule):
    name, kind = "boom", "diagnostics"
    config_classes = {TWO: EmptyDiagConfig}

    def __call__(self, ctx):
        raise ZeroDivisionError("kaboom")


def _manifest(entries, diags=()):
    return PipelineManifest(variant=TWO, objective=tuple(entries), diagnostics=tuple(diags), extra={"variant": TWO})


def _e(name, **kw):
    base = dict(name=name, enabled=True, weight=1.0, channels=("A", "B"), config=EmptyDiagConfig())
    base.update(kw)
    return PipelineEntry(**base)


def test_executor_order_and_skip_rules():
    """seed 002 4.2: list order; disabled and off-channel entries skipped; total = Σ weight·loss."""
    reg = {**BUILTIN_MODULES, "rec_a": spec_of(_Recorder), "rec_b": spec_of(_RecorderB)}
    ctx, _ = a_context(contexts=("gt",))
    _Recorder.calls = []
    pipe = ObjectivePipeline(_manifest([_e("rec_b", weight=3.0), _e("rec_a", weight=0.5)]), registry=reg)
    res = pipe(ctx)
    assert _Recorder.calls == ["rec_b", "rec_a"] and float(res.total) == pytest.approx(6.5)
    assert res.metrics == {"loss/desc_ce": 6.0, "loss/struct_ce": 0.5}
    _Recorder.calls = []
    pipe = ObjectivePipeline(_manifest([_e("rec_b", enabled=False), _e("rec_a", channels=("B",))]), registry=reg)
    res = pipe(ctx)
    assert _Recorder.calls == [] and float(res.total) == 0.0 and res.metrics == {}


def test_failing_diagnostic_warns_once_counts_and_continues(caplog):
    """seed 002 6.1: a failing diagnostic logs one warning, emits diag/<name>_failed_count, is disabled, and the loss
    is unaffected; training continues on later steps."""
    reg = {**BUILTIN_MODULES, "boom": spec_of(_Boom)}
    ctx, _ = a_context(contexts=("gt",))
    tok = parse_pipeline({"objective": [{"name": "token_ce"}]}, TWO, {"variant": TWO}).objective
    pipe = ObjectivePipeline(_manifest(tok, [_e("boom")]), registry=reg)
    with caplog.at_level(logging.WARNING):
        r1 = pipe(ctx)
        r2 = pipe(ctx)
    warnings = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(warnings) == 1 and "ZeroDivisionError" in warnings[0].getMessage()
    assert r1.metrics["diag/boom_failed_count"] == 1.0 and "diag/boom_failed_count" not in r2.metrics
    assert torch.equal(r1.total, r2.total)


def test_objective_modules_fail_fast():
    """seed 002 4.2: objective module exceptions propagate (no swallowing)."""
    class _BadObj(_Boom):
        name, kind = "bad", "objective"
    reg = {**BUILTIN_MODULES, "bad": spec_of(_BadObj)}
    ctx, _ = a_context(contexts=("gt",))
    with pytest.raises(ZeroDivisionError):
        ObjectivePipeline(_manifest([_e("bad")]), registry=reg)(ctx)


def test_token_type_diag_toggle_is_bitwise_neutral():
    """seed 002 6.3: toggling token_type_diag leaves the loss bitwise equal; its counts match the masks."""
    ctx, metas = a_context(seed=9)
    objective = [{"name": "token_ce"}, {"name": "bbox_geo"}, {"name": "coord_reg"}]
    off = pipeline(TWO, objective)(ctx)
    on = pipeline(TWO, objective, [{"name": "token_type_diag"}])(ctx)
    assert torch.equal(off.total, on.total)
    n_desc = sum(TYPE == "desc" for r, _, pieces, _ in metas for TYPE in reference_types(pieces, r.desc_ranges))
    assert on.metrics["token_type_diag/gt/desc_tokens_total"] == float(n_desc)
    assert on.metrics["token_type_diag/self_context/desc_tokens_total"] == 0.0


class _CollectiveRecorder(TorchDispatchMode):
    """Records every c10d op (``c10d.*`` and ``_c10d_functional.*``) that reaches the dispatcher, however the
    caller imported it (``dist.all_reduce``, ``from torch.distributed import ...``, functional collectives)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("c10d", "_c10d_functional"):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def gloo_world(tmp_path):
    """A real 1-process gloo group, so a collective guarded by ``dist.is_initialized()`` really runs."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def test_modules_issue_no_collectives(gloo_world):
    """seed 002 4.2 / 6.1: no torch.distributed collective from any module or the executor (forward and backward),
    with a live process group — a guarded all-reduce would run and be recorded (the control below shows the
    recorder sees one)."""
    dist = gloo_world
    with _CollectiveRecorder() as control:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(torch.ones(1))
    assert control.ops == ["c10d.allreduce_.default"]
    ctx, _ = b_context(seed=1)
    ctx.logits["rollout"].requires_grad_(True)
    with _CollectiveRecorder() as rec:
        res = pipeline(RA, [{"name": "token_ce"}, {"name": "bbox_geo"},
                            {"name": "coord_reg", "config": {"w1_weight": 1}}],
                       [{"name": "coord_diag"}, {"name": "token_type_diag"}])(ctx)
        res.total.backward()
    assert rec.ops == []
    assert "diag/coord_diag_failed_count" not in res.metrics and res.metrics["coord_diag/rollout/coord_tokens_total"] == 24


def test_nothing_supervised_gives_graph_connected_exact_zero():
    """seed 002 4.2 / §2.4: when no module term is supervised the total is an exact 0.0 that still backpropagates
    (zero gradient); module terms with nothing to supervise are exact zeros."""
    ctx, _ = a_context(seed=10, contexts=("gt",), grad=True)
    res = pipeline(TWO, [{"name": "bbox_geo", "config": {"smoothl1_weight": 0, "ciou_weight": 0}}])(ctx)
    assert float(res.total.detach()) == 0.0 and res.metrics == {}
    res.total.backward()
    assert float(ctx.logits["gt"].grad.abs().sum()) == 0.0


def test_caller_denominators_replace_local_means_and_are_reported():
    """seed 002 7B.1 (SPEC §2.3 via §4.5): a context carrying global ``denominators`` divides every token_ce /
    coord_reg mean by them instead of the local count — each value scales by local/global exactly — and the result
    names which mean each key is; unknown names or several logits contexts are rejected."""
    ctx, _ = a_context(seed=4, contexts=("gt",))
    pipe = pipeline(RA, [{"name": "token_ce"},
                         {"name": "coord_reg", "config": {"soft_ce_weight": 1.0, "w1_weight": 0.5, "coord_ce_weight":
                                                          0.2, "text_gate_weight": 0.3}}])
    local = pipe(ctx)
    w, _ = ctx.ce_weights("gt")
    types = ctx.layout.types
    n = {"token_ce": float(w.sum()), "coord": float((types == 3).sum()),
         "text_gate": float(((w > 0) & (types != 3) & (types != 4)).sum())}
    assert all(v > 0 for v in n.values())
    scaled = pipe(TeacherForcingContext(channel="A", input_ids=ctx.input_ids, logits=ctx.logits, meta=ctx.meta,
                                        coord_ids=ctx.coord_ids,
                                        denominators={k: torch.tensor(3 * v) for k, v in n.items()}))
    assert scaled.denominators == {"loss/struct_ce": "token_ce", "loss/desc_ce": "token_ce",
                                   "loss/coord_token_ce": "coord", "loss/coord_reg/soft_ce": "coord",
                                   "loss/coord_reg/w1": "coord", "loss/coord_reg/text_gate": "text_gate"}
    for key in scaled.denominators:
        assert scaled.metrics[key] == pytest.approx(local.metrics[key] / 3, rel=1e-6), key
    assert float(scaled.total) == pytest.approx(float(local.total) / 3, rel=1e-6)
    with pytest.raises(RuntimeError, match="denominators"):
        TeacherForcingContext(channel="A", input_ids=ctx.input_ids, logits=ctx.logits, meta=ctx.meta,
                              coord_ids=ctx.coord_ids, denominators={"tokens": torch.tensor(1.0)})
    two, _ = a_context(seed=4)
    with pytest.raises(RuntimeError, match="one logits context"):
        TeacherForcingContext(channel="A", input_ids=two.input_ids, logits=two.logits, meta=two.meta,
                              coord_ids=two.coord_ids, denominators={"coord": torch.tensor(1.0)})
