"""docs/scaling.md's tables: launchers/plan.py's per-GPU memory and step time for LLaMA-2 7B and 13B on
8, 16 and 64 GPUs and 70B on 64, with the llama2 recipes (AST 2:4 with KD, bf16, micro batch 4 / 2,
seq 4096, global batch 128, activation checkpointing), built from the public model configs on the meta device.

    python benchmarks/scaling_tables.py > /tmp/tables.md

Last line: one JSON object with every plan's total bytes per GPU.
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False}
MODELS = {  # the public Llama-2 configs (hidden, intermediate, layers, heads, kv heads)
    "LLaMA-2-7B": dict(BASE, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32),
    "LLaMA-2-13B": dict(BASE, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40),
    "LLaMA-2-70B": dict(BASE, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8),
}
# (model, recipe, GPUs, micro batch): the recipe's micro batch where the global batch of 128 allows it
RUNS = [("LLaMA-2-7B", "llama2_7b", 8, 4), ("LLaMA-2-7B", "llama2_7b", 16, 4), ("LLaMA-2-7B", "llama2_7b", 64, 2),
        ("LLaMA-2-13B", "llama2_13b", 8, 2), ("LLaMA-2-13B", "llama2_13b", 16, 2), ("LLaMA-2-13B", "llama2_13b", 64, 2),
        ("LLaMA-2-70B", "llama2_13b", 64, 1)]
PARTS = ("fp32_masters", "adam_moments", "working_params", "gradients", "optimizer_step", "masks", "gathered_params", "teacher",
         "activations", "kd_loss", "ds_buffers", "total")


def plan(config_path: str, recipe: str, gpus: int, extra=()) -> dict:
    nodes = max(1, gpus // 8)
    cmd = [sys.executable, os.path.join(ROOT, "launchers", "plan.py"), "--model", config_path, "--recipe", recipe,
           "--gpus_per_node", str(min(gpus, 8)), "--nodes", str(nodes), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    work = tempfile.mkdtemp(prefix="scaling_")
    totals = {}
    print("| model | GPUs | micro batch | " + " | ".join(PARTS) + " | step (s) | tokens/s/GPU | fits 80 GB |")
    print("|---|---|---|" + "---|" * (len(PARTS) + 3))
    for model, recipe, gpus, micro in RUNS:
        path = os.path.join(work, model + ".json")
        with open(path, "w") as f:
            json.dump(MODELS[model], f)
        p = plan(path, recipe, gpus, ["--micro_batch", str(micro)])
        mem = p["per_gpu_bytes"]
        totals[f"{model}/{gpus}"] = mem["total"]
        cells = " | ".join(f"{mem[k] / 1e9:.2f}" for k in PARTS)
        print(f"| {model} | {gpus} | {micro} | {cells} | {p['step_time']['step_s']:.1f} | "
              f"{p['step_time']['tokens_per_s_per_gpu']:.0f} | {'yes' if p['fits'] else 'no'} |")
    print(json.dumps({"total_bytes_per_gpu": totals}))


if __name__ == "__main__":
    main()
