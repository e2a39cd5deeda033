"""Channel-B on fixed rollouts (issue 10 item 1; SPEC §3.6, §4.3-§4.4, §8.1).

Fixed generated responses (real compact tokenizer) go through the shared Channel-B path of
``trainers/channel_b.py`` (``rollout_targets`` → ``forward_inputs``' ``collate_targets(channel="B")`` → the default
two-channel pipeline with ``desc_ce_weight: 0.5``) and are compared with a reference written here from SPEC §4.2-§4.3
and §3.5 alone: token types by regex over the decoded text, subsets from where the hand-written rollout puts its
records (the matched / FP / dropped records are known by construction, not by the matcher), CE from
``log_softmax``, expectation decode, SmoothL1 (β=1) + CIoU by the §3.5 formulas.

Rollouts: R1 = one matched record (GT 0, slightly shifted), one FP record far from every GT, one ``poly`` record
(dropped, never converted), array left open (GT 1 is FN); R2 = no opener (invalid rollout fallback); R3 = an empty
desc record (``missing_desc`` drop) then a truncated record (GT 0 FN).
"""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from coordexp_swift.config import load_coordexp_config
from coordexp_swift.coord.vocab import VocabView
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config
from coordexp_swift.teacher_forcing.manifest import resolve_pipeline
from coordexp_swift.rollout.targets import collate_targets
from coordexp_swift.trainers.channel_b import GTRow, rollout_metrics, rollout_targets

MAX_BIN = 999
DESC_RE = re.compile(r'"desc": "((?:[^"\\]|\\.)*)"')


def C(k):
    return f"<|coord_{k}|>"


def box(b):
    return ", ".join(C(v) for v in b)


GT_A = ("red square", (100, 100, 300, 300))
GT_B = ("blue circle", (600, 600, 900, 900))
REC_MATCH = '{"desc": "red square", "bbox_2d": [' + box((110, 95, 300, 310)) + "]}"
REC_FP = '{"desc": "green thing", "bbox_2d": [' + box((800, 10, 900, 90)) + "]}"
REC_POLY = '{"desc": "blob", "poly": [' + box((1, 2, 3, 4)) + "]}"
REC_NODESC = '{"desc": "", "bbox_2d": [' + box((100, 100, 300, 300)) + "]}"
R1 = '{"objects": [' + REC_MATCH + ", " + REC_FP + ", " + REC_POLY + "<|im_end|>"
R2 = "I see a red square.<|im_end|>"
R3 = '{"objects": [' + REC_NODESC + ', {"desc": "red square", "bbox_2d": [' + C(100) + ", " + C(100)


def payload(*objs):
    return {"objects": [{"desc": d, "bbox_2d": [C(v) for v in b]} for d, b in objs]}


PAYLOADS = [payload(GT_A, GT_B), payload(GT_A, GT_B), payload(GT_A)]


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    from transformers import AutoTokenizer

    from coordexp_swift.tools.tiny_model import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("compact"), seed=0, vocab="compact")
    tok = AutoTokenizer.from_pretrained(d)
    return tok, VocabView.from_tokenizer(tok)


def _pipeline(desc_w=0.5, **s2):
    cfg = load_coordexp_config({"custom": {"trainer_variant": "stage2_two_channel"},
                                "stage2_ab": {"schedule": {"b_ratio": 1.0}, "desc_ce_weight": desc_w, **s2},
                                "rollout_matching": {}})
    return cfg, ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))


def _targets(tok, vocab, rm):
    rows = [GTRow(prompt_ids=np.arange(40, 40 + n), payload=p, segment={}, extra={})
            for n, p in zip((5, 9, 7), PAYLOADS)]
    responses = [tok.encode(r, add_special_tokens=False) for r in (R1, R2, R3)]
    return rollout_targets(rows, responses, vocab=vocab, rm=rm)


# --- reference ------------------------------------------------------------------------------------------------
def _canon(b):
    lo_hi = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    return [min(max(v, 0.0), 1.0) for v in lo_hi]


def _ciou(p, g, eps=1e-7):
    px1, py1, px2, py2 = _canon(p)
    gx1, gy1, gx2, gy2 = _canon(g)
    inter = max(0.0, min(px2, gx2) - max(px1, gx1)) * max(0.0, min(py2, gy2) - max(py1, gy1))
    union = (px2 - px1) * (py2 - py1) + (gx2 - gx1) * (gy2 - gy1) - inter
    iou = inter / max(union, eps)
    rho2 = ((px1 + px2) / 2 - (gx1 + gx2) / 2) ** 2 + ((py1 + py2) / 2 - (gy1 + gy2) / 2) ** 2
    c2 = max((max(px2, gx2) - min(px1, gx1)) ** 2 + (max(py2, gy2) - min(py1, gy1)) ** 2, eps)
    wp, hp = max(px2 - px1, eps), max(py2 - py1, eps)
    wg, hg = max(gx2 - gx1, eps), max(gy2 - gy1, eps)
    v = 4 / math.pi ** 2 * (math.atan(wg / hg) - math.atan(wp / hp)) ** 2
    alpha = v / (1 - iou + v + eps)
    return 1 - (iou - rho2 / c2 - alpha * v)


def _spans_of(text, literal):
    i = text.find(literal)
    return [] if i < 0 else [(i, i + len(literal))]


def reference(tok, vocab, targets, logits, *, desc_w, matched_spans, matched_gt):
    """SPEC §4.3 rollout rows on per-segment logits ``logits[i] [T_i, V]`` (float64). ``matched_spans[i]``: char
    spans (in the Y_train text) of the matched records; ``matched_gt[i]``: their GT boxes (bins), same order.
    Returns the §8.2 contributions and ``loss``."""
    coord = set(vocab.coord_ids.tolist())
    k = torch.arange(MAX_BIN + 1, dtype=torch.float64)
    ce = {"struct": 0.0, "desc": 0.0}
    w_sum, geo, n_box = 0.0, 0.0, 0
    for i, t in enumerate(targets):
        ids = [int(x) for x in t.y_train_ids]
        p0, npre = len(t.prompt_ids), int(t.meta.prefix_len)
        ends = [len(tok.decode(ids[: j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
                for j in range(len(ids))]
        text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        desc_spans = [m.span(1) for m in DESC_RE.finditer(text)]
        boxes = []  # (slot positions, gt bins)
        matched_slots = [[] for _ in matched_spans[i]]
        fn_slots = []
        for j, tid in enumerate(ids):
            lo, hi = (ends[j - 1] if j else 0), ends[j]
            ov = lambda spans: any(lo < b and a < hi for a, b in spans)  # noqa: E731
            ty = "coord" if tid in coord else "eos" if tid == vocab.eos_id else "desc" if ov(desc_spans) \
                else "struct"
            in_match = [n for n, s in enumerate(matched_spans[i]) if ov([s])]
            if j < npre:  # prefix: matched record → struct only; everything else (FP, dropped, opener) → 0
                if ty == "coord" and in_match:
                    matched_slots[in_match[0]].append(p0 + j)
                w = 1.0 if (in_match and ty == "struct") else 0.0
            else:  # FN tail: struct 1, desc desc_w, closure/eos 1, coord CE 0
                if ty == "coord":
                    fn_slots.append(p0 + j)
                w = {"struct": 1.0, "eos": 1.0, "desc": desc_w, "coord": 0.0}[ty]
            if w > 0:
                c = -torch.log_softmax(logits[i][p0 + j - 1], -1)[tid].item()
                ce["desc" if ty == "desc" else "struct"] += w * c
                w_sum += w
        for slots, gt in zip(matched_slots, matched_gt[i]):
            boxes.append((slots, gt))
        fn_bins = [int(vocab.id_to_bin[ids[p - p0]]) for p in fn_slots]
        for b in range(len(fn_slots) // 4):
            boxes.append((fn_slots[4 * b: 4 * b + 4], fn_bins[4 * b: 4 * b + 4]))
        for slots, gt in boxes:
            assert len(slots) == 4
            pred = [float((torch.softmax(logits[i][p - 1][vocab.coord_ids], -1) * k).sum()) / MAX_BIN
                    for p in slots]
            g = [v / MAX_BIN for v in gt]
            sl1 = sum(0.5 * (a - c) ** 2 if abs(a - c) < 1 else abs(a - c) - 0.5
                      for a, c in zip(_canon(pred), _canon(g))) / 4
            geo += sl1 + _ciou(pred, g)
            n_box += 1
    out = {"loss/struct_ce": ce["struct"] / w_sum, "loss/desc_ce": ce["desc"] / w_sum, "loss/geo": geo / n_box}
    out["loss"] = sum(out.values())
    return out


# --- tests ------------------------------------------------------------------------------------------------------
def test_counts_fallback_drops(compact):
    """seed 001 1.5, 1.5.1 (predicted poly/malformed dropped and counted by reason, never converted), 1.5.3 /
    1.7.4 (no opener → prefix = tokenizer ids of ``{"objects": [``, all GT appended, counter +1), 1.6.1 (fragment),
    §8.1 counters: values and the exact key set (drop reasons only where they occurred)."""
    tok, vocab = compact
    cfg, _ = _pipeline()
    t1, t2, t3 = _targets(tok, vocab, cfg.rollout_matching)
    assert t1.matched == ((0, 0),) and t1.fn_gt_idx == (1,)
    assert dict(t1.counts) == {"matched": 1, "fp": 1, "fn": 1, "dropped": 1, "truncated": 0, "invalid_rollout": 0,
                               "gating_rejections": t1.counts["gating_rejections"]}
    assert {k: v for k, v in t1.drop_counts.items() if v} == {"poly": 1}
    # the poly record stays in the prefix as FP text; only the matched record and the FN object have box groups
    text1 = tok.decode(t1.y_train_ids.tolist(), skip_special_tokens=False)
    assert text1 == ('{"objects": [' + REC_MATCH + ", " + REC_FP + ", " + REC_POLY + ', {"desc": "blue circle", '
                     '"bbox_2d": [' + box(GT_B[1]) + "]}]}<|im_end|>")
    groups = [tuple(g["gt_bins"]) for g in (*t1.meta.bbox_groups_prefix, *t1.meta.bbox_groups_fn)]
    assert groups == [GT_A[1], GT_B[1]]
    # invalid rollout: the empty-opener fallback, every GT in the tail, it still has supervised targets
    opener = tok.encode('{"objects": [', add_special_tokens=False)
    assert t2.meta.invalid_rollout and list(t2.y_train_ids[: len(opener)]) == opener
    assert int(t2.meta.prefix_len) == len(opener) and t2.fn_gt_idx == (0, 1)
    assert tok.decode(t2.y_train_ids.tolist(), skip_special_tokens=False) == (
        '{"objects": [{"desc": "red square", "bbox_2d": [' + box(GT_A[1]) + ']}, {"desc": "blue circle", '
        '"bbox_2d": [' + box(GT_B[1]) + "]}]}<|im_end|>")
    assert t3.counts["truncated"] == 1 and {k: v for k, v in t3.drop_counts.items() if v} == {"missing_desc": 1}
    m = rollout_metrics([t1, t2, t3])
    assert m == {
        "rollout/gt_objects_total": 5.0, "rollout/valid_pred_objects_total": 2.0, "rollout/matched_total": 1.0,
        "rollout/fp_total": 1.0, "rollout/fn_total": 4.0, "rollout/fn_appended_total": 4.0,
        "rollout/invalid_rollout_total": 1.0, "rollout/drop_invalid_total": 2.0,
        "rollout/gating_rejections_total": m["rollout/gating_rejections_total"], "rollout/truncated_total": 1.0,
        "rollout/fn_appended_per_sample_mean": 4 / 3, "stage2/raw_rollouts_total": 3.0,
        "rollout/precision": 0.0, "rollout/recall": 0.0, "rollout/f1": 0.0,
        "rollout/drop/poly_total": 1.0, "rollout/drop/missing_desc_total": 1.0}


@pytest.mark.parametrize("packed", [False, True])
def test_pipeline_equals_reference(compact, packed):
    """Seed rows: seed 002 9.2, seed 002 9.3B, seed 002 1.4, seed 002 4.4, seed 002 5.2, seed 002 4.3,
    seed 001 1.5.2, seed 001 1.6, seed 001 1.6.2.
    seed 002 9.2 (B half, ``desc_ce_weight: 0.5`` on the FN tail), 9.3B (matched desc off / struct on, FN desc
    on, FP 0, closure on), 1.4 / 4.4 (default rollout semantics), 5.2 (geo on matched ∪ FN — matched slots target
    their GT bins — never FP), 4.3 (B: one ``rollout`` context), 001 1.5.2, 1.6, 1.6.2 (B tail): the default
    pipeline on the Channel-B batch, packed and unpacked, equals the reference to 1e-5 relative; contributions sum to
    the total."""
    tok, vocab = compact
    cfg, pipe = _pipeline(0.5)
    targets = _targets(tok, vocab, cfg.rollout_matching)
    gen = torch.Generator().manual_seed(0)
    V = vocab.vocab_size
    per = [torch.randn(len(t.input_ids), V, generator=gen, dtype=torch.float64) * 3 for t in targets]
    text1 = tok.decode(targets[0].y_train_ids.tolist(), skip_special_tokens=False)
    ref = reference(tok, vocab, targets, per, desc_w=0.5, matched_spans=[_spans_of(text1, REC_MATCH), [], []],
                    matched_gt=[[GT_A[1]], [], []])
    batch = collate_targets(targets, vocab=vocab, packed=packed, channel="B", contexts=("rollout",),
                            ce_table=pipe.ce_table)
    B, T = batch.shape
    z = torch.zeros(B, T, V)
    off = 0
    for i, x in enumerate(per):
        if packed:
            z[0, off: off + len(x)] = x.float()
            off += len(x)
        else:
            z[i, : len(x)] = x.float()
    res = pipe(batch.with_logits(rollout=z))
    got = res.metrics
    for key in ("loss/struct_ce", "loss/desc_ce", "loss/geo"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    assert float(res.total) == pytest.approx(ref["loss"], rel=1e-5)
    contributions = [k for k in got if k.count("/") == 1 and k.startswith("loss/")]
    assert sum(got[k] for k in contributions) == pytest.approx(float(res.total), rel=1e-5)
    assert "loss/struct_ce/self_context" not in got


def test_fp_and_dropped_logits_never_reach_the_loss(compact):
    """seed 002 5.2 / 9.3B: changing the logits that predict the FP record, the dropped poly record and the
    opener (every prefix position outside the matched record) leaves the loss bitwise unchanged; changing the
    matched record's coord logits changes geo."""
    tok, vocab = compact
    cfg, pipe = _pipeline(0.5)
    t1 = _targets(tok, vocab, cfg.rollout_matching)[0]
    batch = collate_targets([t1], vocab=vocab, channel="B", contexts=("rollout",), ce_table=pipe.ce_table)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, len(t1.input_ids), vocab.vocab_size, generator=gen)
    base = pipe(batch.with_logits(rollout=z)).metrics
    ids = t1.y_train_ids.tolist()
    text = tok.decode(ids, skip_special_tokens=False)
    lo, hi = _spans_of(text, REC_MATCH)[0]
    p0 = len(t1.prompt_ids)
    ends = [len(tok.decode(ids[: j + 1], skip_special_tokens=False)) for j in range(len(ids))]
    outside = [p0 + j for j in range(int(t1.meta.prefix_len))
               if not ((ends[j - 1] if j else 0) < hi and lo < ends[j])]
    assert len(outside) > 20
    z2 = z.clone()
    z2[0, [p - 1 for p in outside]] += torch.randn(len(outside), vocab.vocab_size, generator=gen) * 5
    assert pipe(batch.with_logits(rollout=z2)).metrics == base
    inside = [p0 + j for j in range(int(t1.meta.prefix_len)) if ids[j] in set(vocab.coord_ids.tolist())
              and p0 + j not in outside]
    assert len(inside) == 4
    z3 = z.clone()
    z3[0, [p - 1 for p in inside]] += torch.randn(4, vocab.vocab_size, generator=gen) * 5
    assert pipe(batch.with_logits(rollout=z3)).metrics["loss/geo"] != base["loss/geo"]


def test_drop_multiplier_scales_struct_only(compact):
    """seed 002 1.5 / 4.3 table ``m``: with ``channel_b.drop_invalid_struct_ce_multiplier: 2`` the struct CE weight of
    R1 (one dropped record) doubles on matched-prefix struct and tail struct, never on desc / closure / eos —
    checked against the reference weights via the batch's CE weight view."""
    tok, vocab = compact
    cfg1, p1 = _pipeline(0.5)
    cfg2, p2 = _pipeline(0.5, channel_b={"drop_invalid_struct_ce_multiplier": 2.0})
    t1 = _targets(tok, vocab, cfg1.rollout_matching)[0]
    from coordexp_swift.teacher_forcing.batch import build_layout, ce_weights

    layout = build_layout((t1.meta,), False, (1, len(t1.input_ids)))
    w1, _ = ce_weights(layout, "rollout", p1.ce_table)
    w2, _ = ce_weights(layout, "rollout", p2.ce_table)
    ratio = (w2[w1 > 0] / w1[w1 > 0])
    assert set(ratio.tolist()) == {1.0, 2.0}
    # desc (0.5) and eos/closure keep their weight; struct (1.0 before) doubles
    assert set(w1[w1 > 0][ratio == 1.0].tolist()) >= {0.5}
    assert set(w1[w1 > 0][ratio == 2.0].tolist()) == {1.0}
    assert (w2 == 0).equal(w1 == 0)  # FP / dropped / opener positions stay at 0


def test_both_trainers_share_channel_b_and_eval():
    """issue 10 item 2 / seed 002 6B.4: the plugin registry maps ``stage2_rollout_aligned`` to its trainer; both
    Stage-2 trainers get ``evaluate`` from the one ``RolloutEvalMixin`` and build the one ``ChannelB`` (no copy of
    the step in either trainer module); neither trainer module imports COCO code."""
    import importlib
    import inspect

    from coordexp_swift.plugin import resolve_trainer_cls
    from coordexp_swift.trainers.rollout_eval import RolloutEvalMixin

    classes = []
    for variant in ("stage2_two_channel", "stage2_rollout_aligned"):
        mod, _, name = resolve_trainer_cls(variant).rpartition(".")
        module = importlib.import_module(mod)
        cls = getattr(module, name)
        classes.append(cls)
        assert cls.evaluate is RolloutEvalMixin.evaluate
        src = inspect.getsource(module)
        assert "ChannelB.from_trainer(" in src
        assert "parse_rollout" not in src and "match_predictions" not in src and "pycocotools" not in src
        assert "COCOeval" not in src
    assert classes[0] is not classes[1]


def test_vllm_backend_missing_fails_at_init(compact):
    """SPEC §3.6 B0: ``rollout_backend: vllm`` without the package fails when the Channel-B object is built (trainer
    init), naming the fix — not at the first B step."""
    import importlib.util

    from coordexp_swift.trainers.channel_b import ChannelB

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    _, vocab = compact
    cfg = load_coordexp_config({"custom": {"trainer_variant": "stage2_rollout_aligned"},
                                "rollout_matching": {"rollout_backend": "vllm"}})
    pipe = ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))
    with pytest.raises(ImportError, match="vllm.*rollout_backend: hf"):
        ChannelB(rm=cfg.rollout_matching, template=None, vocab=vocab, objective=pipe, packed=False, pad_id=0,
                 max_length=None, object_field_order="desc_first", training_seed=0)
