"""A run that survives a cluster (2 CPU ranks, ZeRO-3): preemption signals on one rank or through the
deepspeed launcher, non-finite steps skipped on every rank, divergence stopped with the last good
checkpoint intact, and a read error on one rank stopping every rank instead of hanging.

Faults are injected with ``$AST_DS_FAULTS`` (``ast_ds/faults.py``)."""

import csv
import math
import os

import pytest
import torch

import golden
from ast_ds.checkpoint.layout import COMPLETE, checkpoints_dir, complete_tags, rank_file, tag_name
from conftest import ROOT, run_torchrun

TRAIN = os.path.join(ROOT, "launchers", "train.py")
STEPS = 6


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("resilience")
    return dict(golden.build_workspace(str(root)), root=root)


def args(ws, out, *extra):
    return ["--ds_config", golden.DS_CONFIG, *golden.COMMON, "--model.path", ws["model"], "--data.data_dir", ws["data"],
            "--out_dir", str(out), "--total_steps", str(STEPS), "--sparsity.mask_interval", "2", "--keep_last", "10",
            *extra]


def train(ws, out, *extra, faults="", launcher="torchrun", check=True):
    os.environ["AST_DS_FAULTS"] = faults
    try:
        return run_torchrun(TRAIN, 2, args(ws, out, *extra), launcher=launcher, check=check, timeout=600)
    finally:
        os.environ.pop("AST_DS_FAULTS")


def metrics(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def tag(out, step):
    return os.path.join(checkpoints_dir(str(out)), tag_name(step))


def fp32(out, step):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoints_dir(str(out)), tag=tag_name(step))


def tensors_equal(a, b) -> bool:
    """Recursive bit equality of nested dicts/lists of tensors (other leaves compared with ==)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def uninterrupted(ws):
    out = ws["root"] / "full"
    train(ws, out)
    return out


@pytest.mark.multiprocess
def test_a_signal_on_one_rank_saves_that_step_everywhere_and_resume_is_exact(ws, uninterrupted):
    out = ws["root"] / "usr1"
    # only rank 1 is signalled, after step 3; a second notice reaches every rank inside that save
    proc = train(ws, out, faults="signal@3:SIGUSR1:1;signal_in_save@3:SIGUSR1")
    assert proc.returncode == 0
    assert "received SIGUSR1 again: ignored" in proc.stderr + proc.stdout
    assert "preempted" in proc.stderr + proc.stdout and "--resume auto" in proc.stderr + proc.stdout
    assert sorted(metrics(out)) == [1, 2, 3]
    assert os.path.isfile(os.path.join(tag(out, 3), COMPLETE))
    train(ws, out, "--resume", "auto")
    full, resumed = metrics(uninterrupted), metrics(out)
    assert [full[s]["loss"] for s in full] == [resumed[s]["loss"] for s in full]
    assert tensors_equal(fp32(uninterrupted, STEPS), fp32(out, STEPS))


@pytest.mark.slow  # the supervised launcher (the documented way) is tested in CI
@pytest.mark.multiprocess
def test_sigterm_through_the_deepspeed_launcher(ws, uninterrupted):
    """The launcher forwards SIGTERM to the ranks (and kills them after 30 s): they finish the step,
    save it and exit 0; the launcher itself then exits 1, as DeepSpeed's launcher always does."""
    out = ws["root"] / "term"
    proc = train(ws, out, faults="signal_parent@3:SIGTERM", launcher="deepspeed", check=False)
    log = proc.stderr + proc.stdout
    assert "preempted (SIGTERM)" in log, log[-3000:]
    saved = sorted(metrics(out))[-1]
    assert saved >= 3 and os.path.isfile(os.path.join(tag(out, saved), COMPLETE))
    assert "exits with return code" not in log  # no rank failed: the launcher's 1 is its own SIGTERM policy
    train(ws, out, "--resume", "auto")
    assert tensors_equal(fp32(uninterrupted, STEPS), fp32(out, STEPS))


@pytest.mark.multiprocess
def test_sigterm_to_the_supervised_deepspeed_launcher_saves_and_exits_0(ws, uninterrupted):
    """launchers/supervise.py hands the signal to the ranks only: they save the step they are in and
    exit 0, so DeepSpeed's launcher (not signalled) and the supervisor exit 0 too."""
    out = ws["root"] / "supervised"
    proc = train(ws, out, faults="signal_supervisor@3:SIGTERM", launcher="supervised", check=False)
    log = proc.stderr + proc.stdout
    assert proc.returncode == 0, log[-3000:]
    assert "SIGTERM: forwarded to 2 rank process(es)" in log and "preempted (SIGTERM)" in log
    saved = sorted(metrics(out))[-1]
    assert 3 <= saved < STEPS and os.path.isfile(os.path.join(tag(out, saved), COMPLETE))
    train(ws, out, "--resume", "auto")
    assert tensors_equal(fp32(uninterrupted, STEPS), fp32(out, STEPS))


def test_the_supervisor_finds_the_rank_processes_and_returns_their_exit_code(tmp_path):
    """A fake launcher (a parent without LOCAL_RANK, two ranks with it, a worker below a rank): SIGUSR1
    to the supervisor reaches the two ranks only; the exit code is the launcher's."""
    import subprocess
    import sys

    rank = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGUSR1, lambda *a: open(os.environ['OUT'] + '/got' + os.environ['LOCAL_RANK'], 'w').close() or sys.exit(0))\n"
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], stderr=subprocess.DEVNULL)\n"
            "open(os.environ['OUT'] + '/ready' + os.environ['LOCAL_RANK'], 'w').close()\n"
            "time.sleep(30)\n")
    launcher = ("import os, signal, subprocess, sys, time\n"
                "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(9))  # a launcher that must not be signalled\n"
                f"ps = [subprocess.Popen([sys.executable, '-c', {rank!r}], env=dict(os.environ, LOCAL_RANK=str(r))) for r in (0, 1)]\n"
                "sys.exit(max(p.wait() for p in ps) + 3)\n")
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_RANK"}
    env["OUT"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launchers", "supervise.py"), "--signals", "SIGUSR1",
                             "--", sys.executable, "-c", launcher], env=env, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.time() + 60
    while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(__import__("signal").SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err  # the ranks exited 0 after the signal, the launcher added its 3
    assert (tmp_path / "got0").exists() and (tmp_path / "got1").exists()
    assert "SIGUSR1: forwarded to 2 rank process(es)" in err


@pytest.mark.multiprocess
def test_a_nan_on_one_rank_is_skipped_on_every_rank_without_touching_the_state(ws):
    out = ws["root"] / "nan"
    proc = train(ws, out, "--save_every", "1", faults="nan_loss@3:1")
    assert proc.returncode == 0
    rows = metrics(out)
    assert rows[3].get("skipped_nonfinite") == "1" and math.isnan(float(rows[3]["loss"]))
    assert all(not rows[s].get("skipped_nonfinite") for s in rows if s != 3)
    assert "step 3: non-finite" in proc.stderr + proc.stdout
    # the skipped step changed no weight, no optimizer moment and no mask
    assert tensors_equal(fp32(out, 2), fp32(out, 3))
    for rank in (0, 1):
        optim = [torch.load(os.path.join(tag(out, s), f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"),
                            map_location="cpu", weights_only=False)["optimizer_state_dict"] for s in (2, 3)]
        assert optim[1]["overflow"] and not optim[0]["overflow"]  # DeepSpeed's flag of the skipped step
        for key in ("fp32_flat_groups", "optimizer_state_dict"):  # fp32 partitions; moments, step counts, lr
            assert tensors_equal(optim[0][key], optim[1][key])
        masks = [torch.load(rank_file(tag(out, s), rank), weights_only=False)["sparsity"] for s in (2, 3)]
        assert tensors_equal(*masks)
    assert all(torch.isfinite(v).all() for v in fp32(out, STEPS).values())


def _assert_stopped_with_good_checkpoint(proc, out, last_good: int):
    log = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "non-finite" in log, log[-3000:]
    assert tag_name(last_good) in log
    assert complete_tags(checkpoints_dir(str(out)))[-1] == tag_name(last_good)
    assert all(torch.isfinite(v).all() for v in fp32(out, last_good).values())


@pytest.mark.multiprocess
def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(ws):
    out = ws["root"] / "diverged"
    proc = train(ws, out, "--save_every", "1", "--max_nonfinite_steps", "3",
                 faults="nan_loss@3;nan_loss@4;nan_loss@5", check=False)
    # steps 3 and 4 were skipped and saved (their weights are step 2's); step 5 is the third in a row
    _assert_stopped_with_good_checkpoint(proc, out, last_good=4)
    assert tensors_equal(fp32(out, 2), fp32(out, 4))
    assert not os.path.exists(tag(out, 5))


@pytest.mark.multiprocess
def test_a_learning_rate_that_diverges_stops_with_non_finite(ws):
    out = ws["root"] / "lr"
    proc = train(ws, out, "--save_every", "1", "--optim.lr", "1e4", "--optim.warmup_steps", "0",
                 "--total_steps", "30", check=False)
    last = complete_tags(checkpoints_dir(str(out)))[-1]
    _assert_stopped_with_good_checkpoint(proc, out, last_good=int(last.rsplit("_", 1)[1]))


@pytest.mark.multiprocess
def test_a_read_error_on_one_rank_stops_every_rank(ws):
    out = ws["root"] / "readerr"
    proc = train(ws, out, faults="data_error@2:1", check=False)  # would hang in the forward's all-gather
    log = proc.stderr + proc.stdout
    assert proc.returncode != 0
    assert "injected read error" in log and "rank 1 failed while reading the batch of step 2" in log


def test_fault_spec_is_checked():
    from ast_ds.faults import Faults

    assert Faults("nan_loss@3:1").nan_loss(3, 1) and not Faults("nan_loss@3:1").nan_loss(3, 0)
    assert Faults("nan_loss@3").nan_loss(3, 0) and not Faults("").nan_loss(3, 0)
    with pytest.raises(ValueError, match="KIND@STEP"):
        Faults("explode@3")


def test_unknown_preempt_signal_is_refused():
    from ast_ds.guards import signal_numbers

    assert signal_numbers(["SIGTERM", "USR1"]) == [15, 10]
    with pytest.raises(ValueError, match="preempt_signals"):
        signal_numbers(["SIGNOPE"])


@pytest.mark.multiprocess
def test_kill_9_at_random_moments_then_resume_gives_the_same_weights(tmp_path):
    """Two points of benchmarks/kill_harness.py, one at a random moment and one inside a save (the
    recorded run has more, docs/benchmarks.md)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "kill_harness.py"), "--trials", "1",
                           "--in_save_trials", "1", "--steps", "5", "--seed", "1", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["all_equal"] and summary["trials"] == 2, proc.stderr[-3000:]
    assert summary["killed"] == 2 and summary["killed_inside_a_save"] >= 1  # the in-save kill left a partial tag
