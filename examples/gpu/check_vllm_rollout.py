"""GPU check (issue 12 item 4): greedy rollouts with ``rollout_backend: vllm`` equal ``hf`` on the same tiny checkpoint.

Run by ``examples/gpu/check_vllm_rollout.sh`` on a machine with a CUDA GPU and the ``vllm`` extra. Steps:

1. the tiny Qwen3-VL checkpoint and the shapes set are built offline (or ``--model`` / ``--jsonl`` are used);
2. one process group of size 1 is initialised, so ms-swift builds the colocated engine with the
   ``external_launcher`` executor (in-process, as on every rank of a training run);
3. HF greedy rollouts of ``--n`` rows vs vLLM greedy rollouts after ``sync_weights(0)`` → identical response ids;
4. the weights are perturbed (a stand-in for an optimizer step), ``sync_weights(1)`` copies them, and HF and vLLM
   must agree again (and differ from step 0's responses if the perturbation changed them) — the sync is real.

Prints one line per comparison and ``OK`` or exits non-zero. Float32 weights, ``enforce_eager``-free defaults.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint dir (default: build the tiny model)")
    ap.add_argument("--jsonl", help="coordexp JSONL (default: build the shapes set)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--gpu_memory_utilization", type=float, default=0.3)
    args = ap.parse_args()

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    import torch

    from coordexp_swift.config import VllmConfig
    from coordexp_swift.eval.generate import load_eval_rows
    from coordexp_swift.rollout.backends import DecodeOptions
    from coordexp_swift.rollout.hf_backend import HFRolloutBackend, load_model_and_template
    from coordexp_swift.rollout.seeds import RolloutSeeds
    from coordexp_swift.rollout.vllm_backend import VllmRolloutBackend

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="check_vllm_"))
    model_dir = args.model
    if model_dir is None:
        from coordexp_swift.tools.tiny_model import build_tiny_model

        model_dir = str(build_tiny_model(work / "tiny", seed=0))
    jsonl = args.jsonl
    if jsonl is None:
        from coordexp_swift.data.shapes import make_shapes

        make_shapes(work / "shapes", n_train=4, n_val=args.n, seed=0)
        jsonl = str(work / "shapes" / "val.jsonl")
    torch.distributed.init_process_group("nccl")
    torch.cuda.set_device(0)

    model, template = load_model_and_template(model_dir, torch_dtype=torch.float32, device_map="cuda:0")
    rows = [row for _, row in load_eval_rows(jsonl, limit=args.n)]
    decode = DecodeOptions(max_new_tokens=args.max_new_tokens, batch_size=args.n)
    hf = HFRolloutBackend(model, template)
    vcfg = VllmConfig(gpu_memory_utilization=args.gpu_memory_utilization)
    vl = VllmRolloutBackend(model, template, vllm_config=vcfg, model_dir=model_dir)

    def compare(step: int) -> list[tuple[int, ...]]:
        seeds = RolloutSeeds.for_step(0, step, per_device_bs=args.n)
        vl.sync_weights(step)
        a = hf.generate(rows, decode=decode, seeds=seeds)
        b = vl.generate(rows, decode=decode, seeds=seeds)
        same = [x.response_ids == y.response_ids for x, y in zip(a, b)]
        prompts = [x.prompt_ids == y.prompt_ids for x, y in zip(a, b)]
        print(f"step {step}: identical greedy responses {sum(same)}/{len(same)}, identical prompt ids "
              f"{sum(prompts)}/{len(prompts)}, mean response length {sum(len(x.response_ids) for x in a) / len(a):.1f}")
        for i, (x, y) in enumerate(zip(a, b)):
            if x.response_ids != y.response_ids:
                print(f"  row {i}: hf  {x.text!r}\n         vllm {y.text!r}")
        if not all(same) or not all(prompts):
            raise SystemExit(1)
        return [x.response_ids for x in a]

    before = compare(0)
    with torch.no_grad():
        gen = torch.Generator(device="cuda:0").manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 0.02)
    after = compare(1)
    print(f"perturbed weights changed {sum(x != y for x, y in zip(before, after))}/{len(before)} responses")
    print("OK")
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
