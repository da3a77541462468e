"""The training job end to end on 2 CPU processes (ZeRO-3, gloo): exact resume, consolidation to an
exact 2:4 Hugging Face folder, evaluation, and the errors for damaged checkpoints."""

import csv
import json
import os
import shutil

import pytest
import torch

from conftest import ROOT, run_torchrun, tiny_workspace

TRAIN = os.path.join(ROOT, "launchers", "train.py")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("e2e"))


def train_args(ws, out, *extra):
    return ["--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"), "--recipe", "demo",
            "--model.path", str(ws / "init"), "--data.data_dir", str(ws / "data"), "--out_dir", str(out),
            "--total_steps", "6", "--save_every", "3", "--log_every", "1", "--eval_every", "0",
            "--micro_batch", "2", "--global_batch", "4", "--sparsity.mask_interval", "2",
            "--data.weights_mode", "dynamic", "--data.update_every", "2", "--eval_batches", "2",
            "--optim.warmup_steps", "2", *extra]


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return {int(r["step"]): (r["loss"], r.get("weight/stories", "")) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def runs(workspace):
    full, split = workspace / "full", workspace / "split"
    run_torchrun(TRAIN, 2, train_args(workspace, full))
    run_torchrun(TRAIN, 2, train_args(workspace, split, "--stop_at", "3"))
    # the second half under the deepspeed launcher, as users run it
    run_torchrun(TRAIN, 2, train_args(workspace, split, "--resume", "auto"), launcher="deepspeed")
    return full, split


@pytest.mark.multiprocess
def test_resume_reproduces_the_uninterrupted_run_exactly(runs):
    full, split = runs
    a, b = losses(full), losses(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert a[step] == b[step], f"step {step}: uninterrupted {a[step]} vs resumed {b[step]}"
    # dynamic domain weights were updated every 2 steps (and restored with the checkpoint: equal above)
    assert all(a[s][1] != "" for s in (2, 4, 6))
    resolved = json.load(open(os.path.join(full, "config.json")))
    assert resolved["train"]["total_steps"] == 6 and resolved["deepspeed"]["zero_optimization"]["stage"] == 3
    assert os.path.isfile(os.path.join(full, "curves.png"))
    # keep_last=2 (demo recipe) after saves at 3 and 6
    kept = sorted(f for f in os.listdir(os.path.join(full, "checkpoints")) if f.startswith("step_"))
    assert kept == ["step_00000003", "step_00000006"]


@pytest.mark.multiprocess
def test_consolidate_exports_exact_2_4_that_transformers_loads(runs, workspace, tmp_path):
    from transformers import AutoModelForCausalLM

    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.evaluate import perplexity
    from ast_ds.sparsity import verify_nm

    full, _ = runs
    out = tmp_path / "hf"
    report = consolidate(str(full), str(out), dtype="bf16")
    assert report["all_ok"] and report["num_targets"] == 14 and report["step"] == 6
    assert report["target_sparsity"] == pytest.approx(0.5, abs=1e-3)
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.bfloat16)
    for name, p in model.named_parameters():
        if name in report["layers"]:
            assert verify_nm(p, n=2, m=4).ok, name
            zeros = p == 0
            assert not torch.signbit(p[zeros]).any(), f"{name}: -0.0 at a pruned position"
    assert os.path.isfile(out / "tokenizer.model")
    result = perplexity(str(out), str(workspace / "raw" / "test.txt"), seq_len=32, max_windows=8)
    assert 1 < result["ppl"] < 1e4
    per_domain = perplexity(str(out), str(workspace / "data"), seq_len=32, max_windows=4)
    assert set(per_domain["domains"]) == {"stories", "facts", "arith", "code"}

    # streaming into small shards gives the same tensors, with an index transformers follows; and both
    # equal DeepSpeed's own whole-model stitching masked with the stitched saved masks
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from ast_ds.checkpoint.consolidate import stitch_masks
    from ast_ds.checkpoint.export import apply_mask, load_hf_state_dict
    from ast_ds.checkpoint.layout import SPARSITY, checkpoints_dir, rank_file

    sharded = tmp_path / "sharded"
    consolidate(str(full), str(sharded), dtype="bf16", max_shard_bytes=60_000)
    shards = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))
    assert len(shards) > 2 and (sharded / "model.safetensors.index.json").is_file()
    single = load_file(str(out / "model.safetensors"))
    assert {k: v for f in shards for k, v in load_file(str(sharded / f)).items()}.keys() == single.keys()
    assert all(torch.equal(load_hf_state_dict(str(sharded))[k], v.float()) for k, v in single.items())
    AutoModelForCausalLM.from_pretrained(sharded, torch_dtype=torch.bfloat16)
    tag = os.path.join(checkpoints_dir(str(full)), "step_00000006")
    reference = get_fp32_state_dict_from_zero_checkpoint(checkpoints_dir(str(full)), tag="step_00000006")
    saved = [torch.load(rank_file(tag, r), weights_only=False)[SPARSITY] for r in (0, 1)]
    masks = stitch_masks(saved, {k: reference[k].numel() for k in report["layers"]})
    for name, value in reference.items():
        if name in masks:
            value = apply_mask(value, masks[name].view(value.shape))
        assert torch.equal(single[name], value.to(torch.bfloat16)), name


@pytest.mark.multiprocess
def test_damaged_checkpoints_are_refused(runs, tmp_path):
    from ast_ds.checkpoint import CheckpointError, find_checkpoint
    from ast_ds.checkpoint.consolidate import consolidate

    full, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(full, copy)
    ckpts = copy / "checkpoints"
    # a save killed midway: a newer tag without COMPLETE is ignored by --resume auto and refused by path
    partial = ckpts / "step_00000009"
    shutil.copytree(ckpts / "step_00000006", partial)
    os.remove(partial / "COMPLETE")
    assert find_checkpoint(str(ckpts), "auto").endswith("step_00000006")
    with pytest.raises(CheckpointError, match="partial"):
        find_checkpoint(str(partial), str(partial))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_checkpoint(str(ckpts), str(tmp_path / "nope"))
    # a rank file lost or truncated
    tag = ckpts / "step_00000006"
    os.remove(tag / "trainer_rank00001.pt")
    with pytest.raises(CheckpointError, match="incomplete"):
        consolidate(str(tag), str(tmp_path / "out1"))
    with open(tag / "trainer_rank00001.pt", "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        consolidate(str(tag), str(tmp_path / "out2"))
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


@pytest.mark.multiprocess
def test_resume_from_a_corrupted_rank_file_fails_on_every_rank(runs, workspace, tmp_path):
    """One rank's unreadable trainer state must stop every rank with the error (not leave the others
    waiting in the collective load), and the checkpoint stays as it was."""
    full, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(full, copy)
    bad = copy / "checkpoints" / "step_00000006" / "trainer_rank00001.pt"
    bad.write_bytes(b"garbage")
    proc = run_torchrun(TRAIN, 2, train_args(workspace, copy, "--resume", "auto"), timeout=300, check=False)
    assert proc.returncode != 0
    assert "trainer_rank00001.pt" in proc.stderr + proc.stdout and "corrupted" in proc.stderr + proc.stdout
    assert bad.read_bytes() == b"garbage" and (copy / "checkpoints" / "step_00000006" / "COMPLETE").exists()


def short(ws, out, *extra):
    return train_args(ws, out, "--total_steps", "4", "--save_every", "2", "--data.weights_mode", "constant", *extra)


@pytest.mark.multiprocess
def test_slorb_trains_resumes_exactly_and_exports_with_its_loader(workspace, tmp_path):
    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.converters import SLoRBLinear, load_exported
    from ast_ds.evaluate import perplexity

    flags = ("--sparsity.slorb_k", "16")
    run_torchrun(TRAIN, 2, short(workspace, tmp_path / "full", *flags))
    run_torchrun(TRAIN, 2, short(workspace, tmp_path / "split", *flags, "--stop_at", "2"))
    run_torchrun(TRAIN, 2, short(workspace, tmp_path / "split", *flags, "--resume", "auto"))
    a, b = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert [a[s] for s in range(1, 5)] == [b[s] for s in range(1, 5)]
    report = consolidate(str(tmp_path / "full"), str(tmp_path / "hf"), dtype="fp32")
    assert report["all_ok"] and report["pure_nm"] is False and "SLoRB" in report["note"]
    model = load_exported(str(tmp_path / "hf"))
    slorb = [m for m in model.modules() if isinstance(m, SLoRBLinear)]
    assert len(slorb) == 14 and slorb[0].slorb_s.shape == (slorb[0].out_features, slorb[0].in_features // 16)
    # the branch was trained: X moved away from the block indicator it started as
    x = slorb[0].slorb_x.detach()
    assert not torch.equal(x, torch.repeat_interleave(torch.eye(x.shape[0]), 16, dim=1))
    assert 1 < perplexity(str(tmp_path / "hf"), str(workspace / "raw" / "test.txt"), seq_len=32,
                          max_windows=4)["ppl"] < 1e4


@pytest.mark.multiprocess
def test_cast_trains_dense_forward_and_exports_exact_2_4_with_scaling_folded(workspace, tmp_path):
    from transformers import AutoModelForCausalLM

    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.sparsity import verify_nm

    run_torchrun(TRAIN, 2, short(workspace, tmp_path / "cast", "--sparsity.method", "cast",
                                 "--sparsity.scaling_groups", "2", "--sparsity.lam_max", "1e-3"))
    with open(tmp_path / "cast" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert max(float(r["sparsity"]) for r in rows) < 0.05  # CAST trains with a dense forward
    report = consolidate(str(tmp_path / "cast"), str(tmp_path / "hf"), dtype="fp32")
    assert report["all_ok"] and report["pure_nm"] is True
    modules = json.loads((tmp_path / "hf" / "ast_ds_modules.json").read_text())
    assert len(modules["weight_scaling_folded"]) == 14
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for name, p in model.named_parameters():
        assert "cast_scale" not in name
        if name in report["layers"]:
            assert verify_nm(p).ok


@pytest.mark.multiprocess
def test_a_dense_zero2_run_consolidates(workspace, runs, tmp_path):
    """ds_configs/zero2.json (dense runs) writes ZeRO-2 files; consolidation takes DeepSpeed's whole-model
    stitching for them (ZeRO-3 checkpoints are streamed). A dense run's dynamic domain weights take the
    starting model's own eval losses as references: the numbers the AST run measured from the same model
    as its teacher."""
    from transformers import AutoModelForCausalLM

    from ast_ds.checkpoint.consolidate import consolidate

    out = tmp_path / "dense"
    args = train_args(workspace, out, "--mode", "dense", "--total_steps", "2", "--save_every", "0")
    args[1] = os.path.join(ROOT, "ds_configs", "zero2.json")
    run_torchrun(TRAIN, 2, args)
    refs, teacher_refs = (json.load(open(os.path.join(d, "ref_losses.json")))["ref_losses"] for d in (out, runs[0]))
    assert sorted(refs) == sorted(teacher_refs) == ["arith", "code", "facts", "stories"]
    assert all(refs[d] == pytest.approx(teacher_refs[d], rel=1e-5) for d in refs)
    assert losses(out)[2][1] != ""  # the weights moved at step 2 (update_every 2)
    report = consolidate(str(out), str(tmp_path / "hf"), dtype="fp32")
    assert report["all_ok"] and report["num_targets"] == 0 and report["step"] == 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_activation_checkpointing_changes_no_loss(workspace, tmp_path):
    """Recomputing the layers in the backward (HF gradient checkpointing under ZeRO-3, masked forward)
    gives the same losses as keeping the activations."""
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    for out, flag in ((plain, "false"), (recomputed, "true")):
        run_torchrun(TRAIN, 2, train_args(workspace, out, "--total_steps", "3", "--save_every", "0",
                                          "--activation_checkpointing", flag))
    a, b = losses(plain), losses(recomputed)
    assert sorted(a) == [1, 2, 3] and all(float(a[s][0]) == pytest.approx(float(b[s][0]), rel=1e-6) for s in a)
    resolved = json.load(open(os.path.join(recomputed, "config.json")))
    assert resolved["train"]["activation_checkpointing"] is True
