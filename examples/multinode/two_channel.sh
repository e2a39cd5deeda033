#!/usr/bin/env bash
# Stage-2 Two-Channel Teacher Forcing (custom.trainer_variant: stage2_two_channel) on NNODES nodes x NPROC_PER_NODE
# GPUs, through stock `swift sft` (ms-swift's torchrun environment). Run the same command on every node; only
# NODE_RANK differs (0 on the node whose address is MASTER_ADDR). Every node needs the same package install, Stage-1
# checkpoint, data paths and run YAML (start from configs/stage2_two_channel/two_channel.yaml).
#
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NPROC_PER_NODE=8 examples/multinode/two_channel.sh run.yaml
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 NPROC_PER_NODE=8 examples/multinode/two_channel.sh run.yaml
#
# Environment:
#   NNODES, NODE_RANK, MASTER_ADDR   required
#   MASTER_PORT      default 29500 (free on the master node)
#   NPROC_PER_NODE   default: the number of GPUs `nvidia-smi -L` lists
#   DEEPSPEED        none (default: DDP) | zero2 | zero3 | path to a DeepSpeed JSON; zero2/zero3 are
#                    configs/deepspeed/*.json
#   USE_CPU=1        gloo processes on CPU instead of GPUs (smoke tests; adds `--use_cpu true`)
#   SWIFT            the swift executable (default: `swift` on PATH)
# Anything after the YAML is passed on to `swift sft` (e.g. `--output_dir /shared/run2`, `--max_steps 100`).
#
# What stays consistent across nodes (SPEC §3.2, §3.6 B0): the channel of optimizer step s is
# channel_at(s, b_ratio|pattern), a pure function of the global step, so every rank of every node runs A or B on
# the same step; Channel-B rollout seeds are seed_base = norm(seed + s*1000003) on every rank and per request
# norm(seed_base + (micro_idx*world_size + global_rank)*per_device_bs + j), with the *global* rank and world size.
# Each rank logs "Channel-B rollout: s=.. seed_base=.. rank=.." at INFO (visible on each node's local rank 0).
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
if ! grep -Eq '^[[:space:]]*trainer_variant:[[:space:]]*stage2_two_channel([[:space:]]|#|$)' "$CONFIG"; then
  echo "$0: $CONFIG does not set custom.trainer_variant: stage2_two_channel (Stage-1: examples/multinode/stage1.sh)" >&2
  exit 2
fi
export NNODES NODE_RANK MASTER_ADDR NPROC_PER_NODE
export MASTER_PORT="${MASTER_PORT:-29500}"

args=()
case "${DEEPSPEED:-none}" in
  none) ;;
  zero2 | zero3) args+=(--deepspeed "$REPO/configs/deepspeed/${DEEPSPEED}.json") ;;
  *) args+=(--deepspeed "$DEEPSPEED") ;;
esac
if [[ "${USE_CPU:-0}" == 1 ]]; then
  args+=(--use_cpu true)  # the coordexp argv hook then adds `--fp16 false` under DeepSpeed (no fp16 on CPU)
fi

echo "two_channel.sh: node $NODE_RANK of $NNODES, $NPROC_PER_NODE processes, master $MASTER_ADDR:$MASTER_PORT," \
  "deepspeed ${DEEPSPEED:-none}" >&2
exec "${SWIFT:-swift}" sft "$CONFIG" "${args[@]}" "$@"
