"""Golden losses: two short fixed training runs whose per-step losses must not move by accident.

* ``ast``: AST 2:4 with KD from the frozen teacher, dynamic domain weights, mask refreshes at steps
  2, 4, 6, 8; 8 steps on 2 ranks, ZeRO-3, fp32.
* ``dense``: dense training of the same model, 4 steps, same engine.

Both run the demo-scale tiny LLaMA on a corpus generated with a fixed seed. The losses (loss, KL, CE
per step, all-reduced over the ranks) are compared with ``tests/assets/golden_losses.json`` by
``tests/test_golden_losses.py``.

Regenerate the file *on purpose* (a deliberate change of the math) with::

    python tests/golden.py --regenerate

and say in the commit why the losses moved. Plain ``python tests/golden.py`` prints the comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, "assets", "golden_losses.json")
TRAIN = os.path.join(ROOT, "launchers", "train.py")
DS_CONFIG = os.path.join(ROOT, "ds_configs", "zero3.json")
KEYS = ("loss", "kl", "ce")
# Exact on the machine that wrote the file. Elsewhere a CPU with another instruction set takes other BLAS
# kernels whose reduction order differs (MKL_CBWR=COMPAT below pins most of them), so the test allows a
# relative 1e-6: far below any real change of the math (a one-bit change of a mask or of λ moves the loss
# by > 1e-4 within two steps) and above fp32 rounding noise accumulated over 8 steps.
RTOL = 1e-6

COMMON = ["--recipe", "demo", "--log_every", "1", "--eval_every", "0", "--micro_batch", "2", "--global_batch", "4",
          "--optim.warmup_steps", "2", "--save_every", "0", "--eval_batches", "2"]
RUNS = {
    "ast": ["--total_steps", "8", "--sparsity.mask_interval", "2", "--data.weights_mode", "dynamic",
            "--data.update_every", "4"],
    "dense": ["--mode", "dense", "--total_steps", "4", "--data.weights_mode", "constant"],
}


def build_workspace(root: str) -> dict[str, str]:
    """The generated corpus (fixed seed), its tokenizer, the prepared MDS folder and the initial model."""
    from ast_ds.demo import tiny_workspace

    return tiny_workspace(root)


def run_env() -> dict[str, str]:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MKL_CBWR="COMPAT", PYTHONPATH=ROOT,
                TOKENIZERS_PARALLELISM="false",
                PYTHONWARNINGS="ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning")


def train_command(name: str, ws: dict[str, str], out: str, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", TRAIN,
            "--ds_config", DS_CONFIG, *COMMON, "--model.path", ws["model"], "--data.data_dir", ws["data"],
            "--out_dir", out, *RUNS[name]]


def read_losses(run_dir: str) -> list[dict[str, float]]:
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return [{"step": int(r["step"]), **{k: float(r[k]) for k in KEYS if r.get(k)}} for r in rows]


def run_all(work: str, *, port: int | None = None) -> dict[str, list[dict[str, float]]]:
    """Build the workspace under ``work`` and run every golden run; per run, the per-step losses."""
    import socket

    ws = build_workspace(work)
    out = {}
    for name in RUNS:
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                free = s.getsockname()[1]
        run_dir = os.path.join(work, name)
        proc = subprocess.run(train_command(name, ws, run_dir, port or free), env=run_env(), capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"golden run {name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-6000:]}")
        out[name] = read_losses(run_dir)
    return out


def compare(got: dict, want: dict, *, rtol: float = RTOL) -> list[str]:
    """Differences beyond ``rtol`` (relative, with a floor of 1 on the scale), as readable lines."""
    problems = []
    for name, rows in want.items():
        mine = got.get(name)
        if mine is None or [r["step"] for r in mine] != [r["step"] for r in rows]:
            problems.append(f"{name}: steps {[r['step'] for r in mine or []]} != golden {[r['step'] for r in rows]}")
            continue
        for a, b in zip(mine, rows):
            for k in b:
                if k == "step":
                    continue
                if k not in a or not math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=rtol):
                    problems.append(f"{name} step {b['step']} {k}: {a.get(k)!r} != golden {b[k]!r}")
    return problems


def max_deviation(got: dict, want: dict) -> float:
    return max((abs(a[k] - b[k]) for n in want for a, b in zip(got.get(n, []), want[n]) for k in KEYS
                if k in a and k in b), default=float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regenerate", action="store_true", help=f"write the losses to {os.path.relpath(GOLDEN, ROOT)}")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ast_ds_golden_") as work:
        got = run_all(work)
    if args.regenerate:
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        from ast_ds.atomic import write_json_atomic

        write_json_atomic(GOLDEN, {"about": "tests/golden.py; regenerate on purpose with: python tests/golden.py "
                                            "--regenerate", "runs": {n: RUNS[n] for n in got}, "losses": got}, indent=1)
        print(f"wrote {GOLDEN}")
        return 0
    with open(GOLDEN) as f:
        want = json.load(f)["losses"]
    problems = compare(got, want)
    print("\n".join(problems) or "golden losses match")
    print(f"max abs deviation {max_deviation(got, want):.3g} (exact: {got == want})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
