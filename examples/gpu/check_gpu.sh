#!/usr/bin/env bash
# GPU checks of the Stage-1 objective (host syncs, memory, speed, bf16/fp16 numerics) on one CUDA machine.
# Prepare (here, with .venv built):   bash ../shared/offline-cuda/wheels.sh   (wheels of what a CUDA image lacks)
# Run there, in the project root:     bash examples/gpu/check_gpu.sh [OUT_DIR]
# Writes OUT_DIR/{host_syncs,gpu_checks}.{json,log}; docs/architecture.md records the last run's figures.
set -u
OUT_DIR="${1:-${OUT:-/tmp/gpu_checks}}"
mkdir -p "$OUT_DIR"
if [ -f .whl/install.sh ]; then source .whl/install.sh || exit 1; fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
timeout 240 python3 bench/gpu_checks.py --out "$OUT_DIR/gpu_checks.json" 2>&1 | tee "$OUT_DIR/gpu_checks.log"
timeout 120 python3 bench/host_syncs.py --device cuda 2>&1 | tee "$OUT_DIR/host_syncs.log"
cp bench/results/host_syncs.json "$OUT_DIR/host_syncs.json" 2>/dev/null || true
