"""What keeps a long run safe on a shared cluster: preemption signals and non-finite steps.

* :class:`PreemptionGuard` turns the configured signals (SIGTERM, SIGUSR1 by default: SLURM sends
  SIGUSR1 some minutes before the time limit with ``#SBATCH --signal=USR1@300``, and SIGTERM at it)
  into a flag. The handler only records the signal; the loop finishes the optimizer step it is in,
  the ranks agree (one all-reduce), every rank writes the checkpoint of that step and the job exits 0.
  Further signals during the save are logged and ignored, so they cannot interrupt it.
* :class:`NonFiniteGuard` decides, with every rank, whether a step went non-finite: a NaN/inf loss on
  any rank, a non-finite global gradient norm, or a step DeepSpeed skipped itself ("OVERFLOW! Skipping
  step": ZeRO-3 skips a step whose gradient norm is not finite, even in fp32). Such a step is skipped
  (DeepSpeed leaves the weights, the optimizer moments and the masks untouched; the loop logs it) and
  after ``patience`` consecutive ones the run stops with :class:`NonFiniteError`, naming the last good
  checkpoint.

Both decisions are made in one all-reduce per step (:func:`agree_step`), on every rank, so no rank
stops or skips alone.
"""

from __future__ import annotations

import logging
import math
import signal
from typing import Callable

from ast_ds import collectives

log = logging.getLogger("ast_ds")


class NonFiniteError(RuntimeError):
    """The run diverged: too many consecutive non-finite steps, or a non-finite weight before a save."""


def signal_numbers(names: list[str]) -> list[int]:
    """``["SIGTERM", "USR1"]`` -> signal numbers; unknown names raise naming the field."""
    out = []
    for name in names:
        full = name if name.upper().startswith("SIG") else "SIG" + name
        number = getattr(signal, full.upper(), None)
        if not isinstance(number, int):
            raise ValueError(f"config field preempt_signals: unknown signal {name!r} (e.g. SIGTERM, SIGUSR1)")
        out.append(int(number))
    return out


class PreemptionGuard:
    """Records the configured signals while installed (``with PreemptionGuard([...]) as guard:``)."""

    def __init__(self, names: list[str]):
        self.numbers = signal_numbers(names)
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("received %s: finishing the current step, then saving a checkpoint and exiting", name)
        else:
            log.warning("received %s again: ignored, the checkpoint is being written", name)

    def __enter__(self) -> "PreemptionGuard":
        for number in self.numbers:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def agree_step(*, bad: bool, preempted: bool) -> tuple[bool, bool]:
    """Collective: (any rank had a non-finite step, any rank was signalled)."""
    bad_any, preempted_any = collectives.all_reduce_floats([float(bad), float(preempted)], "max")
    return bad_any > 0, preempted_any > 0


class NonFiniteGuard:
    """Counts consecutive non-finite steps (the decision itself is agreed with :func:`agree_step`)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.consecutive = 0
        self.total = 0

    @staticmethod
    def local_bad(losses: list[float], *, grad_norm: float | None, engine_skipped: bool) -> bool:
        """This rank's view: a non-finite loss of any micro-batch, a non-finite norm, or an engine skip."""
        norm_bad = grad_norm is not None and not math.isfinite(grad_norm)
        return engine_skipped or norm_bad or not all(math.isfinite(v) for v in losses)

    def record(self, step: int, bad: bool, *, detail: Callable[[], str], last_good: Callable[[], str | None]) -> None:
        """After the agreed decision: log a skipped step; raise after ``patience`` in a row. ``detail`` and
        ``last_good`` (a folder scan) are called only for a non-finite step, never on the good path."""
        if not bad:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        detail = detail()
        log.warning("step %d: non-finite (%s); the step was skipped: weights, optimizer moments and masks are "
                    "unchanged (%d in a row, %d in all)", step, detail, self.consecutive, self.total)
        if self.consecutive >= self.patience:
            last_good = last_good()
            raise NonFiniteError(
                f"stopping: {self.consecutive} consecutive non-finite steps (last at step {step}: {detail}). "
                f"The last good checkpoint is {last_good or 'none (no checkpoint was written yet)'}; it is intact. "
                f"Lower optim.lr, raise optim.warmup_steps or check the data, then resume from it with "
                f"--resume {last_good or 'auto'}")


def weights_finite(engine) -> bool:
    """Whether this rank's fp32 master weights (the partitions its optimizer steps) are all finite."""
    import torch

    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps the torch optimizer
    return all(bool(torch.isfinite(p).all()) for g in inner.param_groups for p in g["params"])
