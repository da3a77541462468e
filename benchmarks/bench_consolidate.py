"""Consolidation throughput and peak memory (sharded AST checkpoint -> exact-N:M Hugging Face folder),
against a raw copy of the same checkpoint bytes, side by side in one run.

    DS_ACCELERATOR=cpu python benchmarks/bench_consolidate.py [--layers 8 --hidden 512 --max_shard_size 100MB]

First makes a real checkpoint: 2 ranks (torchrun) train an AST engine for one step and save it with
the trainer's CheckpointManager. Then times ``shutil.copytree`` of the tag folder and
``ast_ds.checkpoint.consolidate.consolidate`` (streaming: per tensor, stitching, mask regathering,
masking, N:M check, bf16 safetensors shards), each in MB/s of checkpoint bytes. Consolidation runs in
a child process whose peak RSS (``ru_maxrss``) is reported over the checkpoint size, together with
the RSS of a child that only imports the same modules (the interpreter's floor).
Last line: one JSON object with ``throughput_ratio`` and ``peak_rss_over_checkpoint``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from common import add_model_args, build_llama, zero3_config


def make_checkpoint(args):
    import deepspeed

    from ast_ds.checkpoint.layout import META_MODE, META_PATTERN, SPARSITY, hf_meta_dir
    from ast_ds.checkpoint.manager import CheckpointManager
    from ast_ds.model import sparse_target_names
    from ast_ds.optim.ast_adamw import ASTAdamW
    from ast_ds.sparsity import DecaySchedule
    from ast_ds.zero import ShardedMasks

    deepspeed.init_distributed(dist_backend=None)
    model = build_llama(args)
    if torch.distributed.get_rank() == 0:
        model.config.save_pretrained(hf_meta_dir(args.make))
    masks = ShardedMasks(sparse_target_names(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"]), n=2, m=4)
    opt = ASTAdamW(model.parameters(), masks=masks, lr=1e-4, decay=DecaySchedule(1e-4, 10), mask_interval=10)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=zero3_config(args))
    masks.bind(engine)
    ids = torch.randint(0, args.vocab, (args.micro_batch, args.seq)).to(engine.device)
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    CheckpointManager(args.make, engine=engine, shared={}, per_rank={SPARSITY: masks}, keep_last=1,
                      meta={META_MODE: "ast", META_PATTERN: "2:4"}).save(1)


FLOOR = """
import json, resource, time
import ast_ds.checkpoint.consolidate, deepspeed.runtime.zero.config, safetensors.torch, tqdm
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""
CONSOLIDATE = """
import json, resource, time
import deepspeed.runtime.zero.config  # the checkpoint's pickles import it; a fixed cost, not throughput
from ast_ds.checkpoint.consolidate import consolidate
from ast_ds.checkpoint.export import parse_size
t0 = time.perf_counter()
report = consolidate({tag!r}, {out!r}, dtype="bf16", max_shard_bytes=parse_size({shard!r}))
print(json.dumps({{"seconds": time.perf_counter() - t0, "all_ok": report["all_ok"],
                   "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def child(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max_shard_size", default="100MB", help="safetensors shard size of the export")
    args = ap.parse_args()
    if args.make:
        return make_checkpoint(args)
    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.checkpoint.layout import checkpoints_dir, tag_name

    work = tempfile.mkdtemp(prefix="bench_consolidate_")
    try:
        flags = [f"--{k}={v}" for k, v in vars(args).items() if k in ("layers", "hidden", "intermediate", "vocab",
                                                                      "seq", "micro_batch")]
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29677",
                        __file__, "--make", work, *flags], check=True, capture_output=True)
        tag = os.path.join(checkpoints_dir(work), tag_name(1))
        nbytes = sum(os.path.getsize(os.path.join(tag, f)) for f in os.listdir(tag))
        copy_t, cons_t, peaks = [], [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            shutil.copytree(tag, os.path.join(work, "copy"))
            copy_t.append(time.perf_counter() - t0)
            shutil.rmtree(os.path.join(work, "copy"))
            result = child(CONSOLIDATE.format(tag=tag, out=os.path.join(work, "hf"), shard=args.max_shard_size))
            cons_t.append(result["seconds"])
            peaks.append(result["peak_rss"])
            assert result["all_ok"]
            shutil.rmtree(os.path.join(work, "hf"))
        floor = child(FLOOR)["peak_rss"]
        c, k, peak = min(copy_t), min(cons_t), max(peaks)
        mb = nbytes / 1e6
        print(f"checkpoint: {mb:.1f} MB ({args.layers} layers x {args.hidden} hidden, vocab {args.vocab}, 2 ranks), "
              f"best of {args.repeats}; shards of {args.max_shard_size}")
        print(f"raw copy of the checkpoint bytes: {c:.2f} s = {mb / c:8.1f} MB/s")
        print(f"consolidate to exact 2:4 HF:      {k:.2f} s = {mb / k:8.1f} MB/s")
        print(f"consolidation / raw copy throughput: {c / k:.3f}")
        print(f"peak RSS of the consolidation: {peak / 1e6:.0f} MB = {peak / nbytes:.3f} of the checkpoint "
              f"(an interpreter importing the same modules: {floor / 1e6:.0f} MB)")
        print(json.dumps({"checkpoint_mb": round(mb, 1), "copy_mb_s": round(mb / c, 1),
                          "consolidate_mb_s": round(mb / k, 1), "throughput_ratio": round(c / k, 3),
                          "peak_rss_mb": round(peak / 1e6, 1), "floor_rss_mb": round(floor / 1e6, 1),
                          "peak_rss_over_checkpoint": round(peak / nbytes, 3),
                          "peak_rss_above_floor_over_checkpoint": round((peak - floor) / nbytes, 3)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
