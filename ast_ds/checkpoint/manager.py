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
                                      checkpoints_dir, complete_tags, ds_model_file, ds_optim_file, find_checkpoint,
                                      is_complete, rank_file, read_meta, tag_name)
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

    def load_resharded(self, states: list[dict]) -> None:
        """At another world size, rank r continues saved rank r mod W's generators (no uninterrupted
        run at the new size has this exact state; nothing in training draws from them but dropout)."""
        self.load_state_dict(states[collectives.rank_world()[0] % len(states)])


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
        folder restored, or None when there was nothing to restore. Every rank must find the same
        checkpoint: a folder one node cannot see (node-local disks) stops every rank with the fix."""
        if not resume:
            return None
        tag_dir, error = None, None
        try:
            tag_dir = find_checkpoint(self.root, resume)
        except CheckpointError as e:
            error = e
        collectives.raise_if_any(error, what=f"finding the checkpoint to resume ({resume})")
        step = float(read_meta(tag_dir)[META_STEP]) if tag_dir else -1.0
        low, high = (collectives.all_reduce_floats([step], op)[0] for op in ("min", "max"))
        if low != high:
            raise CheckpointError(
                f"the ranks do not see the same checkpoints in {self.root}: this rank (rank "
                f"{collectives.rank_world()[0]}) finds {tag_dir or 'none'}, others find a checkpoint of step "
                f"{int(high) if step != high else int(low)}. --out_dir must be one folder shared by every node (a "
                f"shared file system), not a node-local disk; copy the checkpoint there and resume")
        if tag_dir is None:
            log.info("resume auto: no complete checkpoint in %s, starting from step 0", self.root)
            return None
        self.load(tag_dir)
        return tag_dir

    def load(self, tag_dir: str) -> None:
        """Restore the engine and every component from ``tag_dir``. Collective. A checkpoint of another
        world size is re-partitioned on the fly (:meth:`_load_repartitioned`)."""
        saved_world = self._check_meta(tag_dir)
        if saved_world != collectives.rank_world()[1]:
            return self._load_repartitioned(tag_dir, saved_world)
        rank = collectives.rank_world()[0]
        rank_state, error = self._read_rank_state(tag_dir, rank)
        missing = [f for f in (ds_model_file(tag_dir, rank), ds_optim_file(tag_dir, rank)) if not os.path.isfile(f)]
        if error is None and missing:
            error = (f"rank {rank} cannot see {', '.join(os.path.basename(f) for f in missing)} (is --out_dir a shared "
                     f"folder on every node?)")
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
        self._restore_components(tag_dir, client_state,
                                 lambda key, component: component.load_state_dict(rank_state[key]))

    def _load_repartitioned(self, tag_dir: str, saved_world: int) -> None:
        """Resume a checkpoint of ``saved_world`` ranks on this run's number of ranks: every rank reads the
        elements of its new slices from all saved ranks' files (``ast_ds.zero.repartition``) and every saved
        rank's component states (``load_resharded``); nothing is converted on disk."""
        from ast_ds.checkpoint.zero3_files import Zero3Files
        from ast_ds.zero.adapter import write_masters_to_working
        from ast_ds.zero.repartition import fill_partitions

        rank, world = collectives.rank_world()
        if rank == 0:
            log.info("%s was saved by %d ranks; resuming on %d: re-partitioning the fp32 masters, optimizer "
                     "moments, masks and loader position from the saved files (exact, nothing recomputed)",
                     tag_dir, saved_world, world)
        states, files, error = [], None, None
        for r in range(saved_world):
            state, error = self._read_rank_state(tag_dir, r)
            if error:
                break
            states.append(state)
        if error is None:
            try:
                files = Zero3Files(tag_dir, saved_world)
            except CheckpointError as e:
                error = str(e)
        if not collectives.agree(error is None):
            raise CheckpointError(f"{error or 'another rank cannot read the saved files'} in {tag_dir}; resume from "
                                  f"an earlier tag, or on {saved_world} ranks")
        missing = [key for key, c in self.per_rank.items() if not hasattr(c, "load_resharded")]
        if missing:
            raise CheckpointError(f"the components {missing} cannot be resumed on another number of ranks; resume "
                                  f"{tag_dir} on {saved_world} ranks")
        error = None
        try:
            fill_partitions(self.engine, files)  # local
        except (CheckpointError, KeyError, ValueError, IndexError, RuntimeError) as e:
            error = CheckpointError(f"cannot re-partition {tag_dir} onto {world} ranks ({type(e).__name__}: {e})")
        collectives.raise_if_any(error, what=f"re-partitioning {tag_dir}")
        write_masters_to_working(self.engine.optimizer)  # collective; the masks re-apply theirs in after_restore
        self._restore_components(tag_dir, files.client_state(),
                                 lambda key, component: component.load_resharded([s[key] for s in states]))

    def _restore_components(self, tag_dir: str, client_state: dict, load_per_rank) -> None:
        error = None
        try:  # local loads only; a state that does not fit this run fails on every rank together
            for key, component in self.shared.items():
                component.load_state_dict(client_state[key])
            for key, component in self.per_rank.items():
                load_per_rank(key, component)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            error = CheckpointError(f"{tag_dir}: the saved state does not fit this run ({type(e).__name__}: {e}); "
                                    f"resume with the settings it was saved with")
        collectives.raise_if_any(error, what=f"restoring {tag_dir}")
        for component in (*self.shared.values(), *self.per_rank.values()):
            if hasattr(component, "after_restore"):
                component.after_restore()

    def _check_meta(self, tag_dir: str) -> int:
        """Refuse a checkpoint of other settings; return the number of ranks that saved it."""
        meta = read_meta(tag_dir)
        for key, value in self.meta.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{tag_dir}: saved {key}={meta.get(key)!r} but this run has {value!r}; resume "
                                      f"with the same settings")
        return int(meta.get(META_WORLD_SIZE) or 0)

    def _read_rank_state(self, tag_dir: str, rank: int) -> tuple[dict | None, str | None]:
        path = rank_file(tag_dir, rank)
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
