"""Run a launcher (``deepspeed ...`` or ``torchrun ...``) so that a preemption signal reaches the training
ranks only, and the job's exit code is the ranks' own.

Why this exists: DeepSpeed's per-node launcher (0.19, ``deepspeed/launcher/launch.py``) answers SIGTERM by
sending SIGTERM to every rank, SIGKILLing whatever is left after 30 s and exiting 1 whatever the ranks
did; SIGUSR1 (SLURM's usual warning signal) simply ends the launcher and the ``deepspeed`` runner above
it (its default action). So a preempted job either loses a save that takes longer than 30 s or reports
failure after saving correctly. The supervisor puts the launcher in its own session (so a terminal's or
a batch shell's signal does not reach it), and on SIGTERM/SIGUSR1 sends the signal to the rank processes
alone. The ranks finish their step, agree, save and exit 0 (``ast_ds/guards.py``); the launcher then
sees every rank succeed and exits 0, and so does the supervisor. A second signal is forwarded too (the
ranks log and ignore it while saving). SIGINT (Ctrl-C) goes to the whole launcher session, as it would
without the supervisor.

A rank process is one whose environment has ``LOCAL_RANK`` and whose parent's does not (both launchers
set it per rank; DataLoader workers and compiler children inherit it from their rank and are skipped).
A signal that arrives before the ranks exist is held and forwarded once they appear.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

ENV_PID = "AST_DS_SUPERVISOR_PID"  # set for the launched command (the fault hook in ast_ds/faults.py uses it)
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


def _log(msg: str) -> None:
    print(f"[supervise] {msg}", file=sys.stderr, flush=True)


def _has_local_rank(proc: psutil.Process) -> bool:
    try:
        return "LOCAL_RANK" in proc.environ()
    except (psutil.Error, OSError):
        return False


def rank_processes(root_pid: int) -> list[psutil.Process]:
    """The training ranks below ``root_pid``: processes with ``LOCAL_RANK`` whose parent has none."""
    try:
        tree = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    ranks = []
    for proc in tree:
        try:
            parent = proc.parent()
        except psutil.Error:
            continue
        if _has_local_rank(proc) and (parent is None or not _has_local_rank(parent)):
            ranks.append(proc)
    return ranks


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it (killed by signal N → 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(cmd: list[str], signals: tuple[str, ...] = DEFAULT_SIGNALS, poll_s: float = 0.1) -> int:
    """Run ``cmd`` in a new session, forward ``signals`` to its ranks, return its exit code."""
    pending: list[int] = []
    numbers = [signal.Signals[name].value for name in signals]

    def record(signum, frame):
        pending.append(signum)

    previous = {n: signal.signal(n, record) for n in (*numbers, signal.SIGINT)}  # before the child exists
    held_logged = False
    try:
        child = subprocess.Popen(cmd, start_new_session=True, env=dict(os.environ, **{ENV_PID: str(os.getpid())}))
        while child.poll() is None:
            if signal.SIGINT in pending:
                _log("SIGINT: interrupting the launcher and its ranks")
                pending[:] = [s for s in pending if s != signal.SIGINT]
                try:
                    os.killpg(child.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
            if pending:
                ranks = rank_processes(child.pid)
                if ranks:
                    for signum in pending:
                        for proc in ranks:
                            try:
                                proc.send_signal(signum)
                            except psutil.NoSuchProcess:
                                pass
                        _log(f"{signal.Signals(signum).name}: forwarded to {len(ranks)} rank process(es) "
                             f"({', '.join(str(p.pid) for p in ranks)}); the launcher itself is left alone")
                    pending.clear()
                    held_logged = False
                elif not held_logged:
                    _log(f"{signal.Signals(pending[0]).name}: no rank process yet; holding it until the ranks start")
                    held_logged = True
            time.sleep(poll_s)
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)
    code = exit_code(child.returncode)
    _log(f"the launcher exited with {code}")
    return code
