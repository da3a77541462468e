"""2:4 vs dense inference on one GPU, side by side in one run.

    python benchmarks/bench_inference.py                    # every shape and the end-to-end model
    python benchmarks/bench_inference.py --layers 8 --skip_e2e

1. Matmul time of the LLaMA-2-7B and 13B linear shapes (attention [h, h], gate/up [ffn, h], down [h, ffn])
   at 1, 16, 128 and 2048 tokens: dense bf16 ``F.linear`` against the same 2:4 weight as
   ``to_sparse_semi_structured`` (cuSPARSELt), and on Hopper with torchao installed the FP8 per-row 2:4
   path against FP8 per-row dense. Calls alternate between the variants; the median of the timed calls
   (CUDA events) is reported.
2. End to end: a LLaMA built from a config (random weights pruned 2:4 by magnitude, bf16), prefill
   tokens/s (batch x 2048) and greedy decode tokens/s (batch 1 and 16) with the dense weights and with the
   2:4 linears swapped by ``ast_ds.serve.sparsify``; the logits of the two are compared.

Without a CUDA GPU it prints one JSON line with "skipped" and exits 0. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {"llama2_7b": (4096, 11008), "llama2_13b": (5120, 13824)}  # hidden, ffn
TOKENS = (1, 16, 128, 2048)


def pruned(out_f: int, in_f: int, dtype=torch.bfloat16) -> torch.Tensor:
    from ast_ds.sparsity import magnitude_nm_mask

    w = torch.randn(out_f, in_f, device="cuda", dtype=dtype)
    return torch.where(magnitude_nm_mask(w), w, torch.zeros((), dtype=dtype, device="cuda"))


def time_interleaved(fns: dict, *, iters: int, warmup: int = 5) -> dict[str, float]:
    """Median ms per call of each function, the calls alternating between them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[k].append(start.elapsed_time(end))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def fp8_pair(weight: torch.Tensor):
    """(dense FP8 per-row linear, 2:4 FP8 per-row linear) through torchao, or None where unavailable."""
    if torch.cuda.get_device_capability() < (9, 0):
        return None
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8PackingFormat, PerRow, quantize_
    except ImportError:
        return None
    sparse = [f for f in Float8PackingFormat if "SPARSE" in f.name]
    if not sparse:
        return None
    pair = []
    for fmt in (Float8PackingFormat.PLAIN, sparse[0]):
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="cuda", dtype=torch.bfloat16)
        lin.weight.data.copy_(weight)
        quantize_(lin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), packing_format=fmt))
        pair.append(lin)
    return tuple(pair)


@torch.no_grad()
def matmuls(iters: int) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for model, (h, ffn) in SHAPES.items():
        for name, (out_f, in_f) in {"attn": (h, h), "gate_up": (ffn, h), "down": (h, ffn)}.items():
            w = pruned(out_f, in_f)
            ws = to_sparse_semi_structured(w)
            fp8 = fp8_pair(w)
            for t in TOKENS:
                x = torch.randn(t, in_f, device="cuda", dtype=torch.bfloat16)
                fns = {"dense": lambda: torch.nn.functional.linear(x, w),
                       "sparse": lambda: torch.nn.functional.linear(x, ws)}
                if fp8:
                    fns.update(fp8_dense=lambda: fp8[0](x), fp8_sparse=lambda: fp8[1](x))
                ms = time_interleaved(fns, iters=iters)
                row = {"model": model, "linear": name, "shape": [out_f, in_f], "tokens": t,
                       "dense_ms": round(ms["dense"], 4), "sparse_ms": round(ms["sparse"], 4),
                       "speedup": round(ms["dense"] / ms["sparse"], 3)}
                if fp8:
                    row.update(fp8_dense_ms=round(ms["fp8_dense"], 4), fp8_sparse_ms=round(ms["fp8_sparse"], 4),
                               fp8_speedup=round(ms["fp8_dense"] / ms["fp8_sparse"], 3),
                               fp8_sparse_vs_bf16_dense=round(ms["dense"] / ms["fp8_sparse"], 3))
                rows.append(row)
                print(f"{model:10} {name:7} {out_f:5}x{in_f:<5} tokens {t:5}: dense {ms['dense']:.4f} ms, 2:4 "
                      f"{ms['sparse']:.4f} ms (x{row['speedup']:.2f})"
                      + (f"; fp8 dense {ms['fp8_dense']:.4f}, fp8 2:4 {ms['fp8_sparse']:.4f} ms" if fp8 else ""),
                      flush=True)
    return rows


@torch.no_grad()
def end_to_end(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ast_ds.serve import max_logit_diff, sparsify
    from ast_ds.sparsity import magnitude_nm_mask

    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.ffn,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                         num_key_value_heads=args.hidden // 128, max_position_embeddings=4096)
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16).eval()
    for name, p in dense.named_parameters():
        if name.endswith("proj.weight"):
            p.copy_(torch.where(magnitude_nm_mask(p), p, torch.zeros((), dtype=p.dtype, device=p.device)))
    sparse = LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16).eval()
    sparse.load_state_dict(dense.state_dict())
    summary = sparsify(sparse, backend="semi_structured")
    ids = torch.randint(0, 32000, (args.prefill_batch, 2048), device="cuda")
    out = {"params": sum(p.numel() for p in dense.parameters()), "swapped": len(summary["swapped"]),
           "max_logit_diff": max_logit_diff(sparse, dense, ids[:1, :256])}
    ms = time_interleaved({"dense": lambda: dense(input_ids=ids, use_cache=False),
                           "sparse": lambda: sparse(input_ids=ids, use_cache=False)}, iters=args.iters // 4 or 1)
    tokens = ids.numel()
    out["prefill_tokens_per_s"] = {k: round(tokens / (v / 1e3)) for k, v in ms.items()}
    for batch in (1, 16):
        prompt = torch.randint(0, 32000, (batch, 64), device="cuda")
        for k, m in (("dense", dense), ("sparse", sparse)):
            m.generate(prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m.generate(prompt, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, do_sample=False)
            torch.cuda.synchronize()
            out[f"decode_b{batch}_tokens_per_s_{k}"] = round(batch * args.decode_tokens / (time.perf_counter() - t0), 1)
    out["prefill_speedup"] = round(out["prefill_tokens_per_s"]["sparse"] / out["prefill_tokens_per_s"]["dense"], 3)
    for batch in (1, 16):
        out[f"decode_b{batch}_speedup"] = round(out[f"decode_b{batch}_tokens_per_s_sparse"] /
                                                out[f"decode_b{batch}_tokens_per_s_dense"], 3)
    print(f"end to end ({out['params'] / 1e9:.2f}B, {out['swapped']} linears 2:4): prefill x{out['prefill_speedup']}, "
          f"decode batch 1 x{out['decode_b1_speedup']}, batch 16 x{out['decode_b16_speedup']}; max |Δlogits| "
          f"{out['max_logit_diff']:.3g}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=50, help="timed calls per variant and shape")
    ap.add_argument("--layers", type=int, default=16, help="end-to-end model: decoder layers")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5504)
    ap.add_argument("--prefill_batch", type=int, default=4)
    ap.add_argument("--decode_tokens", type=int, default=64)
    ap.add_argument("--skip_e2e", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU: 2:4 sparse kernels (cuSPARSELt/CUTLASS) need compute capability "
                                     "8.0+; nothing to measure on this machine"}))
        return 0
    if torch.cuda.get_device_capability() < (8, 0):
        print(json.dumps({"skipped": f"{torch.cuda.get_device_name(0)} has compute capability "
                                     f"{torch.cuda.get_device_capability()}; 2:4 kernels need 8.0+"}))
        return 0
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "matmul": matmuls(args.iters)}
    if not args.skip_e2e:
        result["end_to_end"] = end_to_end(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
