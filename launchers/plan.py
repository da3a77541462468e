"""Plan a run before renting the cluster: per-GPU memory by part and an estimated step time.

    python launchers/plan.py --model /models/Llama-2-7b-hf --recipe llama2_7b --gpus_per_node 8 --nodes 2

--model: a model folder or its config.json (only the config is read; the model is built on the meta
device). Any train.py override applies (--micro_batch 2, --precision bf16, --mode dense, ...). The last
line is one JSON object with ``per_gpu_bytes`` (parts and ``total``), ``step_time`` and ``fits``.
See ast_ds/planner.py for what each part counts, and docs/scaling.md for 7B/13B/70B tables.
"""

import argparse
import json
import os
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)

from ast_ds.config import add_override_arguments, apply_overrides, overrides_from_args
from ast_ds.recipes import RECIPES, get_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLOADED = ("fp32_masters", "adam_moments", "gradients", "optimizer_step")  # what zero3_offload.json moves to the CPU (mostly)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or config.json")
    p.add_argument("--recipe", default="llama2_7b", choices=sorted(RECIPES))
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--seq_len", type=int, default=4096, help="tokens per row (fixed at data prep)")
    p.add_argument("--ds_config", default=os.path.join(ROOT, "ds_configs", "zero3.json"))
    p.add_argument("--gpu_mem_gb", type=float, default=80.0, help="memory of one GPU (H100/A100 80GB: 80)")
    p.add_argument("--flops", type=float, default=400e12,
                   help="sustained bf16 FLOP/s per GPU (default 400e12: about 40%% of an H100's dense peak)")
    p.add_argument("--bandwidth", type=float, default=50e9,
                   help="bytes/s per GPU for ZeRO-3 collectives (default 50e9: 400 Gb/s InfiniBand per GPU)")
    p.add_argument("--fused_attention", choices=["auto", "yes", "no"], default="auto",
                   help="attention without a stored score matrix (flash/SDPA on GPU: yes; CPU: no)")
    add_override_arguments(p)
    args = p.parse_args(argv)

    from ast_ds.planner import load_hf_config, model_shape, plan_memory, plan_step_time

    cfg = get_recipe(args.recipe)
    apply_overrides(cfg, overrides_from_args(args), source="command line")
    world = args.gpus_per_node * args.nodes
    # the planner reads no weights and no data: only the fields a plan needs must be valid
    cfg.model.path = cfg.model.path or (args.model if os.path.isdir(args.model) else os.path.dirname(args.model))
    cfg.data.data_dir = cfg.data.data_dir or "(not needed to plan)"
    try:
        cfg.validate(world)
        shape = model_shape(load_hf_config(args.model), cfg.sparsity.targets)
        with open(args.ds_config) as f:
            ds_cfg = json.load(f)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    if shape.max_positions and args.seq_len > shape.max_positions:
        sys.exit(f"error: --seq_len {args.seq_len} is above the model's {shape.max_positions} positions")
    fused = cfg.precision == "bf16" if args.fused_attention == "auto" else args.fused_attention == "yes"
    teacher = cfg.distill.alpha > 0
    parts = plan_memory(shape, world=world, micro_batch=cfg.micro_batch, seq_len=args.seq_len,
                        precision=cfg.precision, sparse=cfg.mode == "ast", teacher=teacher,
                        chunk_tokens=cfg.distill.chunk_tokens, ds_cfg=ds_cfg, fused_attention=fused,
                        activation_checkpointing=cfg.activation_checkpointing)
    step = plan_step_time(shape, world=world, global_batch=cfg.global_batch, seq_len=args.seq_len,
                          precision=cfg.precision, teacher=teacher, flops=args.flops, bandwidth=args.bandwidth,
                          grad_accum=cfg.grad_accum(world), activation_checkpointing=cfg.activation_checkpointing)
    gb = 1e9
    print(f"{args.model}: {shape.params / 1e9:.2f}B parameters ({shape.targets / 1e9:.2f}B in N:M targets), "
          f"{world} GPUs ({args.nodes} x {args.gpus_per_node}), recipe {args.recipe}: micro batch {cfg.micro_batch}, "
          f"seq {args.seq_len}, {cfg.precision}, {'KD teacher' if teacher else 'no teacher'}, activation checkpointing "
          f"{'on' if cfg.activation_checkpointing else 'off'}")
    for name, value in parts.items():
        print(f"  {name:<16} {value / gb:9.2f} GB" + ("   <- offloadable" if name in OFFLOADED else ""))
    print(f"step: {step['step_s']:.2f} s ({step['compute_s']:.2f} s compute at {args.flops:.3g} FLOP/s, "
          f"{step['communication_s']:.2f} s ZeRO-3 traffic at {args.bandwidth:.3g} B/s), "
          f"{step['tokens_per_s_per_gpu']:.0f} tokens/s per GPU")
    fits = parts["total"] <= args.gpu_mem_gb * gb
    offloaded_total = parts["total"] - sum(parts[k] for k in OFFLOADED)
    if not fits:
        hint = (f"with ds_configs/zero3_offload.json (optimizer on the CPU) about {offloaded_total / gb:.1f} GB"
                + (" fits" if offloaded_total <= args.gpu_mem_gb * gb else "; also lower --micro_batch or add GPUs"))
        if not cfg.activation_checkpointing:
            hint += "; --activation_checkpointing true keeps only each layer's input"
        print(f"WARNING: {parts['total'] / gb:.1f} GB per GPU exceeds --gpu_mem_gb {args.gpu_mem_gb:g}; {hint}")
    print(json.dumps({"per_gpu_bytes": parts, "step_time": step, "fits": fits,
                      "offloaded_total_bytes": offloaded_total, "world_size": world}))


if __name__ == "__main__":
    main()
