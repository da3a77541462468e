"""Resume on another number of ranks (ZeRO-3, CPU, fp32): 2 -> 3 and 3 -> 2.

A run stopped at step 3 on W ranks is resumed on W' ranks with ``--resume auto`` (re-partitioned on
the fly, ``ast_ds/zero/repartition.py``). Right after the restore, the fp32 masters, both Adam moments,
the current and the initial masks gathered to full tensors equal the saved ones exactly, and the
optimizer step, lr and loader position are the saved ones. The continued run then matches an
uninterrupted run at W' to fp32 reduction tolerance (the first 3 steps ran at another world size, so
sums were taken in another order); the data it reads is the same, row for row.
"""

import csv
import json
import os

import pytest
import torch

import golden
from ast_ds.checkpoint.layout import checkpoints_dir, tag_name
from ast_ds.checkpoint.zero3_files import Zero3Files
from conftest import ROOT, run_torchrun

TRAIN = os.path.join(ROOT, "launchers", "train.py")
STEPS, STOP = 6, 3
RTOL = 1e-5  # fp32 sums in another order (measured: 1e-8); a data or state error moves losses by > 1e-3


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("worldsize")
    return dict(golden.build_workspace(str(root)), root=root)


def args(ws, out, *extra):
    return ["--ds_config", golden.DS_CONFIG, *golden.COMMON, "--model.path", ws["model"], "--data.data_dir", ws["data"],
            "--out_dir", str(out), "--micro_batch", "1", "--global_batch", "6", "--data.weights_mode", "constant",
            "--total_steps", str(STEPS), "--sparsity.mask_interval", "2", "--keep_last", "10", *extra]


def losses(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def fp32(out, step):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoints_dir(str(out)), tag=tag_name(step))


@pytest.mark.multiprocess
@pytest.mark.parametrize("saved_world,new_world", [(2, 3), (3, 2)])
def test_resume_on_another_world_size_is_exact(ws, saved_world, new_world, tmp_path):
    uninterrupted = ws["root"] / f"full{new_world}"
    if not uninterrupted.exists():
        run_torchrun(TRAIN, new_world, args(ws, uninterrupted))
    out = tmp_path / "run"
    run_torchrun(TRAIN, saved_world, args(ws, out, "--stop_at", str(STOP)))
    tag = os.path.join(checkpoints_dir(str(out)), tag_name(STOP))
    files, reference = Zero3Files(tag, saved_world), fp32(out, STOP)  # our reader agrees with DeepSpeed's
    assert set(files.entries) == set(reference)
    assert all(torch.equal(files.full(name), value.float()) for name, value in reference.items())

    result = tmp_path / "restored.json"
    proc = run_torchrun("repartition_check.py", new_world, [*args(ws, tmp_path / "check"), "--resume", tag,
                                                             "--result", str(result)])
    assert "re-partitioning" in proc.stderr + proc.stdout
    got = json.loads(result.read_text())
    assert got["equal"] == {"fp32": True, "exp_avg": True, "exp_avg_sq": True, "masks": True, "initial_masks": True,
                            "masks_differ_from_initial": True, "loader": True}, got
    assert (got["saved_world"], got["world"], got["step"], got["global_steps"]) == (saved_world, new_world, STOP, STOP)
    assert got["optimizer_steps"] == [STOP] and got["lr"] == got["saved_lr"]

    proc = run_torchrun(TRAIN, new_world, args(ws, out, "--resume", "auto"))
    assert f"saved by {saved_world} ranks; resuming on {new_world}" in proc.stderr + proc.stdout
    resumed, full = losses(out), losses(uninterrupted)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(full[step], rel=RTOL), (step, resumed, full)
    final, reference = fp32(out, STEPS), fp32(uninterrupted, STEPS)
    for name, value in reference.items():
        # Adam amplifies fp32 noise on tiny weights (3e-6 seen)
        assert torch.allclose(final[name], value, rtol=1e-3, atol=1e-5), name
