"""Benchmark / audit: host-sync-class ops per training micro-step AFTER the forward is queued (issue 8 item 5).

Counts, with ``coordexp_swift.teacher_forcing.sync_audit.SyncCounter`` (a ``TorchDispatchMode`` plus wrappers of the
host reads that bypass the dispatcher on CPU; see its docstring for what is counted and why a CPU count is an upper
bound of the GPU one), the ops issued by: the Stage-1 objective on the pre-built batch + backward + the trainer's
logging (``Stage1Trainer._log_stage1``: the one transfer of logged values). Target: ≤ 1 per micro-step.
The batch (host token typing, index building, one non-blocking transfer) is built before the forward and is not
counted. Variants: coord loss on (default weights + text gate + coord CE) with window denominators, with local
means, and coord loss off (plain-SFT CE). Channel-A / Channel-B steps: add a scenario to ``SCENARIOS``.

Prints the count and op list per step; writes ``bench/results/host_syncs.json`` as
``{"stage1": {"syncs_per_step": N, "ops": [...]}, "variants": {...}}``.
On a CUDA machine (``--device cuda``) it also runs the step under ``torch.cuda.set_sync_debug_mode("warn")`` and
reports the number of warnings. Usage: ``python bench/host_syncs.py [--device cpu|cuda]``.
"""
from __future__ import annotations

import argparse
import json
import types
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from coordexp_swift.teacher_forcing.sync_audit import stage1_scenario
from coordexp_swift.trainers.stage1 import Stage1Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "host_syncs.json"
TARGET = 1


class _Meter:
    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, v) -> None:
        self.values.append(float(v))


def trainer_log():
    """``Stage1Trainer._log_stage1`` bound to a stand-in trainer (custom_metrics + model.training)."""
    fake = types.SimpleNamespace(custom_metrics={"train": defaultdict(_Meter), "eval": defaultdict(_Meter)},
                                 model=types.SimpleNamespace(training=True))
    return lambda step: Stage1Trainer._log_stage1(fake, step), fake


SCENARIOS = {
    "stage1": dict(coord_enabled=True, window=True),
    "stage1_local_means": dict(coord_enabled=True, window=False),
    "stage1_coord_off": dict(coord_enabled=False, window=True),
}


def _to(scn, device: str):
    scn.hidden = scn.hidden.to(device)
    scn.head = scn.head.to(device)
    scn.labels = scn.labels.to(device)
    if scn.window_counts is not None:
        scn.window_counts = scn.window_counts.to(device)
    return scn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out: dict = {"device": args.device, "target": TARGET, "variants": {}}
    for name, kw in SCENARIOS.items():
        scn = _to(stage1_scenario(**kw), args.device)
        log, fake = trainer_log()
        scn.run(log)  # warm-up (lazy per-device tables)
        counter = scn.run(log)
        rec = {"syncs_per_step": counter.count, "ops": counter.ops,
               "logged_keys": sorted(fake.custom_metrics["train"])}
        if args.device.startswith("cuda"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                batch = scn.build()
                logits = scn.forward()
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step = scn.objective(logits, batch=batch, window_counts=scn.window_counts)
                    step.loss.backward()
                    log(step)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            rec["cuda_sync_debug_warnings"] = sum("called a synchronizing" in str(w.message) for w in caught)
        print(f"{name:22s} syncs/step = {counter.count}  ops = {counter.ops}"
              + (f"  cuda warnings = {rec['cuda_sync_debug_warnings']}" if "cuda_sync_debug_warnings" in rec else ""))
        out["variants"][name] = rec
    out["stage1"] = {k: out["variants"]["stage1"][k] for k in ("syncs_per_step", "ops")}
    ok = all(v["syncs_per_step"] <= TARGET for v in out["variants"].values())
    print(f"target <= {TARGET} per micro-step: {'met' if ok else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
