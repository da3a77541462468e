"""One-shot N:M pruning of a Hugging Face model (no training): the baselines AST is compared with.

    python launchers/prune_oneshot.py --model hf/llama2_7b --method magnitude --sparsity 2:4 --out hf/llama2_7b_mag24

Output: the same format as launchers/consolidate.py (safetensors, config, tokenizer, sparsity_report.json),
every target linear checked N:M.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="dense Hugging Face model folder")
    p.add_argument("--method", default="magnitude", choices=["magnitude"], help="pruning criterion")
    p.add_argument("--sparsity", default="2:4", help="N:M pattern")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="fp32", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from ast_ds.oneshot import prune_oneshot

    try:
        report = prune_oneshot(args.model, args.out, method=args.method, pattern=args.sparsity, dtype=args.dtype,
                               overwrite=args.overwrite)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: report[k] for k in ("method", "pattern", "all_ok", "target_sparsity")}))


if __name__ == "__main__":
    main()
