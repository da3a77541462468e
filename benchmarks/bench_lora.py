"""Masked LoRA against "plain LoRA, then re-prune the merge" on the same 2:4 model, task and budget, side by side.

    DS_ACCELERATOR=cpu python benchmarks/bench_lora.py --model runs/demo/ast_hf      # the demo's AST model

Task: generated question/answer pairs ("Question: what is 3 plus 4?" -> " The answer is 7."; a held-out 10%),
prepared with --prompt_field/--response_field, so losses count response tokens only. Both runs: the
finetune_demo recipe (rank 8, alpha 16) on 2 CPU processes under ZeRO-3, the same steps, lr and data order.
Reported on the held-out split (response NLL, and its perplexity): the base 2:4 model; masked LoRA merged
(exactly 2:4, what was trained); plain LoRA as trained (dense W + s·B·A: not 2:4) and its merge re-pruned
to 2:4 by magnitude (what users ship today). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def qa_jsonl(path: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 49), rng.randint(1, 49)
            op, value = rng.choice([("plus", a + b), ("minus", a - b), ("times", a * b)])
            f.write(json.dumps({"prompt": f"Question: what is {a} {op} {b}?",
                                "response": f" The answer is {value}."}) + "\n")


def finetune(model: str, data: str, out: str, *, masked: bool, steps: int, lr: float, port: int) -> None:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           os.path.join(ROOT, "launchers", "finetune.py"), "--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"),
           "--recipe", "finetune_demo", "--model.path", model, "--data.data_dir", data, "--out_dir", out,
           "--total_steps", str(steps), "--optim.lr", str(lr), "--eval_every", str(steps), "--save_every", "0",
           "--lora.masked", str(masked).lower()]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"finetune failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def merge_dense(base: str, adapter: str, out: str) -> None:
    """base + s·B·A from a PEFT-format adapter, unmasked and not re-pruned: plain LoRA as it was trained."""
    import torch
    from safetensors.torch import load_file

    from ast_ds.checkpoint.export import copy_tokenizer
    from ast_ds.evaluate import load_model
    from ast_ds.lora import lora_delta

    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    tensors = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    model = load_model(base)
    with torch.no_grad():
        for key, a in tensors.items():
            if key.endswith(".lora_A.weight"):
                module = key[len("base_model.model."):-len(".lora_A.weight")]
                b = tensors[key.replace("lora_A", "lora_B")]
                model.get_submodule(module).weight += lora_delta(a, b, cfg["lora_alpha"] / cfg["r"])
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer(base, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "runs", "demo", "ast_hf"), help="exported 2:4 folder")
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seq_len", type=int, default=64)
    ap.add_argument("--work", default="", help="working folder (default: a temp folder)")
    args = ap.parse_args(argv)

    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.data.prepare import prepare
    from ast_ds.evaluate import perplexity

    if not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"--model {args.model}: no exported model there (run launchers/demo.sh first)")
    work = args.work or tempfile.mkdtemp(prefix="bench_lora_")
    qa_jsonl(os.path.join(work, "raw", "qa", "part.jsonl"), args.examples, seed=0)
    data = os.path.join(work, "data")
    prepare({"qa": os.path.join(work, "raw", "qa")}, tokenizer=args.model, out=data, seq_len=args.seq_len,
            eval_fraction=0.1, prompt_field="prompt", response_field="response", progress=False, overwrite=True)

    def held_out(folder: str) -> float:
        return perplexity(folder, data, seq_len=args.seq_len, batch_size=16)["ppl"]

    rows = {"base 2:4 model": {"ppl": held_out(args.model), "exact_2_4": True}}
    for masked, port in ((True, 29741), (False, 29742)):
        name = "masked" if masked else "plain"
        run = os.path.join(work, name)
        finetune(args.model, data, run, masked=masked, steps=args.steps, lr=args.lr, port=port)
        report = consolidate(run, os.path.join(work, f"{name}_merged"), dtype="fp32", overwrite=True)
        merged = held_out(os.path.join(work, f"{name}_merged"))
        if masked:
            rows["masked LoRA, merged"] = {"ppl": merged, "exact_2_4": report["all_ok"]}
        else:
            dense = os.path.join(work, "plain_unpruned")
            merge_dense(args.model, os.path.join(work, f"{name}_merged", "adapter"), dense)
            rows["plain LoRA as trained (dense, not 2:4)"] = {"ppl": held_out(dense), "exact_2_4": False}
            rows["plain LoRA, merged then re-pruned"] = {"ppl": merged, "exact_2_4": report["all_ok"]}
    print(f"held-out response perplexity, {args.steps} steps, rank 8 ({args.model})")
    for name, row in rows.items():
        print(f"  {name:40} {row['ppl']:8.3f}   2:4: {'exact' if row['exact_2_4'] else 'no'}")
    gap = rows["plain LoRA, merged then re-pruned"]["ppl"] / rows["masked LoRA, merged"]["ppl"]
    print(f"re-pruned plain LoRA / masked LoRA: {gap:.3f}")
    print(json.dumps({"rows": rows, "repruned_over_masked": round(gap, 4), "steps": args.steps, "lr": args.lr,
                      "model": os.path.abspath(args.model), "work": work}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
