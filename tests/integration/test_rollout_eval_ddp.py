"""The rollout eval step under DDP with uneven shards (issue 10 item 3 / item 5; SPEC §7.1, §8.3; seed 002 6B.2, 7.2).

5 eval records over 2 gloo ranks (``per_device_eval_batch_size`` 2): accelerate pads the shards with repeats of the
first samples (rank 0 ``[0, 1], [4, 0]``, rank 1 ``[2, 3], [1, 2]``: 8 rows for 5 samples). Every eval sample must
be counted exactly once: the 2-process run logs exactly the 1-process numbers.

Rollouts are forced (``force_rollout_plugin.py``) to :data:`FORCED` of the Channel-B swift tests: ``red square`` at
``P = (110, 95, 300, 310)``, ``green thing`` far away, one ``poly`` record (dropped). GT, one ``red square`` per
record: records 0 and 1 at exactly ``P`` (IoU 1), records 2-4 at ``(600, 600, 900, 900)`` (IoU 0 with every pred).

Golden values by hand: per record 0/1 matched 1, FP 1 (green thing), FN 0; per record 2-4 matched 0, FP 2, FN 1;
5 poly drops. Totals: gt 5, valid preds 10, matched 2, FP 8, FN 3; precision 2/10, recall 2/5, f1 = 2·0.2·0.4/0.6;
gt/pred per sample 1 and 2. COCO: one category (``red square``; ``green thing`` is no GT category); its 5
detections score 1.0 and COCOeval's stable sort keeps image order: TP, TP, FP, FP, FP at every IoU threshold
(IoU 1 or 0), so interpolated precision is 1 on the 41 recall points 0.00..0.40 and 0 beyond (max recall 2/5):
AP = 41/101 at each of the 10 thresholds → ``rollout/mAP`` = 41/101. Counting the 3 repeats instead gives gt 8 and
a different AP (rank 0 then rank 1 order: TP, TP, FP, TP, FP, FP, TP, FP).
"""
from __future__ import annotations

import json

import pytest

from tests.integration.swift_run import free_port, read_logging_jsonl, run_swift_sft
from tests.integration.test_stage2_channel_b_swift import FORCED, C, _config, compact_model  # noqa: F401

pytestmark = pytest.mark.integration

P, FAR = (110, 95, 300, 310), (600, 600, 900, 900)
GOLDEN = {
    "eval_rollout/gt_objects_total": 5, "eval_rollout/valid_pred_objects_total": 10,
    "eval_rollout/matched_total": 2, "eval_rollout/fp_total": 8, "eval_rollout/fn_total": 3,
    "eval_rollout/drop/poly_total": 5, "eval_rollout/drop_invalid_total": 5, "eval_rollout/invalid_rollout_total": 0,
    "eval_rollout/truncated_total": 0, "eval_rollout/precision": 0.2, "eval_rollout/recall": 0.4,
    "eval_rollout/f1": 2 * 0.2 * 0.4 / 0.6, "eval_rollout/gt_per_sample": 1.0, "eval_rollout/pred_per_sample": 2.0,
    "eval_rollout/mAP": 41 / 101,
}


@pytest.fixture(scope="module")
def five_records(shapes_dir, tmp_path_factory):
    """Shapes images 0-4, one ``red square`` GT each: at ``P`` for records 0, 1, at ``FAR`` for 2-4."""
    d = tmp_path_factory.mktemp("five")
    (d / "images").symlink_to(shapes_dir / "images")
    recs = [json.loads(x) for x in (shapes_dir / "val.jsonl").read_text().splitlines()][:5]
    for i, r in enumerate(recs):
        r["objects"] = [{"desc": "red square", "bbox_2d": [C(v) for v in (P if i < 2 else FAR)]}]
    path = d / "five.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _eval_record(compact_model, data, tmp_path, name, nproc):  # noqa: F811
    out = tmp_path / name / "out"
    cfg = _config("configs/stage2_rollout_aligned/smoke.yaml", compact_model, {"train": data}, out, max_steps=1,
                  eval_steps=1, val_dataset=[str(data)], per_device_eval_batch_size=2, use_cpu=True,
                  rollout_matching={"max_new_tokens": 96})
    (tmp_path / name).mkdir(exist_ok=True)
    env = {"COORDEXP_TEST_FORCED_ROLLOUT": FORCED}
    if nproc > 1:
        env.update(NPROC_PER_NODE=str(nproc), MASTER_PORT=str(free_port()))
    proc = run_swift_sft(cfg, tmp_path / name, timeout=1500, extra_env=env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])
    ev = [r for r in read_logging_jsonl(out) if "eval_rollout/f1" in r]
    assert len(ev) == 1, ev
    return ev[0]


def test_uneven_shards_counted_once(compact_model, five_records, tmp_path):  # noqa: F811
    """issue 10 item 3 / item 5 (seed 002 6B.2, 7.2; SPEC §7.1): ``stage2_rollout_aligned/smoke.yaml``, 1 step then
    the eval step on 5 records. One process and two gloo processes (uneven shards padded by repeats) log exactly
    the hand-computed golden counters, rates, per-sample means and ``rollout/mAP`` = 41/101 (module docstring)."""
    one = _eval_record(compact_model, five_records, tmp_path, "one", 1)
    two = _eval_record(compact_model, five_records, tmp_path, "two", 2)
    for rec in (one, two):
        for key, want in GOLDEN.items():
            assert rec[key] == pytest.approx(want, abs=1e-8), (key, rec[key])  # logging.jsonl keeps 8 decimals
    keys = {k for k in one if k.startswith("eval_rollout/")}
    assert keys == {k for k in two if k.startswith("eval_rollout/")}
    assert {k: one[k] for k in keys} == {k: two[k] for k in keys}
