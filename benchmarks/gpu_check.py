"""The GPU check: what the CPU suite cannot show, on one GPU in well under 20 minutes.

    bash benchmarks/gpu_check.sh                # on a machine with one CUDA GPU
    bash benchmarks/gpu_check.sh --dry_run      # the same steps, tiny and on the CPU (CI runs this)

Steps, each timed, each a subprocess (a failure is recorded and the next step still runs):

1. ``equivalence``: tests/test_zero3_equivalence.py at world size 1 on the device, fp32 and bf16: the sharded
   AST update against the single-process reference (masters, masks, working weights after every step).
2. ``train_resume``: a bf16 AST + KD run of a LLaMA-shaped model built from a config (~110M parameters; the
   teacher is the same initial model), uninterrupted; the same run preempted by SIGUSR1 at half way (it
   saves and exits 0) and resumed with ``--resume auto``: the resumed losses against the uninterrupted ones.
3. ``bench_optimizer`` and ``bench_train``: their step-time ratios (AST/AdamW; AST+KD/dense) on this device.
4. ``planner``: ``launchers/plan.py`` for the run of step 2 against its measured peak (``memory.json``:
   ``torch.cuda.max_memory_allocated`` on a GPU), and its step-time estimate against the measured one.

Prints a line per step; the last line is one JSON object with every figure (also written to
``OUT/gpu_check.json``). Without a GPU and without ``--dry_run`` it prints ``{"skipped": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (layers, hidden, intermediate, heads, vocab, seq_len, micro_batch, steps)
GPU_MODEL = (12, 768, 2048, 12, 16000, 512, 8, 40)  # ~110M parameters, LLaMA-shaped
DRY_MODEL = (2, 128, 352, 2, 1024, 64, 2, 6)
GPU_BENCH = ["--layers", "12", "--hidden", "1024", "--intermediate", "2752", "--vocab", "16000", "--seq", "512",
             "--micro_batch", "8"]
DRY_BENCH = ["--layers", "2", "--hidden", "128", "--intermediate", "352", "--vocab", "1024", "--seq", "32",
             "--micro_batch", "1"]
H200_FLOPS = 400e12  # the planner's stated sustained bf16 FLOP/s (its default; about 40% of an H100/H200 peak)


def log(msg: str) -> None:
    print(msg, flush=True)


class Runner:
    """Runs the steps' subprocesses with the device's environment; keeps each one's output in OUT/logs."""

    def __init__(self, out: str, dry: bool):
        self.out, self.dry = out, dry
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        self.env = dict(os.environ, PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false",
                        DS_ACCELERATOR="cpu" if dry else "cuda", AST_DS_TEST_ACCELERATOR="cpu" if dry else "cuda")
        self.env.pop("AST_DS_FAULTS", None)
        if dry:
            self.env["OMP_NUM_THREADS"] = "1"

    def __call__(self, name: str, cmd: list[str], *, env: dict | None = None, timeout: int = 900) -> tuple[bool, str]:
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=dict(self.env, **(env or {})), capture_output=True, text=True,
                                  timeout=timeout)
            ok, text = proc.returncode == 0, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            ok, text = False, f"timed out after {timeout}s\n{e.stdout or ''}{e.stderr or ''}"
        with open(os.path.join(self.out, "logs", f"{name}.log"), "w") as f:
            f.write(" ".join(cmd) + "\n\n" + text)
        log(f"  {name}: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f}s"
            + ("" if ok else f" (log: {os.path.join(self.out, 'logs', name + '.log')})\n" + text[-2000:]))
        return ok, text


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def read_losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}


def step_seconds(run_dir: str, tokens_per_step: int) -> float | None:
    """Median step time of the logged steps after the first two (start-up and the first refresh)."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rates = [float(r["tokens_per_s"]) for r in csv.DictReader(f) if r.get("tokens_per_s")][2:]
    rates = sorted(r for r in rates if r > 0)
    return tokens_per_step / rates[len(rates) // 2] if rates else None


def equivalence(run: Runner) -> dict:
    ok, text = run("equivalence", [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                                   "tests/test_zero3_equivalence.py"], env={"AST_DS_DEVICE_CHECK": "1"})
    diffs = [line.strip() for line in text.splitlines() if "max |master - CPU reference|" in line]
    return {"passed": ok, "cases": ["ws1-fp32", "ws1-bf16"], "gpu_vs_cpu_reference": diffs}


def prepare(work: str, spec) -> tuple[str, str]:
    from ast_ds.data.prepare import prepare as prepare_data
    from ast_ds.demo import init_model, make_corpus, train_tokenizer

    layers, hidden, inter, heads, vocab, seq, _, _ = spec
    raw, tok = os.path.join(work, "raw"), os.path.join(work, "tok")
    make_corpus(raw, docs_per_domain=400)
    train_tokenizer(raw, tok, vocab_size=512)
    data = os.path.join(work, "data")
    prepare_data({d: os.path.join(raw, d) for d in ("stories", "facts", "arith", "code")}, tokenizer=tok + ".model",
                 out=data, seq_len=seq, eval_fraction=0.05, progress=False)
    model = os.path.join(work, "model")
    init_model(model, tokenizer_model=tok + ".model", vocab_size=vocab, hidden=hidden, intermediate=inter,
               layers=layers, heads=heads)
    return model, data


def train_args(model: str, data: str, out: str, spec, precision: str) -> list[str]:
    *_, micro, steps = spec
    return [os.path.join(ROOT, "launchers", "train.py"), "--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"),
            "--recipe", "demo", "--precision", precision, "--model.path", model, "--data.data_dir", data,
            "--out_dir", out, "--total_steps", str(steps), "--micro_batch", str(micro), "--global_batch", str(micro),
            "--save_every", "0", "--eval_every", "0", "--log_every", "1", "--data.weights_mode", "constant",
            "--sparsity.mask_interval", "5"]


def train_resume(run: Runner, work: str, spec, precision: str) -> dict:
    model, data = prepare(work, spec)
    from ast_ds.planner import load_hf_config, model_shape
    from ast_ds.model import default_targets

    params = model_shape(load_hf_config(model), default_targets(model)).params
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29733"]
    full, cut = os.path.join(work, "uninterrupted"), os.path.join(work, "preempted")
    steps = spec[-1]
    ok_full, _ = run("train_uninterrupted", launch + train_args(model, data, full, spec, precision))
    ok_cut, _ = run("train_preempted", launch + train_args(model, data, cut, spec, precision),
                    env={"AST_DS_FAULTS": f"signal@{steps // 2}:SIGUSR1"})
    ok_res, _ = run("train_resumed", launch + train_args(model, data, cut, spec, precision) + ["--resume", "auto"])
    hf = os.path.join(work, "resumed_hf")
    ok_hf = ok_res and run("consolidate", [sys.executable, os.path.join(ROOT, "launchers", "consolidate.py"),
                                           "--checkpoint", cut, "--out", hf, "--dtype", precision, "--overwrite"])[0]
    result = {"params": params, "precision": precision, "steps": steps, "preempted_at": steps // 2,
              "passed": ok_full and ok_cut and ok_res and ok_hf, "model": model, "data": data, "run": full}
    if ok_hf:
        result["exported_2_4"] = exported_nm(hf)
        result["passed"] = result["exported_2_4"]["ok"]
    if result["passed"]:
        a, b = read_losses(full), read_losses(cut)
        later = [s for s in a if s > steps // 2]
        rel = max(abs(a[s] - b[s]) / abs(a[s]) for s in later)
        # bit-exact on the CPU; on a GPU the backward's atomics (embedding, attention) may reorder sums
        result.update(final_loss=a[steps], resumed_final_loss=b[steps], max_rel_loss_diff_after_resume=rel,
                      first_loss=a[1], resumed_steps=len(later), passed=rel <= 2e-2 and a[steps] < a[1])
        with open(os.path.join(full, "memory.json")) as f:
            result["measured_peak_bytes"] = json.load(f)["peak_bytes_max_rank"]
        result["step_s"] = step_seconds(full, spec[6] * spec[5])
    return result


def exported_nm(folder: str) -> dict:
    """An independent look at the consolidated folder: every target weight exactly 2:4 along its input."""
    from safetensors.torch import load_file

    from ast_ds.checkpoint.export import weight_files
    from ast_ds.model import default_targets
    from ast_ds.sparsity import verify_nm

    targets = tuple(default_targets(folder))
    checked, bad = 0, []
    for path in weight_files(folder):
        path = os.path.join(folder, path)
        for name, w in load_file(path).items():
            if name.endswith(".weight") and name.rsplit(".", 2)[-2] in targets:
                checked += 1
                if not verify_nm(w, n=2, m=4).ok:
                    bad.append(name)
    return {"ok": checked > 0 and not bad, "checked": checked, "not_2_4": bad}


def bench(run: Runner, name: str, extra: list[str]) -> dict:
    ok, text = run(name, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29734",
                          os.path.join(ROOT, "benchmarks", f"{name}.py"), *extra])
    return dict(last_json(text) or {}, passed=ok and last_json(text) is not None)


def planner(run: Runner, trained: dict, spec, precision: str) -> dict:
    *_, seq, micro, _ = spec
    ok, text = run("planner", [sys.executable, os.path.join(ROOT, "launchers", "plan.py"), "--model", trained["model"],
                               "--recipe", "demo", "--gpus_per_node", "1", "--nodes", "1", "--seq_len", str(seq),
                               "--micro_batch", str(micro), "--global_batch", str(micro), "--precision", precision,
                               "--gpu_mem_gb", "139", "--flops", str(H200_FLOPS)])
    plan = last_json(text) if ok else None
    if not plan:
        return {"passed": False}
    planned, measured = plan["per_gpu_bytes"]["total"], trained.get("measured_peak_bytes")
    out = {"passed": True, "planned_bytes": planned, "measured_bytes": measured,
           "planned_step_s": plan["step_time"]["step_s"], "measured_step_s": trained.get("step_s")}
    if measured:
        out["rel_error"] = round(planned / measured - 1, 4)
        out["within_15pct"] = abs(out["rel_error"]) <= 0.15  # the CPU check's bound; meaningless for the dry run's tiny model
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry_run", action="store_true", help="every step tiny and on the CPU (checks the script itself)")
    ap.add_argument("--out", default="", help="where logs, runs and gpu_check.json go (default: a temp folder)")
    ap.add_argument("--steps", default="equivalence,train,bench,planner", help="a comma-separated subset")
    args = ap.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device visible; run with --dry_run to check the script on the CPU"}))
        return 0
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    os.makedirs(out, exist_ok=True)
    run, steps = Runner(out, args.dry_run), set(args.steps.split(","))
    spec, precision = (DRY_MODEL if args.dry_run else GPU_MODEL), "bf16"
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    import deepspeed
    import transformers

    result = {"device": device, "dry_run": args.dry_run, "host": platform.node(), "torch": torch.__version__,
              "deepspeed": deepspeed.__version__, "transformers": transformers.__version__, "out": out}
    log(f"GPU check on {device}; output in {out}")
    t0 = time.time()
    if "equivalence" in steps:
        log("1/4 ZeRO-3 AST at world size 1 vs the single-process reference (fp32, bf16)")
        result["equivalence"] = equivalence(run)
    trained = {}
    if "train" in steps:
        log(f"2/4 {precision} AST + KD run from a config with a preemption and --resume auto")
        trained = result["train_resume"] = train_resume(run, os.path.join(out, "work"), spec, precision)
        if trained.get("final_loss") is not None:
            log(f"  {trained['params'] / 1e6:.0f}M parameters: loss {trained['first_loss']:.3f} -> "
                f"{trained['final_loss']:.3f}; resumed run's losses within {trained['max_rel_loss_diff_after_resume']:.2e}"
                f" (relative) of the uninterrupted run")
    if "bench" in steps:
        log("3/4 step-time ratios")
        result["bench_optimizer"] = bench(run, "bench_optimizer", (DRY_BENCH + ["--windows", "1", "--interval", "2"])
                                          if args.dry_run else GPU_BENCH)
        result["bench_train"] = bench(run, "bench_train", (DRY_BENCH + ["--steps", "2"]) if args.dry_run else GPU_BENCH)
        for name in ("bench_optimizer", "bench_train"):
            log(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in result[name].items()))
    if "planner" in steps and trained.get("model"):
        log("4/4 planner vs the measured peak of step 2")
        result["planner"] = planner(run, trained, spec, precision)
        p = result["planner"]
        if p.get("rel_error") is not None:
            log(f"  planned {p['planned_bytes'] / 1e9:.3f} GB, measured {p['measured_bytes'] / 1e9:.3f} GB "
                f"({p['rel_error']:+.1%}); step {p['planned_step_s']:.3f} s planned, {p['measured_step_s'] or 0:.3f} s measured")
    result["wall_s"] = round(time.time() - t0, 1)
    result["passed"] = all(v.get("passed", True) for v in result.values() if isinstance(v, dict))
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    log(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
