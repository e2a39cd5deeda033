"""Rollout → training targets end to end (SPEC §3.6 B1-B4, §4.3) on the tiny model's REAL tokenizers (the Qwen
byte-level BPE and the compact demo BPE): issue 8 item 2.

Hypothesis draws GT sets and a rollout made of them (kept predictions = GT boxes, plus FP boxes and spliced
wrong-order / poly / wrong-arity records), tokenises it, and cuts the ids at EVERY truncation point (plus the full
response with ``<|im_end|>``). Each cut goes through parse → match → :func:`rollout_target`; the oracles are
independent of the code under test: the hypothesis-drawn objects, the tokenizer's own joint ``decode``, a
per-token Python reference of "overlaps a matched record", and ``parse_text`` of the decoded ``Y_train``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordexp_swift.data.coordjson import assistant_payload, render_object, render_objects
from coordexp_swift.data.records import GTObject
from coordexp_swift.rollout.fragment import fn_fragment_text
from coordexp_swift.rollout.parse import parse_text
from coordexp_swift.rollout.targets import build_gt_target, collate_targets, rollout_target
from coordexp_swift.teacher_forcing.batch import CEWeightTable, build_layout, ce_weights
from tests.rollout_tokenizer import real_view

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
PROMPT = [7, 8, 9]  # any ids: the prompt is outside the assistant span
bins = st.integers(0, 999)
descs = st.lists(st.sampled_from(list('ab cdé狗"\\{}[],:<|') + ["cat", "red"]), min_size=1, max_size=6).map(
    "".join).filter(lambda s: s.strip() != "")


@st.composite
def boxes(draw) -> tuple[int, int, int, int]:
    x1, x2 = sorted((draw(bins), draw(bins)))
    y1, y2 = sorted((draw(bins), draw(bins)))
    return (x1, y1, x2, y2)


gt_objects = st.builds(lambda d, b: GTObject(d, "bbox_2d", b), descs, boxes())


def _bad(kind: str, obj: GTObject, order: str) -> str:
    coords = ", ".join(f"<|coord_{b}|>" for b in obj.bins)
    if kind == "wrong_order":
        return render_object(obj, "geometry_first" if order == "desc_first" else "desc_first")
    if kind == "poly":
        return '{"desc": "p", "poly": [' + coords + ", <|coord_1|>, <|coord_2|>]}"
    return '{"desc": "w", "bbox_2d": [' + coords.rsplit(", ", 1)[0] + "]}"  # wrong arity


@st.composite
def scenarios(draw):
    order = draw(st.sampled_from(["desc_first", "geometry_first"]))
    gt = draw(st.lists(gt_objects, min_size=1, max_size=3))
    items: list[str] = []
    for obj in gt:
        kind = draw(st.sampled_from(["kept", "kept", "missing", "fp", "wrong_order", "poly", "wrong_arity"]))
        if kind == "kept":
            items.append(render_object(obj, order))
        elif kind == "fp":
            items.append(render_object(GTObject(draw(descs), "bbox_2d", draw(boxes())), order))
        elif kind != "missing":
            items.append(_bad(kind, obj, order))
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    return order, gt, '{"objects": [' + ", ".join(items) + "]}"


def _overlaps(offsets: np.ndarray, spans: list[tuple[int, int]]) -> list[bool]:
    """Per-token reference: token i overlaps one of the char spans (plain Python loop)."""
    return [any(a < hi and b > lo for lo, hi in spans) and b > a for a, b in zip(offsets[:-1], offsets[1:])]


def _check_target(tok, view, order, gt, ids):
    t = rollout_target(prompt_ids=PROMPT, response_ids=ids, assistant_payload=assistant_payload(gt, order),
                       vocab=view, object_field_order=order)
    from coordexp_swift.rollout.parse import parse_rollout

    parsed = parse_rollout(ids, view, object_field_order=order)
    m = t.meta
    # Every GT object is matched or appended exactly once.
    assert sorted([g for _, g in t.matched] + list(t.fn_gt_idx)) == list(range(len(gt)))
    # Y_train = prefix ids + tokens(fragment) + <|im_end|>, and it decodes to a complete document.
    assert tuple(t.y_train_ids[: m.prefix_len]) == parsed.prefix_token_ids
    frag = fn_fragment_text(parsed.prefix_text, [gt[g] for g in t.fn_gt_idx], order)
    assert t.y_train_ids[m.prefix_len:].tolist() == tok.encode(frag, add_special_tokens=False) + [view.eos_id]
    text = tok.decode(t.y_train_ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert text.endswith("<|im_end|>")
    doc = parse_text(text, order)
    assert not doc.invalid_rollout and not doc.truncated
    kept = [{"desc": o.desc, "bbox_2d": list(o.bins)} for o in parsed.objects]
    fn = [{"desc": gt[g].desc, "bbox_2d": list(gt[g].bins)} for g in t.fn_gt_idx]
    assert doc.objects == kept + fn
    assert doc.drop_counts == parsed.drop_counts and m.n_drop_invalid == parsed.n_drop_invalid
    assert m.invalid_rollout == parsed.invalid_rollout
    # Every B4 position lies in the assistant span; prefix ones in the prefix, tail ones in the tail.
    lo, mid, hi = m.prompt_len, m.prompt_len + m.prefix_len, m.prompt_len + m.train_len
    assert (m.prompt_len, m.train_len, m.encoded_len) == (len(PROMPT), len(t.y_train_ids), len(t.input_ids))
    for name, (a, b) in {"prefix_struct_pos": (lo, mid), "prefix_coord_pos": (lo, mid),
                         "prefix_matched_pos": (lo, mid), "tail_desc_pos": (mid, hi), "tail_closure_pos": (mid, hi),
                         "bbox_groups_prefix": (lo, mid), "bbox_groups_fn": (mid, hi)}.items():
        pos = getattr(m, name)
        pos = pos.pos if hasattr(pos, "pos") else pos
        assert all(a <= p < b for p in pos.reshape(-1).tolist()), name
    # Box groups: matched prefix slots hold the predicted bins and target the matched GT; FN slots hold the GT.
    seg = t.input_ids
    assert m.bbox_groups_prefix.gt_bins.tolist() == [list(gt[g].bins) for _, g in t.matched]
    assert [view.bins(seg[p]).tolist() for p in m.bbox_groups_prefix.pos.tolist()] == \
        [list(parsed.objects[p].bins) for p, _ in t.matched]
    assert m.bbox_groups_fn.gt_bins.tolist() == [list(gt[g].bins) for g in t.fn_gt_idx]
    assert [view.bins(seg[p]).tolist() for p in m.bbox_groups_fn.pos.tolist()] == m.bbox_groups_fn.gt_bins.tolist()
    # Closure = the outermost '}' token + <|im_end|>; CE weights: FP spans 0, closure/eos 1 (context rollout).
    assert seg[int(m.tail_closure_pos[-1])] == view.eos_id and len(m.tail_closure_pos) == 2
    layout = build_layout((m,), False, (1, len(seg)))
    w, _ = ce_weights(layout, "rollout", CEWeightTable())
    w = w[0].tolist()
    matched_spans = [parsed.objects[p].char_span for p, _ in t.matched]
    in_matched = _overlaps(parsed.token_char_offsets, matched_spans)
    for i, inside in enumerate(in_matched):
        if not inside:
            assert w[lo + i] == 0.0, (i, parsed.prefix_text)
    assert all(w[p] == 1.0 for p in m.tail_closure_pos.tolist())
    assert all(v == 0.0 for v in w[:lo])
    return t


@pytest.mark.parametrize("vocab", ["qwen", "compact"])
def test_rollout_targets_at_every_truncation_point(vocab):
    """issue 8 item 2: every GT matched or appended once; Y_train a complete document = kept predictions then FN;
    drop counts kept; B4 positions inside the assistant span; FP spans weight 0 — at every cut of the ids."""
    tok, view = real_view(vocab)

    @SETTINGS
    @given(scenarios())
    def run(scenario):
        order, gt, text = scenario
        ids = tok.encode(text, add_special_tokens=False)
        targets = [_check_target(tok, view, order, gt, ids[:cut]) for cut in range(len(ids) + 1)]
        targets.append(_check_target(tok, view, order, gt, ids + [view.eos_id]))
        # Invalid rollouts (no opener yet) take the same path: empty-opener prefix, every GT in the tail.
        for t in targets[:3]:
            if t.meta.invalid_rollout:
                assert t.fn_gt_idx == tuple(range(len(gt))) and t.counts["invalid_rollout"] == 1
        # Packed and padded batches of these targets agree per segment.
        some = targets[:: max(1, len(targets) // 3)]
        packed, padded = (collate_targets(some, vocab=view, packed=p) for p in (True, False))
        wp, _ = ce_weights(packed.host_layout, "rollout", packed.ce_table)
        wu, _ = ce_weights(padded.host_layout, "rollout", padded.ce_table)
        col = 0
        for i, t in enumerate(some):
            n = len(t.input_ids)
            assert torch_equal(packed.target_ids[0, col:col + n], padded.target_ids[i, :n])
            assert torch_equal(wp[0, col:col + n], wu[i, :n])
            col += n

    run()


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.cpu(), b.cpu()))


@pytest.mark.parametrize("vocab", ["qwen", "compact"])
def test_gt_target_is_the_canonical_text(vocab):
    """issue 8 item 2 / SPEC §3.6 B4: the Channel-A target = the rollout path with an empty prefix: the canonical
    assistant text + <|im_end|>, prefix_len 0, every GT box in bbox_groups_fn, gt-context CE on all but coords."""
    tok, view = real_view(vocab)

    @SETTINGS
    @given(st.lists(gt_objects, min_size=1, max_size=4), st.sampled_from(["desc_first", "geometry_first"]))
    def run(gt, order):
        t = build_gt_target(prompt_ids=PROMPT, assistant_payload=assistant_payload(gt, order), vocab=view,
                            object_field_order=order)
        want = render_objects(gt, order)
        assert t.y_train_ids.tolist() == tok.encode(want, add_special_tokens=False) + [view.eos_id]
        assert t.meta.prefix_len == 0 and len(t.meta.bbox_groups_prefix) == 0
        assert t.meta.bbox_groups_fn.gt_bins.tolist() == [list(o.bins) for o in gt]
        seg = t.input_ids
        assert [view.bins(seg[p]).tolist() for p in t.meta.bbox_groups_fn.pos.tolist()] == [list(o.bins) for o in gt]
        # The outermost '}' is the last token before <|im_end|> (the document's final char).
        assert t.meta.tail_closure_pos.tolist() == [len(seg) - 2, len(seg) - 1]

    run()
