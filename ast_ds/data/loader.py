"""Multi-domain training loader over prepared MDS shards, with domain weights that can change.

One mosaicml-streaming ``StreamingDataset`` per domain and split (``Corpus.split``) does the shard work:
a local folder, or a remote URL with a local cache (``ast_ds.data.corpus``); shards are fetched when a
row in them is first read. Rows are read by index; the order is ours:

The stream is defined per **global batch** (``global_batch`` rows: every rank's micro-batches of
one optimizer step together) and does not depend on the world size:

- **Which domain each row comes from**: at the start of a global batch, ``global_batch`` draws from
  the current weights (read from their owner, the ``DomainWeightUpdater``) with one PCG64 generator
  seeded by ``seed``. Every rank draws the same sequence.
- **Which row of a domain**: per domain and epoch, a permutation of its rows seeded by (seed, domain
  name, epoch). The draws of a global batch take the next rows of their domain's permutation in
  order (a domain that runs out starts its next epoch with a new permutation; no row is skipped);
  a domain cycles on its own, independent of the others.
- **Which rank reads what**: micro-batch k of rank r of W is positions ``[(k·W + r)·B, (k·W + r + 1)·B)``
  of the global batch (B = ``micro_batch``). Ranks (on every node: the rank is global) read disjoint
  rows, and together exactly the global batch.

So the global batches, and the per-domain positions after each of them, are the same at any world
size (only which rank reads which row differs): a run resumed on another number of ranks reads
exactly the rows the uninterrupted run at that size would, none twice and none skipped.

The whole state (generator state, per-domain cursor and epoch at the start of the current global
batch, and the micro-batches of it already read) is a few hundred bytes; a loader restored from
``state_dict()``, with its weights' owner restored from its own, yields exactly the batches the
uninterrupted one would, at the same or another world size (a state taken between optimizer steps).

We use streaming for reading, caching and remote download, not its iteration, because its stream
weights are fixed at construction (no mid-epoch re-weighting) and its resume state counts samples
per epoch, not per domain. Creating a split's dataset synchronises the ranks of a node through
streaming (a ``torch.distributed`` barrier when a process group exists), so every rank must build
its loaders and call ``eval_batches`` for the same domains in the same order.

Setting ``$AST_DS_ROW_LOG`` to a folder makes every rank append, per micro-batch, the (domain,
row index) pairs it read to ``rows_rank<r>.jsonl`` there: a debugging aid, and how the multi-node
test proves that nodes read disjoint rows.

The per-epoch permutation costs 8 bytes per row of a domain (4 when it has < 2^31 rows) on each rank.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Iterator

import numpy as np
import torch

from ast_ds.collectives import rank_world
from ast_ds.data.corpus import Corpus
from ast_ds.data.domain_weights import DomainWeightUpdater
from ast_ds.data.manifest import SPLITS
from ast_ds.data.packing import domain_seed

logger = logging.getLogger(__name__)

ROW_LOG_ENV = "AST_DS_ROW_LOG"
STATE_VERSION = 3  # 2: the domain weights moved to their owner; 3: the stream is per global batch


def _to_batch(rows: np.ndarray, domain: np.ndarray, loss_mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    batch = {"input_ids": torch.from_numpy(rows.astype(np.int64)),
             "domain": torch.from_numpy(np.asarray(domain, dtype=np.int64))}
    if loss_mask is not None:  # instruction data: 1 where the token is a target (a response token)
        batch["loss_mask"] = torch.from_numpy(loss_mask.astype(np.bool_))
    return batch


def labels_of(batch: dict[str, torch.Tensor], ignore_index: int = -100) -> torch.Tensor:
    """Next-token labels of a batch: position t predicts token t+1, ignored where that token is not a target
    (instruction data: prompt tokens) and at the last position."""
    from ast_ds.distill import shift_labels

    labels = shift_labels(batch["input_ids"], ignore_index)
    if "loss_mask" in batch:
        labels[:, :-1][~batch["loss_mask"][:, 1:]] = ignore_index
    return labels


def _stack_masks(masks: list[np.ndarray | None], seq_len: int) -> np.ndarray | None:
    """The rows' loss masks when any row has one (all ones for a row of a text domain mixed in), else None."""
    if all(m is None for m in masks):
        return None
    return np.stack([m if m is not None else np.ones(seq_len, np.uint8) for m in masks])


class MultiDomainLoader:
    """Infinite micro-batches ``{"input_ids": LongTensor[B, T], "domain": LongTensor[B]}`` mixed by weight
    (plus ``"loss_mask"``: BoolTensor[B, T] for instruction data, see :func:`labels_of`).

    ``domains`` (default: all, in manifest order) fixes the domain index used in ``batch["domain"]``.
    ``global_batch`` (default ``micro_batch`` × world size) is the rows of one optimizer step over all
    ranks; a multiple of ``micro_batch`` × world size. ``weights`` is the owner of the domain weights,
    a :class:`DomainWeightUpdater` over the same domains
    (the trainer's, which changes them between batches), or a mapping for constant weights, or None for
    weights proportional to each domain's rows; the loader only reads them (``domain_weights``).
    """

    def __init__(self, corpus: Corpus, *, domains: list[str] | None = None, split: str = "train",
                 micro_batch: int, global_batch: int | None = None,
                 weights: DomainWeightUpdater | dict[str, float] | None = None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch} must be >= 1")
        self.corpus, self.split, self.micro_batch, self.seed = corpus, split, int(micro_batch), int(seed)
        self.domains = list(domains) if domains is not None else corpus.domains
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains={self.domains}: need at least one, without repeats")
        self.seq_len, self.vocab_size = corpus.seq_len, corpus.vocab_size
        self.rank, self.world_size = rank_world(rank, world_size)
        per_round = self.micro_batch * self.world_size
        self.global_batch = per_round if global_batch is None else int(global_batch)
        if self.global_batch < 1 or self.global_batch % per_round:
            raise ValueError(f"global_batch={global_batch} must be a positive multiple of micro_batch x world size "
                             f"= {self.micro_batch} x {self.world_size}")
        rows = {d: corpus.rows(d, split) for d in self.domains}
        self._readers = [corpus.split(d, split) for d in self.domains]
        for d, reader in zip(self.domains, self._readers):
            if len(reader) == 0:
                raise ValueError(f"domain {d!r} {split} split has no rows; prepare more data or leave the domain out")
        if not isinstance(weights, DomainWeightUpdater):
            weights = DomainWeightUpdater(domains=self.domains, weights=rows if weights is None else weights)
        if weights.domains != self.domains:
            raise ValueError(f"the domain weights are for {weights.domains}, the loader reads {self.domains}")
        self.domain_weights = weights
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._cursor = [0] * len(self.domains)
        self._epoch = [0] * len(self.domains)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}
        self.batches = 0
        self._plan: tuple[np.ndarray, np.ndarray] | None = None  # (domain, row) of every row of the global batch
        self._start: dict | None = None  # generator, cursors and epochs before the plan was drawn
        self._read = 0  # micro-batches of the current global batch this rank has read
        log_dir = os.environ.get(ROW_LOG_ENV)
        self._row_log = os.path.join(log_dir, f"rows_rank{self.rank}.jsonl") if log_dir else None

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.domain_weights.weights)

    # ---- iteration

    def __iter__(self):
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._plan is None:
            self._draw_plan()
        domains, rows = self._plan
        lo = (self._read * self.world_size + self.rank) * self.micro_batch
        mine = slice(lo, lo + self.micro_batch)
        read = [self._readers[int(d)].read([int(i)]) for d, i in zip(domains[mine], rows[mine])]
        batch = np.stack([r[0] for r, _ in read])
        masks = _stack_masks([m[0] if m is not None else None for _, m in read], batch.shape[1])
        if self._row_log:
            with open(self._row_log, "a") as f:
                f.write(json.dumps({"batch": self.batches, "rows": [[self.domains[int(d)], int(i)] for d, i in
                                                                     zip(domains[mine], rows[mine])]}) + "\n")
        self.batches += 1
        self._read += 1
        if self._read * self.world_size * self.micro_batch == self.global_batch:
            self._plan, self._start, self._read = None, None, 0
        return _to_batch(batch, domains[mine], masks)

    def _draw_plan(self) -> None:
        """The domains and rows of the next global batch (the same on every rank)."""
        self._start = self._position()
        domains = self._rng.choice(len(self.domains), size=self.global_batch, p=self.domain_weights.probabilities)
        self._plan = (domains, np.array([self._take(int(d)) for d in domains], dtype=np.int64))

    def _take(self, d: int) -> int:
        """The next row index of domain ``d`` (the same on every rank)."""
        if self._cursor[d] >= len(self._readers[d]):
            self._epoch[d] += 1
            self._cursor[d] = 0
        index = int(self._permutation(d)[self._cursor[d]])
        self._cursor[d] += 1
        return index

    def _permutation(self, d: int) -> np.ndarray:
        epoch = self._epoch[d]
        cached = self._perms.get(d)
        if cached is None or cached[0] != epoch:
            n = len(self._readers[d])
            rng = np.random.default_rng(domain_seed(self.seed, self.domains[d]) + [epoch])
            perm = rng.permutation(n).astype(np.int32 if n < 2 ** 31 else np.int64)
            self._perms[d] = cached = (epoch, perm)
        return cached[1]

    # ---- checkpointing

    def _position(self) -> dict:
        return {"rng": self._rng.bit_generator.state, "cursor": dict(zip(self.domains, self._cursor)),
                "epoch": dict(zip(self.domains, self._epoch))}

    def state_dict(self) -> dict:
        """Small and JSON-serialisable: generator state, per-domain cursor and epoch at the start of the
        current global batch, and how many of its micro-batches this rank read (the weights are their
        owner's state). Between optimizer steps it is the same on every rank and at every world size."""
        position = self._position() if self._plan is None else self._start
        return {"version": STATE_VERSION, "domains": list(self.domains), "split": self.split, "seed": self.seed,
                "global_batch": self.global_batch, "world_size": self.world_size, **position,
                "read_in_batch": self._read, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this code reads {STATE_VERSION}")
        for key in ("domains", "split", "seed", "global_batch"):
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{key}={getattr(self, key)!r}; build the loader as in the saved run")
        read = int(state["read_in_batch"])
        if read and state["world_size"] != self.world_size:
            raise ValueError(f"loader state taken inside a global batch (after {read} micro-batches) at world size "
                             f"{state['world_size']} cannot be resumed at {self.world_size}; save between steps")
        self._rng.bit_generator.state = state["rng"]
        self._cursor = [int(state["cursor"][d]) for d in self.domains]
        self._epoch = [int(state["epoch"][d]) for d in self.domains]
        self.batches = int(state["batches"]) * int(state["world_size"]) // self.world_size  # this rank's micro-batches
        self._plan, self._start, self._read = None, None, 0
        if read:
            self._draw_plan()
            self._read = read


    def load_resharded(self, states: list[dict]) -> None:
        """Restore from every rank of a run saved at another world size: between optimizer steps their
        states are the same but for the rank-local micro-batch count, so any one of them resumes the
        stream exactly (module docstring)."""
        drop = ("batches", "read_in_batch")
        first = {k: v for k, v in states[0].items() if k not in drop}
        if any({k: v for k, v in st.items() if k not in drop} != first for st in states[1:]):
            raise ValueError("the saved ranks' loader states differ (saved inside an optimizer step?)")
        self.load_state_dict(states[0])


def eval_batches(corpus: Corpus, *, domain: str, micro_batch: int, max_batches: int | None = None,
                 rank: int | None = None, world_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """A deterministic pass over ``domain``'s eval split: rank r of W reads rows r, r+W, ... in order.

    The ranks' shares are disjoint. Every rank gets the same number of rows (the last N mod W rows
    are left out), so every rank yields the same number of batches and a ZeRO-3 model runs the same
    number of forwards everywhere; the last batch may be smaller than ``micro_batch``.
    ``batch["domain"]`` is the domain's index in the manifest's order. ``max_batches`` caps the batches.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch} must be >= 1")
    if corpus.rows(domain, "eval") == 0:
        raise ValueError(f"domain {domain!r} has no eval rows in {corpus.data_dir}; prepare it with "
                         f"--eval_fraction > 0")
    index = corpus.domains.index(domain)
    reader = corpus.split(domain, "eval")
    r, w = rank_world(rank, world_size)
    mine = np.arange(r, len(reader) // w * w, w)
    if not len(mine):
        raise ValueError(f"domain {domain!r} has {len(reader)} eval rows, fewer than the {w} ranks; prepare it "
                         f"with a larger --eval_fraction / --eval_docs")
    n_batches = math.ceil(len(mine) / micro_batch)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        idx = mine[b * micro_batch:(b + 1) * micro_batch]
        ids, masks = reader.read(idx)
        yield _to_batch(ids, np.full(len(idx), index), masks)
