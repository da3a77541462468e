"""One-shot N:M pruning of a Hugging Face model (no training): the baselines AST is compared with.

    python launchers/prune_oneshot.py --model hf/llama2_7b --method magnitude --sparsity 2:4 --out hf/llama2_7b_mag24
    python launchers/prune_oneshot.py --model hf/llama2_7b --method sparsegpt --calib c4_sample.jsonl \
        --nsamples 128 --seq_len 2048 --out hf/llama2_7b_sgpt24 --device cuda

Wanda and SparseGPT prune block by block on calibration windows (--calib: a text/jsonl file or a
data_prep output folder, whose rows then set the length).

Output: the same format as launchers/consolidate.py (safetensors, config, tokenizer, sparsity_report.json),
every target linear checked N:M.
"""

import argparse
import json
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="dense Hugging Face model folder")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"],
                   help="pruning criterion")
    p.add_argument("--calib", help="calibration data for wanda/sparsegpt: a .txt/.jsonl file or a data_prep folder")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seq_len", type=int, default=2048, help="calibration window length (text files)")
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    p.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT dampening (fraction of mean diag H)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--targets", default="", help="comma-separated block linears (default: by the model's type, "
                   "e.g. LLaMA q/k/v/o_proj, gate/up/down_proj; OPT q/k/v/out_proj, fc1, fc2)")
    p.add_argument("--sparsity", default="2:4", help="N:M pattern")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="fp32", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from ast_ds.oneshot import prune_oneshot

    try:
        report = prune_oneshot(args.model, args.out, method=args.method, pattern=args.sparsity, dtype=args.dtype,
                               modules=[t for t in args.targets.split(",") if t] or None,
                               overwrite=args.overwrite, calib=args.calib, nsamples=args.nsamples,
                               seq_len=args.seq_len, blocksize=args.blocksize, percdamp=args.percdamp, seed=args.seed,
                               device=args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: report[k] for k in ("method", "pattern", "all_ok", "target_sparsity")}))


if __name__ == "__main__":
    main()
