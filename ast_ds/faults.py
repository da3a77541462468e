"""Fault injection for the resilience tests, off unless ``$AST_DS_FAULTS`` is set.

``AST_DS_FAULTS`` is a ``;``-separated list of ``KIND@STEP[:ARG...]`` (STEP: the optimizer step being
trained, from 1; RANK: a global rank, default every rank):

* ``nan_loss@3[:RANK]``          the loss of step 3 becomes NaN (its gradients too) on RANK
* ``data_error@3[:RANK]``        reading a batch of step 3 raises OSError on RANK (a file one node cannot read)
* ``signal@3:SIGUSR1[:RANK]``    after step 3, RANK sends itself the signal (a preemption notice)
* ``signal_parent@3:SIGTERM``    after step 3, rank 0 sends the signal to its parent process (the launcher)
* ``signal_supervisor@3:SIGTERM`` after step 3, rank 0 sends the signal to ``launchers/supervise.py``
* ``signal_in_save@3:SIGTERM[:RANK]`` RANK sends itself the signal inside the save of step 3 (a second notice)
* ``kill_in_save@3[:RANK]``      RANK dies by SIGKILL inside the save of step 3, after DeepSpeed's files and
                                 before COMPLETE (a kill inside a save, on purpose)

Nothing here runs in a normal job: every hook returns at once when the variable is empty.
"""

from __future__ import annotations

import os
import signal

ENV = "AST_DS_FAULTS"
KINDS = ("nan_loss", "data_error", "signal", "signal_parent", "signal_supervisor", "signal_in_save", "kill_in_save")


class Faults:
    def __init__(self, spec: str | None = None):
        spec = os.environ.get(ENV, "") if spec is None else spec
        self.entries: list[tuple[str, int, list[str]]] = []
        for item in filter(None, (s.strip() for s in spec.split(";"))):
            kind, _, rest = item.partition("@")
            parts = rest.split(":")
            if kind not in KINDS or not parts[0].isdigit():
                raise ValueError(f"${ENV}: cannot read {item!r}; use KIND@STEP[:ARG...] with KIND in {KINDS}")
            self.entries.append((kind, int(parts[0]), parts[1:]))

    def _match(self, kind: str, step: int, rank: int, rank_arg: int) -> list[list[str]]:
        out = []
        for k, s, args in self.entries:
            if k == kind and s == step and (len(args) <= rank_arg or int(args[rank_arg]) == rank):
                out.append(args)
        return out

    def nan_loss(self, step: int, rank: int) -> bool:
        return bool(self.entries) and bool(self._match("nan_loss", step, rank, 0))

    def data_error(self, step: int, rank: int) -> None:
        if self.entries and self._match("data_error", step, rank, 0):
            raise OSError(f"injected read error (${ENV}) at step {step} on rank {rank}")

    def in_save(self, step: int, rank: int) -> None:
        if not self.entries:
            return
        for args in self._match("signal_in_save", step, rank, 1):
            os.kill(os.getpid(), getattr(signal, args[0]))
        if self._match("kill_in_save", step, rank, 0):
            os.kill(os.getpid(), signal.SIGKILL)

    def after_step(self, step: int, rank: int) -> None:
        if not self.entries:
            return
        for args in self._match("signal", step, rank, 1):
            os.kill(os.getpid(), getattr(signal, args[0]))
        if rank == 0:
            for args in self._match("signal_parent", step, rank, 1):
                os.kill(os.getppid(), getattr(signal, args[0]))
            for args in self._match("signal_supervisor", step, rank, 1):
                from ast_ds.supervise import ENV_PID

                os.kill(int(os.environ[ENV_PID]), getattr(signal, args[0]))
