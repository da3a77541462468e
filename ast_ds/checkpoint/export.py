"""Writing Hugging Face model folders whose target linears are exactly N:M, with a sparsity report.

Used by consolidation (sharded checkpoint -> HF) and the one-shot baselines (HF -> HF); also writes a
run's ``hf_meta`` (the config and tokenizer every export of the run copies). The folder is
built under a temporary name next to ``out`` and published by rename, so a crash never leaves a
folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from ast_ds.atomic import publish_dir
from ast_ds.sparsity.nm_mask import verify_nm

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def apply_mask(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """W ⊙ m with +0.0 (never -0.0) at pruned positions."""
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))


def sparsity_report(state_dict: dict[str, torch.Tensor], targets: list[str], *, n: int, m: int) -> dict:
    """Per-layer sparsity and the group-by-group N:M check of the tensors as they will be saved."""
    layers, ok = {}, True
    for name in targets:
        rep = verify_nm(state_dict[name], n=n, m=m)
        neg_zero = int(((state_dict[name] == 0) & torch.signbit(state_dict[name])).sum())
        layers[name] = dict(rep.to_dict(), negative_zeros=neg_zero)
        ok &= rep.ok and neg_zero == 0
    total = sum(state_dict[t].numel() for t in targets)
    zeros = sum(int((state_dict[t] == 0).sum()) for t in targets)
    return {"pattern": f"{n}:{m}", "all_ok": ok, "num_targets": len(targets),
            "target_sparsity": zeros / total if total else 0.0, "layers": layers}


def copy_tokenizer(src: str, dst: str) -> list[str]:
    files = [f for f in os.listdir(src) if f.startswith(("tokenizer", "special_tokens_map"))]
    for f in files:
        shutil.copy2(os.path.join(src, f), dst)
    return files


def write_hf_meta(run_dir: str, model_config, *, model_path: str, corpus) -> str:
    """``<run>/hf_meta``: the model's HF config and tokenizer, which consolidation copies into every export.
    The tokenizer comes from the model folder, else from the corpus's own copy (what the data was
    tokenized with). Rank 0 only; returns the folder."""
    from ast_ds.checkpoint.layout import hf_meta_dir

    meta = hf_meta_dir(run_dir)
    os.makedirs(meta, exist_ok=True)
    model_config.save_pretrained(meta)
    if not copy_tokenizer(model_path, meta):
        copy_tokenizer(corpus.tokenizer_dir(), meta)
    return meta


def write_hf_folder(out: str, *, state_dict: dict[str, torch.Tensor], config_dir: str, dtype: str,
                    report: dict, extra_files: dict[str, dict] | None = None, overwrite: bool = False) -> str:
    """``out/``: config.json (from ``config_dir``, torch_dtype updated), model.safetensors, the tokenizer
    files found in ``config_dir``, ``sparsity_report.json`` and ``extra_files`` (name -> JSON)."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"--out {out} already exists; remove it or pass --overwrite")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out) + "-", dir=parent)
    try:
        with open(os.path.join(config_dir, "config.json")) as f:
            config = json.load(f)
        config["torch_dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        tensors = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in state_dict.items()}
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer(config_dir, tmp)
        for name, content in {"sparsity_report.json": report, **(extra_files or {})}.items():
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(content, f, indent=2)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_hf_state_dict(model_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder (safetensors or .bin, sharded or not), on the CPU, fp32."""
    from ast_ds.model import check_model_dir

    check_model_dir(model_dir, what="--model")
    files = sorted(f for f in os.listdir(model_dir) if f.endswith((".safetensors", ".bin")) and
                   f.startswith(("model", "pytorch_model")))
    sd = {}
    for f in files:
        path = os.path.join(model_dir, f)
        if f.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd.update(load_file(path))
        else:
            sd.update(torch.load(path, map_location="cpu", weights_only=True))
    return {k: v.float() for k, v in sd.items()}
