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


_INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def negative_zeros(weight: torch.Tensor) -> int:
    """How many elements are -0.0 (one pass: the bit pattern of -0.0 in the tensor's own format)."""
    as_int = _INT_OF.get(weight.dtype)
    if as_int is None:
        return int(torch.count_nonzero((weight == 0) & torch.signbit(weight)))
    pattern = torch.tensor(-0.0, dtype=weight.dtype).view(as_int)
    return int(torch.count_nonzero(weight.view(as_int) == pattern))  # count_nonzero: 20x a bool sum on CPU


def layer_report(weight: torch.Tensor, *, n: int, m: int) -> dict:
    """One target as it will be saved: sparsity, the group-by-group N:M check, and -0.0 count."""
    rep = verify_nm(weight, n=n, m=m)
    neg_zero = negative_zeros(weight)
    return dict(rep.to_dict(), negative_zeros=neg_zero, ok=bool(rep.ok and neg_zero == 0),
                zeros=round(rep.sparsity * weight.numel()), numel=weight.numel())


def summarize_layers(layers: dict[str, dict], *, n: int, m: int) -> dict:
    total = sum(v["numel"] for v in layers.values())
    zeros = sum(v["zeros"] for v in layers.values())
    return {"pattern": f"{n}:{m}", "all_ok": all(v["ok"] for v in layers.values()), "num_targets": len(layers),
            "target_sparsity": zeros / total if total else 0.0, "layers": layers}


def sparsity_report(state_dict: dict[str, torch.Tensor], targets: list[str], *, n: int, m: int) -> dict:
    """Per-layer sparsity and the group-by-group N:M check of the tensors as they will be saved."""
    return summarize_layers({name: layer_report(state_dict[name], n=n, m=m) for name in targets}, n=n, m=m)


def copy_tokenizer(src: str, dst: str) -> list[str]:
    files = [f for f in os.listdir(src) if f.startswith(("tokenizer", "special_tokens_map"))]
    for f in files:
        shutil.copy2(os.path.join(src, f), dst)
    return files


def write_hf_meta(run_dir: str, model_config, *, model_path: str, corpus, conv1d: list[str] = ()) -> str:
    """``<run>/hf_meta``: the model's HF config and tokenizer, which consolidation copies into every export,
    and the names of the Conv1D weights trained as ``nn.Linear`` (``ast_ds.conv1d``). The tokenizer comes from
    the model folder, else from the corpus's own copy (what the data was tokenized with). Rank 0 only;
    returns the folder."""
    from ast_ds.checkpoint.layout import hf_meta_dir
    from ast_ds.conv1d import write_conv1d_names

    meta = hf_meta_dir(run_dir)
    os.makedirs(meta, exist_ok=True)
    model_config.save_pretrained(meta)
    write_conv1d_names(meta, list(conv1d))
    if not copy_tokenizer(model_path, meta):
        copy_tokenizer(corpus.tokenizer_dir(), meta)
    return meta


DEFAULT_SHARD_BYTES = 5_000_000_000  # save_pretrained's default max_shard_size ("5GB")
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "B": 1}
    t = str(text).strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * factor)
    if t.isdigit():
        return int(t)
    raise ValueError(f"cannot read the size {text!r}: write it like 5GB, 500MB or 2GiB")


class ShardWriter:
    """Safetensors shards of at most ``max_bytes`` (a larger tensor gets a shard of its own), written as
    tensors arrive, so only the current shard is held in memory; ``finish`` names them as
    ``save_pretrained`` does (``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``)."""

    def __init__(self, folder: str, max_bytes: int = DEFAULT_SHARD_BYTES):
        if max_bytes < 1:
            raise ValueError(f"max shard size {max_bytes} must be positive")
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes, self.total_bytes = 0, 0
        self.shards: list[list[str]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.detach().contiguous()
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if self.pending:
            save_file(self.pending, os.path.join(self.folder, f"shard-{len(self.shards)}.tmp"),
                      metadata={"format": "pt"})
            self.shards.append(list(self.pending))
            self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        self._flush()
        if len(self.shards) == 1:
            os.rename(os.path.join(self.folder, "shard-0.tmp"), os.path.join(self.folder, SINGLE_FILE))
            return [SINGLE_FILE]
        names, weight_map = [], {}
        for i, keys in enumerate(self.shards):
            name = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            os.rename(os.path.join(self.folder, f"shard-{i}.tmp"), os.path.join(self.folder, name))
            names.append(name)
            weight_map.update({k: name for k in keys})
        with open(os.path.join(self.folder, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)
        return names


def write_hf_folder(out: str, *, tensors, config_dir: str, dtype: str, report, extra_files: dict[str, dict] | None = None,
                    overwrite: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES, as_is=None,
                    extra_dirs: dict | None = None) -> str:
    """``out/``: config.json (from ``config_dir``, torch_dtype updated), the weights as safetensors
    shards, the tokenizer files found in ``config_dir``, ``sparsity_report.json`` and ``extra_files``
    (name -> JSON). ``tensors``: a dict, or an iterable of (name, tensor) consumed once while the
    shards are written (streaming). ``report``: a dict, or a callable returning it once every tensor
    is written (it may raise to abandon the folder). ``as_is(name)``: true for tensors written in their own
    dtype (quantized codes and scales). ``extra_dirs``: name -> callable(folder) that fills ``out/name`` (a
    LoRA adapter). Built under a temporary name, then published."""
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
        writer = ShardWriter(tmp, max_shard_bytes)
        for name, value in (tensors.items() if isinstance(tensors, dict) else tensors):
            writer.add(name, value if as_is is not None and as_is(name) else value.to(DTYPES[dtype]))
        writer.finish()
        copy_tokenizer(config_dir, tmp)
        report = report() if callable(report) else report
        for name, content in {"sparsity_report.json": report, **(extra_files or {})}.items():
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(content, f, indent=2)
        for name, fill in (extra_dirs or {}).items():
            os.makedirs(os.path.join(tmp, name))
            fill(os.path.join(tmp, name))
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def weight_files(model_dir: str) -> list[str]:
    """The safetensors files of a folder: the index's shards, or ``model.safetensors``."""
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return [SINGLE_FILE]


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
