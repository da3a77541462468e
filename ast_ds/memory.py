"""Peak memory of the training steps, per rank: what ``launchers/plan.py`` predicts.

On a GPU this is ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start of
the loop. On a CPU (tests, the demo, the planner's check) it is the process's peak resident memory
(``VmHWM``, reset at the start of the loop through ``/proc/self/clear_refs``) minus its resident memory
just before the student is built (the interpreter, the libraries, the process group, the data
loader): the memory the training itself holds.
"""

from __future__ import annotations

import torch


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryMeter:
    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.floor = 0

    def set_floor(self) -> None:
        """CPU: what the process holds before the model is built (interpreter, libraries, process group)."""
        if not self.cuda:
            import deepspeed.runtime.engine  # noqa: F401  (library code is not training memory)
            import transformers.modeling_utils  # noqa: F401

            self.floor = (_status_kb("VmRSS") or 0) * 1024

    def reset_peak(self) -> None:
        """Start measuring the peak from now (call before the first training step)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
        except OSError:
            pass

    def peak_bytes(self) -> int | None:
        """Peak bytes since :meth:`reset_peak` (None where the platform cannot say)."""
        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        hwm = _status_kb("VmHWM")
        return None if hwm is None else hwm * 1024 - self.floor
