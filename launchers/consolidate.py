"""Export a sharded training checkpoint as a Hugging Face folder whose target linears are exactly N:M.

    python launchers/consolidate.py --checkpoint runs/llama2_7b_24 --out hf/llama2_7b_24 --dtype bf16

--checkpoint: a run folder, its checkpoints/ folder, or one step_XXXXXXXX tag. Writes the weights as
safetensors (model.safetensors, or shards of --max_shard_size with model.safetensors.index.json, as
save_pretrained does), config.json, the tokenizer and sparsity_report.json (per-layer sparsity and the
N:M check). It streams tensor by tensor: peak memory is about one shard plus the largest tensor.
"""

import argparse
import json
import os
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoints folder or tag folder")
    p.add_argument("--out", required=True, help="output Hugging Face folder")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the saved weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB (default 5GB)")
    args = p.parse_args(argv)
    from ast_ds.checkpoint import CheckpointError
    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.checkpoint.export import parse_size

    try:
        report = consolidate(args.checkpoint, args.out, dtype=args.dtype, overwrite=args.overwrite,
                             max_shard_bytes=parse_size(args.max_shard_size))
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    summary = {k: report[k] for k in ("all_ok", "num_targets", "target_sparsity", "step", "mode") if k in report}
    print(json.dumps(summary))
    print(f"wrote {args.out} (report: {os.path.join(args.out, 'sparsity_report.json')})")


if __name__ == "__main__":
    main()
