"""Sharded AST checkpoint -> Hugging Face folder whose target linears are exactly N:M, tensor by tensor.

Each parameter's fp32 master is stitched from the ranks' files on its own
(:class:`~ast_ds.checkpoint.zero3_files.Zero3Files` reads just its bytes), CAST's weight scaling is
folded in, the mask training used is regathered from the ranks' bit-packed slices (not recomputed) and
applied, the tensor is cast to ``dtype``, checked group by group and written into the current
safetensors shard; a full shard goes to disk before the next tensor is read. Peak memory is therefore
about one shard plus a few copies of the largest tensor, not the model: a 70B checkpoint consolidates
on a node with far less RAM than its 280 GB of fp32 weights. Pruned positions are +0.0. A partial or
inconsistent checkpoint is refused, and nothing is published unless every group checks out.
"""

from __future__ import annotations

import os

import torch

from ast_ds.checkpoint.export import (DEFAULT_SHARD_BYTES, DTYPES, apply_mask, layer_report, summarize_layers,
                                      write_hf_folder)
from ast_ds.checkpoint.layout import (META_MODE, META_PATTERN, META_STEP, META_WORLD_SIZE, SPARSITY, CheckpointError,
                                      ds_model_file, hf_meta_dir, rank_file, read_meta, resolve_tag_dir, run_dir_of)
from ast_ds.checkpoint.zero3_files import NotZero3Error, Zero3Files
from ast_ds.conv1d import read_conv1d_names, to_saved_layout
from ast_ds.converters import EXPORT_FILE, scaled_weight
from ast_ds.sparsity.nm_mask import parse_nm
from ast_ds.sparsity.slices import gather_bits, index_slices


def stitch_masks(rank_states: list[dict], numels: dict[str, int]) -> dict[str, torch.Tensor]:
    """Full flat keep-masks from every rank's packed slices; each element must be covered exactly once."""
    pieces = index_slices(rank_states)
    unknown = sorted(set(pieces) - set(numels))
    if unknown:
        raise CheckpointError(f"a rank has a mask for {unknown[0]}, which the checkpoint's weights lack")
    try:
        return {name: gather_bits(pieces.get(name, []), name, 0, numel)[0] for name, numel in numels.items()}
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _rank_sparsity_states(rank_files: list[str]) -> list[dict]:
    states = []
    for f in rank_files:
        try:
            states.append(torch.load(f, map_location="cpu", weights_only=False)[SPARSITY])
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"cannot read {f} ({type(e).__name__}: {e}); the checkpoint is corrupted") from None
    return states


class _WholeModel:
    """ZeRO-1/2 checkpoints (e.g. dense runs with ds_configs/zero2.json): DeepSpeed's own stitching of the
    whole fp32 model, behind the same two calls as :class:`Zero3Files` (not streamed)."""

    def __init__(self, tag_dir: str):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        root, tag = os.path.split(tag_dir.rstrip("/"))
        try:
            self.state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
        except Exception as e:  # noqa: BLE001 - DeepSpeed raises assorted errors on damaged shards
            raise CheckpointError(f"cannot assemble the fp32 weights of {tag_dir} ({type(e).__name__}: {e}); the "
                                  f"checkpoint is corrupted or partial") from None
        self.entries = {k: v.shape for k, v in self.state.items()}

    def full(self, name: str) -> torch.Tensor:
        return self.state[name].float()


def _weights(tag_dir: str, world_size: int):
    """ZeRO-3 (every rank writes zero_pp_rank_<r>_..._model_states.pt): streamed; otherwise whole."""
    if not os.path.isfile(ds_model_file(tag_dir, 0)):
        return _WholeModel(tag_dir)
    try:
        return Zero3Files(tag_dir, world_size)
    except NotZero3Error:
        return _WholeModel(tag_dir)


class _Exporter:
    """The tensors of the export, one at a time, and the report built as they pass."""

    def __init__(self, files: Zero3Files | _WholeModel, rank_states: list[dict] | None, pattern: str | None, dtype: str,
                 conv1d: list[str] = ()):
        self.files, self.dtype, self.conv1d = files, DTYPES[dtype], set(conv1d)
        self.pieces = index_slices(rank_states) if rank_states is not None else {}
        self.n, self.m = parse_nm(pattern) if rank_states is not None else (None, None)
        unknown = [name for name in self.pieces if name not in files.entries]
        if unknown:
            raise CheckpointError(f"masks name weights the checkpoint lacks: {unknown[:3]}")
        self.targets = sorted(self.pieces)
        prefixes = {name.rsplit(".", 1)[0]: name for name in self.targets}
        self.scales = {f"{p}.cast_scale": t for p, t in prefixes.items() if f"{p}.cast_scale" in files.entries}
        self.modules = {"conv1d": sorted(self.conv1d),
                        "slorb": sorted(p for p in prefixes if f"{p}.slorb_s" in files.entries),
                        "weight_scaling_folded": sorted(self.scales.values())}
        self.layers: dict[str, dict] = {}

    def tensors(self):
        from ast_ds.progress import bar as tqdm

        for name in tqdm(list(self.files.entries), desc="consolidate", unit="tensor"):
            if name in self.scales:
                continue  # folded into its weight
            value = self.files.full(name)
            if name in self.pieces:
                value = self._masked(name, value)  # cast first: masking the 16-bit copy is the same, and cheaper
                self.layers[name] = layer_report(value, n=self.n, m=self.m)
            else:
                value = value.to(self.dtype)
            yield name, to_saved_layout(name, value, self.conv1d)  # GPT-2's Conv1D: back to [in, out]

    def _masked(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        prefix = name.rsplit(".", 1)[0]
        if f"{prefix}.cast_scale" in self.scales:
            weight = scaled_weight(weight, self.files.full(f"{prefix}.cast_scale"))
        try:
            keep = gather_bits(self.pieces[name], name, 0, weight.numel())[0].view(weight.shape)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        # the count here, and the group-by-group check of the written tensor (layer_report), together
        # guarantee at most N nonzeros in every group of M
        if int(torch.count_nonzero(keep)) != weight.numel() // self.m * self.n:
            raise CheckpointError(f"saved mask of {name} does not keep {self.n} of every {self.m}")
        return apply_mask(weight.to(self.dtype), keep)

    def report(self) -> dict:
        if not self.targets:
            return {"all_ok": True, "num_targets": 0, "note": "dense checkpoint"}
        report = summarize_layers(self.layers, n=self.n, m=self.m)
        if not report["all_ok"]:
            bad = [k for k, v in report["layers"].items() if not v["ok"]]
            raise CheckpointError(f"N:M check failed after export for {bad[:3]}; nothing was written")
        return report


def consolidate(checkpoint: str, out: str, *, dtype: str = "bf16", overwrite: bool = False,
                max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict:
    """Export ``checkpoint`` (a run folder, its checkpoints folder or one tag) to the HF folder ``out``,
    streaming tensor by tensor into safetensors shards of at most ``max_shard_bytes``."""
    tag_dir = resolve_tag_dir(checkpoint)
    meta = read_meta(tag_dir)
    rank_files = [rank_file(tag_dir, r) for r in range(int(meta[META_WORLD_SIZE]))]
    missing = [f for f in rank_files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(f"{tag_dir} is incomplete: missing {', '.join(os.path.basename(f) for f in missing)}")
    meta_dir = hf_meta_dir(run_dir_of(tag_dir))
    if not os.path.isfile(os.path.join(meta_dir, "config.json")):
        raise CheckpointError(f"{meta_dir}/config.json is missing: the run folder of {tag_dir} is incomplete")
    if os.path.exists(out) and not overwrite:
        raise CheckpointError(f"--out {out} already exists; remove it or pass --overwrite")
    if meta.get(META_MODE) == "lora":
        return _consolidate_lora(tag_dir, meta, rank_files, out, meta_dir=meta_dir, dtype=dtype, overwrite=overwrite,
                                 max_shard_bytes=max_shard_bytes)
    sparse = meta.get(META_MODE) == "ast"
    exporter = _Exporter(_weights(tag_dir, len(rank_files)), _rank_sparsity_states(rank_files) if sparse else None,
                         meta.get(META_PATTERN), dtype, conv1d=read_conv1d_names(meta_dir))
    summary = {}

    def report() -> dict:
        rep = exporter.report()
        rep.update(checkpoint=os.path.abspath(tag_dir), step=meta.get(META_STEP), mode=meta.get(META_MODE),
                   pure_nm=not exporter.modules["slorb"])
        if exporter.modules["slorb"]:
            rep["note"] = (f"SLoRB: {len(exporter.modules['slorb'])} dense low-rank branches beside the N:M weights; "
                           f"not pure N:M (load with ast_ds.converters.load_exported)")
        summary.update(rep)
        return rep

    write_hf_folder(out, tensors=exporter.tensors(), config_dir=meta_dir, dtype=dtype, report=report,
                    overwrite=overwrite, extra_files={EXPORT_FILE: exporter.modules}, max_shard_bytes=max_shard_bytes)
    return summary


def _consolidate_lora(tag_dir: str, meta: dict, rank_files: list[str], out: str, *, meta_dir: str, dtype: str,
                      overwrite: bool, max_shard_bytes: int) -> dict:
    """A ``mode=lora`` run: the frozen base is read from the model folder it was trained on (checked
    unchanged by fingerprint), the adapters from the checkpoint; see ``ast_ds.lora.export_lora``."""
    import json

    from ast_ds.checkpoint.layout import META_METHOD, META_MODEL
    from ast_ds.lora import export_lora
    from ast_ds.preflight import model_fingerprint

    run_dir = run_dir_of(tag_dir)
    with open(os.path.join(run_dir, "config.json")) as f:
        base = os.path.abspath(json.load(f)["train"]["model"]["path"])
    if not os.path.isdir(base):
        raise CheckpointError(f"the LoRA run's base model {base} (model.path in {run_dir}/config.json) is missing; "
                              f"the merged export needs it")
    if meta.get(META_MODEL) and model_fingerprint(base) != meta[META_MODEL]:
        raise CheckpointError(f"the base model {base} is not the architecture the LoRA run trained on; merge onto the "
                              f"same folder")
    targets = torch.load(rank_files[0], map_location="cpu", weights_only=False)[SPARSITY]["targets"]
    info = {"checkpoint": os.path.abspath(tag_dir), "step": meta.get(META_STEP), "mode": "lora", "pure_nm": True}
    return export_lora(_weights(tag_dir, len(rank_files)), base_dir=base, out=out, targets=targets,
                       rank=int(meta["lora_rank"]), alpha=float(meta["lora_alpha"]), masked=meta.get(META_METHOD) == "masked",
                       pattern=meta.get(META_PATTERN) or "2:4", dtype=dtype, meta_dir=meta_dir, overwrite=overwrite,
                       max_shard_bytes=max_shard_bytes, info=info)
