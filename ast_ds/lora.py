"""LoRA fine-tuning of an N:M model that keeps the pattern (``mode=lora``, ``launchers/finetune.py``).

For a target linear with frozen N:M weight W [out, in], adapters A [r, in], B [out, r] and scaling
s = alpha / r:

* masked (default): y = x ((W + s·B·A) ⊙ m)ᵀ + b, with m = (W ≠ 0) the model's own mask, read from the
  frozen weight at every forward (under ZeRO-3 from the gathered weight, so no mask state exists). The
  merged weight (W + s·B·A) ⊙ m is exactly what the forward used, and it is N:M.
* plain (``lora.masked false``, what users do today, for comparison): y = x Wᵀ + b + s·(x Aᵀ) Bᵀ; the merge
  W + s·B·A is dense and is re-pruned to N:M by magnitude at export, which changes the function.

A starts Kaiming-uniform and B at zero (PEFT's default), so step 0 is the base model. The pure math is
in the ``lora_*`` functions; :class:`LoRATraining` is the trainer's component (the same hooks as
``ast_ds.sparse_training``); :func:`export_lora` writes the merged N:M folder and the adapter in PEFT's
format (PEFT applies W + s·B·A without the mask: for a masked run the merged folder is the model).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ast_ds.checkpoint.layout import META_METHOD, META_MODE, META_PATTERN, META_SCALING_GROUPS, META_SLORB_K
from ast_ds.sparse_training import DenseTraining
from ast_ds.sparsity.nm_mask import magnitude_nm_mask, parse_nm

ADAPTER_DIR = "adapter"
LORA_FILE = "ast_ds_lora.json"


# ---------------------------------------------------------------------- pure math
def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """s·B·A, [out, in]."""
    return (b @ a) * scaling


def masked_merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """(W + s·B·A) ⊙ (W ≠ 0), +0.0 at pruned positions."""
    merged = weight + lora_delta(a, b, scaling).to(weight.dtype)
    return torch.where(weight != 0, merged, torch.zeros((), dtype=weight.dtype))


def plain_merge_repruned(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, *, n: int,
                         m: int) -> torch.Tensor:
    """W + s·B·A, re-pruned to N:M by magnitude (the usual recipe, for comparison)."""
    merged = weight + lora_delta(a, b, scaling).to(weight.dtype)
    return torch.where(magnitude_nm_mask(merged, n=n, m=m), merged, torch.zeros((), dtype=weight.dtype))


# ---------------------------------------------------------------------- the module
class LoRALinear(torch.nn.Linear):
    """``nn.Linear`` with ``lora_A`` [r, in], ``lora_B`` [out, r], ``lora_scaling`` and ``lora_masked``."""

    def forward(self, x):
        if self.lora_masked:
            return F.linear(x, masked_merge(self.weight, self.lora_A, self.lora_B, self.lora_scaling), self.bias)
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.lora_scaling


def add_lora(model: torch.nn.Module, targets: list[str], *, rank: int, alpha: float, masked: bool) -> None:
    """Freeze every parameter, then turn each target linear (weight name) into a :class:`LoRALinear` with
    fresh trainable adapters (A Kaiming-uniform as ``nn.Linear`` inits its weight, B = 0)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"lora.targets: {name} is not the weight of an nn.Linear")
        dtype, device = module.weight.dtype, module.weight.device
        a = torch.empty(rank, module.in_features, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        module.lora_A = torch.nn.Parameter(a.to(dtype=dtype, device=device))
        module.lora_B = torch.nn.Parameter(torch.zeros(module.out_features, rank, dtype=dtype, device=device))
        module.lora_scaling, module.lora_masked = alpha / rank, masked
        module.__class__ = LoRALinear


def lora_names(targets: list[str]) -> dict[str, tuple[str, str]]:
    """weight name -> (its lora_A, its lora_B parameter names)."""
    return {t: (t.rsplit(".", 1)[0] + ".lora_A", t.rsplit(".", 1)[0] + ".lora_B") for t in targets}


# ---------------------------------------------------------------------- the trainer's component
class LoRATraining(DenseTraining):
    """``mode=lora``: frozen N:M base, trainable adapters, plain AdamW; ZeRO stage 2 or 3. No masks or decay:
    the hooks it does not override are :class:`DenseTraining`'s no-ops."""

    def __init__(self, lora, *, pattern: str):
        self.lora, self.pattern = lora, pattern
        self.n, self.m = parse_nm(pattern)
        self.targets: list[str] = []
        self.meta = {META_MODE: "lora", META_PATTERN: pattern, META_METHOD: "masked" if lora.masked else "plain",
                     META_SLORB_K: 0, META_SCALING_GROUPS: 0, "lora_rank": lora.rank, "lora_alpha": lora.alpha}

    def check_ds_config(self, ds_cfg: dict, source: str) -> None:
        if ds_cfg["zero_optimization"].get("stage") not in (2, 3):
            raise ValueError(f"{source}: mode=lora needs ZeRO stage 2 or 3 (ds_configs/zero2.json or zero3.json)")

    def prepare_model(self, model: torch.nn.Module) -> None:
        """The targets must be N:M already (an exported model); then freeze and add the adapters.
        Collective under ZeRO-3 (each weight is gathered on every rank to be checked)."""
        from ast_ds.converters import _gathered
        from ast_ds.model import sparse_target_names
        from ast_ds.sparsity import verify_nm

        self.targets = sparse_target_names(model, self.lora.targets)
        if self.lora.masked:
            for name in self.targets:
                weight = model.get_parameter(name)
                with _gathered([weight]):
                    report = verify_nm(weight.detach(), n=self.n, m=self.m)
                if not report.ok:
                    raise ValueError(f"model.path: {name} is not {self.pattern} ({report.offenders[:2]}); masked LoRA "
                                     f"fine-tunes an exported N:M model (launchers/consolidate.py or prune_oneshot.py)")
        add_lora(model, self.targets, rank=self.lora.rank, alpha=self.lora.alpha, masked=self.lora.masked)

    def state_dict(self) -> dict:
        return {"targets": self.targets}  # read by consolidation (which weights carry adapters)


# ---------------------------------------------------------------------- export
def peft_adapter_config(*, base: str, rank: int, alpha: float, modules: list[str], fan_in_fan_out: bool = False) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": rank,
            "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": sorted(set(modules)), "bias": "none",
            "fan_in_fan_out": fan_in_fan_out, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
            "use_rslora": False, "use_dora": False, "r_pattern": {}, "alpha_pattern": {}}


def export_lora(files, *, base_dir: str, out: str, targets: list[str], rank: int, alpha: float, masked: bool,
                pattern: str, dtype: str, meta_dir: str, overwrite: bool, max_shard_bytes: int, info: dict) -> dict:
    """Merged N:M folder at ``out`` (base tensors streamed from ``base_dir``, each target merged, checked
    group by group) and ``out/adapter`` in PEFT's format (``adapter_config.json``,
    ``adapter_model.safetensors``). ``files``: the checkpoint's weights (``Zero3Files`` or whole)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ast_ds.atomic import write_json_atomic
    from ast_ds.checkpoint.export import (DTYPES, layer_report, summarize_layers, weight_files, write_hf_folder)
    from ast_ds.conv1d import read_conv1d_names, to_linear_layout, to_saved_layout

    conv1d = set(read_conv1d_names(meta_dir))  # GPT-2: the base stores these [in, out]
    n, m = parse_nm(pattern)
    scaling = alpha / rank
    names = lora_names(targets)
    adapters = {t: (files.full(a), files.full(b)) for t, (a, b) in names.items()}
    layers: dict[str, dict] = {}

    def tensors():
        for file in weight_files(base_dir):
            with safe_open(os.path.join(base_dir, file), framework="pt") as f:
                for key in f.keys():
                    value = f.get_tensor(key).float()
                    if key in adapters:
                        a, b = adapters[key]
                        value = to_linear_layout(key, value, conv1d)
                        value = (masked_merge(value, a, b, scaling) if masked else
                                 plain_merge_repruned(value, a, b, scaling, n=n, m=m)).to(DTYPES[dtype])
                        layers[key] = layer_report(value, n=n, m=m)
                        value = to_saved_layout(key, value, conv1d)
                    yield key, value

    summary: dict = {}

    def report():
        rep = summarize_layers(layers, n=n, m=m)
        if len(layers) != len(targets) or not rep["all_ok"]:
            bad = [k for k, v in layers.items() if not v["ok"]] or sorted(set(targets) - set(layers))
            raise ValueError(f"merged LoRA export failed the {pattern} check (or misses weights) for {bad[:3]}; "
                             f"nothing was written")
        rep.update(info, lora={"rank": rank, "alpha": alpha, "masked": masked,
                               "merge": "(W + s·B·A) ⊙ (W != 0)" if masked else "W + s·B·A re-pruned by magnitude"})
        summary.update(rep)
        return rep

    def write_adapter(folder: str) -> None:  # PEFT's layout: adapter_model.safetensors + adapter_config.json
        save_file({f"base_model.model.{names[t][i]}.weight": adapters[t][i].contiguous() for t in targets for i in (0, 1)},
                  os.path.join(folder, "adapter_model.safetensors"))
        write_json_atomic(os.path.join(folder, "adapter_config.json"), adapter_cfg)

    modules = [t.rsplit(".", 2)[-2] for t in targets]
    adapter_cfg = peft_adapter_config(base=os.path.abspath(base_dir), rank=rank, alpha=alpha, modules=modules,
                                      fan_in_fan_out=bool(conv1d))
    write_hf_folder(out, tensors=tensors(), config_dir=meta_dir, dtype=dtype, report=report, overwrite=overwrite,
                    max_shard_bytes=max_shard_bytes,
                    extra_files={LORA_FILE: {"rank": rank, "alpha": alpha, "masked": masked, "targets": targets,
                                             "base": os.path.abspath(base_dir)}},
                    extra_dirs={ADAPTER_DIR: write_adapter})
    return summary

