"""Benchmark: a Channel-A step of the two-channel trainer vs a plain teacher-forced step (issue 9 acceptance).

Same model, same micro-batch (real shapes samples encoded by ms-swift's ``qwen3_vl`` template in train mode, real
``pixel_values``), one process:

* baseline: one ``input_ids`` forward (the forward preamble, explicit positions) + token-mean CE over every
  assistant target + backward;
* candidate: ``trainers.channel_a.channel_a_forwards`` (n iterations) + the default two-channel objective pipeline
  (token_ce on gt and self_context, bbox_geo, coord_reg, coord_diag) + its metrics transfer + backward. The host
  batch is built once outside the timed region (on GPU it overlaps the device work of the previous step).

Configurations: n=2 em_detach (target ratio <= 1.45; the floor is ~1.33: one extra forward without backward), n=3
em_detach, n=2 unroll; ``--breakdown`` adds ``n2_forwards_only`` (the n=2 forwards + the baseline's plain CE) and
``pipeline_only`` (the objective, its backward to the logits and its metrics transfer, on fixed logits). Candidate and baseline repetitions alternate (load drift hits both); medians after warm-up;
``os.getloadavg()`` before/after on CPU. Prints a table and writes ``bench/results/stage2_channel_a[_<tag>].json``.

Two phases so the timed phase needs no ms-swift (``--prepare DIR`` does): ``--prepare DIR`` builds the tiny
real-vocabulary model + the shapes set and saves ``DIR/rows.pt`` (the encoded rows); ``--data DIR`` times.
``--hidden H --layers L`` re-initialises the text model at that size (random weights, real vocabulary) so the
ratio reflects a transformer-dominated step rather than the 64-wide tiny model.
Usage: ``python bench/stage2_channel_a.py --prepare /tmp/b && python bench/stage2_channel_a.py --data /tmp/b``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordexp_swift.config import load_coordexp_config  # noqa: E402
from coordexp_swift.coord.vocab import VocabView  # noqa: E402
from coordexp_swift.teacher_forcing.executor import ObjectivePipeline, settings_from_config  # noqa: E402
from coordexp_swift.teacher_forcing.manifest import resolve_pipeline  # noqa: E402
from coordexp_swift.teacher_forcing.token_types import NONE  # noqa: E402
from coordexp_swift.trainers.channel_a import build_channel_a_inputs, channel_a_forwards, encode_gt_targets  # noqa: E402
from coordexp_swift.trainers.forwards import forward  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.45
CONFIGS = (("n2_em_detach", 2, "em_detach"), ("n3_em_detach", 3, "em_detach"), ("n2_unroll", 2, "unroll"))


def prepare(out: Path, batch: int) -> None:
    """Tiny model + shapes + ``rows.pt`` (``batch`` rows encoded by the ms-swift template; needs ms-swift)."""
    from coordexp_swift.config import DEFAULT_USER_PROMPT
    from coordexp_swift.data.swift_loader import load_rows
    from coordexp_swift.data.shapes import make_shapes
    from coordexp_swift.rollout.hf_backend import load_model_and_template
    from coordexp_swift.tools.tiny_model import build_tiny_model

    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, seed=0)
    make_shapes(str(out / "shapes"), n_train=max(batch, 8), n_val=2, seed=0)
    model, template = load_model_and_template(model_dir)
    template.model = model
    template.set_mode("train")
    template.remove_unused_columns = False
    rows = [template.encode(row) for row in load_rows(str(out / "shapes" / "train.jsonl"), stage="stage2",
                                                         user_prompt=DEFAULT_USER_PROMPT, system_prompt=None,
                                                         field_order="desc_first")[:batch]]
    torch.save(rows, out / "rows.pt")
    print(f"prepared {len(rows)} rows in {out}")


def _load_model(model_dir: Path, hidden: int | None, layers: int | None, device: torch.device):
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    if hidden is None and layers is None:
        model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    else:
        cfg = AutoConfig.from_pretrained(model_dir)
        tc = cfg.text_config
        if hidden is not None:
            heads = max(hidden // 128, 1)
            tc.hidden_size, tc.intermediate_size = hidden, 4 * hidden
            tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim = heads, max(heads // 4, 1), hidden // heads
            rope = dict(getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {})
            half = tc.head_dim // 2
            if "mrope_section" in rope:
                rope["mrope_section"] = [half - 2 * (half // 4), half // 4, half // 4]
                if getattr(tc, "rope_parameters", None) is not None:
                    tc.rope_parameters = rope
                else:
                    tc.rope_scaling = rope
            cfg.vision_config.out_hidden_size = hidden
        if layers is not None:
            tc.num_hidden_layers = layers
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype).train()


def _paired(cand: Callable[[], None], base: Callable[[], None], reps: int, warmup: int, sync) -> tuple[float, float]:
    for _ in range(warmup):
        cand()
        base()
    tc, tb = [], []
    for i in range(reps):
        for fn, acc in ((cand, tc), (base, tb)) if i % 2 == 0 else ((base, tb), (cand, tc)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t0)
    return statistics.median(tc), statistics.median(tb)


def run(data: Path, *, reps: int, warmup: int, hidden: int | None, layers: int | None, device: str,
        packed: bool, breakdown: bool = False) -> dict[str, Any]:
    from transformers import AutoTokenizer

    dev = torch.device(device)
    model = _load_model(data / "model", hidden, layers, dev)
    tok = AutoTokenizer.from_pretrained(data / "model")
    vocab = VocabView.from_tokenizer(tok, vocab_size=model.get_output_embeddings().weight.shape[0])
    rows = torch.load(data / "rows.pt", weights_only=False)
    cfg = load_coordexp_config({"custom": {"trainer_variant": "stage2_two_channel"},
                                "stage2_ab": {"schedule": {"b_ratio": 0.0}}, "rollout_matching": {}})
    pipe = ObjectivePipeline(resolve_pipeline(cfg), settings_from_config(cfg))
    pairs = encode_gt_targets(rows, vocab)
    t0 = time.perf_counter()
    a = build_channel_a_inputs(model, pairs, vocab=vocab, ce_table=pipe.ce_table, contexts=("gt", "self_context"),
                               packed=packed, pad_id=tok.pad_token_id, max_length=None, device=dev)
    host_build_s = time.perf_counter() - t0
    if dev.type == "cuda":
        a.model_inputs["pixel_values"] = a.model_inputs["pixel_values"].to(torch.bfloat16)
    lay = a.batch.host_layout
    bsz, seq = lay.types.shape
    row, pos = torch.nonzero(lay.types != NONE, as_tuple=True)
    flat = (row * seq + pos - 1).to(dev)
    tgt = a.batch.target_ids.reshape(-1)[(row * seq + pos).to(dev)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def baseline() -> None:
        z = forward(model, a.model_inputs, input_ids=a.input_ids, position_ids=a.position_ids).logits
        loss = F.cross_entropy(z.reshape(bsz * seq, -1).index_select(0, flat).float(), tgt)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def candidate(n: int, mode: str) -> Callable[[], None]:
        def step() -> None:
            logits = channel_a_forwards(model, a, n_iter=n, grad_mode=mode, embed_mode="st")
            res = pipe(a.batch.with_logits(**logits))
            res.total.backward()
            _ = res.metrics  # the step's logging transfer
            model.zero_grad(set_to_none=True)
        return step

    def forwards_only() -> None:  # n=2 em_detach forwards + the same plain CE on z⁰ (no pipeline)
        logits = channel_a_forwards(model, a, n_iter=2, grad_mode="em_detach", embed_mode="st")
        z = logits["gt"]
        loss = F.cross_entropy(z.reshape(bsz * seq, -1).index_select(0, flat).float(), tgt)
        (loss + logits["self_context"].reshape(-1)[:1].float().sum() * 0).backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():
        fixed = channel_a_forwards(model, a, n_iter=2, grad_mode="em_detach", embed_mode="st")

    def pipeline_only() -> None:  # the objective + its backward to the logits + the metrics transfer, no model
        z0 = fixed["gt"].detach().requires_grad_(True)
        z1 = fixed["self_context"].detach().requires_grad_(True)
        res = pipe(a.batch.with_logits(gt=z0, self_context=z1))
        res.total.backward()
        _ = res.metrics

    load0 = os.getloadavg()
    out: dict[str, Any] = {}
    for name, n, mode in CONFIGS:
        tc, tb = _paired(candidate(n, mode), baseline, reps, warmup, sync)
        out[name] = {"candidate_s": tc, "baseline_s": tb, "ratio": tc / tb}
    if breakdown:
        for name, fn in (("n2_forwards_only", forwards_only), ("pipeline_only", pipeline_only)):
            tc, tb = _paired(fn, baseline, reps, warmup, sync)
            out[name] = {"candidate_s": tc, "baseline_s": tb, "ratio": tc / tb}
    params = sum(p.numel() for p in model.parameters())
    return {
        "configs": out, "target_n2_em_detach": TARGET, "device": str(dev),
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
        "dtype": str(next(model.parameters()).dtype), "packed": packed, "batch": len(rows), "seq_len": int(seq),
        "rows_shape": [int(bsz), int(seq)], "params": params, "hidden": hidden, "layers": layers,
        "vocab": int(vocab.vocab_size), "host_batch_build_s": host_build_s, "reps": reps, "warmup": warmup,
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "torch": torch.__version__,
        "platform": platform.platform(), "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", type=Path, help="build model + encoded rows into this folder (needs ms-swift)")
    ap.add_argument("--data", type=Path, help="folder made by --prepare")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--packed", action="store_true")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time n=2 forwards + plain CE (no pipeline) and the pipeline alone on fixed logits")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.prepare, args.batch)
        if not args.data:
            return 0
    res = run(args.data or args.prepare, reps=args.reps, warmup=args.warmup, hidden=args.hidden,
              layers=args.layers, device=args.device, packed=args.packed, breakdown=args.breakdown)
    print(f"{'config':<14} {'candidate_s':>12} {'baseline_s':>11} {'ratio':>7}")
    for name, r in res["configs"].items():
        print(f"{name:<14} {r['candidate_s']:12.4f} {r['baseline_s']:11.4f} {r['ratio']:7.3f}")
    print(f"n2_em_detach target <= {TARGET}: {'met' if res['configs']['n2_em_detach']['ratio'] <= TARGET else 'MISSED'}"
          f"  (device {res['device']}, dtype {res['dtype']}, batch {res['batch']}, T {res['seq_len']})")
    path = args.out or RESULTS / f"stage2_channel_a{'_' + args.tag if args.tag else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
