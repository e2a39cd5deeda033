#!/usr/bin/env bash
# COCO 2017 detection with Qwen3-VL, end to end: convert-coco -> expand-vocab -> Stage-1 -> Stage-2 two-channel ->
# eval. Fill the paths (environment), read the steps, run on a GPU machine:
#
#   COCO_ROOT=/data/coco MODEL=/models/Qwen3-VL-2B-Instruct OUT=/runs/coco examples/coco/recipe.sh
#
# Environment:
#   COCO_ROOT     holds annotations/instances_{train,val}2017.json and the train2017/ val2017/ image folders
#   MODEL         a Qwen3-VL checkpoint directory (Hugging Face layout) without coord tokens
#   OUT           where data, checkpoints and eval go (default ./coco_run)
#   NPROC_PER_NODE  processes (GPUs) on this machine (default: all GPUs `nvidia-smi -L` lists)
#   MAX_OBJECTS   keep the N largest boxes per image (default 60; long answers cost max_length)
#   B_RATIO       share of Channel-B (rollout) steps in Stage-2 (default 0.25: A,A,A,B)
#   STAGE2_DEEPSPEED  none (default) | zero2 | zero3 for the Stage-2 run (Stage-1 uses its YAML's ZeRO-2)
#   CHECK_ONLY=1  stop after step 3: data converted, checkpoint expanded, both run YAMLs written and validated
# Several nodes: run steps 4 and 5 with examples/multinode/stage1.sh and examples/multinode/two_channel.sh instead
# (same run YAMLs; examples/multinode/README.md).
#
# Step 3 fills the <PLACEHOLDERS> of the shipped configs (configs/stage1/softce_w1.yaml,
# configs/stage2_two_channel/two_channel.yaml) into run YAMLs under $OUT; edit those for batch size, learning
# rate, epochs. Global batch = GPUs x per_device_train_batch_size x gradient_accumulation_steps.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${COCO_ROOT:?set COCO_ROOT (the COCO 2017 folder)}" "${MODEL:?set MODEL (a Qwen3-VL checkpoint dir)}"
OUT="${OUT:-$PWD/coco_run}"
MAX_OBJECTS="${MAX_OBJECTS:-60}"
B_RATIO="${B_RATIO:-0.25}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  n_gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  if [[ "${n_gpus:-0}" -gt 1 ]]; then export NPROC_PER_NODE="$n_gpus"; fi   # one GPU: a single process
fi
mkdir -p "$OUT/data"

# --- 1. COCO instances JSON -> coordexp JSONL (SPEC §1: one record per image, boxes as <|coord_k|> bins) --------
# --skip-empty drops images without boxes (Stage-2 needs >= 1 object per record; 48 of the 5000 val images)
coordexp-swift convert-coco --instances "$COCO_ROOT/annotations/instances_train2017.json" \
  --images "$COCO_ROOT/train2017" --out "$OUT/data/train.jsonl" --max-objects "$MAX_OBJECTS" --skip-empty
coordexp-swift convert-coco --instances "$COCO_ROOT/annotations/instances_val2017.json" \
  --images "$COCO_ROOT/val2017" --out "$OUT/data/val.jsonl" --max-objects "$MAX_OBJECTS" --skip-empty

# --- 2. add the 1000 coord tokens <|coord_0|>..<|coord_999|> to the checkpoint --------------------------------
coordexp-swift expand-vocab --src "$MODEL" --dst "$OUT/base_coord"

# --- 3. the two run YAMLs from the shipped configs (fill the <PLACEHOLDERS>), validated with their data -----------
# Stage-2 starts from Stage-1's `last-checkpoint` (the symlink ms-swift keeps to the newest checkpoint), so both
# YAMLs are complete before any training; edit them here for batch size, learning rate, epochs.
sed -e "s#<BASE_CKPT_PATH>#$OUT/base_coord#" -e "s#<TRAIN_JSONL>#$OUT/data/train.jsonl#" \
    -e "s#<VAL_JSONL>#$OUT/data/val.jsonl#" -e "s#output/<RUN_NAME>#$OUT/stage1#" -e "s#<RUN_NAME>#coco_stage1#" \
    -e "s#configs/deepspeed/#$REPO/configs/deepspeed/#" \
    "$REPO/configs/stage1/softce_w1.yaml" > "$OUT/stage1.yaml"
sed -e "s#<STAGE1_CKPT_PATH>#$OUT/stage1/last-checkpoint#" -e "s#<TRAIN_JSONL>#$OUT/data/train.jsonl#" \
    -e "s#<VAL_JSONL>#$OUT/data/val.jsonl#" -e "s#<OUTPUT_DIR>#$OUT/stage2#" -e "s#<RUN_NAME>#coco_stage2#" \
    -e "s#^\([[:space:]]*b_ratio:[[:space:]]*\)[0-9.]*#\1$B_RATIO#" \
    "$REPO/configs/stage2_two_channel/two_channel.yaml" > "$OUT/stage2.yaml"
coordexp-swift validate-config "$OUT/stage1.yaml" --data
coordexp-swift validate-config "$OUT/stage2.yaml" --data
if [[ "${CHECK_ONLY:-0}" == 1 ]]; then
  echo "CHECK_ONLY=1: data, checkpoint and run YAMLs are ready in $OUT; no training started"
  exit 0
fi

# --- 4. Stage-1: coord-gated soft CE + W1 (+ gate) on top of CE (the YAML's DeepSpeed ZeRO-2) ------------------
swift sft "$OUT/stage1.yaml"

# --- 5. Stage-2 two-channel from the Stage-1 checkpoint: A = soft self-context, B = rollouts + matching ----------
# STAGE2_DEEPSPEED: none (default: DDP) | zero2 | zero3
case "${STAGE2_DEEPSPEED:-none}" in
  none) swift sft "$OUT/stage2.yaml" ;;
  *) swift sft "$OUT/stage2.yaml" --deepspeed "$REPO/configs/deepspeed/${STAGE2_DEEPSPEED}.json" ;;
esac

# --- 6. eval: greedy generation on val2017 -> COCO bbox AP / AP50 / AR and F1@0.5 -----------------------------
# token_prob: per-object score = geometric mean of its desc and coord token probabilities (AP needs a ranking)
coordexp-swift eval --model "$OUT/stage2/last-checkpoint" --jsonl "$OUT/data/val.jsonl" --out_dir "$OUT/eval_stage2" \
  --batch_size 16 --max_new_tokens 2048 --score_mode token_prob --overlays 16
echo "metrics: $OUT/eval_stage2/metrics.json   (Stage-1 alone: the same command with --model $OUT/stage1/last-checkpoint)"
