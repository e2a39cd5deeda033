#!/usr/bin/env bash
# GPU check of the Stage-2 trainers end to end: real `swift sft` on one CUDA GPU in bf16, on the compact tiny model
# and a small shapes set built here — the two-channel smoke (mixed A/B with packing, n=2 em_detach, eval step with
# rollout/mAP) and the rollout-aligned smoke — then a summary of the keys each logged step carried.
# Prepare (here, with .venv built):   bash ../shared/offline-cuda/wheels.sh   (wheels of what a CUDA image lacks)
# Run there, in the project root:     bash examples/gpu/check_stage2_swift.sh [OUT_DIR]
# Also runs on CPU for a dry run of the script itself: DEVICE=cpu bash examples/gpu/check_stage2_swift.sh /tmp/x
set -u
OUT_DIR="${1:-${OUT:-/tmp/gpu_stage2}}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT_DIR"
if [ -f .whl/install.sh ] && [ "$DEVICE" = cuda ]; then source .whl/install.sh || exit 1; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PY:-python3}"
W="${W:-/tmp/gpu_stage2_work}"
rm -rf "$W" && mkdir -p "$W"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
$PY -m coordexp_swift.cli make-tiny-model --out "$W/model" --vocab compact > "$W/build.log" 2>&1 || { tail "$W/build.log"; exit 1; }
$PY -m coordexp_swift.cli make-shapes --out "$W/shapes" --train 24 --val 6 --seed 0 >> "$W/build.log" 2>&1 \
  || { tail "$W/build.log"; exit 1; }

# The shipped smoke YAMLs with this machine's paths, bf16 on CUDA (fp32 on CPU), and a few more steps.
$PY - "$W" "$DEVICE" <<'EOF'
import sys, yaml
w, device = sys.argv[1:]
for name, src, extra in (
    ("mixed", "configs/stage2_two_channel/smoke_mixed.yaml",
     dict(max_steps=4, eval_strategy="steps", eval_steps=4, val_dataset=[f"{w}/shapes/val.jsonl"],
          per_device_eval_batch_size=2, stage2_ab={"packing": True}, external_plugins=["coordexp_swift"])),
    ("aligned", "configs/stage2_rollout_aligned/smoke.yaml",
     dict(max_steps=2, val_dataset=[f"{w}/shapes/val.jsonl"], external_plugins=["plugins/coordexp.py"])),
):
    cfg = yaml.safe_load(open(src))
    for key, value in extra.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    cfg.update(model=f"{w}/model", dataset=[f"{w}/shapes/train.jsonl"], output_dir=f"{w}/out_{name}")
    if device == "cuda":
        cfg.update(torch_dtype="bfloat16", bf16=True)
    else:
        cfg.update(use_cpu=True)
    yaml.safe_dump(cfg, open(f"{w}/{name}.yaml", "w"), sort_keys=False)
EOF

status=0
for name in mixed aligned; do
  start=$(date +%s)
  timeout 300 swift sft "$W/$name.yaml" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  echo "swift sft $name: rc=$rc in $(( $(date +%s) - start )) s"
  [ $rc = 0 ] || { status=1; tail -n 30 "$OUT_DIR/$name.log"; }
  cp "$W/out_$name/logging.jsonl" "$OUT_DIR/${name}_logging.jsonl" 2>/dev/null
done

# Per logged record: step, loss, whether the sum of contributions equals loss, the rollout / eval keys present.
$PY - "$OUT_DIR" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, math, os, sys
out = sys.argv[1]
CONTRIB = ("loss/struct_ce", "loss/desc_ce", "loss/coord_token_ce", "loss/coord_reg", "loss/geo")
for name in ("mixed", "aligned"):
    path = os.path.join(out, f"{name}_logging.jsonl")
    if not os.path.exists(path):
        print(name, "no logging.jsonl"); continue
    for line in open(path):
        r = json.loads(line)
        step = r.get("global_step/max_steps")
        if "loss" in r and "grad_norm" in r:
            total = sum(r[k] for k in CONTRIB if k in r)
            finite = all(math.isfinite(v) for v in r.values() if isinstance(v, float))
            chan = "B" if "rollout/parse_ok_total" in r or "stage2/raw_rollouts_total" in r else "A"
            print(f"{name} {step} loss={r['loss']:.5f} sum_ok={abs(total - r['loss']) <= 1e-5 * max(1, abs(r['loss']))} "
                  f"finite={finite} channel={chan} grad_norm={r['grad_norm']:.4g} "
                  f"rollout_keys={sorted(k for k in r if k.startswith('rollout/'))[:6]}")
        elif any(k.startswith("eval_") for k in r):
            print(f"{name} {step} eval: " + json.dumps({k: v for k, v in r.items() if k.startswith("eval_rollout/")}))
EOF
exit $status
