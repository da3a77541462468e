"""Progress bars that stay readable in log files.

On a terminal :func:`bar` is an ordinary ``tqdm`` bar. When stderr is not a terminal (a SLURM log, a
redirected file, CI), the same bar prints a plain line at most every ``$AST_DS_PROGRESS_SECONDS`` seconds
(default 30) and one when it finishes, instead of a stream of carriage-return refreshes; a transient bar
(``leave=False``, e.g. one per eval domain) prints nothing unless it runs longer than that.
"""

from __future__ import annotations

import io
import os
import sys

ENV = "AST_DS_PROGRESS_SECONDS"


class _Lines(io.TextIOBase):
    """A file for tqdm that turns each refresh into one line (and drops the blank clearing writes)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, as plain periodic lines when stderr is not a terminal."""
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        every = float(os.environ.get(ENV, "30"))
        kwargs.update(file=_Lines(stream), mininterval=every, maxinterval=max(every, 60.0), dynamic_ncols=False,
                      ncols=100, ascii=True)
        if kwargs.get("leave") is False:  # a transient bar: nothing at all unless it runs longer than `every`
            kwargs.setdefault("delay", every)
    else:
        kwargs["file"] = stream
    return tqdm(iterable, **kwargs)
