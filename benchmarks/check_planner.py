"""The planner against measured peaks: real training runs on this machine (CPU, 2 ranks, ZeRO-3, fp32,
AST with KD) of several LLaMA shapes, each run's peak memory of the training steps (``memory.json``,
the busiest rank) next to ``launchers/plan.py``'s total for the same settings.

    DS_ACCELERATOR=cpu python benchmarks/check_planner.py [--configs small,wide,deep,long]

Last line: one JSON object with each config's measured and planned bytes and ``max_rel_error``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (layers, hidden, intermediate, heads, vocab, seq_len, micro_batch, activation checkpointing); sized so
# that training memory (1-3 GB per rank) dwarfs the runtime's own allocations after start-up
CONFIGS = {
    "base": (6, 768, 2048, 12, 8192, 256, 4, False),
    "wide": (4, 1024, 2752, 16, 8192, 128, 4, False),
    "long": (4, 512, 1376, 8, 4096, 512, 2, False),
    "ckpt": (6, 768, 2048, 12, 8192, 256, 4, True),
    "heldout": (5, 640, 1728, 10, 6144, 384, 3, False),  # not used to calibrate the planner's constants
}


def measure(work: str, name: str, spec) -> tuple[int, dict]:
    from ast_ds.demo import init_model, make_corpus, train_tokenizer
    from ast_ds.data.prepare import prepare
    from ast_ds.planner import load_hf_config, model_shape, plan_memory

    layers, hidden, inter, heads, vocab, seq, micro, ckpt = spec
    raw, tok = os.path.join(work, "raw"), os.path.join(work, "tok")
    if not os.path.isdir(raw):
        make_corpus(raw, docs_per_domain=600)
    if not os.path.isfile(tok + ".model"):
        train_tokenizer(raw, tok, vocab_size=512)
    data = os.path.join(work, f"data_{seq}")
    if not os.path.isdir(data):
        prepare({d: os.path.join(raw, d) for d in ("stories", "facts", "arith", "code")}, tokenizer=tok + ".model",
                out=data, seq_len=seq, eval_fraction=0.1, progress=False)
    model = os.path.join(work, f"model_{name}")
    if not os.path.isdir(model):
        init_model(model, tokenizer_model=tok + ".model", vocab_size=vocab, hidden=hidden, intermediate=inter,
                   layers=layers, heads=heads)
    out = os.path.join(work, f"run_{name}")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
                    os.path.join(ROOT, "launchers", "train.py"), "--ds_config",
                    os.path.join(ROOT, "ds_configs", "zero3.json"), "--recipe", "demo", "--model.path", model,
                    "--data.data_dir", data, "--out_dir", out, "--total_steps", "3", "--save_every", "0",
                    "--eval_every", "0", "--micro_batch", str(micro), "--global_batch", str(2 * micro),
                    "--data.weights_mode", "constant", "--log_every", "1", "--activation_checkpointing", str(ckpt).lower()],
                   env=env, check=True, capture_output=True)
    with open(os.path.join(out, "memory.json")) as f:
        measured = json.load(f)["peak_bytes_max_rank"]
    with open(os.path.join(ROOT, "ds_configs", "zero3.json")) as f:
        ds_cfg = json.load(f)
    from ast_ds.model import default_targets
    from ast_ds.recipes import get_recipe

    cfg = get_recipe("demo")
    planned = plan_memory(model_shape(load_hf_config(model), default_targets(model)), world=2, micro_batch=micro,
                          seq_len=seq, precision="fp32", sparse=True, teacher=True,
                          chunk_tokens=cfg.distill.chunk_tokens, ds_cfg=ds_cfg, fused_attention=False,
                          activation_checkpointing=ckpt)
    return measured, planned


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="check_planner_")
    rows, worst = {}, 0.0
    for name in args.configs.split(","):
        measured, planned = measure(work, name, CONFIGS[name])
        err = planned["total"] / measured - 1
        worst = max(worst, abs(err))
        rows[name] = {"measured": measured, "planned": planned["total"], "rel_error": round(err, 4),
                      "parts": planned}
        layers, hidden, inter, heads, vocab, seq, micro, ckpt = CONFIGS[name]
        print(f"{name:6} {layers} x {hidden} (ffn {inter}), vocab {vocab}, seq {seq}, micro {micro}"
              f"{', activation checkpointing' if ckpt else ''}: measured "
              f"{measured / 1e6:8.1f} MB, planned {planned['total'] / 1e6:8.1f} MB ({err:+.1%})", flush=True)
    print(json.dumps({"configs": rows, "max_rel_error": round(worst, 4), "work": work}))


if __name__ == "__main__":
    main()
