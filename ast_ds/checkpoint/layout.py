"""The checkpoint contract: every path and key of a run's checkpoints is named here and nowhere else.

Layout of a run folder::

    <run>/hf_meta/                     config.json + tokenizer files consolidation copies into exports
    <run>/checkpoints/
        step_00000100/                 one tag per save
            zero_pp_rank_*_model_states.pt, *_optim_states.pt   DeepSpeed (fp32 masters, Adam state, lr schedule;
                                       the shared components' states ride in its client_state)
            trainer_rank00000.pt ...   per rank: the per-rank components' states (loader, RNG, sparsity masks)
            COMPLETE                   JSON meta (mode, pattern, method, ..., step, world_size), written by rank 0
                                       after every rank finished; a tag without it is partial
        latest                         the newest complete tag's name

Saved state, by component key (``CheckpointManager(shared=..., per_rank=...)``):

* shared (the same on every rank; DeepSpeed's ``client_state``): ``trainer`` (step, tokens),
  ``domain_weights`` (the updater: weights, history, reference losses);
* per rank (``trainer_rankNNNNN.pt``): ``loader``, ``rng``, ``sparsity`` (the rank's bit-packed mask
  slices and their layout; None in dense mode).
"""

from __future__ import annotations

import json
import os

CHECKPOINTS = "checkpoints"
HF_META = "hf_meta"
TAG_PREFIX = "step_"
COMPLETE = "COMPLETE"
LATEST = "latest"

# component keys
TRAINER, DOMAIN_WEIGHTS, DECAY = "trainer", "domain_weights", "decay"  # shared (decay: lam_max auto only)
LOADER, RNG, SPARSITY = "loader", "rng", "sparsity"  # per rank
# keys of the COMPLETE meta: written by the manager itself, and the run settings a resume must share
META_STEP, META_WORLD_SIZE = "step", "world_size"
META_MODE, META_PATTERN, META_METHOD, META_SLORB_K, META_SCALING_GROUPS, META_MODEL = (
    "mode", "pattern", "method", "slorb_k", "scaling_groups", "model")
# the version of a rank file's layout; 2: components' states by key (ast_ds >= the checkpoint package)
RANK_FORMAT_KEY, RANK_FORMAT = "format", 2


class CheckpointError(ValueError):
    pass


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def hf_meta_dir(run_dir: str) -> str:
    return os.path.join(run_dir, HF_META)


def tag_name(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def rank_file(tag_dir: str, rank: int) -> str:
    return os.path.join(tag_dir, f"trainer_rank{rank:05d}.pt")


def ds_model_file(tag_dir: str, rank: int) -> str:
    """DeepSpeed's per-rank ZeRO-3 model-states file (param shapes, buffers, lr schedule, client_state)."""
    return os.path.join(tag_dir, f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")


def ds_optim_file(tag_dir: str, rank: int) -> str:
    """DeepSpeed's per-rank ZeRO-3 optimizer file (this rank's fp32 flat partitions and optimizer state).

    DeepSpeed prefixes it with ``bf16_`` when the engine ran in bf16 (``_get_zero_ckpt_prefix``); the name
    that exists is returned, the plain one when neither does (for the error message)."""
    plain = os.path.join(tag_dir, f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    bf16 = os.path.join(tag_dir, f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    return bf16 if not os.path.isfile(plain) and os.path.isfile(bf16) else plain


def is_complete(tag_dir: str) -> bool:
    return os.path.isfile(os.path.join(tag_dir, COMPLETE))


def complete_tags(root: str) -> list[str]:
    """Names of the complete tags under a checkpoints folder, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(t for t in os.listdir(root) if t.startswith(TAG_PREFIX) and is_complete(os.path.join(root, t)))


def find_checkpoint(root: str, resume: str) -> str | None:
    """``resume``: ``auto`` (the newest complete checkpoint under ``root``, or None when there is none),
    or a path to a tag folder (or to a checkpoints folder, meaning its newest complete tag)."""
    if resume == "auto":
        tags = complete_tags(root)
        return os.path.join(root, tags[-1]) if tags else None
    path = resume.rstrip("/")
    if os.path.isdir(path) and not is_complete(path) and complete_tags(path):
        return os.path.join(path, complete_tags(path)[-1])
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder")
    if not is_complete(path):
        raise CheckpointError(f"--resume {resume}: the checkpoint is partial (no {COMPLETE} marker: the save was "
                              f"interrupted); resume from an earlier tag or use --resume auto")
    return path


def resolve_tag_dir(checkpoint: str) -> str:
    """A run folder, its checkpoints folder, or one tag folder -> the (newest complete) tag folder."""
    path = checkpoint.rstrip("/")
    if os.path.isdir(checkpoints_dir(path)):
        path = checkpoints_dir(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"--checkpoint {checkpoint}: no such folder")
    if is_complete(path):
        return path
    tags = complete_tags(path)
    if not tags:
        raise CheckpointError(f"--checkpoint {checkpoint}: no complete checkpoint (no tag with a {COMPLETE} marker; "
                              f"a save that was interrupted is partial and cannot be exported)")
    return os.path.join(path, tags[-1])


def run_dir_of(tag_dir: str) -> str:
    """``<run>`` of ``<run>/checkpoints/<tag>``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(tag_dir)))


def read_meta(tag_dir: str) -> dict:
    try:
        with open(os.path.join(tag_dir, COMPLETE)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{tag_dir}/{COMPLETE} is unreadable ({e}); the checkpoint is corrupted") from None
