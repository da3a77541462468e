"""Run an exported 2:4 model with sparse kernels, checked against the same model run densely.

Backends (what survives in 2026; see docs/benchmarks.md for measured speed-ups):

* ``semi_structured``: PyTorch core's ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, or CUTLASS
  with ``cutlass=True``): fp16/bf16 weights, CUDA compute capability 8.0+ (A100, H100, L40S; not on consumer
  cards older than Ampere). Each eligible target linear's weight becomes a compressed 2:4 tensor.
* ``fp8``: torchao's ``Float8DynamicActivationFloat8WeightConfig`` with per-row scales and its 2:4 sparse
  packing (Hopper, sm90 only); needs ``pip install torchao``.
* ``dense``: the folder as exported (zeros stored densely): the reference, and what runs on a CPU.

A linear is eligible when its weight is exactly 2:4 along the input dimension and its shape meets the
kernels' minimum sizes; others stay dense (listed in the returned summary).
"""

from __future__ import annotations

import time

import torch

BACKENDS = ("semi_structured", "fp8", "dense")


def eligible(weight: torch.Tensor, *, min_rows: int = 32, min_cols: int = 64) -> tuple[bool, str]:
    """(ok, why not): exactly 2:4 and a shape the 2:4 kernels take (rows, cols multiples of the minimums)."""
    from ast_ds.sparsity import verify_nm

    rows, cols = weight.shape
    if rows % min_rows or cols % min_cols:
        return False, f"shape {rows}x{cols} is not a multiple of {min_rows}x{min_cols}"
    if not verify_nm(weight, n=2, m=4).ok:
        return False, "not 2:4"
    return True, ""


def _check_cuda(backend: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(f"--backend {backend} needs a CUDA GPU (2:4 kernels do not run on the CPU); use "
                           f"--backend dense here")
    major, minor = torch.cuda.get_device_capability()
    need = (9, 0) if backend == "fp8" else (8, 0)
    if (major, minor) < need:
        raise RuntimeError(f"--backend {backend} needs compute capability {need[0]}.{need[1]}+, this GPU is "
                           f"{major}.{minor}; use --backend {'semi_structured' if backend == 'fp8' else 'dense'}")


class SemiStructuredLinear(torch.nn.Module):
    """A linear whose weight is a ``to_sparse_semi_structured`` tensor. The 2:4 kernels take a 2-D input only
    (a decode step's [batch, 1, in] fails inside the subclass's dispatch), so the input is flattened first."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x):
        y = torch.nn.functional.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def sparsify(model: torch.nn.Module, *, backend: str, targets=None, cutlass: bool = False) -> dict:
    """Swap the eligible 2:4 linears of ``model`` (already on the GPU, fp16/bf16) to ``backend`` in place;
    returns {"swapped": [...], "dense": {name: why}}."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    from ast_ds.model import TARGETS_BY_TYPE

    targets = tuple(targets or TARGETS_BY_TYPE.get(model.config.model_type, ()))
    if not targets:
        raise ValueError(f"no default 2:4 targets for model_type {model.config.model_type!r}; pass targets=[...]")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets}
    summary = {"backend": backend, "swapped": [], "dense": {}}
    ok = {}
    for name, lin in linears.items():
        good, why = eligible(lin.weight.detach())
        if good:
            ok[name] = lin
        else:
            summary["dense"][name] = why
    if backend == "dense":
        summary["dense"].update({n: "backend dense" for n in ok})
        return summary
    if not ok:
        return summary
    _check_cuda(backend)
    if backend == "semi_structured":
        from torch.sparse import SparseSemiStructuredTensor

        SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
        for name, lin in ok.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SemiStructuredLinear(lin))
            summary["swapped"].append(name)
    else:
        try:
            from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8PackingFormat, PerRow,
                                              quantize_)
        except ImportError as e:
            raise RuntimeError(f"--backend fp8 needs torchao with FP8 2:4 support (pip install torchao): {e}") from None
        sparse = [f for f in Float8PackingFormat if "SPARSE" in f.name]
        if not sparse:
            raise RuntimeError(f"this torchao has no 2:4 FP8 packing format ({[f.name for f in Float8PackingFormat]})")
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), packing_format=sparse[0])
        quantize_(model, config, filter_fn=lambda module, fqn: fqn in ok)
        summary["swapped"] = sorted(ok)
    return summary


def load_for_serving(model_dir: str, *, backend: str = "semi_structured", dtype: str = "bf16",
                     device: str | None = None, cutlass: bool = False):
    """(model, tokenizer, summary): the exported folder on ``device`` in ``dtype``, its 2:4 linears on
    ``backend``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ast_ds.model import check_model_dir

    check_model_dir(model_dir, what="--model")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    from ast_ds.conv1d import conv1d_to_linear

    conv1d_to_linear(model)  # GPT-2: the 2:4 kernels take nn.Linear weights [out, in]
    summary = sparsify(model, backend=backend, cutlass=cutlass)
    return model, AutoTokenizer.from_pretrained(model_dir), summary


@torch.no_grad()
def max_logit_diff(model_a, model_b, ids: torch.Tensor) -> float:
    """max |logits_a − logits_b| on ``ids`` (the sparse-kernel model against the dense one)."""
    return float((model_a(input_ids=ids).logits.float() - model_b(input_ids=ids).logits.float()).abs().max())


@torch.no_grad()
def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 32) -> tuple[str, float]:
    """(greedy continuation, decode tokens/s)."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    if device.type == "cuda":
        torch.cuda.synchronize()
    new = out.shape[1] - ids.shape[1]
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), new / (time.perf_counter() - start)
