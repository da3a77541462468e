"""The one module that talks to ``torch.distributed`` for the trainer's own collectives.

* who we are: :func:`rank_world` (explicit values, else the process group, else ``$RANK``/``$WORLD_SIZE``),
  :func:`is_rank_zero`;
* where a collective's tensor lives: :func:`reduce_device` (NCCL refuses CPU tensors, gloo takes them);
* the collectives: :func:`all_reduce_floats` (sum, mean, min, max of a few numbers, float64),
  :func:`agree` (every rank learns whether every rank is fine) and :func:`raise_if_any` (an error on one
  rank is raised on all of them *before* the next collective, so nothing hangs), :func:`barrier`.

Every function here that communicates must be called by every rank, never inside a rank branch.
Without an initialised process group they act on this process alone (world size 1), so single-process
tools and tests use the same code. The masks' partition-local exchanges (``ast_ds.zero``) use the
ZeRO sub-group and stay there; their device also comes from :func:`reduce_device`.
"""

from __future__ import annotations

import os

import torch

_OPS = ("sum", "mean", "min", "max")


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torch.distributed's, else ``$RANK``/``$WORLD_SIZE``, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
    if rank is None:
        if initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    return int(rank), int(world_size)


def is_rank_zero() -> bool:
    return rank_world()[0] == 0


def reduce_device(group=None) -> torch.device:
    """The device a collective's tensors must live on: the current CUDA device under NCCL, else the CPU."""
    if initialized() and torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_floats(values, op: str = "sum", *, group=None) -> list[float]:
    """``values`` reduced over the ranks (float64); every rank gets the same list. Collective."""
    if op not in _OPS:
        raise ValueError(f"op={op!r} must be one of {_OPS}")
    values = [float(v) for v in values]
    if not initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=reduce_device(group))
    reduce_op = {"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}.get(
        op, torch.distributed.ReduceOp.SUM)
    torch.distributed.all_reduce(t, op=reduce_op, group=group)
    if op == "mean":
        t = t / torch.distributed.get_world_size(group)
    return t.cpu().tolist()


def agree(ok: bool, *, group=None) -> bool:
    """True only when ``ok`` holds on every rank. Collective: call it on every rank before the collective
    that a local failure would otherwise leave the other ranks waiting in."""
    return all_reduce_floats([1.0 if ok else 0.0], "min", group=group)[0] == 1.0


class PeerError(RuntimeError):
    """Another rank failed; this rank stops too instead of waiting in the next collective."""


def raise_if_any(error: BaseException | None, *, what: str, group=None) -> None:
    """Collective: when any rank has an ``error``, every rank raises (its own error, or a
    :class:`PeerError` naming the failing rank), so a failure on one rank never leaves the others
    waiting in a collective. Call it on every rank after the fallible local work."""
    failing = int(all_reduce_floats([rank_world()[0] if error is not None else -1], "max", group=group)[0])
    if error is not None:
        raise error
    if failing >= 0:
        raise PeerError(f"rank {failing} failed while {what} (its log shows the error); this rank stops too")


def barrier(group=None) -> None:
    if initialized():
        torch.distributed.barrier(group=group)
