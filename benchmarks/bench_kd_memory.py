"""Peak memory of the chunked distillation loss vs a naive full-logits KL + CE, side by side in one run.

    python benchmarks/bench_kd_memory.py [--tokens 8192 --vocab 32000 --dtype bf16]

Each variant runs forward + backward in its own fresh subprocess on identical inputs (student logits
with requires_grad, teacher logits, labels). Reported: the peak memory added on top of the inputs,
in units of one B×T×V fp32 logits tensor. CPU: peak RSS (VmHWM, reset through /proc/self/clear_refs
after the inputs exist); GPU: torch.cuda.max_memory_allocated. Last line: one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def child(args) -> None:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ast_ds.distill import distill_loss, naive_distill_loss, shift_labels

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    rows = args.tokens // args.seq
    student = torch.empty(rows, args.seq, args.vocab, dtype=dtype, device=dev).normal_().requires_grad_()
    teacher = torch.empty(rows, args.seq, args.vocab, dtype=dtype, device=dev).normal_()
    labels = shift_labels(torch.randint(0, args.vocab, (rows, args.seq), device=dev))
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark
        base = _rss_kib("VmRSS:") * 1024
    if args.variant == "chunked":
        loss, _, _ = distill_loss(student, teacher, labels, alpha=0.5, chunk_tokens=args.chunk)
    else:
        loss, _, _ = naive_distill_loss(student, teacher, labels, alpha=0.5)
    loss.backward()
    peak = (torch.cuda.max_memory_allocated() if dev == "cuda" else _rss_kib("VmHWM:") * 1024) - base
    print(json.dumps({"peak_extra_bytes": peak, "loss": float(loss), "device": dev}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192, help="B×T")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="dtype of the logits")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    unit = args.tokens * args.vocab * 4  # one B×T×V fp32 tensor
    res = {}
    for variant in ("chunked", "naive"):
        cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens), "--seq", str(args.seq),
               "--vocab", str(args.vocab), "--chunk", str(args.chunk), "--dtype", args.dtype]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res[variant] = json.loads(out)
    c, n = res["chunked"]["peak_extra_bytes"] / unit, res["naive"]["peak_extra_bytes"] / unit
    print(f"B×T = {args.tokens} tokens, V = {args.vocab}, {args.dtype} logits, chunk {args.chunk}, "
          f"device {res['chunked']['device']}; one fp32 logits tensor = {unit / 2**20:.0f} MiB")
    print(f"chunked KD loss: peak +{res['chunked']['peak_extra_bytes'] / 2**20:.0f} MiB = {c:.3f}x   (target <= 1.25)")
    print(f"naive full-logits KL + CE: peak +{res['naive']['peak_extra_bytes'] / 2**20:.0f} MiB = {n:.3f}x")
    print(f"losses agree: {res['chunked']['loss']:.6f} vs {res['naive']['loss']:.6f}")
    print(json.dumps({"chunked_peak_x_fp32_logits": round(c, 3), "naive_peak_x_fp32_logits": round(n, 3),
                      "ratio_naive_over_chunked": round(n / c, 2), "dtype": args.dtype}))


if __name__ == "__main__":
    main()
