"""benchmarks/gpu_check.py in its --dry_run mode: every step of the GPU check, tiny and on the CPU, so the script
a lent GPU runs unchanged is known to work (and the bf16 preempt/resume/consolidate path is exercised)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


def test_without_a_gpu_it_skips_cleanly():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped" in json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_dry_run_runs_every_step(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--dry_run", "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=900)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and last["passed"], proc.stdout[-4000:]
    assert last == json.load(open(tmp_path / "gpu_check.json"))
    assert last["equivalence"]["passed"]
    train = last["train_resume"]
    # on the CPU a preempted and resumed bf16 run is the uninterrupted run, step for step
    assert train["precision"] == "bf16" and train["resumed_steps"] == train["steps"] // 2
    assert train["max_rel_loss_diff_after_resume"] == 0.0
    assert train["exported_2_4"]["ok"] and train["exported_2_4"]["checked"] > 0
    for bench, key in (("bench_optimizer", "step_ratio_amortized"), ("bench_train", "step_ratio_ast_kd_over_dense")):
        assert last[bench]["passed"] and last[bench][key] > 0
    assert last["planner"]["planned_bytes"] > 0 and last["planner"]["measured_bytes"] > 0
