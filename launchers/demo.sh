#!/usr/bin/env bash
# The end-to-end demo on an embedded default (CPU, 2 processes; no downloads):
#   generated corpus -> data prep (MDS) -> dense teacher pretrained -> one-shot magnitude and SparseGPT
#   2:4 -> AST 2:4 retraining with KD under ZeRO-3 -> the teacher retrained dense with the same budget
#   (the reference) -> consolidation (AST exactly 2:4) -> held-out perplexity of every model, printed as a
#   table with the ratio to the dense-retrained model and written to runs/demo/results.json.
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

stage "1/8 corpus, tokenizer and a random-init tiny LLaMA"
rm -rf "$ROOT"
python -m ast_ds.demo setup --root "$ROOT" --seq_len $SEQ

stage "2/8 data prep: jsonl.gz per domain -> MDS shards + eval split"
inputs=()
for d in stories facts arith code; do inputs+=(--input "$d=$ROOT/raw/$d"); done
python data_prep/prepare.py "${inputs[@]}" --tokenizer "$ROOT/tokenizer.model" --seq_len $SEQ \
  --eval_fraction 0.02 --workers 2 --out "$ROOT/data"

# The teacher stands in for a downloaded pretrained model: it must be trained far enough that retraining
# cannot beat it on its held-out split, so it gets most of the demo's time, in one process (on this tiny
# model one process with every core is faster than two ranks exchanging parameters).
stage "3/8 dense teacher: pretraining (ZeRO-2, 1 process) until retraining cannot beat it"
if [ "$DS_ACCELERATOR" = cpu ]; then teacher_threads="$(nproc)"; else teacher_threads="${OMP_NUM_THREADS:-1}"; fi
OMP_NUM_THREADS="$teacher_threads" deepspeed --num_gpus 1 launchers/train.py --ds_config ds_configs/zero2.json \
  --recipe demo_dense --model.path "$ROOT/init" --data.data_dir "$ROOT/data" --out_dir "$ROOT/teacher"
python launchers/consolidate.py --checkpoint "$ROOT/teacher" --out "$ROOT/teacher_hf" --dtype fp32

stage "4/8 one-shot 2:4 baselines of the teacher: magnitude and SparseGPT"
python launchers/prune_oneshot.py --model "$ROOT/teacher_hf" --method magnitude --sparsity 2:4 --out "$ROOT/magnitude_hf"
python launchers/prune_oneshot.py --model "$ROOT/teacher_hf" --method sparsegpt --sparsity 2:4 \
  --calib "$ROOT/data" --nsamples 64 --out "$ROOT/sparsegpt_hf"

stage "5/8 AST 2:4 retraining with distillation from the frozen teacher, ZeRO-3 on $NPROC processes"
deepspeed --num_gpus "$NPROC" launchers/train.py --ds_config ds_configs/zero3.json --recipe demo \
  --model.path "$ROOT/teacher_hf" --data.data_dir "$ROOT/data" --out_dir "$ROOT/ast"

stage "6/8 the reference: the dense teacher retrained with the same recipe, steps and data (mode dense)"
deepspeed --num_gpus "$NPROC" launchers/train.py --ds_config ds_configs/zero3.json --recipe demo --mode dense \
  --model.path "$ROOT/teacher_hf" --data.data_dir "$ROOT/data" --out_dir "$ROOT/dense_retrained"

stage "7/8 consolidate the sharded checkpoints to Hugging Face folders (AST: exactly 2:4, checked)"
python launchers/consolidate.py --checkpoint "$ROOT/ast" --out "$ROOT/ast_hf" --dtype fp32
python launchers/consolidate.py --checkpoint "$ROOT/dense_retrained" --out "$ROOT/dense_retrained_hf" --dtype fp32

stage "8/8 evaluate"
python -m ast_ds.demo report --root "$ROOT" --seq_len $SEQ
echo "demo finished in $(( $(date +%s) - start ))s"
