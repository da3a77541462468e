"""Flip rate and initial flip rate (paper appendix 6.7).

r_t = ||m(W_t) − m(W_{t−1})||₁ / D and i_t = ||m(W_t) − m(W_0)||₁ / D, D = number of target weights.
Each rank counts on its own elements; :func:`reduce_flip_counts` sums the counts over ranks so every
rank reports the same global rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def flip_count(new: torch.Tensor, old: torch.Tensor) -> int:
    """Number of positions where two masks differ."""
    return int((new != old).sum())


@dataclass
class FlipCounter:
    """Counts accumulated since the last mask refresh was reported (local to one rank)."""

    flips: int = 0
    init_flips: int = 0
    numel: int = 0

    def add(self, *, new: torch.Tensor, old: torch.Tensor, initial: torch.Tensor | None) -> None:
        self.flips += flip_count(new, old)
        if initial is not None:
            self.init_flips += flip_count(new, initial)
        self.numel += new.numel()

    def reset(self) -> None:
        self.flips = self.init_flips = self.numel = 0


def reduce_flip_counts(counter: FlipCounter, *, group=None) -> dict[str, float]:
    """All-reduce the counts over ``group`` (every rank must call) and return the global rates.

    Without an initialised process group the local counts are the global ones.
    """
    from ast_ds.collectives import all_reduce_floats

    flips, init_flips, numel = all_reduce_floats([counter.flips, counter.init_flips, counter.numel], group=group)
    return {"flip_rate": flips / numel if numel else 0.0,
            "init_flip_rate": init_flips / numel if numel else 0.0,
            "mask_numel": int(numel)}
