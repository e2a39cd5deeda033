"""GPU checks of the Stage-1 objective on a CUDA device (run by ``examples/gpu/check_gpu.sh``; no GPU in CI).

On logits ``[1, N, V]`` (default N = 4096, V = 152,669; the synthetic CoordJSON labels of ``bench/memory.py``):

1. **Memory** — peak extra CUDA memory (``max_memory_allocated`` − allocated after the logits and the batch
   exist) of the objective forward + backward vs transformers' ``ForCausalLMLoss`` (upcast + CE), bf16 and fp32.
2. **Speed** — median of 7 timed fwd+bwd (after 2 warm-ups, ``cuda.synchronize`` around each) of both; ratio.
3. **Numerics** — the same logits in fp32 on the CPU vs fp32 and bf16 on CUDA: every logged term (relative
   difference; bf16 logits are the fp32 logits rounded, so the CPU reference runs on the rounded values too);
   extreme logits (±inf, NaN, ±1e4 rows, bf16 and fp16) give a finite loss and finite gradients.

Writes ``bench/results/gpu_checks.json`` (or ``--out``). Usage: ``python bench/gpu_checks.py [--n 4096]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _labels  # noqa: E402  (the same synthetic labels as the CPU memory bench)

from coordexp_swift.config.custom import CoordSoftCEW1Config  # noqa: E402
from coordexp_swift.teacher_forcing.stage1 import Stage1Objective  # noqa: E402


def _objective(vocab, labels, device):
    obj = Stage1Objective(CoordSoftCEW1Config(enabled=True, ce_weight=0.5, text_gate_weight=0.5), vocab)
    return obj, obj.batch(labels.to(device))


def _baseline(logits, labels, vocab_size):
    from transformers.loss.loss_utils import ForCausalLMLoss

    n_items = int((labels[:, 1:] != -100).sum())
    return ForCausalLMLoss(logits, labels, vocab_size=vocab_size, num_items_in_batch=n_items)


def memory_and_speed(vocab, labels, dtype, device, vocab_size, reps=7) -> dict:
    out = {}
    g = torch.Generator().manual_seed(1)
    base_logits = (torch.randn(1, labels.shape[1], vocab_size, generator=g) * 2).to(dtype)
    labels_d = labels.to(device)
    obj, batch = _objective(vocab, labels, device)
    runs = {"objective": lambda z: obj(z, batch=batch).loss,
            "baseline": lambda z: _baseline(z, labels_d, vocab_size)}
    for name, fn in runs.items():
        z = base_logits.to(device).requires_grad_()
        for _ in range(2):
            fn(z).backward()
            z.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = fn(z)
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        z.grad = None
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(z).backward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            z.grad = None
        out[name] = {"peak_extra_bytes": int(peak), "median_s": statistics.median(times), "loss": float(loss)}
        del z, loss
    out["memory_ratio"] = out["objective"]["peak_extra_bytes"] / out["baseline"]["peak_extra_bytes"]
    out["time_ratio"] = out["objective"]["median_s"] / out["baseline"]["median_s"]
    return out


def numerics(vocab, labels, vocab_size) -> dict:
    g = torch.Generator().manual_seed(2)
    z32 = torch.randn(1, labels.shape[1], vocab_size, generator=g) * 3
    out: dict = {}
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        zq = z32.to(dtype)
        obj_c, batch_c = _objective(vocab, labels, "cpu")
        ref = obj_c(zq.float(), batch=batch_c)
        obj_g, batch_g = _objective(vocab, labels, "cuda")
        got = obj_g(zq.cuda(), batch=batch_g)
        ref_v = {"loss": float(ref.loss), **{k: float(v) for k, v in ref.logged.items()}}
        got_v = {"loss": float(got.loss), **{k: float(v) for k, v in got.logged.items()}}
        rel = {k: abs(got_v[k] - ref_v[k]) / max(abs(ref_v[k]), 1e-12) for k in ref_v}
        out[dname] = {"cpu_fp32": ref_v, "cuda": got_v, "max_rel_diff": max(rel.values()), "rel": rel}
    extreme = {}
    for dname, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        z = (torch.randn(1, labels.shape[1], vocab_size, generator=g) * 3).to(dtype)
        z[0, 5] = float("inf")
        z[0, 9] = float("-inf")
        z[0, 13] = float("nan")
        z[0, 17] = 1e4
        z[0, 21, :: 2] = -1e4
        z = z.cuda().requires_grad_()
        obj_g, batch_g = _objective(vocab, labels, "cuda")
        loss = obj_g(z, batch=batch_g).loss
        loss.backward()
        extreme[dname] = {"loss": float(loss), "loss_finite": bool(torch.isfinite(loss)),
                          "grad_finite": bool(torch.isfinite(z.grad).all())}
    out["extreme"] = extreme
    return out


def cuda_syncs(vocab, labels, vocab_size) -> dict:
    """The objective + backward + the one logging transfer under ``torch.cuda.set_sync_debug_mode("warn")`` after
    the batch and the logits exist; every warning is recorded with the Python frames that issued it."""
    import traceback
    import warnings

    obj, batch = _objective(vocab, labels, "cuda")
    z = (torch.randn(1, labels.shape[1], vocab_size, device="cuda") * 2).to(torch.bfloat16).requires_grad_()
    step = obj(z, batch=batch)  # warm-up: per-device tables
    step.loss.backward()
    z.grad = None
    torch.cuda.synchronize()
    records = []
    orig = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f"{f.filename.split('site-packages/')[-1].split('coordexp_swift/')[-1]}:{f.lineno} {f.name}"
                  for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename][-6:]
        records.append({"message": str(message)[:200], "frames": frames})

    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step = obj(z, batch=batch)
                step.loss.backward()
                logged = torch.stack([v.float() for v in step.logged.values()]).tolist()  # the one transfer
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        warnings.showwarning = orig
    return {"warnings": len(records), "records": records, "logged_values": len(logged)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=152_669)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gpu_checks.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_checks.py needs a CUDA device")
    vocab, labels = _labels(args.n, args.vocab)
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "n": args.n,
                 "vocab": args.vocab}
    for dname, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        r = memory_and_speed(vocab, labels, dtype, "cuda", args.vocab)
        res[dname] = r
        print(f"{dname}: memory {r['objective']['peak_extra_bytes'] / 2**30:.2f} vs "
              f"{r['baseline']['peak_extra_bytes'] / 2**30:.2f} GiB (ratio {r['memory_ratio']:.2f}); time "
              f"{r['objective']['median_s'] * 1e3:.1f} vs {r['baseline']['median_s'] * 1e3:.1f} ms "
              f"(ratio {r['time_ratio']:.2f})", flush=True)
    res["cuda_syncs"] = cuda_syncs(vocab, labels, args.vocab)
    print(f"cuda sync-debug warnings in one objective step (incl. the logging transfer): "
          f"{res['cuda_syncs']['warnings']}", flush=True)
    for r in res["cuda_syncs"]["records"]:
        print("   ", r["message"][:100], "|", " <- ".join(reversed(r["frames"][-3:])), flush=True)
    res["numerics"] = numerics(vocab, labels, args.vocab)
    for k in ("fp32", "bf16"):
        print(f"numerics {k}: max rel diff CUDA vs CPU fp32 = {res['numerics'][k]['max_rel_diff']:.2e}", flush=True)
    print(f"extreme logits: {res['numerics']['extreme']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
