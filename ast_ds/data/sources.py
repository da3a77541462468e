"""Raw input of data preparation: domains given as ``NAME=PATH``, their files, and their documents.

A PATH is one ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` file (``.json`` variants too), a ``.parquet`` or
``.arrow`` file, a folder searched recursively for such files (RedPajama keeps one folder per domain;
other files are ignored), a Hugging Face ``datasets`` ``save_to_disk`` folder (one split: its
``state.json`` lists the Arrow files in order), or ``hf:NAME[@CONFIG][:SPLIT]``, a dataset that
``datasets.load_dataset(NAME, CONFIG, split=SPLIT, streaming=True)`` can open (a hub name where the machine
has network, or a local folder of data files). Files are read in sorted order of their path relative to
PATH, so document order, and with it the eval split and the rows, never depends on the file system.

A *document* is one non-blank jsonl line, or one record of a table (parquet, Arrow, ``datasets``), handed
on as its JSON line; tables are read a record batch at a time, never whole. Blank lines are ignored
everywhere (they are not documents), so the document index used to pick the eval split is the same in
the counting and the tokenizing pass.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from dataclasses import dataclass
from typing import Iterator

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst", ".parquet", ".arrow")
HUB_PREFIX = "hf:"
BATCH_ROWS = 1024
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


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[@CONFIG][:SPLIT]`` → (NAME, CONFIG, SPLIT); the split defaults to train. NAME is a hub name
    (``allenai/c4``) or a local folder of data files."""
    rest = spec[len(HUB_PREFIX):]
    name, sep, split = rest.rpartition(":")
    if not sep:
        name, split = rest, "train"
    name, _, config = name.partition("@")
    return name, config or None, split or "train"


def _saved_dataset_files(path: str) -> tuple[str, ...] | None:
    """The Arrow files of a ``Dataset.save_to_disk`` folder in order, None if ``path`` is not one."""
    import json

    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        splits = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        raise DataPrepError(f"{path} is a saved DatasetDict; point --input at one split, e.g. "
                            f"{os.path.join(path, splits[0] if splits else 'train')}")
    state = os.path.join(path, "state.json")
    if not os.path.isfile(state):
        return None
    with open(state) as f:
        files = [os.path.join(path, d["filename"]) for d in json.load(f).get("_data_files", [])]
    if not files:
        raise DataPrepError(f"{state} lists no data files; save the dataset again with save_to_disk")
    return tuple(files)


def discover_domain(name: str, path: str) -> Domain:
    """The domain's input files; errors for a missing path, a folder without data files, a wrong suffix."""
    if path.startswith(HUB_PREFIX):
        return Domain(name, path, (path,))
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise DataPrepError(f"--input {name}={path}: no such file or folder")
    if os.path.isfile(path):
        if not path.endswith(SUFFIXES):
            raise DataPrepError(f"--input {name}={path}: not a jsonl file (expected one of {', '.join(SUFFIXES)})")
        return Domain(name, path, (path,))
    saved = _saved_dataset_files(path)
    if saved is not None:
        return Domain(name, path, saved)
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


def _records(path: str) -> Iterator[dict]:
    """The records of a parquet/Arrow file or an ``hf:`` dataset, a batch at a time."""
    if path.startswith(HUB_PREFIX):
        try:
            import datasets
        except ImportError as e:
            raise DataPrepError(f"{path}: reading a Hugging Face dataset needs the datasets package") from e
        name, config, split = parse_hub_spec(path)
        try:
            yield from datasets.load_dataset(name, config, split=split, streaming=True)
        except (FileNotFoundError, ValueError, ConnectionError) as e:
            raise DataPrepError(f"--input {path}: datasets cannot open {name!r} (config {config}, split {split}): "
                                f"{e}") from e
        return
    import pyarrow as pa

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
    else:  # .arrow: the IPC stream format (datasets' save_to_disk) or the file format
        try:
            batches = iter(pa.ipc.open_stream(pa.memory_map(path)))
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(pa.memory_map(path))
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    for batch in batches:
        yield from batch.to_pylist()


def _is_table(path: str) -> bool:
    return path.startswith(HUB_PREFIX) or path.endswith((".parquet", ".arrow"))


def iter_documents(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line or record number, the document as a JSON line) for every document of the file."""
    if _is_table(path):
        import json

        try:
            for index, record in enumerate(_records(path), 1):
                yield index, json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
        except DataPrepError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow's assorted errors on a damaged file
            raise DataPrepError(f"{path}: cannot read the table ({type(e).__name__}: {e}); is it truncated or "
                                f"not really {os.path.splitext(path)[1] or 'a dataset'}?") from e
        return
    try:
        with open_binary(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except _read_errors() as e:
        raise DataPrepError(f"{path}: cannot read the file ({type(e).__name__}: {e}); "
                            f"is it truncated, or not really {os.path.splitext(path)[1]}?") from e


def count_documents(path: str) -> int:
    """Number of documents of one file (a parquet file's from its metadata; others by a pass)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # noqa: BLE001
            raise DataPrepError(f"{path}: cannot read the parquet metadata ({type(e).__name__}: {e})") from e
    return sum(1 for _ in iter_documents(path))
