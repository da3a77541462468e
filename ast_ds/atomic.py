"""Atomic file writes: the one place that spells "write a temporary name, fsync, rename".

A reader (or a resumed job) sees either the old file or the complete new one, never a half-written
file; a crash leaves at most a ``<root>.tmp-<pid><ext>`` beside it (harmless; safe to delete).

    with atomic_path("curves.png") as tmp:      # any writer that takes a path (savefig, torch.save, gzip)
        fig.savefig(tmp)
    write_json_atomic("results.json", results)
    write_text_atomic("latest", "step_00000100")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator


def fsync_file(path: str) -> None:
    """Flush ``path``'s bytes to the storage device (a rename is durable only after its data is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str, *, rank: int = 0, world_size: int = 1) -> None:
    """fsync the files below ``folder`` (this rank's share: every ``world_size``-th of the sorted list)
    and the folders themselves, so a marker written after this cannot outlive missing bytes on a power
    loss."""
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)
    for path in paths[rank::world_size]:
        fsync_file(path)
    for d, _, _ in os.walk(folder):
        fsync_file(d)


@contextlib.contextmanager
def atomic_path(path: str, *, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension, so writers that look at it behave); on a
    clean exit fsync it and rename it onto ``path``; on an error remove it and leave ``path`` as it was."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def publish_dir(tmp: str, out: str) -> None:
    """Replace the folder ``out`` by the finished folder ``tmp`` (same parent) with renames: ``out`` is
    moved aside first and deleted only after ``tmp`` took its place, so a complete folder always exists."""
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(os.path.abspath(out)))
        os.rename(out, os.path.join(old, "previous"))
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def write_text_atomic(path: str, text: str, *, fsync: bool = True) -> None:
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str, obj, *, indent: int | None = 2, fsync: bool = True) -> None:
    """``obj`` as JSON (trailing newline) through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n", fsync=fsync)
