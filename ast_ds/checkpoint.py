"""Sharded checkpoints: DeepSpeed's own ZeRO checkpoint plus the trainer's state, in one place.

Layout of ``<run>/checkpoints/``::

    step_00000100/                 one tag per save
        zero_pp_rank_*_model_states.pt, *_optim_states.pt   DeepSpeed (fp32 masters, Adam state, lr schedule)
        trainer_rank00000.pt ...   per rank: loader state, sparsity masks, RNG (written temp + rename)
        COMPLETE                   written by rank 0 after every rank finished; a tag without it is partial
    latest                         the newest complete tag (temp + rename)

``client_state`` holds what is the same on every rank (step, tokens, domain weights, config hash).
A save killed midway leaves a tag without COMPLETE; ``resume auto`` ignores it and the previous tag,
which ``latest`` still names, is untouched. Old complete tags beyond ``keep_last`` are removed.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
import torch.distributed as dist

COMPLETE = "COMPLETE"


class CheckpointError(ValueError):
    pass


def _tag(step: int) -> str:
    return f"step_{step:08d}"


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def complete_tags(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    return sorted(t for t in os.listdir(root) if t.startswith("step_") and
                  os.path.isfile(os.path.join(root, t, COMPLETE)))


def find_checkpoint(root: str, resume: str) -> str | None:
    """``resume``: ``auto`` (the newest complete checkpoint under ``root``, or None when there is none),
    or a path to a tag folder (or to a checkpoints folder, meaning its newest complete tag)."""
    if resume == "auto":
        tags = complete_tags(root)
        return os.path.join(root, tags[-1]) if tags else None
    path = resume.rstrip("/")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, COMPLETE)) and complete_tags(path):
        return os.path.join(path, complete_tags(path)[-1])
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder")
    if not os.path.isfile(os.path.join(path, COMPLETE)):
        raise CheckpointError(f"--resume {resume}: the checkpoint is partial (no {COMPLETE} marker: the save was "
                              f"interrupted); resume from an earlier tag or use --resume auto")
    return path


def read_meta(tag_dir: str) -> dict:
    try:
        with open(os.path.join(tag_dir, COMPLETE)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{tag_dir}/{COMPLETE} is unreadable ({e}); the checkpoint is corrupted") from None


class Checkpointer:
    def __init__(self, root: str, *, keep_last: int):
        self.root = root
        self.keep_last = keep_last

    def save(self, engine, *, step: int, client_state: dict, rank_state: dict, meta: dict) -> str:
        """Collective: every rank calls. Returns the tag folder."""
        rank = dist.get_rank()
        tag = _tag(step)
        path = os.path.join(self.root, tag)
        if os.path.isfile(os.path.join(path, COMPLETE)):
            # this step is already saved (e.g. a finished run resumed with --resume auto): the state at a
            # given step is the same under exact resume, and deleting it first would risk losing it
            dist.barrier()
            return path
        if rank == 0 and os.path.isdir(path):  # a stale partial save of the same step
            shutil.rmtree(path)
        dist.barrier()
        engine.save_checkpoint(self.root, tag=tag, client_state=client_state, save_latest=False)
        tmp = os.path.join(path, f"trainer_rank{rank:05d}.pt.tmp")
        torch.save(rank_state, tmp)
        os.replace(tmp, os.path.join(path, f"trainer_rank{rank:05d}.pt"))
        dist.barrier()
        if rank == 0:
            _atomic_write(os.path.join(path, COMPLETE), json.dumps(dict(meta, step=step,
                                                                        world_size=dist.get_world_size())))
            _atomic_write(os.path.join(self.root, "latest"), tag)
            for old in complete_tags(self.root)[:-self.keep_last]:
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        dist.barrier()
        return path

    @staticmethod
    def load(engine, tag_dir: str, *, expect_meta: dict) -> tuple[dict, dict]:
        """Collective. Restores the engine and returns ``(client_state, this rank's trainer state)``."""
        meta = read_meta(tag_dir)
        world = dist.get_world_size()
        if meta.get("world_size") != world:
            raise CheckpointError(f"{tag_dir} was saved by {meta.get('world_size')} ranks, this run has {world}; "
                                  f"resume with the same number of processes")
        for key, value in expect_meta.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{tag_dir}: saved {key}={meta.get(key)!r} but this run has {value!r}; resume "
                                      f"with the same settings")
        rank_file = os.path.join(tag_dir, f"trainer_rank{dist.get_rank():05d}.pt")
        error = None
        try:
            rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupted file
            error = f"cannot read {rank_file} ({type(e).__name__}: {e})"
        # agree before the collective load: a rank raising alone would leave the others waiting in it
        from deepspeed.accelerator import get_accelerator

        ok = torch.tensor([0.0 if error else 1.0], device=get_accelerator().current_device_name())
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() < 1.0:
            raise CheckpointError(f"{error or 'another rank cannot read its trainer state'} in {tag_dir}; the "
                                  f"checkpoint is corrupted, resume from an earlier tag")
        root, tag = os.path.split(tag_dir.rstrip("/"))
        try:
            load_path, client_state = engine.load_checkpoint(root, tag=tag)
        except Exception as e:  # noqa: BLE001 - DeepSpeed raises assorted errors on damaged files
            raise CheckpointError(f"DeepSpeed could not load {tag_dir} ({type(e).__name__}: {e}); the checkpoint is "
                                  f"corrupted or from another configuration") from None
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint files in {tag_dir}")
        return client_state, rank_state
