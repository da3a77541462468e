#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): ZeRO-3 equivalence at world size 1 on CUDA (fp32, bf16), a bf16
# AST + KD run of a ~110M LLaMA from a config with a preemption and resume, the step-time ratios of
# bench_optimizer and bench_train, and the planner against torch.cuda.max_memory_allocated. Under 20 minutes
# on one GPU; last line one JSON object (also OUT/gpu_check.json).
#
#   bash benchmarks/gpu_check.sh [--out DIR]     # one CUDA GPU
#   bash benchmarks/gpu_check.sh --dry_run       # the same steps, tiny, on the CPU (CI)
#
# Uses the current python when it already has torch, DeepSpeed and ast_ds (a GPU box set up with its own CUDA
# build, possibly offline); otherwise creates/updates the project's virtualenv (launchers/setup_env.sh).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if ! python3 -c "import torch, deepspeed, ast_ds" 2>/dev/null; then
  # shellcheck disable=SC1091
  source "$REPO/launchers/setup_env.sh"
fi
exec python3 benchmarks/gpu_check.py "$@"
