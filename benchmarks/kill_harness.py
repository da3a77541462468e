"""kill -9 anywhere: SIGKILL the whole training job at random moments (inside saves too), resume it with
``--resume auto`` until it finishes, and check that the final consolidated weights equal an
uninterrupted run's bit for bit.

    python benchmarks/kill_harness.py --trials 20 --in_save_trials 5 --steps 8 --seed 0   # recorded (docs/benchmarks.md)
    python benchmarks/kill_harness.py --trials 1 --in_save_trials 1 --steps 5 --seed 1    # what CI runs

The job is the tiny test model (2 ranks, ZeRO-3, fp32, AST+KD, mask refreshes, dynamic domain weights)
under torchrun, saving every step. Even trials SIGKILL the launcher and every rank at once at a time
drawn uniformly (seeded) over the reference run's duration (start-up and shut-down included); odd
trials do it a random 0–0.6 s after the checkpoint of a random step, i.e. among the steps and saves.
Each trial notes how far the killed run got and whether it left a partial tag (no COMPLETE), then
resumes with ``--resume auto`` until the run ends. ``--in_save_trials`` adds trials that kill rank 0
inside the save of a random step on purpose (``AST_DS_FAULTS=kill_in_save@STEP:0``: after DeepSpeed's
files, before COMPLETE), since random moments rarely hit a save of this tiny model.
The last line is one JSON object.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAIN = os.path.join(ROOT, "launchers", "train.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(ws: dict, out: str, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}", TRAIN,
            "--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"), "--recipe", "demo",
            "--model.path", ws["model"], "--data.data_dir", ws["data"], "--out_dir", out,
            "--total_steps", str(steps), "--save_every", "1", "--keep_last", "2", "--log_every", "1",
            "--eval_every", "0", "--micro_batch", "2", "--global_batch", "4", "--optim.warmup_steps", "2",
            "--sparsity.mask_interval", "2", "--data.weights_mode", "dynamic", "--data.update_every", "3",
            "--eval_batches", "2", *extra]


def env(faults: str = "") -> dict:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONWARNINGS="ignore", AST_DS_FAULTS=faults)


def kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every process below it (torchrun starts each rank in a session of its
    own, so killing the launcher's process group alone would leave the ranks running)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def run(cmd: list[str], *, kill_after: float | None = None, faults: str = "", kill_once=None) -> int | None:
    """Run ``cmd``; SIGKILL it and all its descendants after ``kill_after`` s, or ``kill_once[1]`` s after
    the path ``kill_once[0]`` appears (None if killed). With ``faults`` (``$AST_DS_FAULTS``) the run is
    expected to die: its exit code is returned."""
    proc = subprocess.Popen(cmd, env=env(faults), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if kill_once is not None:  # stderr goes to a thread so the pipe never fills while we poll
        import threading

        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read()), daemon=True)
        reader.start()
        while proc.poll() is None and not os.path.exists(kill_once[0]):
            time.sleep(0.02)
        if proc.poll() is None:
            time.sleep(kill_once[1])
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
                return None
        proc.wait()
        reader.join()
        err = "".join(chunks)
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {err[-300:]}")
        return proc.returncode
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.communicate()
        return None
    if proc.returncode != 0 and not faults:
        errors = [line for line in err.splitlines() if "Error" in line and "errors.html" not in line]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(errors[-3:]))
    return proc.returncode


def final_weights(run_dir: str, work: str) -> dict:
    from safetensors.torch import load_file

    from ast_ds.checkpoint.consolidate import consolidate

    out = tempfile.mkdtemp(prefix="hf-", dir=work)
    shutil.rmtree(out)
    consolidate(run_dir, out, dtype="fp32")
    return load_file(os.path.join(out, "model.safetensors"))


def partial_tags(run_dir: str) -> list[str]:
    from ast_ds.checkpoint.layout import TAG_PREFIX, checkpoints_dir, is_complete

    root = checkpoints_dir(run_dir)
    if not os.path.isdir(root):
        return []
    return [t for t in os.listdir(root) if t.startswith(TAG_PREFIX) and not is_complete(os.path.join(root, t))]


def trial(i: int, *, ws: dict, work: str, steps: int, duration: float, rng: random.Random, reference: dict,
          in_save: bool = False) -> dict:
    import torch

    from ast_ds.checkpoint.layout import checkpoints_dir, find_checkpoint, is_complete, tag_name

    out = os.path.join(work, f"trial{i:02d}")
    if in_save:  # rank 0 is SIGKILLed between DeepSpeed's files and COMPLETE of a random step; torchrun ends the rest
        kill_at = rng.randint(1, steps - 1)
        run(command(ws, out, steps), faults=f"kill_in_save@{kill_at}:0")
        killed = True
    for _ in range(0 if in_save else 5):  # a run that ends before its kill time (a busy machine varies) is drawn again
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        if i % 2 == 0:  # even trials: anywhere in the run, start-up and shut-down included
            kill_at = rng.uniform(0.0, duration)
            killed = run(command(ws, out, steps), kill_after=kill_at) is None
        else:  # odd trials: during training, a random time after the checkpoint of a random step
            after, delay = rng.randint(1, steps - 2), rng.uniform(0.0, 0.6)
            kill_at = f"{delay:.2f} s after the checkpoint of step {after}"
            marker = os.path.join(checkpoints_dir(out), tag_name(after), "COMPLETE")
            killed = run(command(ws, out, steps), kill_once=(marker, delay)) is None
        if killed:
            break
        duration = min(duration, time.perf_counter() - start)
    left_partial = partial_tags(out)
    newest = find_checkpoint(checkpoints_dir(out), "auto")  # how far the killed run got
    resumes, failed_starts = 0, []
    while True:  # resume until the run reports its last step
        try:
            run(command(ws, out, steps, "--resume", "auto"))
        except RuntimeError as e:  # recorded; the final weights still have to match
            failed_starts.append(str(e)[-300:])
            if len(failed_starts) > 2:
                raise
            continue
        resumes += 1
        if is_complete(os.path.join(checkpoints_dir(out), tag_name(steps))):
            break
    got = final_weights(out, work)
    equal = got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in reference)
    where = kill_at if isinstance(kill_at, str) else f"{kill_at:.2f} s"
    row = {"trial": i, "kill_at": f"inside the save of step {kill_at}" if in_save else where,
           "killed": killed, "newest_complete_at_kill": os.path.basename(newest) if newest else None,
           "partial_tag_left": left_partial,
           "resumes": resumes, "failed_starts": failed_starts, "equal": equal}
    print(json.dumps(row), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--in_save_trials", type=int, default=0,
                    help="further trials that kill rank 0 inside a save on purpose (between DeepSpeed's files and COMPLETE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    from ast_ds.demo import tiny_workspace

    work = args.work or tempfile.mkdtemp(prefix="kill_harness_")
    try:
        ws = tiny_workspace(os.path.join(work, "ws"))
        start = time.perf_counter()
        run(command(ws, os.path.join(work, "reference"), args.steps))
        duration = time.perf_counter() - start
        reference = final_weights(os.path.join(work, "reference"), work)
        print(f"reference run: {args.steps} steps, a save after each, {duration:.1f} s", flush=True)
        rng = random.Random(args.seed)
        rows = [trial(i, ws=ws, work=work, steps=args.steps, duration=duration, rng=rng, reference=reference,
                      in_save=i >= args.trials) for i in range(args.trials + args.in_save_trials)]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"trials": len(rows), "all_equal": all(r["equal"] for r in rows),
               "killed": sum(r["killed"] for r in rows),
               "killed_inside_a_save": sum(bool(r["partial_tag_left"]) for r in rows),
               "killed_after_a_checkpoint": sum(bool(r["newest_complete_at_kill"]) for r in rows),
               "failed_starts": sum(len(r["failed_starts"]) for r in rows),
               "reference_s": round(duration, 1)}
    print(json.dumps(summary))
    return 0 if summary["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
