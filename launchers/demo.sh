#!/usr/bin/env bash
# The end-to-end demo on an embedded default (CPU, 2 processes; no downloads):
#   generated corpus -> data prep (MDS) -> dense teacher pretrained under ZeRO-3 -> AST 2:4 retraining
#   with KD under ZeRO-3 -> consolidation to an exact-2:4 Hugging Face folder -> perplexity of dense,
#   one-shot magnitude 2:4 and AST, printed as a table and written to runs/demo/results.json.
# Creates the virtualenv when missing. ROOT (default runs/demo) and NPROC (default 2) can be overridden.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO/launchers/setup_env.sh"
cd "$REPO"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" TOKENIZERS_PARALLELISM=false
# One thread per rank on the CPU: the deepspeed launcher (unlike torchrun) leaves OMP_NUM_THREADS unset, and
# two ranks with a thread per core each oversubscribe a small box (measured 4x slower here).
if [ "$DS_ACCELERATOR" = cpu ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
ROOT="${ROOT:-runs/demo}"
NPROC="${NPROC:-2}"
SEQ=128
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

stage "1/7 corpus, tokenizer and a random-init tiny LLaMA"
rm -rf "$ROOT"
python -m ast_ds.demo setup --root "$ROOT" --seq_len $SEQ

stage "2/7 data prep: jsonl.gz per domain -> MDS shards + eval split"
inputs=()
for d in stories facts arith code; do inputs+=(--input "$d=$ROOT/raw/$d"); done
python data_prep/prepare.py "${inputs[@]}" --tokenizer "$ROOT/tokenizer.model" --seq_len $SEQ \
  --eval_fraction 0.02 --workers 2 --out "$ROOT/data"

stage "3/7 dense teacher: pretraining under ZeRO-3 on $NPROC processes"
deepspeed --num_gpus "$NPROC" launchers/train.py --ds_config ds_configs/zero3.json --recipe demo_dense \
  --model.path "$ROOT/init" --data.data_dir "$ROOT/data" --out_dir "$ROOT/teacher"
python launchers/consolidate.py --checkpoint "$ROOT/teacher" --out "$ROOT/teacher_hf" --dtype fp32

stage "4/7 one-shot magnitude 2:4 of the teacher (baseline)"
python launchers/prune_oneshot.py --model "$ROOT/teacher_hf" --method magnitude --sparsity 2:4 --out "$ROOT/magnitude_hf"

stage "5/7 AST 2:4 retraining with distillation from the frozen teacher, ZeRO-3 on $NPROC processes"
deepspeed --num_gpus "$NPROC" launchers/train.py --ds_config ds_configs/zero3.json --recipe demo \
  --model.path "$ROOT/teacher_hf" --data.data_dir "$ROOT/data" --out_dir "$ROOT/ast"

stage "6/7 consolidate the sharded AST checkpoint to an exact-2:4 Hugging Face folder"
python launchers/consolidate.py --checkpoint "$ROOT/ast" --out "$ROOT/ast_hf" --dtype fp32

stage "7/7 evaluate"
python -m ast_ds.demo report --root "$ROOT" --seq_len $SEQ
echo "demo finished in $(( $(date +%s) - start ))s"
