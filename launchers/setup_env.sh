#!/usr/bin/env bash
# Create (when missing) and fill the project's virtualenv. Sourced by tests/run.sh and launchers/demo.sh.
#   AST_DS_VENV   virtualenv path (default: .venv in the repository)
#   TORCH_SPEC    torch/torchvision to install (default: the CPU-testable pair torch==2.14.1 torchvision==0.29.1;
#                 on a GPU cluster install the CUDA build of your choice first, then this script leaves it alone)
# Order matters: torch first, then DeepSpeed with --no-build-isolation (its setup.py imports torch and
# would otherwise build against a second torch it downloads), then this package.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AST_DS_VENV:-$REPO/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.ast_ds_setup"
want="$(cat "$REPO/setup.py" "$REPO/launchers/setup_env.sh" | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing into $VENV (torch, DeepSpeed, ast_ds and its dependencies)"
  python -m pip install -q --upgrade pip setuptools wheel
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
  fi
  python -m pip install -q "numpy<2.2" ninja
  python -m pip install -q --no-build-isolation "deepspeed>=0.16,<0.20"
  python -m pip install -q --no-build-isolation -e "$REPO[dev]"
  echo "$want" > "$stamp"
fi
