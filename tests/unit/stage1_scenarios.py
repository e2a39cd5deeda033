"""Stage-1 trainer scenarios whose logged values were frozen BEFORE Stage-1 moved onto the registry modules
(seed 002 7B.1: "its logged numbers are unchanged").

``run_all(make_trainer)`` runs each scenario through ``Stage1Trainer._get_num_items_in_batch`` / ``compute_loss`` on
the synthetic vocabulary of ``test_stage1_objective`` and returns plain numbers: the returned losses, every logged
value, and a gradient probe (the dot product of all parameter gradients with a fixed random vector). One scenario
runs the batch through ms-swift's own ``prepare_logits_to_keep`` (batch size 1: labels and logits compacted to the
supervised positions), which is what ``swift sft`` does for packed rows.

Freezing (done once, at commit 2beed96, the last Stage-1 implementation with its own loss code)::

    .venv/bin/python -m tests.unit.stage1_scenarios > tests/golden/stage1_frozen.json
"""
from __future__ import annotations

import json
import types
from typing import Callable

import torch

from coordexp_swift.config.custom import CoordSoftCEW1Config
from tests.unit.test_stage1_objective import IM_END, IGNORE_INDEX, W_ALL, TokenwiseLM, _batch, _sample, coord_loss


class KeepLM(TokenwiseLM):
    """``TokenwiseLM`` that honours HF's ``logits_to_keep`` (int suffix or bool mask over positions)."""

    def forward(self, input_ids, logits_to_keep=0, **kw):
        out = super().forward(input_ids, **kw)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        out.logits = out.logits[:, keep]
        return out


def _packed(idx) -> dict[str, torch.Tensor]:
    """One padding-free row of samples ``idx`` (each segment starts with its -100 prompt), positions restarting."""
    ids, labels, pos = [], [], []
    for i in idx:
        x, y = _sample(i)
        ids += x
        labels += y
        pos += list(range(len(x)))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]), "text_position_ids": torch.tensor([pos])}


def _compact(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ms-swift's ``SwiftMixin.prepare_logits_to_keep`` applied to ``batch`` (in place), single process."""
    from swift.trainers.mixin import SwiftMixin

    fake = types.SimpleNamespace(template=types.SimpleNamespace(sequence_parallel_size=1),
                                 args=types.SimpleNamespace(tuner_backend="peft"))
    SwiftMixin.prepare_logits_to_keep(fake, batch)
    return batch


def _probe(model) -> float:
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    v = torch.randn(g.numel(), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return float(g.double() @ v)


def _logged(tr) -> dict[str, list[float]]:
    return {k: list(m.values) for k, m in sorted(tr.custom_metrics["train"].items())}


def _run(make_trainer: Callable, weights: CoordSoftCEW1Config, batches: list[dict], *, enabled: bool = True,
         window: bool = False, seed: int = 21) -> dict:
    model = KeepLM(seed=seed)
    tr = make_trainer(model, weights, enabled=enabled)
    n_items = tr._get_num_items_in_batch([dict(b) for b in batches], torch.device("cpu")) if window else None
    losses = [tr.compute_loss(model, dict(b), num_items_in_batch=n_items) for b in batches]
    sum(losses).backward()
    return {"losses": [float(x.detach()) for x in losses], "logged": _logged(tr), "grad_probe": _probe(model)}


def run_all(make_trainer: Callable) -> dict[str, dict]:
    """Every scenario's numbers (see the module docstring)."""
    text_gate = coord_loss(soft_ce_weight=1.0, w1_weight=0.5, gate_weight=1.0, text_gate_weight=0.3)
    return {
        "all_terms_padded": _run(make_trainer, W_ALL, [_batch([0, 2, 3])]),
        "defaults_window_ga2": _run(make_trainer, coord_loss(), [_batch([0, 1]), _batch([2, 3])], window=True),
        "plain_sft_window_ga2": _run(make_trainer, coord_loss(), [_batch([0, 2]), _batch([1])], enabled=False,
                                     window=True),
        "packed_compacted": _run(make_trainer, W_ALL, [_compact(_packed([1, 2, 3]))]),
        "packed_full_text_gate": _run(make_trainer, text_gate, [_packed([3, 0])], window=True),
        "padded_suffix_kept": _run(make_trainer, text_gate, [_compact(_batch([2, 0]))]),
    }


if __name__ == "__main__":
    from tests.unit.test_stage1_objective import bare_trainer

    assert IGNORE_INDEX == -100 and IM_END == 96
    print(json.dumps(run_all(bare_trainer), indent=1, sort_keys=True))
