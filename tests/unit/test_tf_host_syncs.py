"""The Stage-1 micro-step issues at most one host-sync-class op after the forward is queued (issue 8 item 5):
the objective, its backward and the trainer's logging run on the batch built before the forward, whose indices
were made on the host; the one allowed op is the logging transfer."""
from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

from coordexp_swift.teacher_forcing.sync_audit import count_syncs, stage1_scenario
from coordexp_swift.trainers.stage1 import Stage1Trainer


class _Meter:
    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, v) -> None:
        self.values.append(float(v))


def _log():
    fake = types.SimpleNamespace(custom_metrics={"train": defaultdict(_Meter), "eval": defaultdict(_Meter)},
                                 model=types.SimpleNamespace(training=True))
    return (lambda step: Stage1Trainer._log_stage1(fake, step)), fake


@pytest.mark.parametrize("kw", [dict(coord_enabled=True, window=True), dict(coord_enabled=True, window=False),
                                dict(coord_enabled=False, window=True)], ids=["coord_window", "coord_local", "sft"])
def test_stage1_micro_step_has_at_most_one_sync_the_logging_transfer(kw):
    """issue 8 item 5: ≤ 1 sync-class op per Stage-1 micro-step after the forward (objective + backward +
    logging), and that op is the logging transfer (``tolist`` of the stacked logged values); the step still logs
    every key and produces gradients."""
    scn = stage1_scenario(**kw)
    log, fake = _log()
    counter = scn.run(log)
    assert counter.ops == ["Tensor.tolist"], counter.ops
    assert scn.head.weight.grad is not None and scn.head.weight.grad.abs().sum() > 0
    assert {"loss/struct_ce", "loss/desc_ce", "token_acc", "text_token_acc"} <= set(fake.custom_metrics["train"])


def test_counter_sees_every_sync_class():
    """issue 8 item 5: the counter records .item()/float(t)/bool(t), nonzero, boolean-mask indexing, unique,
    masked_select and host reads (.tolist/.numpy/.cpu) — so a regression that adds one fails the test above."""
    x = torch.arange(6.0)
    with count_syncs() as c:
        float(x.sum())
        bool((x > 2).any())
        torch.nonzero(x)
        x[x > 2]
        torch.unique(x)
        torch.masked_select(x, x > 1)
        x.tolist()
        x.numpy()
        x.cpu()
        x.to("cpu")  # a no-op move: not a sync
        x.index_select(0, torch.tensor([1, 2]))  # an index gather: not a sync
    assert c.ops == ["_local_scalar_dense", "_local_scalar_dense", "nonzero", "index(bool index)", "_unique2",
                     "masked_select", "Tensor.tolist", "Tensor.numpy", "Tensor.cpu"], c.ops
