"""The comparison report: every method of the paper on one model and one prepared corpus, at a fixed
token budget, each trained row over several seeds, as a Markdown table and a plot. Every trained row sees
the same constant domain mix.

    python -m ast_ds.report --model runs/demo/teacher_hf --data runs/demo/data --eval runs/demo/data \\
        --recipe demo --steps 150 --seeds 3 --work runs/report --out docs/results.md

Rows: dense; dense retrained (the same recipe, steps and data in mode dense: what the token budget alone
buys, the reference of the sparse rows); one-shot magnitude, Wanda, SparseGPT; AST-Naive (AST without
SLoRB), AST-Boosted (SLoRB k = 16), CAST; the ablations fixed mask, no KD, static SR-STE, naive training
(fixed mask, no decay, no KD) and the initial mask from SparseGPT. Every trained row runs ``--seeds``
times (the seed sets the data order and the initialisation of anything random); it is consolidated and
evaluated by perplexity on ``--eval``, and reported as mean ± sample std. One-shot and dense rows are
deterministic (one run). Finished runs are reused when the report is run again (delete ``--work`` to
start over), so more seeds can be added later.

The paper's orderings are checked with the noise in view: an ordering *holds* only when the gap of the
means exceeds twice the pooled standard deviation of the two rows, is *reversed* when the opposite gap
does, and is *not resolved* otherwise (also whenever a trained row has a single run).

``--out`` is rewritten on every run; text from the line ``<!-- notes: kept when the report is re-run -->``
on (a hand-written discussion) is kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

from ast_ds.atomic import atomic_path, write_json_atomic, write_text_atomic
from ast_ds.recipes import ABLATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (kind, training flags); kind: dense | retrained | oneshot:<method> | train (ablations: recipes.ABLATIONS)
ROWS = {
    "dense": ("dense", []),
    "dense retrained": ("retrained", ["--mode", "dense"]),
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
REFERENCE = "dense retrained"  # the row the sparse rows are measured against
DENSE_KINDS = ("dense", "retrained")  # rows without N:M weights
SEEDED_KINDS = ("train", "retrained")  # rows that train, so run once per seed


def _seeded(name: str) -> bool:
    return ROWS[name][0] in SEEDED_KINDS

# (better, worse): the paper's findings (Tables 1, 4 and 12), each "better has the lower perplexity"
ORDERINGS = [
    ("AST-Boosted", "AST-Naive"), ("AST-Naive", "fixed mask"), ("AST-Naive", "static SR-STE"),
    ("AST-Naive", "no KD"), ("AST-Naive", "naive training"), ("AST-Naive", "sparsegpt"), ("AST-Naive", "wanda"),
    ("sparsegpt", "magnitude"), ("wanda", "magnitude"),
]


# ------------------------------------------------------------------------------------------- the statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def pooled_std(a: list[float], b: list[float]) -> float:
    """The pooled sample standard deviation of two groups, sqrt(((na-1)sa² + (nb-1)sb²) / (na+nb-2)); a
    deterministic row (one run) adds no degrees of freedom. 0 when neither group has two values."""
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return 0.0
    ss = sum((len(x) - 1) * mean_std(x)[1] ** 2 for x in (a, b) if len(x) > 1)
    return math.sqrt(ss / dof)


def verdict(better: list[float], worse: list[float], *, k: float = 2.0) -> str:
    """Whether "better has the lower perplexity" is resolved by these runs: ``holds`` when the gap of the
    means exceeds ``k`` pooled standard deviations, ``reversed`` when the opposite gap does, ``not
    resolved`` otherwise (a gap of exactly 0 is never resolved)."""
    gap = mean_std(worse)[0] - mean_std(better)[0]
    bound = k * pooled_std(better, worse)  # >= 0, so a gap of 0 passes neither test
    if gap > bound:
        return "holds"
    if -gap > bound:
        return "reversed"
    return "not resolved"


def _run(cmd: list[str], log: str) -> None:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), TOKENIZERS_PARALLELISM="false")
    if env["DS_ACCELERATOR"] == "cpu":  # one thread per rank: the deepspeed launcher leaves OMP_NUM_THREADS unset
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


# what a finished run in --work depends on: reusing it under other values would mix incomparable runs
SETTINGS = ("model", "data", "eval", "recipe", "steps", "seq_len", "nsamples", "nproc", "ds_config")


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_").replace("-", "_")


def run_row(name: str, *, seed: int, args, work: str) -> dict:
    """Build (or reuse) one run of a row (one seed; deterministic rows ignore it): its exported model and
    its perplexity, written to ``work/<row>[_s<seed>].json``."""
    from ast_ds.evaluate import perplexity

    kind, flags = ROWS[name]
    trained = _seeded(name)
    slug = _slug(name) + (f"_s{seed}" if trained else "")
    result_file = os.path.join(work, f"{slug}.json")
    settings = {k: getattr(args, k) for k in SETTINGS}
    if os.path.isfile(result_file):
        with open(result_file) as f:
            row = json.load(f)
        changed = {k: (row["settings"].get(k), v) for k, v in settings.items()
                   if "settings" in row and row["settings"].get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise SystemExit(f"error: {result_file} was made with other settings ({what}); use another --work "
                             f"folder or delete that one")
        return row
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
            flags = flags + ["--sparsity.init_mask", run_row("sparsegpt", seed=0, args=args, work=work)["model"]]
        run = os.path.join(work, slug)
        if not os.path.isdir(hf):
            deepspeed = os.path.join(os.path.dirname(py), "deepspeed")
            _run([deepspeed, f"--num_gpus={args.nproc}", f"--master_port={args.master_port}", "launchers/train.py",
                  "--ds_config", args.ds_config, "--recipe", args.recipe, "--model.path", args.model,
                  "--data.data_dir", args.data, "--out_dir", run, "--total_steps", str(args.steps),
                  "--seed", str(seed), "--save_every", "0", "--data.weights_mode", "constant", *flags], log)
            _run([py, "launchers/consolidate.py", "--checkpoint", run, "--out", hf, "--dtype", "fp32"], log + ".export")
    ppl = perplexity(hf, args.eval, seq_len=args.seq_len, batch_size=8)["ppl"]
    report_path = os.path.join(hf, "sparsity_report.json")
    rep = json.load(open(report_path)) if kind not in DENSE_KINDS and os.path.isfile(report_path) else {}
    row = {"name": name, "kind": kind, "seed": seed if trained else None, "model": os.path.abspath(hf), "ppl": ppl,
           "exact_nm": bool(rep.get("all_ok")) if rep else None, "pure_nm": rep.get("pure_nm", bool(rep)),
           "steps": args.steps if trained else 0, "settings": settings}
    write_json_atomic(result_file, row)
    return row


def summarize(runs: list[dict]) -> dict:
    """One table row from the runs of a method (its seeds)."""
    ppls = [r["ppl"] for r in runs]
    mean, std = mean_std(ppls)
    first = runs[0]
    return {"name": first["name"], "kind": first["kind"], "ppls": ppls, "mean": mean, "std": std,
            "exact_nm": all(r["exact_nm"] for r in runs) if first["exact_nm"] is not None else None,
            "pure_nm": all(r["pure_nm"] for r in runs)}


def check_orderings(ppls: dict[str, list[float]]) -> list[tuple[str, str]]:
    """(claim with the figures, verdict) for each of the paper's orderings whose rows were run. A trained
    row with a single run has no measured spread, so no ordering involving it is resolved."""
    out = []
    for a, b in ORDERINGS:
        if a in ppls and b in ppls:
            (ma, sa), (mb, sb) = mean_std(ppls[a]), mean_std(ppls[b])
            claim = (f"{a} < {b} ({ma:.4f} ± {sa:.4f} vs {mb:.4f} ± {sb:.4f}; gap {mb - ma:+.4f}, "
                     f"2 × pooled std {2 * pooled_std(ppls[a], ppls[b]):.4f})")
            one_run = any(_seeded(n) and len(ppls[n]) < 2 for n in (a, b))
            out.append((claim, "not resolved (one run of a trained row: no spread)" if one_run
                        else verdict(ppls[a], ppls[b])))
    return out


def _nm_cell(r: dict) -> str:
    if r["kind"] in DENSE_KINDS:
        return "dense"
    return "yes" if r["exact_nm"] and r["pure_nm"] else "N:M + SLoRB (not pure)" if r["exact_nm"] else "NO"


def write_report(rows: list[dict], args, path: str) -> str:
    """The Markdown report (``rows`` from ``summarize``), written atomically to ``path``; returns its text."""
    dense = next(r["mean"] for r in rows if r["kind"] == "dense")
    ref = next((r["mean"] for r in rows if r["name"] == REFERENCE), None)
    seeds = max(len(r["ppls"]) for r in rows)
    tokens = f"{args.steps} steps of the `{args.recipe}` recipe"
    lines = [f"# Method comparison on `{args.model}`", "",
             f"Perplexity on `{args.eval}` (windows of {args.seq_len} tokens); trained rows: {tokens}, same data "
             f"(`{args.data}`, constant domain mix), {args.nproc} processes, ZeRO-3, {seeds} seeds each "
             f"(mean ± sample std; the dense teacher and the one-shot rows are deterministic, one run). "
             f"Command: `python -m ast_ds.report {' '.join(sys.argv[1:])}`.", "",
             "*dense retrained* is the dense model trained with the same recipe, steps and data (mode dense, "
             "cross-entropy): what the token budget alone buys, and the reference of the ratio column.", "",
             "| method | kind | exact N:M | runs | perplexity | vs dense | ÷ dense retrained |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f"{r['mean']:.4f} ± {r['std']:.4f}" if len(r["ppls"]) > 1 else f"{r['mean']:.4f}"
        ratio = f"{r['mean'] / ref:.3f}" if ref else "n/a"
        lines.append(f"| {r['name']} | {r['kind']} | {_nm_cell(r)} | {len(r['ppls'])} | {spread} | "
                     f"{r['mean'] - dense:+.3f} | {ratio} |")
    lines += ["", "## The paper's orderings", "",
              "An ordering holds only when the gap of the means exceeds twice the pooled standard deviation "
              "of the two rows' runs (a spread rule, stricter than a test on the means); reversed when the "
              "opposite gap does; not resolved otherwise.", ""]
    for claim, v in check_orderings({r["name"]: r["ppls"] for r in rows}):
        lines.append(f"- {v if v == 'holds' else f'**{v}**'}: {claim}")
    text = "\n".join(lines) + "\n" + _kept_notes(path)
    write_text_atomic(path, text)
    return text


NOTES_MARKER = "<!-- notes: kept when the report is re-run -->"


def _kept_notes(path: str) -> str:
    """The hand-written part of an existing report: everything from ``NOTES_MARKER`` on (a re-run
    replaces the figures, not the discussion below them)."""
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        old = f.read()
    at = old.find(NOTES_MARKER)
    return "" if at < 0 else "\n" + old[at:]


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    colors = ["gray" if r["kind"] in DENSE_KINDS else "tab:orange" if r["kind"].startswith("oneshot")
              else "tab:blue" for r in rows]
    ax.bar([r["name"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=3,
           color=colors)
    low = min(r["mean"] - r["std"] for r in rows)
    ax.set_ylim(bottom=max(0.0, low - 0.15 * (max(r["mean"] for r in rows) - low + 1e-9)))
    ax.set_ylabel("perplexity (mean ± std over seeds)")
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
    p.add_argument("--eval", required=True, help="text/jsonl file or data_prep folder (its eval split) for perplexity")
    p.add_argument("--recipe", default="demo")
    p.add_argument("--steps", type=int, default=150, help="training steps of every trained row (the token budget)")
    p.add_argument("--seeds", type=int, default=3, help="runs (seeds 0..N-1) of every trained row; at least 1")
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
    if args.seeds < 1:
        sys.exit("error: --seeds must be at least 1 (3 or more to tell orderings from noise)")
    if "dense" not in names:
        names.insert(0, "dense")
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for name in names:
        trained = _seeded(name)
        runs = []
        for seed in range(args.seeds if trained else 1):
            label = f"[report] {name}" + (f" seed {seed}" if trained else "")
            print(f"{label} ...", flush=True)
            runs.append(run_row(name, seed=seed, args=args, work=args.work))
            print(f"{label}: ppl {runs[-1]['ppl']:.4f}", flush=True)
        rows.append(summarize(runs))
    text = write_report(rows, args, args.out)
    plot(rows, os.path.splitext(args.out)[0] + ".png")
    print(text)


if __name__ == "__main__":
    main()
