"""Sharded AST checkpoint -> Hugging Face folder whose target linears are exactly N:M.

The fp32 masters come from DeepSpeed's ``zero_to_fp32`` stitching; the masks are the ones training
used (each rank's bit-packed slices, stitched by the layout saved beside them), not recomputed, so the
exported model is exactly the model the last forward saw, cast to ``dtype``. Pruned positions are
+0.0. Every group is checked; a partial or inconsistent checkpoint is refused.
"""

from __future__ import annotations

import os

import torch

from ast_ds.checkpoint.export import DTYPES, apply_mask, sparsity_report, write_hf_folder
from ast_ds.checkpoint.layout import (META_MODE, META_PATTERN, META_STEP, META_WORLD_SIZE, SPARSITY, CheckpointError,
                                      hf_meta_dir, rank_file, read_meta, resolve_tag_dir, run_dir_of)
from ast_ds.converters import EXPORT_FILE, fold_for_export
from ast_ds.sparsity.nm_mask import parse_nm, unpack_bits


def stitch_masks(rank_states: list[dict], numels: dict[str, int]) -> dict[str, torch.Tensor]:
    """Full flat keep-masks from every rank's packed slices; each element must be covered exactly once."""
    flat = {name: torch.zeros(numel, dtype=torch.bool) for name, numel in numels.items()}
    covered = {name: torch.zeros(numel, dtype=torch.int32) for name, numel in numels.items()}
    for r, state in enumerate(rank_states):
        for layout, packed in zip(state["layout"], state["packed"]):
            keep = unpack_bits(packed, sum(length for _, _, length in layout))
            pos = 0
            for name, start, length in layout:
                if name not in flat:
                    raise CheckpointError(f"rank {r} has a mask for {name}, which the checkpoint's weights lack")
                flat[name][start:start + length] = keep[pos:pos + length]
                covered[name][start:start + length] += 1
                pos += length
    for name, cov in covered.items():
        if not torch.all(cov == 1):
            raise CheckpointError(f"the saved masks cover {name} inconsistently ({int((cov == 0).sum())} elements "
                                  f"missing, {int((cov > 1).sum())} twice): ranks' files are from different saves")
    return flat


def _fp32_state_dict(tag_dir: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, tag = os.path.split(tag_dir.rstrip("/"))
    try:
        state_dict = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    except Exception as e:  # noqa: BLE001 - DeepSpeed raises assorted errors on damaged shards
        raise CheckpointError(f"cannot assemble the fp32 weights of {tag_dir} ({type(e).__name__}: {e}); the "
                              f"checkpoint is corrupted or partial") from None
    return {k: v.float() for k, v in state_dict.items()}


def _rank_sparsity_states(rank_files: list[str]) -> list[dict]:
    states = []
    for f in rank_files:
        try:
            states.append(torch.load(f, map_location="cpu", weights_only=False)[SPARSITY])
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"cannot read {f} ({type(e).__name__}: {e}); the checkpoint is corrupted") from None
    return states


def _apply_saved_masks(state_dict: dict[str, torch.Tensor], rank_files: list[str], *, n: int, m: int
                       ) -> tuple[list[str], dict]:
    """W ⊙ m in place for every target, with the masks training used; returns (targets, converter modules)."""
    from tqdm import tqdm

    rank_states = _rank_sparsity_states(rank_files)
    names = sorted({name for st in rank_states for layout in st["layout"] for name, _, _ in layout})
    unknown = [nm for nm in names if nm not in state_dict]
    if unknown:
        raise CheckpointError(f"masks name weights the checkpoint lacks: {unknown[:3]}")
    masks = stitch_masks(rank_states, {nm: state_dict[nm].numel() for nm in names})
    modules = fold_for_export(state_dict, names)  # CAST weight scaling folded; SLoRB tensors kept
    for name in tqdm(names, desc="apply N:M masks", unit="layer"):
        keep = masks[name].view(state_dict[name].shape)
        if not torch.all(keep.view(-1, m).sum(1) == n):
            raise CheckpointError(f"saved mask of {name} does not keep exactly {n} of every {m}")
        state_dict[name] = apply_mask(state_dict[name], keep)
    return names, modules


def consolidate(checkpoint: str, out: str, *, dtype: str = "bf16", overwrite: bool = False) -> dict:
    """Export ``checkpoint`` (a run folder, its checkpoints folder or one tag) to the HF folder ``out``."""
    tag_dir = resolve_tag_dir(checkpoint)
    meta = read_meta(tag_dir)
    rank_files = [rank_file(tag_dir, r) for r in range(int(meta[META_WORLD_SIZE]))]
    missing = [f for f in rank_files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(f"{tag_dir} is incomplete: missing {', '.join(os.path.basename(f) for f in missing)}")
    meta_dir = hf_meta_dir(run_dir_of(tag_dir))
    if not os.path.isfile(os.path.join(meta_dir, "config.json")):
        raise CheckpointError(f"{meta_dir}/config.json is missing: the run folder of {tag_dir} is incomplete")
    state_dict = _fp32_state_dict(tag_dir)

    targets, modules = [], {"slorb": [], "weight_scaling_folded": []}
    if meta.get(META_MODE) == "ast":
        n, m = parse_nm(meta[META_PATTERN])
        targets, modules = _apply_saved_masks(state_dict, rank_files, n=n, m=m)
    cast = {k: v.to(DTYPES[dtype]) for k, v in state_dict.items()}
    report = sparsity_report(cast, targets, n=n, m=m) if targets else {"all_ok": True, "num_targets": 0,
                                                                         "note": "dense checkpoint"}
    report.update(checkpoint=os.path.abspath(tag_dir), step=meta.get(META_STEP), mode=meta.get(META_MODE))
    report["pure_nm"] = not modules["slorb"]
    if modules["slorb"]:
        report["note"] = (f"SLoRB: {len(modules['slorb'])} dense low-rank branches beside the N:M weights; not pure "
                          f"N:M (load with ast_ds.converters.load_exported)")
    if targets and not report["all_ok"]:
        bad = [k for k, v in report["layers"].items() if not v["ok"]]
        raise CheckpointError(f"N:M check failed after export for {bad[:3]}; nothing was written")
    write_hf_folder(out, state_dict=cast, config_dir=meta_dir, dtype=dtype, report=report, overwrite=overwrite,
                    extra_files={EXPORT_FILE: modules})
    return report
