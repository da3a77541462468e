"""The multi-node path on one machine: two "nodes", each its own ``deepspeed`` launcher invocation
(``--hostfile`` with two hosts, ``--no_ssh --node_rank 0/1 --master_addr 127.0.0.1``), one process
each, AST with KD, a save, a resume.

Each node runs in its own mount namespace with a private ``/dev/shm`` (``unshare``), as separate
machines would have, so mosaicml-streaming's node-local shared memory really is per node; each node
streams the corpus from a common "remote" folder into its own node-local cache. The run folder is
shared, as on a cluster with a shared file system. Checked: the two nodes train and resume exactly like
a single node with two ranks, read disjoint rows (``$AST_DS_ROW_LOG``) and exactly the rows the
single node reads; with node-local run folders, the resume stops on both nodes with a clear message
instead of hanging.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import golden
from ast_ds.checkpoint.layout import checkpoints_dir, tag_name
from conftest import ROOT, free_port, run_torchrun

TRAIN = os.path.join(ROOT, "launchers", "train.py")
STEPS, STOP = 4, 2
PRIVATE_SHM = "mount -t tmpfs -o size=4g tmpfs /dev/shm && exec \"$@\""


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_SHM, "sh", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    if shutil.which("unshare") is None or not _can_unshare():
        pytest.fail("this test needs `unshare --mount` (root or CAP_SYS_ADMIN) to give each node its own /dev/shm")
    root = tmp_path_factory.mktemp("twonodes")
    ws = dict(golden.build_workspace(str(root)), root=root)
    hostfile = root / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    ws["hostfile"] = str(hostfile)
    return ws


def args(ws, out, *extra, data=None):
    data = data or ["--data.data_dir", ws["data"]]
    return ["--ds_config", golden.DS_CONFIG, *golden.COMMON, "--model.path", ws["model"], *data,
            "--out_dir", str(out), "--total_steps", str(STEPS), "--sparsity.mask_interval", "2", "--keep_last", "10",
            *extra]


def env(rows=None):
    e = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false",
             PYTHONWARNINGS="ignore::FutureWarning,ignore::UserWarning,ignore::DeprecationWarning")
    if rows:
        e["AST_DS_ROW_LOG"] = str(rows)
    return e


def two_nodes(ws, outs, *extra, rows=None, timeout=600):
    """Both nodes' launchers, started together; returns their CompletedProcess-like results."""
    port = free_port()
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    procs = []
    for node in (0, 1):
        cache = ws["root"] / f"cache_node{node}"  # node-local cache of the streamed corpus
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_SHM, "sh",
               deepspeed, "--hostfile", ws["hostfile"], "--no_ssh", f"--node_rank={node}", "--num_nodes=2",
               "--master_addr=127.0.0.1", f"--master_port={port}", TRAIN,
               *args(ws, outs[node], *extra, data=["--data.data_dir", str(cache), "--data.remote", ws["data"]])]
        procs.append(subprocess.Popen(cmd, env=env(rows), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two nodes hung")
        results.append((p.returncode, out))
    return results


def losses(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def rows(folder, rank):
    with open(os.path.join(folder, f"rows_rank{rank}.jsonl")) as f:
        return [json.loads(line)["rows"] for line in f]


def fp32(out, step):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoints_dir(str(out)), tag=tag_name(step))


@pytest.mark.multiprocess
def test_two_nodes_train_save_and_resume_like_one_node(ws):
    shared = ws["root"] / "shared_run"
    node_rows, single_rows = ws["root"] / "rows_nodes", ws["root"] / "rows_single"
    node_rows.mkdir()
    single_rows.mkdir()
    for code, log in two_nodes(ws, [shared, shared], "--stop_at", str(STOP), rows=node_rows):
        assert code == 0, log[-4000:]
    assert os.path.isfile(os.path.join(checkpoints_dir(str(shared)), tag_name(STOP), "COMPLETE"))
    resumed = two_nodes(ws, [shared, shared], "--resume", "auto", rows=node_rows)
    for code, log in resumed:
        assert code == 0, log[-4000:]
    assert f"resumed from {os.path.join(checkpoints_dir(str(shared)), tag_name(STOP))}" in resumed[0][1]  # rank 0 logs
    single = ws["root"] / "single_node"
    os.environ["AST_DS_ROW_LOG"] = str(single_rows)
    try:
        run_torchrun(TRAIN, 2, args(ws, single))
    finally:
        os.environ.pop("AST_DS_ROW_LOG")

    got, want = losses(shared), losses(single)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in want:  # another all-reduce path (gloo across nodes vs shared memory in one): fp32 order only
        assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got, want)
    final, reference = fp32(shared, STEPS), fp32(single, STEPS)
    assert all(torch.allclose(final[k], v, rtol=1e-3, atol=1e-5) for k, v in reference.items())
    # the nodes read disjoint rows, exactly the rows the single node's ranks read
    node0, node1 = rows(node_rows, 0), rows(node_rows, 1)
    assert len(node0) == len(node1) == STEPS * 1  # micro-batches per rank: global 4 = 2 ranks x 2, no accumulation
    for a, b in zip(node0, node1):
        assert not {tuple(x) for x in a} & {tuple(x) for x in b}
    assert (node0, node1) == (rows(single_rows, 0), rows(single_rows, 1))


@pytest.mark.multiprocess
def test_node_local_run_folders_stop_the_resume_instead_of_hanging(ws):
    local = [ws["root"] / "local_node0", ws["root"] / "local_node1"]
    for code, log in two_nodes(ws, local, "--stop_at", str(STOP)):
        assert code == 0, log[-4000:]
    results = two_nodes(ws, local, "--resume", "auto", timeout=300)
    for code, log in results:
        assert code != 0, log[-4000:]
    logs = "".join(log for _, log in results)
    assert "do not see the same checkpoints" in logs and "shared" in logs, logs[-4000:]
