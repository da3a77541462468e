"""AST optimizer vs plain torch AdamW under ZeRO-3, side by side in one run.

Run (2 CPU processes):
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 benchmarks/bench_optimizer.py

Both engines train the same LLaMA-shaped model (8 layers x 512 hidden by default) on the same
batches, steps interleaved (the order alternating every step) so machine drift and cache effects hit both alike. Printed:
the train-step time ratio AST/AdamW amortized over a Δt window, the ratio on mask-refresh steps, the
optimizer-step-only ratio, and the sparsity state each rank holds in bytes per local element. The
last line is one JSON object with the figures.
"""

import argparse
import json

import torch

from common import add_model_args, build_llama, now, rank_mean, zero3_config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--interval", type=int, default=10, help="mask refresh interval Δt")
    ap.add_argument("--windows", type=int, default=3, help="timed Δt windows (after one warm-up window)")
    args = ap.parse_args()

    import deepspeed

    from ast_ds.optim.ast_adamw import ASTAdamW
    from ast_ds.sparsity import DecaySchedule
    from ast_ds.zero import ShardedMasks

    deepspeed.init_distributed(dist_backend=None)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    total_steps = args.interval * (args.windows + 1)
    ds_config = zero3_config(args)

    dense_model = build_llama(args)
    adamw = torch.optim.AdamW(dense_model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    dense, *_ = deepspeed.initialize(model=dense_model, optimizer=adamw, config=ds_config)

    sparse_model = build_llama(args)
    targets = [n for n, p in sparse_model.named_parameters() if p.dim() == 2 and ".layers." in n]
    masks = ShardedMasks(targets, n=2, m=4)
    ast = ASTAdamW(sparse_model.parameters(), masks=masks, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0,
                   decay=DecaySchedule(6e-5, total_steps), mask_interval=args.interval)
    sparse, *_ = deepspeed.initialize(model=sparse_model, optimizer=ast, config=ds_config)
    masks.bind(sparse)

    device = sparse.device

    def train_step(engine, ids):
        t0 = now()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        t1 = now()
        engine.step()
        t2 = now()
        return t2 - t0, t2 - t1

    times = {"dense": [], "ast": []}
    for step in range(1, total_steps + 1):
        g = torch.Generator().manual_seed(step * 101 + rank)
        ids = torch.randint(0, args.vocab, (args.micro_batch, args.seq), generator=g).to(device)
        order = (("dense", dense), ("ast", sparse))
        for name, engine in order if step % 2 else order[::-1]:  # alternate who goes first
            torch.distributed.barrier()
            times[name].append(train_step(engine, ids))
        if step % args.interval == 0:
            masks.flip_rates()  # the per-refresh metric collective, as the trainer calls it

    # drop the warm-up window; step k (1-based) refreshes when k % interval == 0
    timed = range(args.interval, total_steps)
    refresh = [i for i in timed if (i + 1) % args.interval == 0]

    def mean(name, idx, part):
        return rank_mean([times[name][i][part] for i in idx], world)

    # collectives on every rank, before any rank-0 branch
    t = {(name, part): mean(name, timed, part) for name in ("dense", "ast") for part in (0, 1)}
    amort = t["ast", 0] / t["dense", 0]
    refresh_ratio = mean("ast", refresh, 0) / mean("dense", refresh, 0)
    opt_ratio = t["ast", 1] / t["dense", 1]
    ratio = torch.tensor([masks.state_bytes() / masks.local_numel()], dtype=torch.float64)
    torch.distributed.all_reduce(ratio, op=torch.distributed.ReduceOp.MAX)  # the worst rank
    bytes_per_el = float(ratio)
    if rank == 0:
        nparams = sum(p.ds_numel for p in sparse_model.parameters())
        print(f"model: {args.layers} layers x {args.hidden} hidden, {nparams / 1e6:.1f}M params, "
              f"{world} ranks ZeRO-3, micro batch {args.micro_batch} x {args.seq} tokens, device {device}")
        print(f"dense AdamW train step   {t['dense', 0] * 1e3:8.1f} ms  (optimizer step "
              f"{t['dense', 1] * 1e3:.1f} ms)")
        print(f"AST train step            {t['ast', 0] * 1e3:8.1f} ms  (optimizer step "
              f"{t['ast', 1] * 1e3:.1f} ms)")
        print(f"step ratio amortized over Δt={args.interval}: {amort:.3f}   (target <= 1.05)")
        print(f"step ratio on a mask-refresh step:  {refresh_ratio:.3f}")
        print(f"optimizer-step-only ratio:          {opt_ratio:.3f}")
        print(f"sparsity state on rank 0: {masks.state_bytes()} bytes for {masks.local_numel()} local elements; "
              f"worst rank {bytes_per_el:.4f} B/element (keep mask + initial mask, bit-packed; required <= 1)")
        print(json.dumps({"step_ratio_amortized": round(amort, 4), "step_ratio_refresh": round(refresh_ratio, 4),
                          "optimizer_step_ratio": round(opt_ratio, 4),
                          "sparsity_bytes_per_element": round(bytes_per_el, 4)}))


if __name__ == "__main__":
    main()
