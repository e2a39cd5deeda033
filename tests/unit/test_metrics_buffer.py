"""SPEC §8.3 aggregation: micro-batch buffering and the DDP-safe reduction (002 7.1, 7.2, 7C.5)."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coordexp_swift.metrics.buffer import MetricsBuffer


def test_sparse_mean_keeps_value_and_counters_sum() -> None:
    """002 7.1: a mean seen on 1 of 32 micro-steps with value 1.0 logs 1.0 (not 1/32); counters sum to 32."""
    buf = MetricsBuffer()
    for step in range(32):
        m = {"loss": 2.0, "rollout/matched_total": 1}
        if step == 17:
            m["coord_diag/gt/p_gt_mean"] = 1.0
        buf.add(m)
    out = buf.reduce()
    assert out == {"loss": 2.0, "rollout/matched_total": 32.0, "coord_diag/gt/p_gt_mean": 1.0}
    assert len(buf) == 0 and buf.reduce() == {}  # cleared


def test_token_weighted_loss_counters_and_internal_keys() -> None:
    """002 7C.5: with `_log_weight` = token count, `loss/*` equals the pooled per-token mean; counters summed;
    `_` keys absent from the output; rates recomputed from counters (not averaged)."""
    # micro-batch token losses, pooled mean computed by brute force below
    micro = [[0.5, 1.5, 1.0], [4.0], [2.0, 2.0]]
    buf = MetricsBuffer()
    for i, toks in enumerate(micro):
        buf.add({"loss/coord_reg": sum(toks) / len(toks), "stage2/_log_weight": len(toks),
                 "coord_diag/gt/coord_tokens_total": len(toks), "loss/_tokens_sum": sum(toks),
                 "rollout/matched_total": [1, 0, 2][i], "rollout/valid_pred_objects_total": [2, 1, 1][i],
                 "rollout/gt_objects_total": [2, 2, 2][i], "rollout/precision": [0.5, 0.0, 2.0][i],
                 "rollout/recall": 0.0, "rollout/f1": 0.0})
    out = buf.reduce()
    pooled = sum(sum(t) for t in micro) / sum(len(t) for t in micro)  # 11/6
    assert out["loss/coord_reg"] == pytest.approx(pooled)
    assert out["coord_diag/gt/coord_tokens_total"] == 6.0
    assert not any(seg.startswith("_") for k in out for seg in k.split("/"))
    # P = 3/4, R = 3/6 (by hand), f1 = 0.6 — not the mean of the emitted per-step rates
    assert out["rollout/precision"] == pytest.approx(0.75)
    assert out["rollout/recall"] == pytest.approx(0.5)
    assert out["rollout/f1"] == pytest.approx(0.6)


def test_weights_zero_weight_and_errors() -> None:
    """SPEC §8.3: weighted mean (1·1 + 3·5)/(1+3) = 4; a key with Σw = 0 is omitted; bad input is rejected."""
    buf = MetricsBuffer()
    buf.add({"loss": 1.0, "time/forward_s": 9.0}, weight=1.0)
    buf.add({"loss": torch.tensor(5.0)}, weight=3.0)
    buf.add({"only_zero_weight": 7.0}, weight=0.0)
    assert buf.reduce() == {"loss": 4.0, "time/forward_s": 9.0}
    with pytest.raises(ValueError, match="weight"):
        buf.add({"loss": 1.0}, weight=-1.0)
    with pytest.raises(ValueError, match="'loss'"):
        buf.add({"loss": "abc"})
    with pytest.raises(RuntimeError, match="without its counters"):
        buf.add({"rollout/parse_ok_rate": 0.5})


# ---------------------------------------------------------------- 002 7.2: real 2-process gloo reduction

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Disjoint keys per rank (only `loss` is shared), several micro-batches each, a rate emitted on rank 1 only.
_RANK_STEPS: dict[int, list[dict[str, float]]] = {
    0: [{"loss": 1.0, "coord_diag/gt/acc_top5_mean": 0.5, "packing/segments_total": 3, "stage2/_log_weight": 2},
        {"loss": 3.0, "packing/segments_total": 1, "stage2/_log_weight": 2}],
    1: [{"loss": 10.0, "rollout/matched_total": 2, "rollout/valid_pred_objects_total": 4,
         "rollout/gt_objects_total": 5, "rollout/precision": 0.5, "rollout/recall": 0.4, "rollout/f1": 0.44,
         "time/rollout_generate_s": 1.5}],
}
# By hand: loss = (2·1 + 2·3 + 1·10)/(2+2+1) = 18/5; acc_top5 only rank 0 → 0.5; segments 3+1 = 4;
# P = 2/4, R = 2/5, f1 = 2·0.5·0.4/0.9 = 4/9; time only rank 1 → 1.5.
_EXPECTED = {"loss": 18 / 5, "coord_diag/gt/acc_top5_mean": 0.5, "packing/segments_total": 4.0,
             "rollout/matched_total": 2.0, "rollout/valid_pred_objects_total": 4.0, "rollout/gt_objects_total": 5.0,
             "rollout/precision": 0.5, "rollout/recall": 0.4, "rollout/f1": 4 / 9, "time/rollout_generate_s": 1.5}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    try:
        buf = MetricsBuffer()
        for m in _RANK_STEPS[rank]:
            buf.add(m)
        first = buf.reduce()
        second = buf.reduce()  # both buffers empty: zero-row tensor, must not hang
        if rank == 1:  # only rank 1 observes anything in the third window
            buf.add({"rollout/fp_total": 7})
        third = buf.reduce()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps([first, second, third]))
    finally:
        dist.destroy_process_group()


def test_two_process_disjoint_keys_no_hang_equal_logs(tmp_path: Path) -> None:
    """002 7.2: real 2-process gloo run with disjoint keys per rank: no hang, identical logs on both ranks."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 90.0
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail("2-process metrics reduction did not finish within 90 s (hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0] == logs[1]
    first, second, third = logs[0]
    assert first.keys() == _EXPECTED.keys()
    for k, v in _EXPECTED.items():
        assert first[k] == pytest.approx(v), k
    assert second == {}
    assert third == {"rollout/fp_total": 7.0}
