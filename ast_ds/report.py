"""The comparison report: every method of the paper on one model and one prepared corpus, at a fixed
token budget, as a Markdown table and a plot. Every trained row sees the same constant domain mix.

    python -m ast_ds.report --model runs/demo/teacher_hf --data runs/demo/data --eval runs/demo/raw/test.txt \\
        --recipe demo --steps 150 --work runs/report --out docs/results.md

Rows: dense; one-shot magnitude, Wanda, SparseGPT; AST-Naive (AST without SLoRB), AST-Boosted (SLoRB
k = 16), CAST; the ablations fixed mask, no KD, static SR-STE, naive training (fixed mask, no decay, no KD)
and the initial mask from SparseGPT. Every trained row uses the same recipe, steps and data (the same
token budget); each is consolidated and evaluated by perplexity on ``--eval``. Finished rows are reused
when the report is run again (delete ``--work`` to start over). The paper's orderings are checked and
the report says which hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ast_ds.atomic import atomic_path, write_text_atomic
from ast_ds.recipes import ABLATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (kind, training flags); kind: dense | oneshot:<method> | train (ablation names: recipes.ABLATIONS)
ROWS = {
    "dense": ("dense", []),
    "magnitude": ("oneshot:magnitude", []),
    "wanda": ("oneshot:wanda", []),
    "sparsegpt": ("oneshot:sparsegpt", []),
    "AST-Naive": ("train", []),
    "AST-Boosted": ("train", ["--sparsity.slorb_k", "16"]),
    "CAST": ("train", ["--sparsity.method", "cast", "--sparsity.scaling_groups", "2"]),
    "fixed mask": ("train", ["--ablation", "fixed_mask"]),
    "no KD": ("train", ["--ablation", "no_kd"]),
    "static SR-STE": ("train", ["--ablation", "static"]),
    "naive training": ("train", ["--ablation", "naive"]),
    "SparseGPT init mask": ("train", ["--ablation", "oneshot_init"]),
}
assert all(f[1] in ABLATIONS for _, f in ROWS.values() if f[:1] == ["--ablation"]), "ROWS name an unknown ablation"

# (better, worse, claim): the paper's findings (Tables 1, 4 and 12)
ORDERINGS = [
    ("AST-Boosted", "AST-Naive", "<="), ("AST-Naive", "fixed mask", "<"), ("AST-Naive", "static SR-STE", "<"),
    ("AST-Naive", "no KD", "<"), ("AST-Naive", "sparsegpt", "<"), ("AST-Naive", "wanda", "<"),
    ("sparsegpt", "magnitude", "<"), ("wanda", "magnitude", "<"),
]


def _run(cmd: list[str], log: str) -> None:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), TOKENIZERS_PARALLELISM="false")
    if env["DS_ACCELERATOR"] == "cpu":  # one thread per rank: the deepspeed launcher leaves OMP_NUM_THREADS unset
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def run_row(name: str, *, args, work: str) -> dict:
    """Build (or reuse) the row's exported model and its perplexity."""
    from ast_ds.evaluate import perplexity

    slug = name.lower().replace(" ", "_").replace("-", "_")
    result_file = os.path.join(work, f"{slug}.json")
    if os.path.isfile(result_file):
        with open(result_file) as f:
            return json.load(f)
    kind, flags = ROWS[name]
    hf = os.path.join(work, f"{slug}_hf")
    log = os.path.join(work, f"{slug}.log")
    py = sys.executable
    if kind == "dense":
        hf = args.model
    elif kind.startswith("oneshot:"):
        if not os.path.isdir(hf):
            _run([py, "launchers/prune_oneshot.py", "--model", args.model, "--method", kind.split(":")[1],
                  "--calib", args.data, "--nsamples", str(args.nsamples), "--out", hf], log)
    else:
        if "oneshot_init" in flags:
            flags = flags + ["--sparsity.init_mask", run_row("sparsegpt", args=args, work=work)["model"]]
        run = os.path.join(work, slug)
        if not os.path.isdir(hf):
            deepspeed = os.path.join(os.path.dirname(py), "deepspeed")
            _run([deepspeed, f"--num_gpus={args.nproc}", f"--master_port={args.master_port}", "launchers/train.py",
                  "--ds_config", args.ds_config, "--recipe", args.recipe, "--model.path", args.model,
                  "--data.data_dir", args.data, "--out_dir", run, "--total_steps", str(args.steps),
                  "--save_every", "0", "--data.weights_mode", "constant", *flags], log)
            _run([py, "launchers/consolidate.py", "--checkpoint", run, "--out", hf, "--dtype", "fp32"], log + ".export")
    ppl = perplexity(hf, args.eval, seq_len=args.seq_len, batch_size=8)["ppl"]
    report_path = os.path.join(hf, "sparsity_report.json")
    rep = json.load(open(report_path)) if os.path.isfile(report_path) else {}
    row = {"name": name, "kind": kind, "model": os.path.abspath(hf), "ppl": ppl,
           "exact_nm": bool(rep.get("all_ok")) if rep else None, "pure_nm": rep.get("pure_nm", bool(rep)),
           "steps": args.steps if kind == "train" else 0}
    with open(result_file, "w") as f:
        json.dump(row, f, indent=2)
    return row


def check_orderings(ppl: dict[str, float]) -> list[tuple[str, bool]]:
    out = []
    for a, b, op in ORDERINGS:
        if a in ppl and b in ppl:
            holds = ppl[a] <= ppl[b] if op == "<=" else ppl[a] < ppl[b]
            out.append((f"{a} {op} {b} ({ppl[a]:.3f} vs {ppl[b]:.3f})", holds))
    return out


def write_report(rows: list[dict], args, path: str) -> str:
    dense = next(r["ppl"] for r in rows if r["kind"] == "dense")
    tokens = f"{args.steps} steps of the `{args.recipe}` recipe"
    lines = [f"# Method comparison on `{args.model}`", "",
             f"Perplexity on `{args.eval}` (windows of {args.seq_len} tokens); trained rows: {tokens}, same data "
             f"(`{args.data}`), {args.nproc} processes, ZeRO-3. Command: `python -m ast_ds.report {' '.join(sys.argv[1:])}`.",
             "", "| method | kind | exact N:M | perplexity | vs dense |", "|---|---|---|---|---|"]
    for r in rows:
        nm = "dense" if r["kind"] == "dense" else ("yes" if r["exact_nm"] and r["pure_nm"] else
                                                  "N:M + SLoRB (not pure)" if r["exact_nm"] else "NO")
        lines.append(f"| {r['name']} | {r['kind']} | {nm} | {r['ppl']:.3f} | {r['ppl'] - dense:+.3f} |")
    lines += ["", "## The paper's orderings", ""]
    for claim, holds in check_orderings({r["name"]: r["ppl"] for r in rows}):
        lines.append(f"- {'holds' if holds else '**does not hold**'}: {claim}")
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text)
    return text


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    colors = ["gray" if r["kind"] == "dense" else "tab:orange" if r["kind"].startswith("oneshot") else "tab:blue"
              for r in rows]
    ax.bar([r["name"] for r in rows], [r["ppl"] for r in rows], color=colors)
    ax.set_ylabel("perplexity")
    ax.set_title("dense (gray), one-shot (orange), trained 2:4 (blue)")
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="dense Hugging Face model folder (the teacher)")
    p.add_argument("--data", required=True, help="data_prep output folder (training and calibration)")
    p.add_argument("--eval", required=True, help="text/jsonl file for perplexity")
    p.add_argument("--recipe", default="demo")
    p.add_argument("--steps", type=int, default=150, help="training steps of every trained row (the token budget)")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--nsamples", type=int, default=64, help="calibration windows of Wanda/SparseGPT")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--master_port", type=int, default=29517)
    p.add_argument("--ds_config", default="ds_configs/zero3.json")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows")
    p.add_argument("--work", default="runs/report")
    p.add_argument("--out", default="docs/results.md")
    args = p.parse_args(argv)
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for name in names:
        print(f"[report] {name} ...", flush=True)
        rows.append(run_row(name, args=args, work=args.work))
        print(f"[report] {name}: ppl {rows[-1]['ppl']:.3f}", flush=True)
    if not any(r["kind"] == "dense" for r in rows):
        rows.insert(0, run_row("dense", args=args, work=args.work))
    text = write_report(rows, args, args.out)
    plot(rows, os.path.splitext(args.out)[0] + ".png")
    print(text)


if __name__ == "__main__":
    main()
