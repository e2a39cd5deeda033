#!/usr/bin/env bash
# coordexp-swift on a laptop CPU, read top to bottom: tiny model -> data -> validate -> Stage-1 (`swift sft`) ->
# Stage-2 two-channel continuation from the Stage-1 checkpoint -> eval -> pictures. Every line is a command you can
# also type yourself. No GPU, no download: the model is a random-init tiny Qwen3-VL built offline.
#
#   examples/cpu_walkthrough.sh                          # ~5-10 min on 2 cores
#   STEPS=4 STAGE2_STEPS=2 TRAIN=16 VAL=4 examples/cpu_walkthrough.sh   # smoke run (what the test runs)
#
# Knobs (environment):
#   WORK          where everything is written (default ./walkthrough_out); the commands run inside it
#   STEPS         Stage-1 optimizer steps (default 800: learns the JSON format and the colours; the full recipe,
#                 3000 steps, is `coordexp-swift demo`, see docs/demo.md)
#   STAGE2_STEPS  Stage-2 optimizer steps (default 40, half of them Channel-B rollouts)
#   TRAIN, VAL    shapes images (default 4000 / 32)
# Needs the package installed (`pip install -e .` in the clone, or the wheel): `coordexp-swift` and `swift` on PATH.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # the shipped configs/ live here
STEPS="${STEPS:-800}"
STAGE2_STEPS="${STAGE2_STEPS:-40}"
TRAIN="${TRAIN:-4000}"
VAL="${VAL:-32}"
WORK="${WORK:-$PWD/walkthrough_out}"
LOG_EVERY=$(( STEPS >= 20 ? STEPS / 20 : 1 ))          # ~20 points on the loss curves
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$WORK"
cd "$WORK"
# The shipped demo / smoke configs name their model and data relative to the working directory, under demo_out/
# (demo_out/tiny_model, demo_out/shapes): build exactly those, then the YAMLs run unchanged.
say() { printf '\n== %s\n' "$*"; }

say "1. a tiny Qwen3-VL with the 1000 coord tokens (random init, compact BPE for fast CPU runs)"
coordexp-swift make-tiny-model --out demo_out/tiny_model --vocab compact

say "2. data: synthetic coloured squares, one per 128x128 image (SPEC §1 JSONL + images)"
coordexp-swift make-shapes --out demo_out/shapes --train "$TRAIN" --val "$VAL" --seed 0 \
  --image-size 128 --min-objects 1 --max-objects 1 --min-size-frac 0.3 --max-size-frac 0.6 \
  --colors red,green,blue,yellow --shapes square
head -c 400 demo_out/shapes/train.jsonl; echo " ..."

say "3. validate both run YAMLs and their data before any training (strict keys, SPEC §1 records)"
coordexp-swift validate-config "$REPO/configs/demo/stage1_shapes.yaml" --data
coordexp-swift validate-config "$REPO/configs/stage2_two_channel/smoke_mixed.yaml" --data

say "4. Stage-1: coord-gated soft CE + W1 + gate, stock \`swift sft\` with the plugin by name ($STEPS steps)"
# flags after the YAML override its keys; the last checkpoint is saved at the final step
swift sft "$REPO/configs/demo/stage1_shapes.yaml" \
  --output_dir demo_out/stage1 --max_steps "$STEPS" --logging_steps "$LOG_EVERY"
STAGE1_CKPT="demo_out/stage1/checkpoint-$STEPS"
ls "$STAGE1_CKPT"

say "5. Stage-2 two-channel from the Stage-1 checkpoint: A (soft self-context) and B (rollouts) alternate"
# smoke_mixed.yaml: stage2_ab.schedule.b_ratio 0.5 -> A,B,A,B,...; HF rollouts of at most 64 new tokens
swift sft "$REPO/configs/stage2_two_channel/smoke_mixed.yaml" \
  --model "$STAGE1_CKPT" --output_dir demo_out/stage2 --max_steps "$STAGE2_STEPS" --learning_rate 2e-4 \
  --save_strategy steps --save_steps "$STAGE2_STEPS"
STAGE2_CKPT="demo_out/stage2/checkpoint-$STAGE2_STEPS"
grep -m1 '"rollout/' demo_out/stage2/logging.jsonl | cut -c1-300 || true

say "6. eval: greedy generation on the held-out images -> COCO bbox AP (+ F1@0.5), token-probability scores"
coordexp-swift eval --model "$STAGE2_CKPT" --jsonl demo_out/shapes/val.jsonl --out_dir demo_out/eval_stage2 \
  --max_new_tokens 128 --score_mode token_prob --overlays 8
# the Stage-1 checkpoint the same way, to compare:
#   coordexp-swift eval --model "$STAGE1_CKPT" --jsonl demo_out/shapes/val.jsonl --out_dir demo_out/eval_stage1

say "7. pictures: loss curves of both stages and GT (green) vs predicted (red) boxes"
coordexp-swift visualize --logging_jsonl demo_out/stage1/logging.jsonl --out demo_out/curves_stage1.png
coordexp-swift visualize --logging_jsonl demo_out/stage2/logging.jsonl --out demo_out/curves_stage2.png
coordexp-swift visualize --pred_jsonl demo_out/eval_stage2/gt_vs_pred.jsonl --image_root demo_out/shapes \
  --max_images 16 --out demo_out/boxes_stage2.png

say "done: $WORK/demo_out"
echo "  metrics:   demo_out/eval_stage2/metrics.json (bbox_AP, bbox_AP50, ...; f1_iou50)"
echo "  per image: demo_out/eval_stage2/gt_vs_pred.jsonl, per_image.json, per_class.csv"
echo "  pictures:  demo_out/curves_stage1.png demo_out/curves_stage2.png demo_out/boxes_stage2.png" \
  "demo_out/eval_stage2/overlays.png"
