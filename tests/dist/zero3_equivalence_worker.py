"""Multi-process worker for tests/test_zero3_equivalence.py (run under torchrun, DS_ACCELERATOR=cpu).

Trains the tiny LLaMA with ASTAdamW under ZeRO-3 and writes, after bind and after every step, the
full fp32 masters, the full masks (assembled from every rank's local slices, for checking only) and
the gathered working weights to OUT/snapshots.pt on rank 0.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tiny_llama import batch, target_names, tiny_llama  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", required=True, help="JSON with the run settings (see the test)")
    ap.add_argument("--local_rank", type=int, default=-1)
    args = ap.parse_args()
    cfg = json.loads(args.config)

    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from ast_ds.optim.ast_adamw import ASTAdamW
    from ast_ds.sparsity import DecaySchedule
    from ast_ds.zero import ShardedMasks

    from deepspeed.accelerator import get_accelerator

    on_cpu = get_accelerator().device_name() == "cpu"
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else None)  # GPU (benchmarks/gpu_check.sh): nccl
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    model = tiny_llama(seed=cfg["seed"])
    targets = target_names(model)
    masks = ShardedMasks(targets, n=cfg["n"], m=cfg["m"])
    opt = ASTAdamW(model.parameters(), masks=masks, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                   decay=DecaySchedule(cfg["lam_max"], cfg["steps"], cfg["t0"]), mask_interval=cfg["interval"])
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": cfg["grad_accum"],
        "gradient_clipping": cfg["clip"],
        "zero_optimization": {"stage": 3, "sub_group_size": cfg["sub_group_size"],
                              "stage3_param_persistence_threshold": cfg["persistence"]},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    if cfg["dtype"] == "bf16":
        ds_config["bf16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    masks.bind(engine)
    params = dict(engine.module.named_parameters())

    def snapshot():
        masters = {n: safe_get_full_fp32_param(p).detach().cpu().clone() for n, p in params.items()}
        local = masks.local_masks()
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, {n: (s, k.tolist()) for n, (s, k) in local.items()})
        full_masks = {}
        for n in targets:
            flat = torch.zeros(params[n].ds_numel, dtype=torch.bool)
            for part in gathered:
                s, k = part[n]
                flat[s: s + len(k)] = torch.tensor(k, dtype=torch.bool)
            full_masks[n] = flat.view(params[n].ds_shape)
        with deepspeed.zero.GatheredParameters(list(params.values())):
            working = {n: p.detach().cpu().clone() for n, p in params.items()}
        return {"masters": masters, "masks": full_masks, "working": working}

    snaps, grads, norms, losses, flips = [snapshot()], [], [], [], []
    for step in range(cfg["steps"]):
        for micro in range(cfg["grad_accum"]):
            ids = batch(step=step, micro=micro, rank=rank).to(engine.device)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            if micro == cfg["grad_accum"] - 1:  # the reduced, accumulated gradient the optimizer will see
                grads.append({n: safe_get_full_grad(p).detach().cpu().clone() for n, p in params.items()})
            engine.step()
            if micro == cfg["grad_accum"] - 1:
                norms.append(torch.as_tensor(engine.get_global_grad_norm()).detach().cpu().clone())
            if micro == 0:
                losses.append(loss.item())
        flips.append(masks.flip_rates())
        snaps.append(snapshot())
    if rank == 0:
        torch.save({"device": str(engine.device), "snapshots": snaps, "grads": grads, "grad_norms": norms, "losses": losses, "flips": flips, "world_size": world,
                    "state_bytes": masks.state_bytes(), "local_numel": masks.local_numel()},
                   os.path.join(args.out, "snapshots.pt"))
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
