"""Quantize an exported N:M model without losing the pattern (every pruned weight stays exactly 0).

    python launchers/quantize.py --model runs/demo/ast_hf --format int8 --out runs/demo/ast_int8
    python launchers/quantize.py --model hf/llama2_7b_ast24 --format int4 --method gptq --group_size 128 \
        --calib c4_sample.jsonl --nsamples 128 --seq_len 2048 --out hf/llama2_7b_ast24_int4 --device cuda
    python launchers/quantize.py --model hf/llama2_7b_ast24 --format fp8 --out hf/llama2_7b_ast24_fp8

--format int8 | int4 (group-wise symmetric, int4 packed two per byte) | fp8 (e4m3, one scale per output row:
the weight format of torchao's FP8 2:4 path on Hopper). --method rtn (round to nearest) | gptq (int formats:
our SparseGPT's layer-by-layer Hessians, errors propagated only into kept positions). --eval_data (a text/jsonl
file or a data_prep folder) prints the perplexity of the source and of the dequantized model (fake quant, CPU).

Output: config, tokenizer, safetensors with ``<target>.weight_q`` and ``<target>.weight_scale``,
quantization.json and sparsity_report.json; ``ast_ds.quant.load_quantized`` (and launchers/evaluate.py)
load it dequantized. Last line: one JSON object.
"""

import argparse
import json
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported N:M Hugging Face folder (consolidate.py / prune_oneshot.py)")
    p.add_argument("--format", required=True, choices=["int8", "int4", "fp8"])
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq"])
    p.add_argument("--group_size", type=int, default=128, help="input columns per scale (int formats)")
    p.add_argument("--targets", default="", help="comma-separated block linears (default: by the model's type, "
                   "e.g. LLaMA q/k/v/o_proj, gate/up/down_proj; OPT q/k/v/out_proj, fc1, fc2)")
    p.add_argument("--sparsity", default="2:4", help="the N:M pattern to keep and verify")
    p.add_argument("--calib", help="gptq calibration data: a .txt/.jsonl file or a data_prep folder")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seq_len", type=int, default=2048, help="calibration/evaluation window (text files)")
    p.add_argument("--blocksize", type=int, default=128)
    p.add_argument("--percdamp", type=float, default=0.01)
    p.add_argument("--eval_data", help="perplexity of the source and of the quantized model on this data")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from ast_ds.quant import quantize_folder

    try:
        report = quantize_folder(args.model, args.out, fmt=args.format, method=args.method, group_size=args.group_size,
                                 modules=[t for t in args.targets.split(",") if t] or None,
                                 pattern=args.sparsity, calib=args.calib, nsamples=args.nsamples, seq_len=args.seq_len,
                                 blocksize=args.blocksize, percdamp=args.percdamp, overwrite=args.overwrite,
                                 device=args.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    layers = report["layers"].values()
    out = {"format": args.format, "method": args.method, "num_targets": report["num_targets"],
           "pruned_stay_zero": all(v["pruned_stay_zero"] for v in layers), "nm_ok": all(v["nm_ok"] for v in layers),
           "mean_rel_sq_error": sum(v["rel_sq_error"] for v in layers) / max(len(layers), 1)}
    if args.eval_data:
        from ast_ds.evaluate import perplexity

        for key, folder in (("ppl_source", args.model), ("ppl_quantized", args.out)):
            out[key] = perplexity(folder, args.eval_data, seq_len=args.seq_len, device=args.device)["ppl"]
        out["ppl_ratio"] = out["ppl_quantized"] / out["ppl_source"]
        print(f"perplexity: source {out['ppl_source']:.4f}, {args.format} {out['ppl_quantized']:.4f} "
              f"({out['ppl_ratio'] - 1:+.2%})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
