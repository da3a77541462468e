"""Model surgery applied before DeepSpeed wraps the model, so ZeRO-3 partitions the new parameters
like any other: SLoRB (AST-Boosted) and CAST's weight scaling. Each converter swaps the class of the
target ``nn.Linear`` instances in place (their weight and bias stay the same parameters) and adds
its parameters; the pure math lives in the ``*_init`` / ``*_weight`` functions below.

* SLoRB (paper §3.4): for W [N, d] and group size k, S [N, d/k] starts as the mean of the *pruned*
  weights of each k-group (kept ones count as 0) and X [d/k, d] as the block indicator
  (X_ij = 1 iff j // k == i); both are trained. y = x W̃ᵀ + b + (x Xᵀ) Sᵀ. The branch is dense and
  stays separate at inference: a SLoRB model is not pure N:M.
* Weight scaling (CAST): a learnable A [N, n] (init 1) scales row r, column group c // (d/n) of W:
  y = x (W ⊙ expand(A))ᵀ + b. Elementwise, so zeros stay zero; it is folded into W at export.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.nn.functional as F

from ast_ds.sparsity.nm_mask import magnitude_nm_mask

EXPORT_FILE = "ast_ds_modules.json"


# ---------------------------------------------------------------------- pure math
def slorb_init(weight: torch.Tensor, keep: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, X)`` from the dense weight and its keep-mask."""
    rows, cols = weight.shape
    if cols % k:
        raise ValueError(f"SLoRB k={k} must divide the input dimension {cols}")
    pruned = weight.masked_fill(keep, 0.0)
    s = pruned.view(rows, cols // k, k).mean(dim=-1)
    x = torch.repeat_interleave(torch.eye(cols // k, dtype=weight.dtype, device=weight.device), k, dim=1)
    return s, x


def expand_scale(scale: torch.Tensor, cols: int) -> torch.Tensor:
    """A [N, n] -> [N, cols]: column group c // (cols / n) of row r gets A[r, group]."""
    groups = scale.shape[1]
    if cols % groups:
        raise ValueError(f"weight scaling n={groups} must divide the input dimension {cols}")
    return torch.repeat_interleave(scale, cols // groups, dim=1)


def scaled_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return weight * expand_scale(scale, weight.shape[1]).to(weight.dtype)


# ---------------------------------------------------------------------- modules
class SLoRBLinear(torch.nn.Linear):
    """``nn.Linear`` plus the SLoRB branch (``slorb_s`` [N, d/k], ``slorb_x`` [d/k, d])."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.slorb_x), self.slorb_s)


class ScaledLinear(torch.nn.Linear):
    """``nn.Linear`` whose weight is scaled by ``cast_scale`` [N, n] per row and column group."""

    def forward(self, x):
        return F.linear(x, scaled_weight(self.weight, self.cast_scale), self.bias)


def _gathered(params):
    """Full parameters inside the block (ZeRO-3 partitioned ones are all-gathered on every rank)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def _linear(model, weight_name: str) -> torch.nn.Linear:
    module = model.get_submodule(weight_name.rsplit(".", 1)[0])
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"{weight_name} is not the weight of an nn.Linear")
    return module


def add_slorb(model: torch.nn.Module, targets: list[str], *, k: int = 16, n: int = 2, m: int = 4) -> None:
    """Turn every target linear into a :class:`SLoRBLinear`, S and X initialised from its dense weight
    and magnitude N:M mask. Collective under ZeRO-3 (the weight is gathered on every rank)."""
    for name in targets:
        module = _linear(model, name)
        with _gathered([module.weight]):
            w = module.weight.detach().float()
            s, x = slorb_init(w, magnitude_nm_mask(w, n=n, m=m), k)
        dtype, device = module.weight.dtype, module.weight.device
        module.slorb_s = torch.nn.Parameter(s.to(dtype=dtype, device=device))
        module.slorb_x = torch.nn.Parameter(x.to(dtype=dtype, device=device))
        module.__class__ = SLoRBLinear


def add_weight_scaling(model: torch.nn.Module, targets: list[str], *, groups: int = 2) -> None:
    """Turn every target linear into a :class:`ScaledLinear` with ``cast_scale`` = 1."""
    for name in targets:
        module = _linear(model, name)
        rows = module.out_features
        expand_scale(torch.ones(1, groups), module.in_features)  # validates divisibility
        module.cast_scale = torch.nn.Parameter(torch.ones(rows, groups, dtype=module.weight.dtype,
                                                          device=module.weight.device))
        module.__class__ = ScaledLinear


# ---------------------------------------------------------------------- export and reload
def load_exported(model_dir: str, *, dtype=torch.float32):
    """Load an exported folder, rebuilding SLoRB branches when ``ast_ds_modules.json`` lists them, or
    dequantizing a ``launchers/quantize.py`` folder.
    Plain N:M exports load with ``AutoModelForCausalLM.from_pretrained`` alone."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from ast_ds.quant import is_quantized, load_quantized

    if is_quantized(model_dir):  # launchers/quantize.py output: dequantized (fake quant)
        return load_quantized(model_dir, dtype=dtype)
    path = os.path.join(model_dir, EXPORT_FILE)
    modules = {}
    if os.path.isfile(path):
        with open(path) as f:
            modules = json.load(f)
    slorb = modules.get("slorb", [])
    if not slorb:
        return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    import logging

    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)  # the slorb keys are "unexpected"
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    if modules.get("conv1d"):  # GPT-2: the branches were trained beside nn.Linear layers
        from ast_ds.conv1d import conv1d_to_linear

        conv1d_to_linear(model)
    from ast_ds.checkpoint.export import weight_files

    tensors = {}
    for file in weight_files(model_dir):  # one file, or the shards of a large export
        with safe_open(os.path.join(model_dir, file), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys() if k.endswith((".slorb_s", ".slorb_x"))})
    for prefix in slorb:
        module = model.get_submodule(prefix)
        module.slorb_s = torch.nn.Parameter(tensors[f"{prefix}.slorb_s"].to(dtype))
        module.slorb_x = torch.nn.Parameter(tensors[f"{prefix}.slorb_x"].to(dtype))
        module.__class__ = SLoRBLinear
    return model
