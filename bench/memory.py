"""Benchmark: peak memory of the Stage-1 objective (forward + backward) vs a plain SFT step's loss on the same
logits (issue 8 item 6). Target: ratio ≤ 1.3 in bf16 and fp32.

Logits ``[1, N, V]`` (default N = 4096, V = 152,669, the real Qwen3-VL + coord vocabulary) whose labels are all
supervised: back-to-back CoordJSON answers + ``<|im_end|>`` (≈ 15 % coord tokens) on a synthetic vocabulary view.
Candidate: ``Stage1Objective`` at its default weights (soft CE + W1 + coord gate; token CE on the text targets) on
the batch built before the "forward", then ``loss.backward()``. Baseline: transformers' ``ForCausalLMLoss`` (upcast
to fp32, shift, cross-entropy over every position, sum / num_items) + ``backward()``. The logits are a leaf with
``requires_grad``, so both pay for the one full-size logits gradient.

Measurement: each (dtype, loss) runs in its OWN subprocess. After the logits and labels exist (and the candidate's
batch is built), the process resets its peak resident set (``/proc/self/clear_refs`` ← 5 resets ``VmHWM``) and
records ``VmRSS`` as the baseline; after forward + backward, ``peak = VmHWM − baseline``. Large CPU tensors are
``mmap``-backed and returned on free, so ``VmHWM`` follows live tensor bytes; pages never touched (an unused
``torch.empty``) do not count, which a GPU caching allocator would count — a CPU peak is therefore a lower bound
of the GPU one for both sides alike. Writes ``bench/results/memory.json`` as
``{"bf16": {"ratio": r, "objective_bytes": ..., "baseline_bytes": ...}, "fp32": {...}}``.
Usage: ``python bench/memory.py [--n 4096] [--vocab 152669] [--dtypes bf16,fp32]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
TARGET = 1.3
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _labels(n: int, vocab_size: int):
    """``(vocab view, labels [1, n])``: position 0 unsupervised, then CoordJSON answers back to back."""
    import torch

    from coordexp_swift.coord.codec import NUM_BINS
    from coordexp_swift.coord.vocab import VocabView

    coord_ids = torch.arange(vocab_size - NUM_BINS, vocab_size)  # coord ids at the top, as in the real vocab
    pieces = ["?"] * vocab_size
    for i in range(95):
        pieces[i] = chr(32 + i)
    eos = 200
    pieces[eos] = "<|im_end|>"
    for k in range(NUM_BINS):
        pieces[vocab_size - NUM_BINS + k] = f"<|coord_{k}|>"
    g = torch.Generator().manual_seed(0)
    seq: list[int] = []
    while len(seq) < n - 1:
        nobj = int(torch.randint(1, 4, (1,), generator=g))
        doc = [ord(c) - 32 for c in '{"objects": [']
        for j in range(nobj):
            if j:
                doc += [ord(c) - 32 for c in ", "]
            doc += [ord(c) - 32 for c in '{"desc": "a red square object", "bbox_2d": [']
            for b in range(4):
                if b:
                    doc += [ord(c) - 32 for c in ", "]
                doc.append(vocab_size - NUM_BINS + int(torch.randint(0, NUM_BINS, (1,), generator=g)))
            doc += [ord(c) - 32 for c in "]}"]
        doc += [ord(c) - 32 for c in "]}"] + [eos]
        seq += doc
    labels = torch.tensor([[-100] + seq[: n - 1]])
    vocab = VocabView.from_parts(coord_ids=coord_ids, pieces=pieces, eos_id=eos, encode=lambda t: [],
                                 vocab_size=vocab_size)
    return vocab, labels


def child(which: str, dtype_name: str, n: int, vocab_size: int) -> dict:
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    dtype = getattr(torch, dtype_name)
    vocab, labels = _labels(n, vocab_size)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(1, n, vocab_size, generator=g) * 2).to(dtype).requires_grad_()
    if which == "objective":
        from coordexp_swift.config.custom import CoordSoftCEW1Config
        from coordexp_swift.teacher_forcing.stage1 import Stage1Objective

        obj = Stage1Objective(CoordSoftCEW1Config(enabled=True), vocab)
        batch = obj.batch(labels)

        def run():
            return obj(logits, batch=batch).loss
    else:
        from transformers.loss.loss_utils import ForCausalLMLoss

        n_items = int((labels[:, 1:] != -100).sum())

        def run():
            return ForCausalLMLoss(logits, labels, vocab_size=vocab_size, num_items_in_batch=n_items)
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    loss = run()
    loss.backward()
    peak = _status("VmHWM") - base
    return {"peak_extra_bytes": peak, "loss": float(loss.detach()),
            "grad_dtype": str(logits.grad.dtype), "logits_bytes": logits.numel() * logits.element_size()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=152_669)
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--child", nargs=2, metavar=("WHICH", "DTYPE"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.n, args.vocab)))
        return
    out: dict = {"n": args.n, "vocab": args.vocab, "target": TARGET, "loadavg": os.getloadavg()}
    for key in args.dtypes.split(","):
        rec = {}
        for which in ("objective", "baseline"):
            res = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--vocab", str(args.vocab),
                                  "--child", which, DTYPES[key]], capture_output=True, text=True, check=False)
            if res.returncode:
                raise RuntimeError(f"{which}/{key} failed:\n{res.stderr[-3000:]}")
            rec[which] = json.loads(res.stdout.strip().splitlines()[-1])
        ratio = rec["objective"]["peak_extra_bytes"] / rec["baseline"]["peak_extra_bytes"]
        out[key] = {"ratio": round(ratio, 3), "objective_bytes": rec["objective"]["peak_extra_bytes"],
                    "baseline_bytes": rec["baseline"]["peak_extra_bytes"],
                    "logits_bytes": rec["objective"]["logits_bytes"], "detail": rec}
        print(f"{key}: objective {rec['objective']['peak_extra_bytes'] / 2**30:.2f} GiB vs ForCausalLMLoss "
              f"{rec['baseline']['peak_extra_bytes'] / 2**30:.2f} GiB -> ratio {ratio:.3f} (target <= {TARGET}); "
              f"logits {rec['objective']['logits_bytes'] / 2**30:.2f} GiB", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
