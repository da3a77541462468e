"""Raw input of data preparation: domains given as ``NAME=PATH``, their jsonl files, and their lines.

A PATH is one ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` file (``.json`` variants too) or a folder
searched recursively for such files (RedPajama keeps one folder per domain); other files in a folder
are ignored. Files are read in sorted order of their path relative to PATH, so document order, and
with it the eval split and the rows, never depends on the file system.

A *document* is one non-blank line. Blank lines are ignored everywhere (they are not documents), so
the document index used to pick the eval split is the same in the counting and the tokenizing pass.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from dataclasses import dataclass
from typing import Iterator

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DataPrepError(ValueError):
    """Bad input to data preparation; the message names the file (and line) and how to fix it."""


@dataclass(frozen=True)
class Domain:
    name: str
    path: str  # as given, made absolute
    files: tuple[str, ...]  # absolute paths, sorted


def parse_input_spec(spec: str) -> tuple[str, str]:
    """``"NAME=PATH"`` → (NAME, PATH), with a clear error for anything else."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise DataPrepError(f"--input {spec!r}: expected NAME=PATH, e.g. --input wiki=/data/redpajama/wikipedia")
    if not DOMAIN_NAME.match(name):
        raise DataPrepError(f"--input {spec!r}: domain name {name!r} must be letters, digits, '_', '-' or '.', "
                            f"starting with a letter or digit (it becomes a folder name)")
    return name, path


def discover_domain(name: str, path: str) -> Domain:
    """The domain's input files; errors for a missing path, a folder without jsonl, a wrong suffix."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise DataPrepError(f"--input {name}={path}: no such file or folder")
    if os.path.isfile(path):
        if not path.endswith(SUFFIXES):
            raise DataPrepError(f"--input {name}={path}: not a jsonl file (expected one of {', '.join(SUFFIXES)})")
        return Domain(name, path, (path,))
    files = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        files += [os.path.join(folder, n) for n in names if n.endswith(SUFFIXES) and not n.startswith(".")]
    if not files:
        raise DataPrepError(f"--input {name}={path}: the folder holds no {', '.join(SUFFIXES)} files")
    return Domain(name, path, tuple(sorted(files, key=lambda f: os.path.relpath(f, path))))


def open_binary(path: str) -> io.BufferedIOBase:
    """The file's decompressed bytes (gzip and zstd by suffix)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise DataPrepError(f"{path}: reading .zst needs the zstandard package "
                                f"(pip install 'ast_ds[zstd]' or pip install zstandard)") from e
        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _read_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return OSError, EOFError
    return OSError, EOFError, zstandard.ZstdError


def iter_documents(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) for every non-blank line of the file."""
    try:
        with open_binary(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except _read_errors() as e:
        raise DataPrepError(f"{path}: cannot read the file ({type(e).__name__}: {e}); "
                            f"is it truncated, or not really {os.path.splitext(path)[1]}?") from e


def count_documents(path: str) -> int:
    """Number of non-blank lines (documents) of one file."""
    return sum(1 for _ in iter_documents(path))
