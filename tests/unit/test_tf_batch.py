"""The host-built teacher-forcing batch and ``batch.with_logits`` (issue 8 item 1): built before any logits exist,
indices equal to an independent device-side recomputation, one packed transfer, two logits contexts with their own
denominators, and ``target_ids`` meaning "the token at t, read by logits at t − 1" for Stage-2 and Stage-1."""
from __future__ import annotations

import pytest
import torch

from coordexp_swift.teacher_forcing import CEWeightTable, ObjectivePipeline, RunSettings, TeacherForcingBatch
from coordexp_swift.teacher_forcing.batch import COORD, _pack, _unpack, ce_weights
from coordexp_swift.teacher_forcing.manifest import parse_pipeline
from test_tf_meta import OBJS, gt_meta, segment_ids
from test_tf_support import COORD_IDS, VOCAB

TWO = "stage2_two_channel"


def _gt_batch(n=2, seed=0, packed=False, contexts=("gt", "self_context")):
    metas = [gt_meta(OBJS[: 1 + i % 3], seed=seed + i) for i in range(n)]
    rows = [segment_ids(ids) for _, ids, _, _ in metas]
    if packed:
        ids = torch.tensor([[t for r in rows for t in r]])
    else:
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    batch = TeacherForcingBatch.build(channel="A", target_ids=ids, meta=[m[3] for m in metas], coord_ids=COORD_IDS,
                                      packed=packed, ce_table=CEWeightTable(), contexts=contexts)
    return batch, ids


@pytest.mark.parametrize("packed", [False, True])
def test_batch_indices_equal_a_device_side_recomputation(packed):
    """issue 8 item 1: every host-built index equals what the pre-split context computed from the dense views
    after the forward (nonzero of the CE weights / coord types, ``row·T + pos − 1``, the id → bin lookup)."""
    batch, ids = _gt_batch(packed=packed)
    seq = ids.shape[1]
    lut = torch.full((VOCAB,), -1)
    lut[COORD_IDS] = torch.arange(1000)
    for context in batch.contexts:
        idx = batch.index[context]
        w, scale = ce_weights(batch.layout, context, batch.ce_table)
        row, pos = torch.nonzero((w > 0) & (scale > 0), as_tuple=True)
        assert torch.equal(idx.ce_flat, row * seq + pos - 1)
        assert torch.equal(idx.ce_target, ids[row, pos])
        assert torch.equal(idx.ce_part_w.sum(0), w[row, pos])
        assert idx.ce_w_sum == pytest.approx(float(w.sum()))
        if context == "gt":
            s_row, s_pos = torch.nonzero(batch.layout.types == COORD, as_tuple=True)
            bins = lut[ids[s_row, s_pos]]
        else:
            g = batch.layout.groups
            s_row, s_pos, bins = g.row.repeat_interleave(4), g.pos.reshape(-1), g.gt_bins.reshape(-1)
        assert torch.equal(idx.slot_flat, s_row * seq + s_pos - 1) and torch.equal(idx.slot_bins, bins)
        assert bool((idx.slot_bins >= 0).all()) and idx.n_slots == len(s_row) > 0
    g = batch.layout.groups
    assert torch.equal(batch.group_flat, (g.row[:, None] * seq + g.pos - 1).reshape(-1))


def test_one_packed_buffer_round_trips_every_part():
    """issue 8 item 1 (one transfer): the parts are views of ONE buffer (one storage) and equal the originals,
    whatever their dtype and shape (int8 / bool / float32 / int64, empty parts, odd byte counts)."""
    parts = {"a": torch.arange(5, dtype=torch.int8), "b": torch.tensor([[True, False, True]]),
             "c": torch.randn(3, 2), "d": torch.zeros(0, 4, dtype=torch.long), "e": torch.arange(7)}
    buf, layout = _pack(parts, pin=False)
    out = _unpack(buf.clone(), layout)
    ptrs = {v.untyped_storage().data_ptr() for v in out.values()}
    assert len(ptrs) == 1
    for k, v in parts.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


def test_batch_exists_before_logits_and_binds_two_contexts_with_their_own_denominators():
    """issue 8 item 1: the batch is built with no logits; ``with_logits(gt=..., self_context=...)`` gives the
    same losses as the keyword-built context; window denominators are keyed per context — dividing gt's means by
    3x its local counts and self_context's by 5x scales each context's terms by exactly 1/3 and 1/5."""
    batch, ids = _gt_batch()
    g = torch.Generator().manual_seed(0)
    z_gt = torch.randn(*ids.shape, VOCAB, generator=g) * 2
    z_sc = torch.randn(*ids.shape, VOCAB, generator=g) * 2
    m = parse_pipeline({"objective": [{"name": "token_ce"}], "diagnostics": []}, TWO, {"variant": TWO})
    pipe = ObjectivePipeline(m, RunSettings(variant=TWO))
    batch = batch.with_table(pipe.ce_table)
    local = pipe(batch.with_logits(gt=z_gt, self_context=z_sc))
    gi, si = batch.index["gt"], batch.index["self_context"]
    dens = {"gt": {"token_ce": torch.tensor(3 * gi.ce_w_sum)}, "self_context": {"token_ce": 5 * si.ce_w_sum}}
    scaled = pipe(batch.with_logits(gt=z_gt, self_context=z_sc, denominators=dens))
    assert scaled.metrics["loss/struct_ce/self_context"] == pytest.approx(
        local.metrics["loss/struct_ce/self_context"] / 5, rel=1e-6)
    gt_struct = local.metrics["loss/struct_ce"] - local.metrics["loss/struct_ce/self_context"]
    assert scaled.metrics["loss/struct_ce"] == pytest.approx(
        gt_struct / 3 + local.metrics["loss/struct_ce/self_context"] / 5, rel=1e-6)
    assert scaled.metrics["loss/desc_ce"] == pytest.approx(local.metrics["loss/desc_ce"] / 3, rel=1e-6)
    with pytest.raises(RuntimeError, match="indexed only"):
        _gt_batch(contexts=("gt",))[0].with_logits(gt=z_gt, self_context=z_sc)
    with pytest.raises(RuntimeError, match="does not match"):
        batch.with_logits(gt=z_gt[:, 1:])
    with pytest.raises(RuntimeError, match="denominators"):
        batch.with_logits(gt=z_gt, denominators={"rollout": {"token_ce": 1.0}})


def test_target_ids_are_the_labels_for_stage1_and_the_input_ids_for_stage2():
    """issue 8 item 1: ``target_ids[b, t]`` is the token whose CE reads ``logits[b, t − 1]``: Stage-2 passes its
    input ids, Stage-1 its unshifted labels (−100 kept where unsupervised), and the CE rows read exactly the
    targets at ``ce_flat + 1``."""
    from tests.unit.test_stage1_objective import W_ALL, _batch, objective

    b = _batch([0, 2])
    obj = objective(W_ALL)
    s1 = obj.batch(b["labels"])
    assert torch.equal(s1.target_ids, b["labels"])
    idx = s1.index["gt"]
    flat_labels = b["labels"].reshape(-1)
    assert torch.equal(flat_labels[idx.ce_flat + 1], idx.ce_target)
    assert bool((idx.ce_target != -100).all()) and idx.n_ce + idx.n_slots == int((b["labels"] != -100).sum())
    s2, ids = _gt_batch()
    assert torch.equal(s2.target_ids, ids)
    assert torch.equal(ids.reshape(-1)[s2.index["gt"].ce_flat + 1], s2.index["gt"].ce_target)
