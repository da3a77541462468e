"""2:4 + quantization on one model, side by side (the paper's Table 10 for our formats).

    DS_ACCELERATOR=cpu python benchmarks/bench_quant.py --model runs/demo/ast_hf --eval runs/demo/raw/test.txt \\
        --calib runs/demo/data --group_size 32

Rows: the 2:4 model; INT8 round-to-nearest; INT4 round-to-nearest; INT4 GPTQ (calibration windows from
--calib, pruned positions kept at 0); FP8 e4m3 per row. Each: perplexity on --eval (fake quant: the
dequantized weights), its ratio to the 2:4 model, the weight bytes of the target linears (codes and scales,
dense storage of the zeros), and the checks that every pruned weight stayed 0 and every target is 2:4.
--dense adds the dense model's perplexity as a reference. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = (("int8", "rtn"), ("int4", "rtn"), ("int4", "gptq"), ("fp8", "rtn"))


def target_bytes(folder: str, targets: list[str]) -> int:
    from safetensors import safe_open

    from ast_ds.checkpoint.export import weight_files

    total = 0
    for file in weight_files(folder):
        with safe_open(os.path.join(folder, file), framework="pt") as f:
            for key in f.keys():
                if any(key.startswith(t) for t in targets):
                    t = f.get_tensor(key)
                    total += t.numel() * t.element_size()
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="exported 2:4 folder")
    ap.add_argument("--eval", required=True, help="text/jsonl file or prepared folder for perplexity")
    ap.add_argument("--calib", required=True, help="GPTQ calibration data (text/jsonl file or prepared folder)")
    ap.add_argument("--dense", help="the dense model, for a reference row")
    ap.add_argument("--group_size", type=int, default=128)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--work", default="")
    args = ap.parse_args(argv)

    from ast_ds.evaluate import perplexity
    from ast_ds.quant import quantize_folder

    work = args.work or tempfile.mkdtemp(prefix="bench_quant_")

    def ppl(folder: str) -> float:
        return perplexity(folder, args.eval, seq_len=args.seq_len, batch_size=16)["ppl"]

    rows = {}
    if args.dense:
        rows["dense"] = {"ppl": ppl(args.dense)}
    base = ppl(args.model)
    rows["2:4 (fp32)"] = {"ppl": base}
    targets = None
    for fmt, method in VARIANTS:
        out = os.path.join(work, f"{fmt}_{method}")
        report = quantize_folder(args.model, out, fmt=fmt, method=method, group_size=args.group_size,
                                 calib=args.calib if method == "gptq" else None, nsamples=args.nsamples,
                                 seq_len=args.seq_len, overwrite=True)
        targets = [t[:-len("weight")] for t in report["quantization"]["targets"]]
        layers = report["layers"].values()
        rows[f"2:4 + {fmt.upper()} {method.upper()}"] = {
            "ppl": ppl(out), "bytes": target_bytes(out, targets),
            "pruned_stay_zero": all(v["pruned_stay_zero"] for v in layers), "nm_ok": all(v["nm_ok"] for v in layers)}
    rows["2:4 (fp32)"]["bytes"] = target_bytes(args.model, targets)
    for row in rows.values():
        row["ratio_to_2_4"] = round(row["ppl"] / base, 4)
    print(f"{'model':24} {'ppl':>8} {'vs 2:4':>8} {'target MB':>10}")
    for name, row in rows.items():
        mb = f"{row['bytes'] / 1e6:10.3f}" if "bytes" in row else " " * 10
        print(f"{name:24} {row['ppl']:8.4f} {row['ratio_to_2_4'] - 1:+8.2%} {mb}")
    print(json.dumps({"rows": rows, "group_size": args.group_size, "model": os.path.abspath(args.model)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
