"""One rank of tests/test_world_size_change.py: build the trainer exactly as launchers/train.py does,
resume a checkpoint saved by another number of ranks, then gather the restored state to full tensors
(DeepSpeed's own all-gathers) and compare it on rank 0 with the saved files.

    torchrun --nproc_per_node W' tests/dist/repartition_check.py --resume TAG --result OUT.json <train.py flags>

Writes {"equal": {...}, "step": ..., ...} to --result.
"""

import argparse
import json
import sys

import torch
import torch.distributed as dist


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ds_config", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--resume", required=True)
    p.add_argument("--result", required=True)
    known, rest = p.parse_known_args()

    from ast_ds.checkpoint.consolidate import stitch_masks
    from ast_ds.checkpoint.layout import LOADER, SPARSITY, rank_file, read_meta
    from ast_ds.checkpoint.zero3_files import Zero3Files
    from ast_ds.config import add_override_arguments, apply_overrides, overrides_from_args
    from ast_ds.recipes import get_recipe
    from ast_ds.trainer import build

    parser = argparse.ArgumentParser()
    add_override_arguments(parser)
    cfg = get_recipe(known.recipe)
    apply_overrides(cfg, overrides_from_args(parser.parse_args(rest)), source="command line")
    run = build(cfg, ds_config_path=known.ds_config)
    run.checkpoints.load(known.resume)

    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    engine = run.engine
    rank, world = dist.get_rank(), dist.get_world_size()
    full = {}
    for name, param in engine.module.named_parameters():  # collectives: every rank, same order
        full[name] = {"fp32": safe_get_full_fp32_param(param)}
        for key in ("exp_avg", "exp_avg_sq"):
            full[name][key] = safe_get_full_optimizer_state(param, key)
    masks = run.loop.sparse.masks
    local = {name: (start, keep.cpu()) for name, (start, keep) in masks.local_masks().items()}
    initial = {name: (start, keep.cpu()) for name, (start, keep) in masks.local_masks(initial=True).items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, (local, initial, run.loop.loader.state_dict()))
    if rank == 0:
        saved_world = int(read_meta(known.resume)["world_size"])
        files = Zero3Files(known.resume, saved_world)
        saved_rank_states = [torch.load(rank_file(known.resume, r), weights_only=False) for r in range(saved_world)]
        numels = {name: files.entries[name].numel for name in local}
        saved_masks = stitch_masks([st[SPARSITY] for st in saved_rank_states], numels)
        saved_initial = stitch_masks([dict(st[SPARSITY], packed=st[SPARSITY]["initial"])
                                      for st in saved_rank_states], numels)
        now_masks = {name: torch.zeros(n, dtype=torch.bool) for name, n in numels.items()}
        now_initial = {name: torch.zeros(n, dtype=torch.bool) for name, n in numels.items()}
        for loc, ini, _ in gathered:
            for name, (start, keep) in loc.items():
                now_masks[name][start:start + len(keep)] = keep
            for name, (start, keep) in ini.items():
                now_initial[name][start:start + len(keep)] = keep
        equal = {
            "fp32": all(torch.equal(full[n]["fp32"].cpu().float(), files.full(n)) for n in files.entries),
            "exp_avg": all(torch.equal(full[n]["exp_avg"].cpu(), files.full(n, "exp_avg")) for n in files.entries),
            "exp_avg_sq": all(torch.equal(full[n]["exp_avg_sq"].cpu(), files.full(n, "exp_avg_sq"))
                              for n in files.entries),
            "masks": all(torch.equal(now_masks[n], saved_masks[n]) for n in numels),
            "initial_masks": all(torch.equal(now_initial[n], saved_initial[n]) for n in numels),
            "masks_differ_from_initial": any(not torch.equal(saved_masks[n], saved_initial[n]) for n in numels),
            "loader": all({k: v for k, v in g[2].items() if k not in ("world_size", "batches")} ==
                          {k: v for k, v in saved_rank_states[0][LOADER].items() if k not in ("world_size", "batches")}
                          for g in gathered),
        }
        step_state = [st for st in engine.optimizer.optimizer.state.values()]
        result = {"equal": equal, "world": world, "saved_world": saved_world, "step": run.counters.step,
                  "optimizer_steps": sorted({int(st["step"]) for st in step_state}),
                  "global_steps": engine.global_steps, "lr": [g["lr"] for g in engine.optimizer.optimizer.param_groups],
                  "saved_lr": [g["lr"] for g in files.param_groups]}
        with open(known.result, "w") as f:
            json.dump(result, f)
    dist.barrier()


if __name__ == "__main__":
    sys.exit(main())
