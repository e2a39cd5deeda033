"""Token-type partition, rich meta and the context's mask/weight views (SPEC §4.1, §4.3-4.5, §3.6 B4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coordexp_swift.coord.vocab import PieceTable, VocabView
from coordexp_swift.teacher_forcing import (
    CEWeightTable,
    SegmentMeta,
    TeacherForcingContext,
    build_gt_meta,
    build_rollout_meta,
    scan_coordjson,
)
from coordexp_swift.teacher_forcing.meta import BBoxGroups
from coordexp_swift.teacher_forcing.token_types import TYPE_NAMES, token_range
from test_tf_support import COORD_BASE, COORD_IDS, EOS_ID, VOCAB, make_rollout, reference_types, render, tokenize

#: The fake vocabulary's coord ids and <|im_end|> (its ids collide, so texts and offsets are passed explicitly).
VIEW = VocabView.from_parts(coord_ids=COORD_IDS, pieces=[""] * VOCAB, eos_id=EOS_ID, encode=lambda s: [])


def offsets_from_pieces(pieces):
    """Boundaries of per-token pieces, by the one offsets builder (a piece table of the pieces themselves)."""
    return PieceTable(pieces).render(np.arange(len(pieces)))[1]


OBJS = [('a "red" {cat}', (10, 20, 30, 40)), ("dog, big", (0, 5, 999, 998)), ("é ü", (7, 7, 7, 7))]
PROMPT = 5


def gt_meta(objs=OBJS, seed=0, extra=1, geometry_first=False):
    r = render(objs, geometry_first=geometry_first)
    ids, pieces = tokenize(r.text, seed)
    meta = build_gt_meta(prompt_len=PROMPT, train_ids=ids, offsets=offsets_from_pieces(pieces), text=r.text,
                         vocab=VIEW, gt_bins=[b for _, b in objs], encoded_len=PROMPT + len(ids) + extra)
    return r, ids, pieces, meta


def rollout_meta(case, prompt=PROMPT, n_drop=0, invalid=False):
    """The meta builder fed with the reference renderer's own desc ranges and closure (it scans nothing)."""
    offs = offsets_from_pieces(case.pieces)
    return build_rollout_meta(prompt_len=prompt, train_ids=case.ids, offsets=offs,
                              desc_value_spans=np.asarray(case.desc_ranges),
                              closure_token=int(np.searchsorted(offs[1:], case.closure_char, side="right")),
                              prefix_len=case.prefix_len, records=case.records, fn_gt_bins=case.fn_bins, vocab=VIEW,
                              n_drop_invalid=n_drop, invalid_rollout=invalid)


def segment_ids(ids, extra=1):
    return [1] * PROMPT + list(ids) + [2] * extra


def ctx_for(metas_ids, packed=False, contexts=("gt",), channel="A", table=None):
    rows = [segment_ids(ids, m.encoded_len - PROMPT - len(ids)) for m, ids in metas_ids]
    metas = tuple(m for m, _ in metas_ids)
    if packed:
        flat = [t for r in rows for t in r]
        input_ids = torch.tensor([flat])
    else:
        T = max(map(len, rows))
        input_ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    logits = {c: torch.zeros(*input_ids.shape, VOCAB) for c in contexts}
    return TeacherForcingContext(channel=channel, input_ids=input_ids, logits=logits, meta=metas, coord_ids=COORD_IDS,
                                 packed=packed, ce_table=table or CEWeightTable())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("geometry_first", [False, True])
def test_partition_matches_per_char_reference(seed, geometry_first):
    """seed 002 1.1: types exclusive + deterministic, eos never struct, boundary straddlers are desc; checked against
    a per-char brute-force reference built from the renderer's own desc spans."""
    r, ids, pieces, meta = gt_meta(seed=seed, geometry_first=geometry_first)
    got = [TYPE_NAMES[int(t)] for t in meta.token_types]
    assert got == reference_types(pieces, r.desc_ranges)
    assert got.count("eos") == 1 and got[-1] == "eos"
    assert got.count("coord") == 4 * len(OBJS)
    _, _, _, again = gt_meta(seed=seed, geometry_first=geometry_first)
    assert torch.equal(again.token_types, meta.token_types)


def test_straddling_token_is_desc():
    """seed 002 1.1: a token holding the opening quote and the first desc chars (`"re`) is desc, not struct."""
    text = '{"objects": [{"desc": "red", "bbox_2d": [<|coord_1|>, <|coord_2|>, <|coord_3|>, <|coord_4|>]}]}<|im_end|>'
    i = text.index('"red"')
    pieces = [text[:i], text[i:i + 3], text[i + 3:i + 5]]
    rest_ids, rest = tokenize(text[i + 5:])
    pieces += rest
    ids = [7, 8, 9] + rest_ids
    meta = build_gt_meta(prompt_len=1, train_ids=ids, offsets=offsets_from_pieces(pieces), text=text,
                         vocab=VIEW, gt_bins=[(1, 2, 3, 4)])
    assert [TYPE_NAMES[int(t)] for t in meta.token_types[:3]] == ["struct", "desc", "desc"]


def test_scan_is_string_aware_and_finds_outermost_brace():
    """seed 002 1.2: braces / keys inside desc values are not syntax; the closure is the depth-0 `}`, not the last."""
    r = render([('}]}{"desc": "x', (1, 2, 3, 4))], eos=False)
    scan = scan_coordjson(r.text + "}}")
    assert scan.closure_char == r.closure_char
    assert [tuple(s) for s in scan.desc_value_spans.tolist()] == r.desc_ranges
    assert scan_coordjson('{"objects": [').closure_char == -1 and scan_coordjson('{"objects": [').end_depth == 2


def test_gt_meta_fields():
    """seed 002 4.5 / 001 1.5.2: GT meta = prefix_len 0, GT groups in bbox_groups_fn (4 input positions + bins),
    closure = outermost `}` token + <|im_end|>; every position is inside the assistant span. Seed rows:
    seed 002 4.5, seed 001 1.5.2."""
    r, ids, pieces, meta = gt_meta()
    seg = segment_ids(ids)
    assert (meta.prompt_len, meta.prefix_len, meta.train_len, meta.encoded_len) == (PROMPT, 0, len(ids), len(seg))
    assert meta.bbox_groups_prefix.pos.shape == (0, 4) and meta.prefix_struct_pos.numel() == 0
    assert meta.bbox_groups_fn.gt_bins.tolist() == [list(b) for _, b in OBJS]
    assert [[seg[p] - COORD_BASE for p in g] for g in meta.bbox_groups_fn.pos.tolist()] == [list(b) for _, b in OBJS]
    offs = offsets_from_pieces(pieces)
    closure_tok = int(np.searchsorted(offs[1:], r.closure_char, side="right"))
    assert meta.tail_closure_pos.tolist() == [PROMPT + closure_tok, PROMPT + len(ids) - 1]
    assert seg[meta.tail_closure_pos[-1]] == EOS_ID
    assert list(meta.bbox_groups_fn)[1] == {"pos": meta.bbox_groups_fn.pos[1].tolist(), "gt_bins": [0, 5, 999, 998]}


def test_gt_meta_rejects_mismatched_counts_and_bins():
    """seed 002 4.5: coord-token count != 4·#objects (ValueError with both counts); wrong bins (RuntimeError)."""
    r = render(OBJS)
    ids, pieces = tokenize(r.text)
    kw = dict(prompt_len=PROMPT, train_ids=ids, offsets=offsets_from_pieces(pieces), text=r.text, vocab=VIEW)
    with pytest.raises(ValueError, match="coord-token count 12 .* 8"):
        build_gt_meta(gt_bins=[b for _, b in OBJS[:2]], **kw)
    with pytest.raises(RuntimeError, match="GT bins"):
        build_gt_meta(gt_bins=[(1, 1, 1, 1)] * 3, **kw)


def test_supervised_position_outside_span_raises():
    """seed 002 4.5: supervised indices outside the assistant span -> RuntimeError."""
    _, _, _, meta = gt_meta()
    kw = {f: getattr(meta, f) for f in SegmentMeta.__dataclass_fields__}
    kw["tail_desc_pos"] = torch.tensor([PROMPT - 1])
    with pytest.raises(RuntimeError, match="outside the assistant span"):
        SegmentMeta(**kw)
    kw = {f: getattr(meta, f) for f in SegmentMeta.__dataclass_fields__}
    kw["bbox_groups_fn"] = BBoxGroups(torch.tensor([[PROMPT + meta.train_len] * 4]), torch.tensor([[1, 2, 3, 4]]))
    with pytest.raises(RuntimeError, match="bbox_groups_fn.pos"):
        SegmentMeta(**kw)


def test_token_range_helper():
    """seed 002 4.6: shared char-span -> token-range helper (half-open, overlap semantics)."""
    offs = offsets_from_pieces(["ab", "c", "def", ""])
    assert token_range(offs, (1, 3)) == (0, 2)
    assert token_range(offs, (3, 4)) == (2, 3)
    assert token_range(offs, (2, 2)) == (1, 1)


ROLL_PRED = [("cat", (10, 10, 50, 50), (11, 11, 49, 49)), ("ghost", (600, 600, 700, 700), None),
             ("dog", (100, 100, 200, 200), (90, 90, 210, 210))]
ROLL_FN = [("bird", (300, 300, 400, 400)), ("fish", (1, 2, 3, 4))]


def test_rollout_meta_and_default_masks():
    """seed 002 1.2 / 1.4 / 9.3B / 001 1.5.2: matched desc off + struct on, FN desc on, FP (record, dropped record,
    opener, separators) 0, closure + <|im_end|> on; groups = matched (→ matched GT bins) and FN."""
    case = make_rollout(ROLL_PRED, ROLL_FN, dropped=True)
    meta = rollout_meta(case, n_drop=1)
    assert meta.prefix_len == case.prefix_len and meta.n_drop_invalid == 1
    assert meta.bbox_groups_prefix.gt_bins.tolist() == [[11, 11, 49, 49], [90, 90, 210, 210]]
    assert meta.bbox_groups_fn.gt_bins.tolist() == [list(b) for _, b in ROLL_FN]
    seg = segment_ids(case.ids, 0)
    assert [[seg[p] - COORD_BASE for p in g] for g in meta.bbox_groups_prefix.pos.tolist()] == \
        [[10, 10, 50, 50], [100, 100, 200, 200]]
    ctx = ctx_for([(meta, case.ids)], contexts=("rollout",), channel="B")
    w, scale = ctx.ce_weights("rollout")
    w = w[0].tolist()
    ref_types = reference_types(case.pieces, case.desc_ranges)
    offs = offsets_from_pieces(case.pieces)
    closure_tok = int(np.searchsorted(offs[1:], case.closure_char, side="right"))
    for i, (t, a, b) in enumerate(zip(ref_types, offs[:-1], offs[1:])):
        pos = PROMPT + i
        in_matched = any(a < hi and b > lo for lo, hi in case.matched_ranges)
        if i < case.prefix_len:
            expect = 1.0 if (in_matched and t == "struct") else 0.0
        elif i == closure_tok or t == "eos":
            expect = 1.0
        else:
            expect = {"struct": 1.0, "desc": 1.0, "coord": 0.0}[t]
        assert w[pos] == expect, (i, case.pieces[i], t)
    assert scale == 1.0
    assert all(v == 0.0 for v in w[:PROMPT])
    fp = ctx.subset_mask("fp")[0]
    assert fp[PROMPT] and not ctx.subset_mask("matched")[0][PROMPT]  # the opener is fp
    assert ctx.subset_mask("fn")[0][PROMPT + case.prefix_len:PROMPT + len(case.ids)].all()


def test_invalid_rollout_fallback_meta():
    """seed 001 1.5.3 / 002 4.5: prefix = empty opener, zero predictions, every GT in the FN tail, still trained."""
    case = make_rollout([], ROLL_FN)
    assert case.text.startswith('{"objects": [{"desc"')
    meta = rollout_meta(case, invalid=True)
    assert meta.invalid_rollout and len(meta.bbox_groups_prefix) == 0 and len(meta.bbox_groups_fn) == 2
    ctx = ctx_for([(meta, case.ids)], contexts=("rollout",), channel="B")
    w, _ = ctx.ce_weights("rollout")
    assert float(w[0, PROMPT:PROMPT + case.prefix_len].sum()) == 0.0
    assert float(w[0, PROMPT + case.prefix_len:].sum()) > 0


def test_context_weights_gt_and_self_context():
    """seed 002 1.2 / 5.1: gt = struct/eos 1, desc desc_ce_weight, coord 0; self_context = struct/eos with scale λ_fmt."""
    r, ids, pieces, meta = gt_meta()
    table = CEWeightTable(desc_ce_weight=0.5, self_context_struct_ce_weight=0.1)
    ctx = ctx_for([(meta, ids)], contexts=("gt", "self_context"), table=table)
    ref = reference_types(pieces, r.desc_ranges)
    w, s = ctx.ce_weights("gt")
    assert s == 1.0
    assert w[0, PROMPT:PROMPT + len(ids)].tolist() == [{"struct": 1.0, "eos": 1.0, "desc": 0.5, "coord": 0.0}[t]
                                                       for t in ref]
    w2, s2 = ctx.ce_weights("self_context")
    assert s2 == pytest.approx(0.1)
    assert w2[0, PROMPT:PROMPT + len(ids)].tolist() == [1.0 if t in ("struct", "eos") else 0.0 for t in ref]


def test_packed_equals_unpacked_views():
    """seed 002 1.1 / 4.1: a packed row's views equal the unpacked rows' views at the segment offsets."""
    a = gt_meta(OBJS, seed=1)
    case = make_rollout(ROLL_PRED, ROLL_FN, dropped=True, seed=3)
    b = (rollout_meta(case, n_drop=2), case.ids)
    unpacked = ctx_for([(a[3], a[1]), b], contexts=("rollout",), channel="B",
                       table=CEWeightTable(rollout_drop_invalid_struct_ce_multiplier=2.0))
    packed = ctx_for([(a[3], a[1]), b], packed=True, contexts=("rollout",), channel="B",
                     table=CEWeightTable(rollout_drop_invalid_struct_ce_multiplier=2.0))
    la, lb = a[3].encoded_len, b[0].encoded_len
    for view in ("types", "subset", "closure", "matched_struct"):
        pv, uv = getattr(packed.layout, view)[0], getattr(unpacked.layout, view)
        assert torch.equal(pv[:la], uv[0, :la]) and torch.equal(pv[la:la + lb], uv[1, :lb])
    pw, _ = packed.ce_weights("rollout")
    uw, _ = unpacked.ce_weights("rollout")
    assert torch.equal(pw[0, :la], uw[0, :la]) and torch.equal(pw[0, la:la + lb], uw[1, :lb])
    pg, ug = packed.bbox_groups(), unpacked.bbox_groups()
    assert torch.equal(pg.gt_bins, ug.gt_bins)
    assert torch.equal(pg.pos, ug.pos + torch.where(ug.row == 1, la, 0)[:, None])


def test_context_rejects_sliced_logits_and_bad_meta():
    """seed 002 4.1: logits [B,T] must equal input_ids [B,T]; packed needs B=1 and room for every segment."""
    _, ids, _, meta = gt_meta()
    n = meta.encoded_len
    with pytest.raises(RuntimeError, match="does not match input_ids"):
        TeacherForcingContext(channel="A", input_ids=torch.zeros(1, n, dtype=torch.long),
                              logits={"gt": torch.zeros(1, n - 1, VOCAB)}, meta=(meta,), coord_ids=COORD_IDS)
    with pytest.raises(RuntimeError, match="Σ encoded_len"):
        TeacherForcingContext(channel="A", input_ids=torch.zeros(1, n, dtype=torch.long),
                              logits={"gt": torch.zeros(1, n, VOCAB)}, meta=(meta, meta), coord_ids=COORD_IDS,
                              packed=True)


def test_one_scanner_and_layering():
    """issue 8 item 4: one CoordJSON scanner, in data/ below both teacher_forcing and rollout (imports re, numpy and
    dataclasses only); the parser, the FN fragment and the token typing import it; teacher_forcing never imports
    rollout (rollout/targets.py imports teacher_forcing, one way)."""
    import ast
    import importlib
    import inspect
    import pkgutil

    import coordexp_swift.teacher_forcing as tf_pkg

    def imported(name: str) -> set[str]:
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        out = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return out | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert imported("coordexp_swift.data.coordjson_scan") <= {"__future__", "re", "dataclasses", "numpy"}
    for user in ("coordexp_swift.rollout.parse", "coordexp_swift.rollout.fragment",
                 "coordexp_swift.teacher_forcing.token_types"):
        assert "coordexp_swift.data.coordjson_scan" in imported(user), user
    names = ["coordexp_swift.teacher_forcing"] + [
        m.name for m in pkgutil.walk_packages(tf_pkg.__path__, "coordexp_swift.teacher_forcing.")]
    for name in names:
        assert not any(m.startswith("coordexp_swift.rollout") for m in imported(name)), name
