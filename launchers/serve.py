"""Generate with an exported 2:4 model on sparse kernels, checked against the dense run of the same weights.

    python launchers/serve.py --model hf/llama2_7b_ast24 --backend semi_structured --prompt "The capital of"
    python launchers/serve.py --model hf/llama2_7b_ast24 --backend fp8 --prompt "..."      # Hopper + torchao
    python launchers/serve.py --model runs/demo/ast_hf --backend dense --prompt "Once"      # CPU

--backend semi_structured: torch.sparse.to_sparse_semi_structured (fp16/bf16, compute capability 8.0+);
fp8: torchao's per-row FP8 with 2:4 packing (sm90); dense: the weights as stored (the reference; any device).
--check (default on) loads the folder a second time densely and prints max |Δlogits| on the prompt. Last
line: one JSON object (swapped and dense-kept linears, the logit difference, the text, decode tokens/s).
"""

import argparse
import json
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported 2:4 Hugging Face folder")
    p.add_argument("--backend", default="semi_structured", choices=["semi_structured", "fp8", "dense"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--cutlass", action="store_true", help="semi_structured: CUTLASS kernels instead of cuSPARSELt")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the logits with the dense model on the prompt")
    args = p.parse_args(argv)
    from ast_ds.serve import generate, load_for_serving, max_logit_diff

    try:
        model, tok, summary = load_for_serving(args.model, backend=args.backend, dtype=args.dtype, device=args.device,
                                               cutlass=args.cutlass)
    except (RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")
    out = {"backend": args.backend, "swapped": len(summary["swapped"]), "kept_dense": len(summary["dense"])}
    if args.check:
        dense, _, _ = load_for_serving(args.model, backend="dense", dtype=args.dtype, device=args.device)
        ids = tok(args.prompt, return_tensors="pt").input_ids.to(next(dense.parameters()).device)
        out["max_logit_diff"] = max_logit_diff(model, dense, ids)
        del dense
    text, rate = generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens)
    out.update(text=text, decode_tokens_per_s=round(rate, 1))
    print(f"{args.prompt}{text}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
