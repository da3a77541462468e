"""Shared test helpers. Multi-process tests carry the ``multiprocess`` marker (``-m "not multiprocess"``
skips them); they launch torchrun workers from tests/dist/ with DS_ACCELERATOR=cpu and gloo."""

import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: str, nproc: int, args: list[str], *, timeout: int = 600,
                 launcher: str = "torchrun", check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tests/dist/<script>`` (or an absolute script path) on ``nproc`` CPU processes (GPUs with
    ``$AST_DS_TEST_ACCELERATOR=cuda``); fail the test
    with the output tail on error."""
    # $AST_DS_TEST_ACCELERATOR=cuda runs the workers on the GPU (benchmarks/gpu_check.sh); CPU otherwise
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("AST_DS_TEST_ACCELERATOR", "cpu"), OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning")
    script = os.path.join(ROOT, "tests", "dist", script)  # join keeps an absolute path as is
    if launcher in ("deepspeed", "supervised"):  # the launcher users run; it sets LOCAL_SIZE, not LOCAL_WORLD_SIZE
        wrap = [sys.executable, os.path.join(ROOT, "launchers", "supervise.py"), "--"] if launcher == "supervised" else []
        cmd = [*wrap, os.path.join(os.path.dirname(sys.executable), "deepspeed"), f"--num_gpus={nproc}",
               f"--master_port={free_port()}", script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", script, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc



def tiny_workspace(root):
    """``ast_ds.demo.tiny_workspace`` under ``root`` (a pathlib.Path, returned): raw/, tok.model, data/ (MDS,
    seq 32) and init/ (a random-init 2 x 64 LLaMA)."""
    from ast_ds.demo import tiny_workspace as build

    build(str(root))
    return root
