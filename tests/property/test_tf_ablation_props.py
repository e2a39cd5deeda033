"""seed 002 1.5: each ablation weight changes only its own target tokens, over random rollout / GT meta."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_tf_meta import PROMPT, gt_meta, rollout_meta, segment_ids  # noqa: E402
from test_tf_support import COORD_IDS, VOCAB, make_rollout  # noqa: E402

from coordexp_swift.teacher_forcing import CEWeightTable, TeacherForcingContext  # noqa: E402

_desc = st.text(alphabet='ab "{}[],:\\é', min_size=1, max_size=6).filter(lambda s: s.strip())
_bins = st.tuples(*[st.integers(0, 999)] * 4)
_pred = st.tuples(_desc, _bins, st.one_of(st.none(), _bins))


def _ctx(metas_ids, context):
    rows = [segment_ids(ids, m.encoded_len - PROMPT - len(ids)) for m, ids in metas_ids]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    return TeacherForcingContext(channel="B" if context == "rollout" else "A", input_ids=ids,
                                 logits={context: torch.zeros(1, 1, 1).expand(*ids.shape, VOCAB)},
                                 meta=tuple(m for m, _ in metas_ids), coord_ids=COORD_IDS)


@settings(max_examples=60, deadline=None)
@given(pred=st.lists(_pred, max_size=3), fn=st.lists(st.tuples(_desc, _bins), min_size=1, max_size=3),
       dropped=st.booleans(), n_drop=st.integers(0, 2), seed=st.integers(0, 50),
       value=st.floats(0.0, 4.0).filter(lambda v: v != 1.0))
def test_rollout_ablations_touch_only_their_targets(pred, fn, dropped, n_drop, seed, value):
    case = make_rollout(pred, fn, dropped=dropped, seed=seed)
    ctx = _ctx([(rollout_meta(case, n_drop=n_drop), case.ids)], "rollout")
    base, _ = ctx.ce_weights("rollout", CEWeightTable())
    lay = ctx.layout
    fn_m, types = ctx.subset_mask("fn"), lay.types
    targets = {
        "rollout_fn_desc_weight": fn_m & ctx.type_mask("desc") & ~lay.closure,
        "rollout_matched_prefix_struct_weight": lay.matched_struct,
        "rollout_drop_invalid_struct_ce_multiplier": (lay.matched_struct | (fn_m & ctx.type_mask("struct")))
        & ~lay.closure & lay.has_drop,
    }
    for knob, target in targets.items():
        v = min(max(value, 1.0), 4.0) if knob.endswith("multiplier") else value
        w, _ = ctx.ce_weights("rollout", CEWeightTable(**{knob: v}))
        changed = w != base
        assert not (changed & ~target).any(), knob
        if v != 1.0:
            assert torch.equal(changed, target), knob
    assert not (base[ctx.subset_mask("fp")] != 0).any()  # FP always masked
    assert (base[lay.closure] == 1.0).all()  # closure + <|im_end|> always supervised


@settings(max_examples=40, deadline=None)
@given(objs=st.lists(st.tuples(_desc, _bins), min_size=1, max_size=4), seed=st.integers(0, 50),
       value=st.floats(0.0, 3.0).filter(lambda v: v != 1.0))
def test_desc_ce_weight_touches_only_desc(objs, seed, value):
    _, ids, _, meta = gt_meta(objs, seed=seed)
    ctx = _ctx([(meta, ids)], "gt")
    base, _ = ctx.ce_weights("gt", CEWeightTable())
    w, _ = ctx.ce_weights("gt", CEWeightTable(desc_ce_weight=value))
    assert torch.equal(w != base, ctx.type_mask("desc"))
