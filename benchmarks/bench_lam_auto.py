"""--sparsity.lam_max auto against hand-set λ_max and the fixed-mask ablation, at the same token budget.

    DS_ACCELERATOR=cpu python benchmarks/bench_lam_auto.py --root runs/demo      # after launchers/demo.sh

Every row retrains the demo's dense teacher (ROOT/teacher_hf) to 2:4 with the demo recipe (AST + KD, the
same steps, data and seed; 2 CPU processes under ZeRO-3); only λ_max differs: hand-set 1e-4, 3e-4, 1e-3,
3e-3, auto (flip target from --flip_target, default the paper's Table 8 value for the model's size), and
the fixed mask (Δt = 0). Reported per row: the final total flipped ratio (mask entries that differ from the
initial mask), whether it is in the target band, the final λ_max, and the held-out perplexity of the
consolidated 2:4 model on ROOT/data. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def train(root: str, out: str, extra: list[str], port: int, steps: int) -> None:
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           os.path.join(ROOT, "launchers", "train.py"), "--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"),
           "--recipe", "demo", "--model.path", os.path.join(root, "teacher_hf"), "--data.data_dir",
           os.path.join(root, "data"), "--out_dir", out, "--total_steps", str(steps), "--save_every", "0", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"training {out} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def last_value(run: str, key: str) -> float | None:
    with open(os.path.join(run, "metrics.csv")) as f:
        values = [r[key] for r in csv.DictReader(f) if r.get(key) not in (None, "")]
    return float(values[-1]) if values else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(ROOT, "runs", "demo"), help="the demo's folder")
    ap.add_argument("--steps", type=int, default=300, help="steps of every row (the demo recipe itself runs 100)")
    ap.add_argument("--flip_target", type=float, default=0.0, help="auto's target (0: Table 8 for the size)")
    ap.add_argument("--flip_band", type=float, default=0.25)
    ap.add_argument("--work", default="", help="where the runs go (default ROOT/lam_bench)")
    ap.add_argument("--rows", default="1e-4,3e-4,1e-3,3e-3,auto,fixed_mask")
    args = ap.parse_args(argv)

    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.evaluate import perplexity

    work = args.work or os.path.join(args.root, "lam_bench")
    rows = {}
    for i, name in enumerate(args.rows.split(",")):
        run = os.path.join(work, name)
        if name == "fixed_mask":
            extra = ["--ablation", "fixed_mask"]
        elif name == "auto":
            extra = ["--sparsity.lam_max", "auto", "--sparsity.flip_band", str(args.flip_band)]
            extra += ["--sparsity.flip_target", str(args.flip_target)] if args.flip_target else []
        else:
            extra = ["--sparsity.lam_max", name]
        if not os.path.isfile(os.path.join(run, "memory.json")):  # finished runs are reused
            print(f"training {name} ...", flush=True)
            train(args.root, run, extra, 29751 + i, args.steps)
        hf = os.path.join(run, "hf")
        if not os.path.isdir(hf):
            consolidate(run, hf, dtype="fp32")
        row = {"init_flip_rate": last_value(run, "init_flip_rate"), "lam_max": last_value(run, "lam_max"),
               "ppl": perplexity(hf, os.path.join(args.root, "data"), seq_len=128, batch_size=16)["ppl"]}
        if name == "auto":
            row["flip_target"] = last_value(run, "flip_target")
        elif name == "fixed_mask":
            row["init_flip_rate"] = 0.0  # no refresh ever moves the mask
        else:
            row["lam_max"] = float(name)
        rows[name] = row
    target = rows.get("auto", {}).get("flip_target")
    print(f"{'λ_max':12} {'flipped':>8} {'final λ_max':>12} {'ppl':>8}" + (f"   (auto target {target:.3f} "
                                                                            f"± {args.flip_band:.0%})" if target else ""))
    for name, row in rows.items():
        flips = row["init_flip_rate"]
        band = "" if not target or flips is None else ("  in band" if abs(flips / target - 1) <= args.flip_band
                                                       else "  out of band")
        lam = f"{row['lam_max']:.3g}" if row["lam_max"] is not None else "-"
        print(f"{name:12} {flips if flips is not None else float('nan'):8.4f} {lam:>12} {row['ppl']:8.4f}{band}")
    auto = rows.get("auto")
    landed = bool(auto and target and auto["init_flip_rate"] is not None and
                  abs(auto["init_flip_rate"] / target - 1) <= args.flip_band)
    print(json.dumps({"rows": rows, "flip_target": target, "flip_band": args.flip_band, "auto_in_band": landed,
                      "steps": args.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
