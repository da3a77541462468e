"""Step time of AST + KD (sparse student + frozen ZeRO-3 teacher) vs plain dense ZeRO-3 training of the
same model on the same batches, side by side in one run.

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 benchmarks/bench_train.py

Dense: torch AdamW, cross-entropy. AST: ASTAdamW + ShardedMasks (Δt = 10), teacher forward,
chunked KD loss (α = 1/3). Steps interleave with alternating order. Target: ratio ≤ 1.40 (the teacher
forward is about a third of forward + backward). Last line: one JSON object.
"""

import argparse
import json

import torch

from common import add_model_args, build_llama, now, rank_mean, zero3_config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after 10 warm-up steps)")
    args = ap.parse_args()

    import deepspeed

    from ast_ds.distill import distill_loss, shift_labels
    from ast_ds.ds_config import teacher_ds_config
    from ast_ds.model import sparse_target_names
    from ast_ds.optim.ast_adamw import ASTAdamW
    from ast_ds.sparsity import DecaySchedule
    from ast_ds.zero import ShardedMasks

    deepspeed.init_distributed(dist_backend=None)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    ds_config = zero3_config(args)
    total = args.steps + 10

    dense_model = build_llama(args)
    dense, *_ = deepspeed.initialize(model=dense_model, config=ds_config, optimizer=torch.optim.AdamW(
        dense_model.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=False))

    student = build_llama(args)
    masks = ShardedMasks(sparse_target_names(student, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]), n=2, m=4)
    opt = ASTAdamW(student.parameters(), masks=masks, lr=1e-4, betas=(0.9, 0.95), decay=DecaySchedule(6e-5, total),
                   mask_interval=10)
    sparse, *_ = deepspeed.initialize(model=student, optimizer=opt, config=ds_config)
    masks.bind(sparse)
    t_model = build_llama(args).requires_grad_(False)
    teacher, *_ = deepspeed.initialize(model=t_model, config=teacher_ds_config(ds_config))
    teacher.eval()

    def dense_step(ids):
        loss, _, _ = distill_loss(dense(input_ids=ids, use_cache=False).logits, None, shift_labels(ids), alpha=0.0)
        dense.backward(loss)
        dense.step()

    def ast_step(ids):
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, use_cache=False).logits
        loss, _, _ = distill_loss(sparse(input_ids=ids, use_cache=False).logits, t_logits, shift_labels(ids),
                                  alpha=1 / 3)
        sparse.backward(loss)
        sparse.step()

    times = {"dense": [], "ast": []}
    for step in range(total):
        g = torch.Generator().manual_seed(step * 101 + rank)
        ids = torch.randint(0, args.vocab, (args.micro_batch, args.seq), generator=g).to(sparse.device)
        order = [("dense", dense_step), ("ast", ast_step)]
        for name, fn in order if step % 2 else order[::-1]:
            torch.distributed.barrier()
            t0 = now()
            fn(ids)
            if step >= 10:
                times[name].append(now() - t0)
        if (step + 1) % 10 == 0:
            masks.flip_rates()
    d, a = rank_mean(times["dense"], world), rank_mean(times["ast"], world)
    if rank == 0:
        print(f"model: {args.layers} layers x {args.hidden} hidden, vocab {args.vocab}, {world} ranks ZeRO-3, "
              f"micro batch {args.micro_batch} x {args.seq} tokens, device {sparse.device}")
        print(f"dense ZeRO-3 step (AdamW, CE):                 {d * 1e3:8.1f} ms")
        print(f"AST + KD step (ASTAdamW, teacher fwd, KD loss): {a * 1e3:8.1f} ms")
        print(f"ratio AST+KD / dense: {a / d:.3f}   (target <= 1.40)")
        print(json.dumps({"step_ratio_ast_kd_over_dense": round(a / d, 4), "dense_step_ms": round(d * 1e3, 1),
                          "ast_kd_step_ms": round(a * 1e3, 1)}))


if __name__ == "__main__":
    main()
