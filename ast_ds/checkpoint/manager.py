"""One checkpoint manager: given the engine and the stateful components once, it saves and restores
them all (DeepSpeed's sharded engine state plus every component's ``state_dict``), in the layout of
``ast_ds.checkpoint.layout``.

    manager = CheckpointManager(run_dir, engine=engine, keep_last=3, meta={...},
                                shared={"trainer": counters, "domain_weights": updater},
                                per_rank={"loader": loader, "rng": RNGState(), "sparsity": sparsity})
    manager.resume("auto")      # collective: restores engine + components, or leaves them as built
    manager.save(step)          # collective

A save killed midway leaves a tag without COMPLETE; ``resume auto`` ignores it and the previous tag,
which ``latest`` still names, is untouched. Old complete tags beyond ``keep_last`` are removed after
the new one is complete; a complete tag is never deleted to re-save its step. Components are restored
in the order given (shared first), after the engine, so a component may touch the restored engine
(the sparsity masks rewrite the working weights).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Protocol

import torch

from ast_ds import collectives
from ast_ds.atomic import atomic_path, fsync_file, fsync_tree, write_json_atomic, write_text_atomic
from ast_ds.checkpoint.layout import (LATEST, META_STEP, META_WORLD_SIZE, RANK_FORMAT, RANK_FORMAT_KEY, CheckpointError,
                                      checkpoints_dir, complete_tags, find_checkpoint, is_complete, rank_file, read_meta,
                                      tag_name)
from ast_ds.faults import Faults
from ast_ds.checkpoint.layout import COMPLETE as _COMPLETE

log = logging.getLogger("ast_ds")


class Stateful(Protocol):
    """``state_dict``/``load_state_dict``; ``load_state_dict`` must be local (no collective). A component
    that needs a collective after every rank restored (the masks rewrite the working weights) defines
    ``after_restore()``, which the manager calls on every rank once all loads succeeded everywhere."""

    def state_dict(self) -> dict | None: ...

    def load_state_dict(self, state: dict | None) -> None: ...


class RNGState:
    """This process's torch RNGs (CPU, and CUDA when present) as a component."""

    def state_dict(self) -> dict:
        return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    def __init__(self, run_dir: str, *, engine, shared: dict[str, Stateful], per_rank: dict[str, Stateful],
                 meta: dict, keep_last: int):
        """``meta``: settings a resumed run must share with the saved one (mode, pattern, ...), written
        into COMPLETE and checked on load. ``shared``: components whose state is the same on every rank
        (saved once, in DeepSpeed's client_state); ``per_rank``: the others (one file per rank)."""
        clash = set(shared) & set(per_rank)
        if clash:
            raise ValueError(f"component keys {sorted(clash)} are both shared and per rank")
        self.root = checkpoints_dir(run_dir)
        self.engine, self.shared, self.per_rank = engine, shared, per_rank
        self.meta, self.keep_last = dict(meta), keep_last

    # ---------------------------------------------------------------------------------------- save
    def save(self, step: int) -> str:
        """Collective: every rank calls. Returns the tag folder."""
        rank, world = collectives.rank_world()
        path = os.path.join(self.root, tag_name(step))
        if is_complete(path):
            # this step is already saved (e.g. a finished run resumed with --resume auto): the state at a
            # given step is the same under exact resume, and deleting it first would risk losing it
            collectives.barrier()
            return path
        if rank == 0 and os.path.isdir(path):  # a stale partial save of the same step
            shutil.rmtree(path)
        collectives.barrier()
        client_state = {key: c.state_dict() for key, c in self.shared.items()}
        # the per-rank states are taken after DeepSpeed's save; nothing in it changes them
        self.engine.save_checkpoint(self.root, tag=tag_name(step), client_state=client_state, save_latest=False)
        Faults().in_save(step, rank)  # tests only ($AST_DS_FAULTS): a kill -9 between DeepSpeed's files and COMPLETE
        error = None
        try:
            with atomic_path(rank_file(path, rank)) as tmp:
                torch.save({RANK_FORMAT_KEY: RANK_FORMAT, **{key: c.state_dict() for key, c in self.per_rank.items()}},
                           tmp)
        except OSError as e:  # a full disk on one node: every rank stops, the tag stays partial (no COMPLETE)
            error = e
        collectives.raise_if_any(error, what=f"writing its trainer state into {path}")
        fsync_tree(path, rank=rank, world_size=world)  # DeepSpeed's files and ours reach the disk before COMPLETE
        collectives.barrier()
        if rank == 0:
            write_json_atomic(os.path.join(path, _COMPLETE), dict(self.meta, **{META_STEP: step,
                                                                                META_WORLD_SIZE: world}),
                              indent=None)
            fsync_file(path)
            write_text_atomic(os.path.join(self.root, LATEST), tag_name(step))
            for old in complete_tags(self.root)[:-self.keep_last]:
                # unmark first: a deletion cut short leaves a partial tag, never a "complete" one with holes
                os.remove(os.path.join(self.root, old, _COMPLETE))
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        collectives.barrier()
        return path

    def last_good(self) -> str | None:
        """The newest complete checkpoint (what ``--resume auto`` would load), or None."""
        return find_checkpoint(self.root, "auto")

    # ---------------------------------------------------------------------------------------- load
    def resume(self, resume: str | None) -> str | None:
        """Restore from ``resume`` (``auto`` or a path; None: do nothing). Collective. Returns the tag
        folder restored, or None when there was nothing to restore."""
        if not resume:
            return None
        tag_dir = find_checkpoint(self.root, resume)
        if tag_dir is None:
            log.info("resume auto: no complete checkpoint in %s, starting from step 0", self.root)
            return None
        self.load(tag_dir)
        return tag_dir

    def load(self, tag_dir: str) -> None:
        """Restore the engine and every component from ``tag_dir``. Collective."""
        self._check_meta(tag_dir)
        rank_state, error = self._read_rank_state(tag_dir)
        # agree before the collective load: a rank raising alone would leave the others waiting in it
        if not collectives.agree(error is None):
            raise CheckpointError(f"{error or 'another rank cannot read its trainer state'} in {tag_dir}; the "
                                  f"checkpoint is corrupted, resume from an earlier tag")
        root, tag = os.path.split(tag_dir.rstrip("/"))
        try:
            load_path, client_state = self.engine.load_checkpoint(root, tag=tag)
        except Exception as e:  # noqa: BLE001 - DeepSpeed raises assorted errors on damaged files
            raise CheckpointError(f"DeepSpeed could not load {tag_dir} ({type(e).__name__}: {e}); the checkpoint is "
                                  f"corrupted or from another configuration") from None
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint files in {tag_dir}")
        error = None
        try:  # local loads only; a state that does not fit this run fails on every rank together
            for key, component in self.shared.items():
                component.load_state_dict(client_state[key])
            for key, component in self.per_rank.items():
                component.load_state_dict(rank_state[key])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            error = CheckpointError(f"{tag_dir}: the saved state does not fit this run ({type(e).__name__}: {e}); "
                                    f"resume with the settings it was saved with")
        collectives.raise_if_any(error, what=f"restoring {tag_dir}")
        for component in (*self.shared.values(), *self.per_rank.values()):
            if hasattr(component, "after_restore"):
                component.after_restore()

    def _check_meta(self, tag_dir: str) -> None:
        meta = read_meta(tag_dir)
        world = collectives.rank_world()[1]
        if meta.get(META_WORLD_SIZE) != world:
            raise CheckpointError(f"{tag_dir} was saved by {meta.get(META_WORLD_SIZE)} ranks, this run has {world}; "
                                  f"resume with the same number of processes")
        for key, value in self.meta.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{tag_dir}: saved {key}={meta.get(key)!r} but this run has {value!r}; resume "
                                      f"with the same settings")

    def _read_rank_state(self, tag_dir: str) -> tuple[dict | None, str | None]:
        path = rank_file(tag_dir, collectives.rank_world()[0])
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupted file
            return None, f"cannot read {path} ({type(e).__name__}: {e})"
        if not isinstance(state, dict) or state.get(RANK_FORMAT_KEY) != RANK_FORMAT:
            found = state.get(RANK_FORMAT_KEY, 1) if isinstance(state, dict) else "?"
            return None, (f"{path} has rank-state format {found}, this version reads {RANK_FORMAT} (saved by an older "
                          f"ast_ds; consolidate it with that version, or restart the run)")
        missing = [key for key in self.per_rank if key not in state]
        if missing:
            return None, f"{path} lacks the state of {missing} (saved by another version of the trainer)"
        return state, None
