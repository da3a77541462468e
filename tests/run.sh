#!/usr/bin/env bash
# The test command: sets up the virtualenv when missing, then runs the whole suite on the CPU.
# Extra arguments go to pytest (e.g. -m "not multiprocess" for the quick single-process tests). Without a -m,
# tests marked slow (further points of sweeps CI already covers) are left out; -m slow runs just them.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO/launchers/setup_env.sh"
cd "$REPO"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
export TOKENIZERS_PARALLELISM=false
case " $* " in
  *" -m "*) python -m pytest -q tests "$@" ;;
  *) python -m pytest -q tests -m "not slow" "$@" ;;
esac
