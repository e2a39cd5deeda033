#!/usr/bin/env bash
# GPU check for issue 12 item 4: greedy rollouts with rollout_backend vllm == hf on the same tiny checkpoint,
# before and after a weight sync. Needs one CUDA GPU and vLLM in the environment (the `vllm` extra; vLLM pins its
# own torch, so install it without constraints.txt, e.g. `pip install -e '.[vllm]'` in a fresh venv).
# Expected: two "identical greedy responses N/N" lines and OK, in well under 10 minutes (engine start dominates).
# Usage: examples/gpu/check_vllm_rollout.sh [--model CKPT --jsonl VAL.jsonl] [--n 8] [--max_new_tokens 64]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
"$PY" -c "import vllm" 2>/dev/null || { echo "vllm is not importable: pip install -e '.[vllm]' (GPU machine)" >&2; exit 2; }
exec timeout 600 "$PY" examples/gpu/check_vllm_rollout.py "$@"
