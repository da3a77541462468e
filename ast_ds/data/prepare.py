"""Data preparation: jsonl documents per domain → fixed-length token rows in MDS shards + a manifest.

``prepare(...)`` is the library entry point; ``data_prep/prepare.py`` is its command line
(``build_arg_parser`` / ``main``). What it writes is described in ``ast_ds.data.manifest`` and the
packing rule in ``ast_ds.data.packing``.

How it runs:

1. Every input is resolved to its files, and the arguments, the tokenizer hash and the input files'
   sizes and modification times form the run's *config*. If the manifest in ``DIR`` holds the same
   config, the output is up to date and nothing is done; a different config is refused unless
   ``overwrite``.
2. A counting pass reads every file once to number the documents (non-blank lines); the eval
   documents of each domain are then drawn from that count with a generator seeded by
   (seed, domain name), so the choice is the same whatever the number of workers.
3. The main process reads the lines in chunks and hands them, in order, to ``workers`` tokenizer
   processes (none when ``workers == 1``); at most ``2 · workers`` chunks are in flight. Results come
   back in input order and are packed into rows and written by the main process, so the output is
   byte-identical for any number of workers.
4. Everything is written into a temporary folder next to DIR (``.DIR.tmp-*``), the manifest last,
   and published with a rename. A crash leaves no DIR that looks complete.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Iterator

import numpy as np

from ast_ds.atomic import publish_dir, write_json_atomic
from ast_ds.data.manifest import (FORMAT, LOSS_MASK_COLUMN, MANIFEST_NAME, SPLITS, TOKENS_COLUMN, VERSION, SplitCounts, format_counts,
                                  split_dir)
from ast_ds.data.packing import RowPacker, choose_eval_docs, eval_doc_count, token_dtype
from ast_ds.data.sources import HUB_PREFIX, DataPrepError, Domain, count_documents, discover_domain, iter_documents, \
    parse_input_spec
from ast_ds.data.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # raw text per work item handed to a tokenizer process
CHUNK_LINES = 4096


# Argument groups of the command line (``build_arg_parser``), in the order ``--help`` lists them.
INPUT, TOKENIZATION, EVAL_SPLIT, OUTPUT = ("input", "tokenization",
                                           "eval split (documents held out per domain, disjoint from train)", "output")


def _option(default=MISSING, *, group: str, help: str, exclusive: str | None = None):
    """A ``PrepareOptions`` field: its default (none: required) and its flag ``--<name>`` in ``group`` with
    ``help``; flags with the same ``exclusive`` name are mutually exclusive."""
    return field(default=default, metadata={"group": group, "help": help, "exclusive": exclusive})


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides the output (``workers`` and ``progress`` do not): the one definition of
    ``prepare``'s keyword options and of the command line's flags of the same names (``build_arg_parser``).

    The fields, in this order, also make up the run's config in the manifest (``_run_config``), so a
    field added here reaches the flags, ``prepare(...)`` and the up-to-date check at once."""

    tokenizer: str = _option(group=TOKENIZATION,
                             help="a SentencePiece .model file or a Hugging Face tokenizer folder")
    seq_len: int = _option(4096, group=TOKENIZATION,
                           help="tokens per row; documents are packed as [BOS] ids [EOS] back to back, the final "
                                "tail of each domain and split (< seq_len tokens) is dropped and counted")
    text_field: str = _option("text", group=INPUT, help="the JSON field that holds each document's text")
    prompt_field: str = _option("", group=INPUT,
                                help="instruction data: the JSON field of each example's prompt (with "
                                     "--response_field); rows then carry a loss mask that is 1 on response tokens only")
    response_field: str = _option("", group=INPUT, help="instruction data: the JSON field of each example's response")
    eval_fraction: float = _option(0.01, group=EVAL_SPLIT, exclusive="eval size",
                                   help="fraction of each domain's documents held out (at least one when > 0; "
                                        "0 = no eval split)")
    eval_docs: int | None = _option(None, group=EVAL_SPLIT, exclusive="eval size",
                                    help="number of documents per domain held out (instead of --eval_fraction)")
    seed: int = _option(0, group=EVAL_SPLIT, help="seed of the eval-document choice")
    skip_bad_lines: bool = _option(False, group=INPUT,
                                   help="skip (and count in the manifest) lines with malformed JSON, no text field "
                                        "or bad UTF-8, instead of stopping with an error naming the file and line")
    shard_size_limit: int = _option(1 << 26, group=OUTPUT, help="bytes per MDS shard file")

    def __post_init__(self):
        if self.seq_len < 2:
            raise DataPrepError(f"--seq_len {self.seq_len}: must be >= 2")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise DataPrepError(f"--eval_fraction {self.eval_fraction}: must lie in [0, 1)")
        if self.eval_docs is not None and self.eval_docs < 0:
            raise DataPrepError(f"--eval_docs {self.eval_docs}: must be >= 0")
        if not self.text_field:
            raise DataPrepError("--text_field: must not be empty")
        if bool(self.prompt_field) != bool(self.response_field):
            raise DataPrepError("--prompt_field and --response_field go together (instruction data); set both or "
                                "neither")

    @classmethod
    def from_kwargs(cls, options: dict) -> PrepareOptions:
        """``cls(**options)``, with a ``TypeError`` that names any keyword that is no option."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"prepare() got unknown option(s) {', '.join(unknown)}; the options are "
                            f"{', '.join(names)}, plus out, workers, overwrite and progress")
        return cls(**options)


@dataclass
class PrepareResult:
    out: str
    manifest: dict
    up_to_date: bool  # True: the output already matched the arguments and nothing was written


def prepare(inputs: dict[str, str] | list[str], *, out: str, workers: int = 1, overwrite: bool = False,
            progress: bool = True, **options) -> PrepareResult:
    """Tokenize ``inputs`` ({domain: path} or ["domain=path", ...]) into ``out``; see the module doc.

    ``options`` are the fields of ``PrepareOptions`` (``tokenizer=`` is required; ``seq_len=``,
    ``eval_fraction=`` ...). Raises ``DataPrepError`` (bad input, with file and line) or
    ``TokenizerError``; on any error no ``out`` is created or changed. With ``workers > 1`` the
    tokenizer processes are spawned, so a script calling this must do so under
    ``if __name__ == "__main__":``.
    """
    opts = PrepareOptions.from_kwargs(options)
    if workers < 1:
        raise DataPrepError(f"--workers {workers}: must be >= 1")
    domains = _resolve_inputs(inputs)
    tok = load_tokenizer(opts.tokenizer)
    config = _run_config(domains, opts, tok.sha256())
    out = os.path.abspath(out)

    existing = _existing_config(out)
    if existing is not None and existing.get("config") == config:
        logger.info("%s is up to date (same arguments, tokenizer and input files); nothing to do", out)
        return PrepareResult(out, existing, up_to_date=True)
    if os.path.exists(out) and not overwrite:
        if existing is None:
            why = f"it exists and is not a prepared corpus (no readable {MANIFEST_NAME})"
        else:
            why = "it was prepared with different " + ", ".join(_config_diff(existing.get("config", {}), config))
        raise DataPrepError(f"--out {out}: {why}; pass --overwrite to replace it, or choose another --out")

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    stale = sorted(n for n in os.listdir(parent) if n.startswith(f".{os.path.basename(out)}.tmp-"))
    if stale:
        logger.warning("%s: %s left by an interrupted run (not in use unless another prepare of %s is running); "
                       "safe to delete", parent, ", ".join(stale), out)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        manifest = _prepare_into(tmp, domains=domains, opts=opts, tok=tok, config=config, workers=workers,
                                 progress=progress)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out, manifest, up_to_date=False)


def _resolve_inputs(inputs: dict[str, str] | list[str]) -> list[Domain]:
    pairs = [parse_input_spec(s) for s in inputs] if isinstance(inputs, (list, tuple)) else list(inputs.items())
    if not pairs:
        raise DataPrepError("no --input given; pass one --input NAME=PATH per domain")
    names = [n for n, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataPrepError(f"--input: domain name(s) {', '.join(dupes)} given more than once; "
                            f"list several files of one domain as a folder instead")
    return [discover_domain(*parse_input_spec(f"{n}={p}")) for n, p in pairs]


def _run_config(domains: list[Domain], opts: PrepareOptions, tokenizer_sha256: str) -> dict:
    """What the output depends on; equal configs mean an equal output."""
    inputs = {}
    for d in domains:
        files = []
        for f in d.files:
            if f.startswith(HUB_PREFIX):  # a datasets name: nothing on disk to stat (its revision is datasets' business)
                files.append([f, None, None])
                continue
            st = os.stat(f)
            files.append([os.path.relpath(f, d.path) if f != d.path else os.path.basename(f), st.st_size,
                          st.st_mtime_ns])
        inputs[d.name] = {"path": d.path, "files": files}
    options = {k: v for k, v in asdict(opts).items() if k != "tokenizer"}  # in field order
    return {"domains": [d.name for d in domains], "inputs": inputs,
            "tokenizer": {"path": os.path.abspath(opts.tokenizer), "sha256": tokenizer_sha256}, **options}


def _existing_config(out: str) -> dict | None:
    try:
        with open(os.path.join(out, MANIFEST_NAME)) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _config_diff(old: dict, new: dict) -> list[str]:
    keys = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    return [("input files" if k == "inputs" else k) for k in keys] or ["arguments"]


# --------------------------------------------------------------------------------------------------
# Tokenization work items (run in worker processes, or in-process when workers == 1)


@dataclass
class Chunk:
    domain: str
    path: str
    linenos: list[int]
    lines: list[bytes]
    is_eval: np.ndarray  # bool per line


@dataclass
class ChunkResult:
    domain: str
    tokens: dict[str, np.ndarray]  # split → concatenated [BOS] + ids + [EOS] of the kept documents
    counts: dict[str, SplitCounts]  # only the docs_* fields are set here
    error: str | None = None
    loss_mask: dict[str, np.ndarray] | None = None  # instruction data: 1 where a token is a response token


@dataclass(frozen=True)
class WorkerSettings:
    tokenizer: str
    text_field: str
    skip_bad_lines: bool
    dtype: str
    prompt_field: str = ""
    response_field: str = ""


_WORKER: dict = {}


def _init_worker(settings: WorkerSettings) -> None:
    _WORKER.update(tok=load_tokenizer(settings.tokenizer), text_field=settings.text_field,
                   pair=(settings.prompt_field, settings.response_field) if settings.prompt_field else None,
                   skip_bad_lines=settings.skip_bad_lines, dtype=np.dtype(settings.dtype))


def _parse_line(line: bytes, *, path: str, lineno: int, text_field: str,
                pair: tuple[str, str] | None = None) -> tuple[str | tuple[str, str] | None, str | None]:
    """(text, None) or (None, error message naming the file and line); with ``pair`` (prompt and response
    fields) the text is the (prompt, response) tuple."""
    where = f"{path}:{lineno}"
    fix = "fix the line or pass --skip_bad_lines"
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"{where}: not valid UTF-8 (byte {e.start} of the line: {line[e.start:e.start + 4]!r}); " \
                     f"re-encode the file as UTF-8 or pass --skip_bad_lines"
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as e:
        return None, f"{where}: malformed JSON ({e.msg} at column {e.colno}); {fix}"
    values = []
    for name, flag in ((pair[0], "--prompt_field"), (pair[1], "--response_field")) if pair else ((text_field, "--text_field"),):
        if not isinstance(obj, dict) or name not in obj:
            keys = sorted(obj)[:8] if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"
            return None, f"{where}: no {name!r} field (found: {keys}); set {flag} or {fix}"
        if not isinstance(obj[name], str):
            return None, f"{where}: field {name!r} is a JSON {type(obj[name]).__name__}, not a string; {fix}"
        values.append(obj[name])
    return (tuple(values) if pair else values[0]), None


def tokenize_chunk(chunk: Chunk) -> ChunkResult:
    tok, field_name, dtype = _WORKER["tok"], _WORKER["text_field"], _WORKER["dtype"]
    ids = {s: [] for s in SPLITS}
    pair = _WORKER.get("pair")
    masks = {s: [] for s in SPLITS} if pair else None
    counts = {s: SplitCounts() for s in SPLITS}
    bos, eos = tok.bos_id, tok.eos_id
    for lineno, line, is_eval in zip(chunk.linenos, chunk.lines, chunk.is_eval):
        split = "eval" if is_eval else "train"
        c = counts[split]
        c.docs_read += 1
        text, error = _parse_line(line, path=chunk.path, lineno=lineno, text_field=field_name, pair=pair)
        if text is not None and not (text[1] if pair else text).strip():  # an example without a response: empty
            c.docs_skipped_empty += 1
            continue
        if text is not None:
            try:
                if pair:
                    prompt_ids, response_ids = tok.encode(text[0]) if text[0] else [], tok.encode(text[1])
                    encoded = prompt_ids + response_ids
                else:
                    encoded = tok.encode(text)
            except UnicodeEncodeError as e:
                error = f"{chunk.path}:{lineno}: text is not encodable as UTF-8 ({e.reason}, e.g. an unpaired " \
                        f"surrogate escape); fix the line or pass --skip_bad_lines"
        if error is not None:
            if not _WORKER["skip_bad_lines"]:
                return ChunkResult(chunk.domain, {}, counts, error=error)
            c.docs_skipped_bad += 1
            continue
        out = ids[split]
        out.append(bos)
        out.extend(encoded)
        out.append(eos)
        if pair:  # the loss covers the response and its EOS; BOS and the prompt are context only
            masks[split].extend([0] * (1 + len(prompt_ids)) + [1] * (len(response_ids) + 1))
        c.docs_written += 1
    return ChunkResult(chunk.domain, {s: np.asarray(v, dtype) for s, v in ids.items()}, counts,
                       loss_mask={s: np.asarray(v, np.uint8) for s, v in masks.items()} if pair else None)


def _chunks(domains: list[Domain], eval_docs: dict[str, np.ndarray]) -> Iterator[Chunk]:
    for d in domains:
        eval_idx = eval_docs[d.name]
        doc = 0
        for path in d.files:
            linenos, lines, nbytes = [], [], 0
            for lineno, line in iter_documents(path):
                linenos.append(lineno)
                lines.append(line)
                nbytes += len(line)
                if nbytes >= CHUNK_BYTES or len(lines) >= CHUNK_LINES:
                    yield _make_chunk(d.name, path=path, linenos=linenos, lines=lines, first_doc=doc, eval_idx=eval_idx)
                    doc += len(lines)
                    linenos, lines, nbytes = [], [], 0
            if lines:
                yield _make_chunk(d.name, path=path, linenos=linenos, lines=lines, first_doc=doc, eval_idx=eval_idx)
                doc += len(lines)


def _make_chunk(domain: str, *, path: str, linenos: list[int], lines: list[bytes], first_doc: int,
                eval_idx: np.ndarray) -> Chunk:
    docs = np.arange(first_doc, first_doc + len(lines))
    return Chunk(domain, path, linenos, lines, np.isin(docs, eval_idx))


@contextlib.contextmanager
def _tokenizer_pool(workers: int, settings: WorkerSettings):
    """``workers`` tokenizer processes (None: tokenize in this process when ``workers == 1``).

    Started before the counting pass so that their start-up overlaps it; terminated on exit, also
    on an error."""
    if workers == 1:
        _init_worker(settings)
        yield None
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ctx.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
        yield pool


def _ordered_results(chunks: Iterator[Chunk], pool) -> Iterator[ChunkResult]:
    """``tokenize_chunk`` over ``chunks`` in order; in ``pool`` with at most 2 chunks per process in flight."""
    if pool is None:
        yield from map(tokenize_chunk, chunks)
        return
    pending = collections.deque()
    for chunk in chunks:
        pending.append(pool.apply_async(tokenize_chunk, (chunk,)))
        if len(pending) >= 2 * pool._processes:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class _DomainOutput:
    """Packers and MDS writers of one domain's splits."""

    packers: dict[str, RowPacker]
    writers: dict
    counts: dict[str, SplitCounts] = field(default_factory=lambda: {s: SplitCounts() for s in SPLITS})
    mask_packers: dict[str, RowPacker] | None = None  # instruction data: the loss mask, packed alongside

    def add(self, result: ChunkResult) -> None:
        for split, c in result.counts.items():
            self.counts[split].add(c)
        for split, tokens in result.tokens.items():
            if not len(tokens):
                continue
            rows = self.packers[split].add(tokens)
            if self.mask_packers is None:
                for row in rows:
                    self.writers[split].write({TOKENS_COLUMN: row})
            else:
                for row, mask in zip(rows, self.mask_packers[split].add(result.loss_mask[split])):
                    self.writers[split].write({TOKENS_COLUMN: row, LOSS_MASK_COLUMN: mask})
            self.counts[split].rows += len(rows)

    def finish(self, seq_len: int) -> None:
        for split, writer in self.writers.items():
            writer.finish()
            c = self.counts[split]
            c.tokens_written = c.rows * seq_len
            c.tokens_dropped = self.packers[split].tail


def _prepare_into(tmp: str, *, domains: list[Domain], opts: PrepareOptions, tok, config: dict, workers: int,
                  progress: bool) -> dict:
    started = time.time()
    dtype = token_dtype(tok.vocab_size)
    for special, value in (("bos_id", tok.bos_id), ("eos_id", tok.eos_id)):
        if not 0 <= value < tok.vocab_size:
            raise DataPrepError(f"--tokenizer {opts.tokenizer}: {special}={value} lies outside the vocabulary "
                                f"(size {tok.vocab_size})")
    settings = WorkerSettings(opts.tokenizer, opts.text_field, opts.skip_bad_lines, dtype.name, opts.prompt_field,
                              opts.response_field)
    with _tokenizer_pool(workers, settings) as pool:
        n_docs, eval_idx = _count_and_choose_eval(domains, opts, progress=progress)
        tok.save_to(os.path.join(tmp, "tokenizer"))
        outputs = _tokenize_and_write(tmp, domains=domains, opts=opts, pool=pool, dtype=dtype, n_docs=n_docs,
                                      eval_idx=eval_idx, progress=progress)

    domain_entries = {}
    for d in domains:
        _check_split_has_rows(d, counts=outputs[d.name].counts, seq_len=opts.seq_len,
                              has_eval=bool(len(eval_idx[d.name])))
        domain_entries[d.name] = {"path": d.path, "files": len(d.files),
                                  **{s: outputs[d.name].counts[s].to_dict() for s in SPLITS}}
    manifest = {
        "format": FORMAT, "version": VERSION,
        "seq_len": opts.seq_len, "dtype": dtype.name, "column": TOKENS_COLUMN,
        "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
        "tokenizer": {"path": os.path.abspath(opts.tokenizer), "kind": tok.kind,
                      "sha256": config["tokenizer"]["sha256"], "copy": "tokenizer"},
        "packing": "[BOS] + ids + [EOS] per document, concatenated per domain and split, cut into rows of seq_len "
                   "tokens; the final tail (< seq_len tokens) is dropped and counted as tokens_dropped",
        "domains": domain_entries,
        "seconds": round(time.time() - started, 3),
        "config": config,
    }
    write_json_atomic(os.path.join(tmp, MANIFEST_NAME), manifest)
    return manifest


def _count_and_choose_eval(domains: list[Domain], opts: PrepareOptions, *,
                           progress: bool) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The counting pass: documents per domain, and the sorted indices of each domain's eval documents."""
    from ast_ds.progress import bar as tqdm

    n_docs, eval_idx = {}, {}
    bar = tqdm(total=sum(len(d.files) for d in domains), desc="counting documents", unit="file",
               disable=not progress)
    for d in domains:
        n_docs[d.name] = 0
        for f in d.files:
            n_docs[d.name] += count_documents(f)
            bar.update(1)
        if n_docs[d.name] == 0:
            raise DataPrepError(f"--input {d.name}={d.path}: the domain is empty (its {len(d.files)} file(s) "
                                f"hold no documents); remove it or point it at data")
        try:
            k = eval_doc_count(n_docs[d.name], eval_fraction=opts.eval_fraction, eval_docs=opts.eval_docs)
        except ValueError as e:
            raise DataPrepError(f"domain {d.name}: {e}; lower --eval_fraction / --eval_docs or add documents") from e
        eval_idx[d.name] = choose_eval_docs(n_docs[d.name], k, seed=opts.seed, domain=d.name)
    bar.close()
    return n_docs, eval_idx


def _tokenize_and_write(tmp: str, *, domains: list[Domain], opts: PrepareOptions, pool, dtype: np.dtype,
                        n_docs: dict[str, int], eval_idx: dict[str, np.ndarray],
                        progress: bool) -> dict[str, _DomainOutput]:
    from streaming import MDSWriter
    from ast_ds.progress import bar as tqdm

    column = {TOKENS_COLUMN: f"ndarray:{dtype.name}:{opts.seq_len}"}
    if opts.prompt_field:
        column[LOSS_MASK_COLUMN] = f"ndarray:uint8:{opts.seq_len}"
    outputs: dict[str, _DomainOutput] = {}
    for d in domains:
        splits = SPLITS if len(eval_idx[d.name]) else ("train",)
        outputs[d.name] = _DomainOutput(
            packers={s: RowPacker(opts.seq_len, dtype) for s in splits},
            writers={s: MDSWriter(out=split_dir(tmp, d.name, s), columns=column, size_limit=opts.shard_size_limit)
                     for s in splits},
            mask_packers={s: RowPacker(opts.seq_len, np.uint8) for s in splits} if opts.prompt_field else None)
    bar = tqdm(total=sum(n_docs.values()), desc="tokenizing", unit="doc", disable=not progress)
    results = _ordered_results(_chunks(domains, eval_idx), pool)
    try:
        for result in results:
            if result.error is not None:
                raise DataPrepError(result.error)
            outputs[result.domain].add(result)
            bar.update(sum(c.docs_read for c in result.counts.values()))
    finally:
        results.close()
        bar.close()
    for o in outputs.values():
        o.finish(opts.seq_len)
    return outputs


def _check_split_has_rows(d: Domain, *, counts: dict[str, SplitCounts], seq_len: int, has_eval: bool) -> None:
    for split in SPLITS if has_eval else ("train",):
        c = counts[split]
        if c.rows == 0:
            more = "--eval_fraction / --eval_docs" if split == "eval" else "data"
            raise DataPrepError(f"domain {d.name} ({d.path}): its {split} split has {c.docs_written} usable "
                                f"document(s) with {c.tokens_dropped} tokens, less than one row of --seq_len "
                                f"{seq_len}; lower --seq_len or raise {more}")


# --------------------------------------------------------------------------------------------------
# Command line (data_prep/prepare.py)


def build_arg_parser() -> argparse.ArgumentParser:
    """The flags of ``PrepareOptions`` (generated from its fields) plus those of the run only."""
    p = argparse.ArgumentParser(
        prog="data_prep/prepare.py",
        description="Tokenize jsonl documents per domain into fixed-length token rows in MDS shards "
                    f"(DIR/<domain>/{{train,eval}}/) with DIR/{MANIFEST_NAME}. Rerunning with the same arguments "
                    "does nothing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {name: p.add_argument_group(name) for name in (INPUT, TOKENIZATION, EVAL_SPLIT, OUTPUT)}
    groups[INPUT].add_argument(
        "--input", action="append", required=True, metavar="NAME=PATH",
        help="a domain: NAME (its folder name in the output) = a .jsonl/.jsonl.gz/.jsonl.zst file or a folder "
             "searched recursively for them (RedPajama: one folder per domain); repeat per domain")
    groups[OUTPUT].add_argument("--out", required=True, metavar="DIR",
                                help="output folder; written via a temporary folder next to it and published by "
                                     "rename")
    groups[OUTPUT].add_argument("--overwrite", action="store_true",
                                help="replace an existing DIR that was prepared with different arguments or input "
                                     "files")
    _add_option_flags(groups)
    groups[TOKENIZATION].add_argument("--workers", type=int, default=1,
                                      help="tokenizer processes (1 = tokenize in this process)")
    groups[OUTPUT].add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def _add_option_flags(groups: dict) -> None:
    """One flag ``--<name>`` per ``PrepareOptions`` field, in the argument group ``groups[<its group>]``:
    the field's type, default and help (a bool: a switch)."""
    hints = typing.get_type_hints(PrepareOptions)
    exclusive = {}  # name → mutually exclusive group
    for f in fields(PrepareOptions):
        group, help_text, together = f.metadata["group"], f.metadata["help"], f.metadata["exclusive"]
        target = groups[group]
        if together is not None:
            if together not in exclusive:
                exclusive[together] = target.add_mutually_exclusive_group()
            target = exclusive[together]
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])  # X | None
        if kind is bool:
            kw = {"action": argparse.BooleanOptionalAction if f.default is True else "store_true"}
        else:
            kw = {"type": kind}
        kw.update({"required": True} if f.default is MISSING else {"default": f.default})
        target.add_argument(f"--{f.name}", help=help_text, **kw)


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ast_ds.data.tokenizer import TokenizerError

    options = {f.name: getattr(args, f.name) for f in fields(PrepareOptions)}
    try:
        result = prepare(args.input, out=args.out, workers=args.workers, overwrite=args.overwrite,
                         progress=not args.no_progress, **options)
    except (DataPrepError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.up_to_date:
        print(f"{result.out} is up to date (same arguments, tokenizer and input files); nothing to do")
    else:
        print(f"wrote {result.out}")
    print(format_counts(result.manifest))
    return 0
