"""GPU check (issue 12 item 4): greedy rollouts with ``rollout_backend: vllm`` equal ``hf`` on the same tiny checkpoint.

Run by ``examples/gpu/check_vllm_rollout.sh`` on a machine with a CUDA GPU and the ``vllm`` extra. The rollouts go
through the trainers' own path, ``ChannelB.rollout`` on training-encoded rows (ms-swift template in train mode,
``remove_unused_columns`` off, the loader's ``coordexp_rollout_request`` column), once with
``rollout_backend: hf`` and once with ``vllm``. Steps:

1. the tiny Qwen3-VL checkpoint and the shapes set are built offline (or ``--model`` / ``--jsonl`` are used);
2. one process group of size 1 is initialised, so ms-swift builds the colocated engine with the
   ``external_launcher`` executor (in-process, as on every rank of a training run);
3. step 0: HF greedy rollouts of ``--n`` rows vs vLLM greedy rollouts (ChannelB syncs the weights first) →
   identical response ids and prompt ids (= the training prompt ids);
4. the weights are perturbed (a stand-in for an optimizer step); step 1 (two micro-steps): ChannelB syncs once
   more (2 syncs in all, not 3) and HF and vLLM must agree again — the sync is real.

Prints one line per comparison and ``OK`` or exits non-zero. Float32 weights. ``--device cpu`` (gloo) only
exercises the wiring (e.g. with the test suite's fake ``vllm`` on ``PYTHONPATH``, whose outputs differ from HF's).
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
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: wiring dry run only")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    import json

    import torch

    from coordexp_swift.config import load_coordexp_config
    from coordexp_swift.coord.vocab import VocabView
    from coordexp_swift.data.rollout_request import ROLLOUT_REQUEST_COLUMN, rollout_request
    from coordexp_swift.eval.generate import load_eval_rows
    from coordexp_swift.rollout.hf_backend import load_model_and_template
    from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config
    from coordexp_swift.teacher_forcing.manifest import resolve_pipeline
    from coordexp_swift.trainers.channel_b import ChannelB, gt_rows

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
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
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(0)

    model, template = load_model_and_template(model_dir, torch_dtype=torch.float32,
                                              device_map="cuda:0" if cuda else None)
    template.model = model
    template.set_mode("train")
    template.remove_unused_columns = False
    encoded = []
    for rec, row in load_eval_rows(jsonl, limit=args.n):  # rows as the coordexp loader writes them
        if not rec.objects:
            continue
        row = dict(row, assistant_payload=json.dumps(row["assistant_payload"]))
        row[ROLLOUT_REQUEST_COLUMN] = rollout_request(row)
        encoded.append(template.encode(row))
    vocab = VocabView.from_tokenizer(template.tokenizer, vocab_size=model.get_output_embeddings().weight.shape[0])

    def channel_b(backend: str) -> ChannelB:
        cfg = load_coordexp_config({
            "custom": {"trainer_variant": "stage2_rollout_aligned"},
            "rollout_matching": {"rollout_backend": backend, "max_new_tokens": args.max_new_tokens,
                                 "decode_batch_size": len(encoded),
                                 "vllm": {"gpu_memory_utilization": args.gpu_memory_utilization}}})
        pipe = ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))
        return ChannelB(rm=cfg.rollout_matching, template=template, vocab=vocab, objective=pipe, packed=False,
                        pad_id=template.tokenizer.pad_token_id, max_length=None, object_field_order="desc_first",
                        training_seed=0, per_device_bs=len(encoded))

    hf, vl = channel_b("hf"), channel_b("vllm")
    gts = gt_rows(encoded, vocab, object_field_order="desc_first")

    def compare(step: int, micro_idx: int = 0) -> list[tuple[int, ...]]:
        a = hf.rollout(model, gts, step=step, micro_idx=micro_idx)
        b = vl.rollout(model, gts, step=step, micro_idx=micro_idx)  # syncs the weights first (once per step)
        same = [x.response_ids == y.response_ids for x, y in zip(a, b)]
        prompts = [x.prompt_ids == y.prompt_ids == tuple(int(t) for t in g.prompt_ids) for x, y, g in zip(a, b, gts)]
        print(f"step {step} micro {micro_idx}: identical greedy responses {sum(same)}/{len(same)}, prompt ids = "
              f"training prompt ids {sum(prompts)}/{len(prompts)}, mean response length "
              f"{sum(len(x.response_ids) for x in a) / len(a):.1f}, vLLM syncs so far {vl.backend(model).sync_count}")
        for i, (x, y) in enumerate(zip(a, b)):
            if x.response_ids != y.response_ids:
                print(f"  row {i}: hf  {x.text!r}\n         vllm {y.text!r}")
        if not all(same) or not all(prompts):
            raise SystemExit(1)
        return [x.response_ids for x in a]

    before = compare(0)
    with torch.no_grad():
        gen = torch.Generator(device=model.device).manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 0.02)
    after = compare(1)
    compare(1, micro_idx=1)
    if vl.backend(model).sync_count != 2:
        print(f"expected 2 weight syncs (steps 0 and 1), got {vl.backend(model).sync_count}")
        return 1
    print(f"perturbed weights changed {sum(x != y for x, y in zip(before, after))}/{len(before)} responses")
    print("OK")
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
