"""Rollout → training targets (SPEC §3.6 B3/B4, §4.3): hand-written cases on the fake byte-level tokenizer
(tests/rollout_tokenizer.py), expected texts and weights written out from its merge list; issue 8 item 2."""
from __future__ import annotations

import numpy as np
import pytest

from coordexp_swift.rollout.match import MatchResult, match_predictions
from coordexp_swift.rollout.parse import parse_rollout
from coordexp_swift.rollout.targets import (
    build_gt_target,
    build_rollout_target,
    collate_targets,
    rollout_target,
)
from coordexp_swift.teacher_forcing.batch import ce_weights
from coordexp_swift.teacher_forcing.token_types import TYPE_NAMES
from tests.rollout_tokenizer import FakeByteTokenizer

T = FakeByteTokenizer()
V = T.view
PROMPT = [ord("P")] * 4


def rec(desc: str, b: tuple[int, int, int, int]) -> str:
    return '{"desc": "%s", "bbox_2d": [%s]}' % (desc, ", ".join(f"<|coord_{k}|>" for k in b))


CAT, DOG, BIRD = ("cat", (10, 10, 50, 50)), ("dog", (100, 100, 200, 200)), ("bird", (300, 300, 400, 400))
PAYLOAD = {"objects": [{"desc": d, "bbox_2d": [f"<|coord_{k}|>" for k in b]} for d, b in (CAT, DOG, BIRD)]}
POLY = '{"desc": "p", "poly": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>, <|coord_5|>, <|coord_6|>]}'


def weights(target):
    batch = collate_targets([target], vocab=V)
    w, _ = ce_weights(batch.host_layout, "rollout", batch.ce_table)
    return w[0, len(PROMPT):].tolist()


def pieces(target):
    return V.pieces.pieces(target.y_train_ids)


def test_matched_fp_dropped_and_fn_tail():
    """issue 8 item 2 / seed 002 1.4: cat and dog match (IoU 0.90 / 0.69), ghost is FP, the poly record is dropped,
    bird is appended; matched struct 1, matched desc/coords 0, FP and dropped spans 0, FN struct+desc 1, closure 1."""
    pred = [rec("cat", (11, 11, 49, 49)), rec("ghost", (600, 600, 700, 700)), POLY, rec("dog", (90, 90, 210, 210))]
    body = '{"objects": [' + ", ".join(pred)
    t = rollout_target(prompt_ids=PROMPT, response_ids=T.encode(body + "]}") + [T.im_end_id], assistant_payload=PAYLOAD,
                       vocab=V)
    # gating rejections: every GT is a candidate of every prediction (3 < top_k); IoU < 0.3 for cat/dog vs the
    # two other GT (2 + 2) and ghost vs all three (3).
    assert t.counts == {"matched": 2, "fp": 1, "fn": 1, "dropped": 1, "truncated": 0, "invalid_rollout": 0,
                        "gating_rejections": 7}
    assert t.matched == ((0, 0), (2, 1)) and t.fn_gt_idx == (2,)
    assert T.decode_ids(t.y_train_ids.tolist()) == body + ", " + rec(*BIRD) + "]}<|im_end|>"
    m = t.meta
    assert m.bbox_groups_prefix.gt_bins.tolist() == [list(CAT[1]), list(DOG[1])]
    assert m.bbox_groups_fn.gt_bins.tolist() == [list(BIRD[1])]
    assert m.n_drop_invalid == 1 and not m.invalid_rollout
    p, w = pieces(t), weights(t)
    types = [TYPE_NAMES[int(x)] for x in m.token_types]
    n_pre = m.prefix_len
    # Prefix: the opener token and everything inside ghost / poly is fp -> 0.
    assert p[0] == '{"objects": [' and w[0] == 0.0
    ghost = [i for i in range(n_pre) if p[i] == "g"]  # 'ghost' is spelled in byte tokens
    assert ghost and all(w[i] == 0.0 for i in ghost)
    poly = [i for i in range(n_pre) if p[i] == "poly"]
    assert len(poly) == 1 and w[poly[0]] == 0.0
    # Matched records: keys and punctuation 1, the desc value 'cat' (bytes c, a, t) and coords 0.
    first_desc = p.index("desc")
    assert w[first_desc] == 1.0 and types[first_desc] == "struct"
    assert [(p[i], w[i], types[i]) for i in range(first_desc + 2, first_desc + 5)] == [
        ("c", 0.0, "desc"), ("a", 0.0, "desc"), ("t", 0.0, "desc")]
    assert all(w[i] == 0.0 for i in range(n_pre) if types[i] == "coord")
    # Tail: ', ' struct 1, the FN desc 'bird' 1, FN coords 0, closure token and <|im_end|> 1.
    tail = list(zip(p[n_pre:], w[n_pre:], types[n_pre:]))
    assert tail[0] == (", ", 1.0, "struct")
    assert [x for x in tail if x[2] == "desc"] == [(c, 1.0, "desc") for c in "bird"]
    assert all(x[1] == 0.0 for x in tail if x[2] == "coord") and sum(x[2] == "coord" for x in tail) == 4
    assert tail[-2:] == [("]}]}", 1.0, "struct"), ("<|im_end|>", 1.0, "eos")]  # one merge holds both closers
    assert m.tail_closure_pos.tolist() == [len(PROMPT) + m.train_len - 2, len(PROMPT) + m.train_len - 1]


def test_invalid_rollout_goes_through_the_same_path():
    """seed 001 1.5.3 / issue 8 item 2: no opener -> prefix = tokens of '{"objects": [' (fp, weight 0), zero
    predictions, every GT appended, the sample still trains."""
    t = rollout_target(prompt_ids=PROMPT, response_ids=T.encode("I see a cat.") + [T.im_end_id],
                       assistant_payload=PAYLOAD, vocab=V)
    assert t.counts["invalid_rollout"] == 1 and t.counts["fn"] == 3 and t.fn_gt_idx == (0, 1, 2)
    assert t.meta.invalid_rollout and t.meta.prefix_len == len(T.encode('{"objects": ['))
    assert T.decode_ids(t.y_train_ids.tolist()) == '{"objects": [' + ", ".join(
        rec(*o) for o in (CAT, DOG, BIRD)) + "]}<|im_end|>"
    w = weights(t)
    assert all(v == 0.0 for v in w[: t.meta.prefix_len]) and sum(w[t.meta.prefix_len:]) > 0
    assert len(t.meta.bbox_groups_fn) == 3 and len(t.meta.bbox_groups_prefix) == 0


def test_gt_target_equals_the_rollout_path_with_an_empty_prefix():
    """issue 8 item 2: the GT (Channel-A) target's tail after '{"objects": [' is the all-FN fragment of an invalid
    rollout, token for token when the tokenizer does not merge across the opener; its meta has prefix_len 0."""
    g = build_gt_target(prompt_ids=PROMPT, assistant_payload=PAYLOAD, vocab=V)
    bad = rollout_target(prompt_ids=PROMPT, response_ids=[T.im_end_id], assistant_payload=PAYLOAD, vocab=V)
    assert g.meta.prefix_len == 0 and bad.meta.prefix_len > 0
    assert T.decode_ids(g.y_train_ids.tolist()) == T.decode_ids(bad.y_train_ids.tolist())
    assert g.meta.bbox_groups_fn.gt_bins.tolist() == bad.meta.bbox_groups_fn.gt_bins.tolist()
    assert g.meta.token_types.tolist() == bad.meta.token_types.tolist()


def test_split_utf8_desc_in_the_tail_is_typed_desc():
    """A FN desc whose characters the byte tokenizer splits (per-token text U+FFFD): its 6 byte tokens are desc,
    the quotes around it are not (the target builder's per-token-text fallback)."""
    payload = {"objects": [{"desc": "小狗", "bbox_2d": ["<|coord_1|>", "<|coord_2|>", "<|coord_3|>", "<|coord_4|>"]}]}
    t = rollout_target(prompt_ids=PROMPT, response_ids=T.encode('{"objects": [') + [T.im_end_id],
                       assistant_payload=payload, vocab=V)
    p = pieces(t)
    desc = (t.meta.tail_desc_pos - len(PROMPT)).tolist()
    assert [p[i] for i in desc] == ["\ufffd"] * 6
    assert p[desc[0] - 1] == '": "' and p[desc[-1] + 1] == '", "'
    assert T.decode_ids(t.y_train_ids.tolist()).startswith('{"objects": [{"desc": "小狗"')


def test_match_must_fit_the_rollout():
    """A MatchResult that forgets a GT (or names a prediction twice) is a broken invariant: RuntimeError."""
    parsed = parse_rollout(T.encode('{"objects": [' + rec(*CAT) + "]}"), V)
    good = match_predictions(parsed.pred_bins, [CAT[1], DOG[1], BIRD[1]])
    t = build_rollout_target(prompt_ids=PROMPT, parsed=parsed, match=good, assistant_payload=PAYLOAD, vocab=V)
    assert t.matched == ((0, 0),) and t.fn_gt_idx == (1, 2)
    with pytest.raises(RuntimeError, match="match does not fit"):
        build_rollout_target(prompt_ids=PROMPT, parsed=parsed, match=MatchResult(((0, 0),), (1.0,), (), (1,), 0),
                             assistant_payload=PAYLOAD, vocab=V)
    with pytest.raises(RuntimeError, match="match does not fit"):
        build_rollout_target(prompt_ids=PROMPT, parsed=parsed, match=MatchResult(((0, 0),), (1.0,), (0,), (1, 2), 0),
                             assistant_payload=PAYLOAD, vocab=V)


def test_collate_packed_and_padded():
    """seed 002 4.1: packed = one padding-free row of all segments; padded rows carry the same ids and weights;
    a packed row over max_length fails fast (ValueError)."""
    a = build_gt_target(prompt_ids=PROMPT, assistant_payload=PAYLOAD, vocab=V)
    b = rollout_target(prompt_ids=PROMPT, response_ids=T.encode('{"objects": [' + rec(*DOG)), assistant_payload=PAYLOAD,
                       vocab=V)
    packed = collate_targets([a, b], vocab=V, packed=True)
    padded = collate_targets([a, b], vocab=V)
    la, lb = len(a.input_ids), len(b.input_ids)
    assert packed.target_ids.shape == (1, la + lb) and padded.target_ids.shape == (2, max(la, lb))
    assert packed.target_ids[0].tolist() == a.input_ids.tolist() + b.input_ids.tolist()
    wp, _ = ce_weights(packed.host_layout, "rollout", packed.ce_table)
    wu, _ = ce_weights(padded.host_layout, "rollout", padded.ce_table)
    assert np.array_equal(wp[0, :la].numpy(), wu[0, :la].numpy())
    assert np.array_equal(wp[0, la:].numpy(), wu[1, :lb].numpy())
    assert float(wu[0, la:].sum()) == 0.0 if la < lb else True
    with pytest.raises(ValueError, match="max_length"):
        collate_targets([a, b], vocab=V, packed=True, max_length=la + lb - 1)
