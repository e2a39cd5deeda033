#!/usr/bin/env bash
# Stage-1 on NNODES nodes x NPROC_PER_NODE GPUs with DeepSpeed, through stock `swift sft` (ms-swift's torchrun
# environment). Run the same command on every node; only NODE_RANK differs (0 on the node whose address is
# MASTER_ADDR). Every node needs the same package install, checkpoint, data paths and run YAML.
#
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NPROC_PER_NODE=8 examples/multinode/stage1.sh run.yaml
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 NPROC_PER_NODE=8 examples/multinode/stage1.sh run.yaml
#
# Environment:
#   NNODES, NODE_RANK, MASTER_ADDR   required
#   MASTER_PORT      default 29500 (free on the master node)
#   NPROC_PER_NODE   default: the number of GPUs `nvidia-smi -L` lists
#   DEEPSPEED        zero2 (default) | zero3 | none | path to a DeepSpeed JSON; zero2/zero3 are configs/deepspeed/*.json
#   USE_CPU=1        gloo processes on CPU instead of GPUs (smoke tests; adds `--use_cpu true`)
#   SWIFT            the swift executable (default: `swift` on PATH)
# Anything after the YAML is passed on to `swift sft` (e.g. `--output_dir /shared/run1`, `--max_steps 100`).
#
# Global batch = NNODES x NPROC_PER_NODE x per_device_train_batch_size x gradient_accumulation_steps: keep it when
# you change the node count by adjusting gradient_accumulation_steps in the YAML.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
usage="usage: NNODES=N NODE_RANK=i MASTER_ADDR=host [NPROC_PER_NODE=M] $0 RUN.yaml [swift sft flags...]"
CONFIG="${1:?$usage}"
shift
: "${NNODES:?$usage}" "${NODE_RANK:?$usage}" "${MASTER_ADDR:?$usage}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
fi
if ! [[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: no GPU found; set NPROC_PER_NODE (and USE_CPU=1 for CPU processes)" >&2
  exit 2
fi
export NNODES NODE_RANK MASTER_ADDR NPROC_PER_NODE
export MASTER_PORT="${MASTER_PORT:-29500}"

args=()
case "${DEEPSPEED:-zero2}" in
  none) ;;
  zero2 | zero3) args+=(--deepspeed "$REPO/configs/deepspeed/${DEEPSPEED:-zero2}.json") ;;
  *) args+=(--deepspeed "$DEEPSPEED") ;;
esac
if [[ "${USE_CPU:-0}" == 1 ]]; then
  args+=(--use_cpu true)  # the coordexp argv hook then adds `--fp16 false` (DeepSpeed's CPU accelerator has no fp16)
fi

echo "stage1.sh: node $NODE_RANK of $NNODES, $NPROC_PER_NODE processes, master $MASTER_ADDR:$MASTER_PORT," \
  "deepspeed ${DEEPSPEED:-zero2}" >&2
exec "${SWIFT:-swift}" sft "$CONFIG" "${args[@]}" "$@"
