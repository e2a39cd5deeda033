#!/usr/bin/env bash
# Recipe probes of docs/demo.md run in parallel (issue 11): each probe is one `coordexp-swift demo` (CPU only,
# OMP_NUM_THREADS=1 unless the probe name ends in _omp2, one dataloader worker) with its own data/model/YAML overrides
# and training seed. Metrics (summary.json), coord-accuracy/desc-CE curves and step speed -> $OUT/probes.json.
# Usage (repo root): OUT=/tmp/probes [PROBES="c2_p8_geo:42 ..."] bash configs/demo/probes.sh [MAX_STEPS] [BUDGET_MIN]
# [DEADLINE_S]   (probes still running at DEADLINE_S seconds are killed; their curves are still collected)
# Probe names -> docs/demo.md recipe-log ids: c1_* = m1, c2_* = m2, c3_* = m3, c4_* = m4 (= `--curriculum multi`),
# c5_* = m5; d1_shipped = the `squares` curriculum. The 2026-12-04 run: 9 probes at once on the 16-core device
# machine, `bash configs/demo/probes.sh 1800 5.5 440`.
set -u
OUT="${OUT:?set OUT}"; STEPS="${1:-2000}"; BUDGET="${2:-6}"; DEADLINE="${3:-100000}"
W="${W:-/tmp/demo_probes}"; mkdir -p "$W" "$OUT"
PY="${PY:-python3}"
T0=$(date +%s)
COMMON="--data max_objects=3 --data shapes=square,triangle --data min_size_frac=0.2 --data max_size_frac=0.4 --set save_steps=100"
P8="--model-spec patch_size=8"
WIDE="--model-spec patch_size=8 --model-spec hidden_size=128 --model-spec head_dim=32 --model-spec mrope_section=8,4,4
      --model-spec intermediate_size=256 --model-spec vision_hidden_size=128 --model-spec vision_intermediate_size=256"
GEO="--set custom.object_field_order=geometry_first"
declare -A CFG
CFG[c1_p8_desc]="$COMMON $P8"
CFG[c2_p8_geo]="$COMMON $P8 $GEO"
CFG[c2_p8_geo_omp2]="$COMMON $P8 $GEO"
CFG[c3_192_geo]="$COMMON --data image_size=192 $GEO"
CFG[c4_p8_wide_geo]="$COMMON $WIDE $GEO"
CFG[c5_p8_geo_lr4]="$COMMON $P8 $GEO --set learning_rate=4e-3"
CFG[d1_shipped]=""
PIDS=()
for item in ${PROBES:-c1_p8_desc:42 c1_p8_desc:43 c2_p8_geo:42 c2_p8_geo:43 c2_p8_geo:44 c3_192_geo:42 c3_192_geo:43 c4_p8_wide_geo:42 c4_p8_wide_geo:43 c2_p8_geo_omp2:42}; do
  name="${item%%:*}"; seed="${item##*:}"
  d="$W/${name}_s$seed"
  omp=1; [[ "$name" == *_omp2 ]] && omp=2
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 setsid $PY -m coordexp_swift.cli demo \
    --out "$d" --train-threads $omp --max-steps "$STEPS" --budget-min "$BUDGET" --seed "$seed" ${CFG[$name]} > "$d.log" 2>&1 &
  PIDS+=($!)
done
while :; do
  alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  if [ $(( $(date +%s) - T0 )) -ge "$DEADLINE" ]; then
    echo "deadline: killing the probes still running"
    for p in "${PIDS[@]}"; do for c in $(pgrep -P "$p"); do kill -- -"$c" 2>/dev/null; done; kill -- -"$p" 2>/dev/null; done
    break
  fi
  sleep 5
done
$PY - "$W" "$OUT" <<'PYEOF'
import json, sys, glob, os
w, out = sys.argv[1:]
res = {}
for d in sorted(glob.glob(os.path.join(w, "*_s*"))):
    if not os.path.isdir(d):
        continue
    name = os.path.basename(d)
    r = {}
    try:
        r.update(json.load(open(os.path.join(d, "summary.json")))["softce_w1"])
    except Exception as e:
        r["error"] = repr(e)
        r["log_tail"] = open(d + ".log").read()[-800:]
    curve = []
    lj = os.path.join(d, "train_softce_w1", "logging.jsonl")
    if os.path.exists(lj):
        for line in open(lj):
            row = json.loads(line)
            if "coord_token_acc" in row and "global_step/max_steps" in row:
                curve.append([row["global_step/max_steps"], row.get("elapsed_time"), round(row["coord_token_acc"], 3),
                              round(row.get("loss/desc_ce", -1), 4), round(row.get("loss/coord_reg/w1", -1), 4)])
    r["curve"] = curve
    res[name] = r
json.dump(res, open(os.path.join(out, "probes.json"), "w"), indent=1)
for k, r in res.items():
    print(k, {x: (round(r[x], 3) if isinstance(r.get(x), float) else r.get(x)) for x in
              ("steps", "parse_rate", "mean_iou", "bbox_AP50", "bbox_AP", "desc_acc", "coord_mae_bins", "error")},
          "last", r["curve"][-1] if r["curve"] else None)
PYEOF
cd "$W" && tar czf "$OUT/probe_files.tgz" --exclude='*.safetensors' --exclude='tiny_model' --exclude='shapes' \
  --exclude='checkpoint-*' --exclude='export_*' --exclude='*.bin' . 2>/dev/null; ls -la "$OUT"
