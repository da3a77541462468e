"""Multi-domain training loader over prepared MDS shards, with domain weights that can change.

One mosaicml-streaming ``StreamingDataset`` per domain and split does the shard work: a local folder,
or a remote URL (anything streaming downloads from: s3://, gs://, a path, ...) with a local cache;
shards are fetched when a row in them is first read. Rows are read by index; the order is ours:

- **Which domain each row comes from**: for every micro-batch, ``micro_batch`` draws from the current
  weights with one PCG64 generator seeded by ``seed``. Every rank draws the same sequence, so every
  rank's micro-batch has the same domain composition and the per-domain positions stay in step.
- **Which row of a domain**: per domain and epoch, a permutation of its rows seeded by (seed, domain
  name, epoch). A global cursor walks it; rank r of W takes ``perm[cursor + r]`` and the cursor moves
  by W. Ranks (on every node: the rank is global) therefore read disjoint rows. When fewer than W rows
  are left, the domain starts its next epoch with a new permutation (the < W leftover rows of that
  epoch are skipped); a domain cycles on its own, independent of the others.

The whole state (generator state, weights, per-domain cursor and epoch) is a few hundred bytes;
a loader restored from ``state_dict()`` yields exactly the batches the uninterrupted one would.
Restoring at another world size is allowed: no row repeats within an epoch, but the batches differ.

We use streaming for reading, caching and remote download, not its iteration, because its stream
weights are fixed at construction (no mid-epoch re-weighting) and its resume state counts samples
per epoch, not per domain. Creating a split's dataset synchronises the ranks of a node through
streaming (a ``torch.distributed`` barrier when a process group exists), so every rank must build
its loaders and call ``eval_batches`` for the same domains in the same order.

The per-epoch permutation costs 8 bytes per row of a domain (4 when it has < 2^31 rows) on each rank.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterator

import numpy as np
import torch

from ast_ds.data.manifest import MANIFEST_NAME, SPLITS, TOKENS_COLUMN, read_manifest, split_dir
from ast_ds.data.packing import domain_seed

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def resolve_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torch.distributed's, else $RANK/$WORLD_SIZE, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    return int(rank), int(world_size)


def load_manifest(data_dir: str, *, remote: str | None = None, cache_dir: str | None = None) -> dict:
    """The corpus manifest: ``data_dir/manifest.json``, or ``remote/manifest.json`` fetched into the cache."""
    if remote is None:
        return read_manifest(data_dir)
    from streaming.base.storage import CloudDownloader

    cache = cache_dir or data_dir
    os.makedirs(cache, exist_ok=True)
    tmp = os.path.join(cache, f".{MANIFEST_NAME}.{os.getpid()}")
    CloudDownloader.direct_download(f"{remote.rstrip('/')}/{MANIFEST_NAME}", tmp)
    os.replace(tmp, os.path.join(cache, MANIFEST_NAME))  # always the remote's current manifest
    return read_manifest(cache)


class SplitReader:
    """Random access to the rows of one domain's split (a cached, shared ``StreamingDataset``)."""

    def __init__(self, local: str, remote: str | None):
        from streaming import StreamingDataset

        self.local, self.remote = local, remote
        self.dataset = StreamingDataset(local=local, remote=remote, shuffle=False, batch_size=1)
        self.num_rows = int(self.dataset.num_samples)

    def __len__(self) -> int:
        return self.num_rows

    def rows(self, indices) -> np.ndarray:
        """[len(indices), seq_len] token ids, in the order given."""
        return np.stack([self.dataset[int(i)][TOKENS_COLUMN] for i in indices])


_READERS: dict[tuple[str, str | None], SplitReader] = {}


def open_split(data_dir: str, *, domain: str, split: str, remote: str | None = None,
               cache_dir: str | None = None) -> SplitReader:
    """The reader of ``domain``/``split``; one per process and folder (streaming forbids reusing a
    local folder for a second remote dataset, and each new dataset costs shared memory)."""
    if remote is None:
        local, remote_split = split_dir(data_dir, domain, split), None
    else:
        local = split_dir(cache_dir or data_dir, domain, split)
        remote_split = f"{remote.rstrip('/')}/{domain}/{split}"
    key = (os.path.abspath(local), remote_split)
    if key not in _READERS:
        if remote_split is None and not os.path.isfile(os.path.join(local, "index.json")):
            raise FileNotFoundError(f"{local}/index.json: missing; the corpus in {data_dir} has no {split} split for "
                                    f"domain {domain!r} (prepared with --eval_fraction 0?) or is incomplete")
        _READERS[key] = SplitReader(local, remote_split)
    return _READERS[key]


def _domain_rows(manifest: dict, *, domain: str, split: str, data_dir: str) -> int:
    if domain not in manifest["domains"]:
        raise ValueError(f"domain {domain!r} is not in {data_dir}/{MANIFEST_NAME} "
                         f"(it has: {', '.join(manifest['domains'])})")
    return int(manifest["domains"][domain][split]["rows"])


def _to_batch(rows: np.ndarray, domain: np.ndarray) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.from_numpy(rows.astype(np.int64)),
            "domain": torch.from_numpy(np.asarray(domain, dtype=np.int64))}


class MultiDomainLoader:
    """Infinite micro-batches ``{"input_ids": LongTensor[B, T], "domain": LongTensor[B]}`` mixed by weight.

    ``domains`` (default: all, in manifest order) fixes the domain index used in ``batch["domain"]``;
    ``weights`` (default: proportional to each domain's rows) may name every domain, are normalised,
    and can be changed between batches with ``set_weights``.
    """

    def __init__(self, *, data_dir: str, domains: list[str] | None = None, split: str = "train",
                 micro_batch: int, weights: dict[str, float] | None = None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 remote: str | None = None, cache_dir: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch} must be >= 1")
        self.data_dir, self.split, self.micro_batch, self.seed = data_dir, split, int(micro_batch), int(seed)
        self.manifest = load_manifest(data_dir, remote=remote, cache_dir=cache_dir)
        self.domains = list(domains) if domains is not None else list(self.manifest["domains"])
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains={self.domains}: need at least one, without repeats")
        self.seq_len = int(self.manifest["seq_len"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.rank, self.world_size = resolve_rank_world(rank, world_size)
        rows = {d: _domain_rows(self.manifest, domain=d, split=split, data_dir=data_dir) for d in self.domains}
        self._readers = [open_split(data_dir, domain=d, split=split, remote=remote, cache_dir=cache_dir)
                         for d in self.domains]
        for d, reader in zip(self.domains, self._readers):
            if len(reader) < self.world_size:
                raise ValueError(f"domain {d!r} {split} split has {len(reader)} rows, fewer than the "
                                 f"{self.world_size} ranks; prepare more data or leave the domain out")
        self.set_weights(weights if weights is not None else rows)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._cursor = [0] * len(self.domains)
        self._epoch = [0] * len(self.domains)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}
        self.batches = 0

    # ---- weights

    def set_weights(self, weights: dict[str, float]) -> None:
        missing = [d for d in self.domains if d not in weights]
        extra = [d for d in weights if d not in self.domains]
        if missing or extra:
            raise ValueError(f"weights must name exactly the loader's domains {self.domains} "
                             f"(missing: {missing}, unknown: {extra})")
        values = np.array([float(weights[d]) for d in self.domains], dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise ValueError(f"weights {dict(weights)} must be finite, >= 0, and not all 0")
        self._p = values / values.sum()
        self.weights = {d: float(p) for d, p in zip(self.domains, self._p)}

    # ---- iteration

    def __iter__(self):
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        domain = self._rng.choice(len(self.domains), size=self.micro_batch, p=self._p)
        rows = np.stack([self._readers[d].rows([self._take(d)])[0] for d in domain])
        self.batches += 1
        return _to_batch(rows, domain)

    def _take(self, d: int) -> int:
        """This rank's next row index of domain ``d``; all ranks move the shared cursor by W."""
        n = len(self._readers[d])
        if self._cursor[d] + self.world_size > n:
            self._epoch[d] += 1
            self._cursor[d] = 0
        index = int(self._permutation(d)[self._cursor[d] + self.rank])
        self._cursor[d] += self.world_size
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

    def state_dict(self) -> dict:
        """Small and JSON-serialisable: generator state, weights, per-domain cursor and epoch."""
        return {"version": STATE_VERSION, "domains": list(self.domains), "split": self.split, "seed": self.seed,
                "world_size": self.world_size, "rng": self._rng.bit_generator.state, "weights": dict(self.weights),
                "cursor": dict(zip(self.domains, self._cursor)), "epoch": dict(zip(self.domains, self._epoch)),
                "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this code reads {STATE_VERSION}")
        for key in ("domains", "split", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{key}={getattr(self, key)!r}; build the loader as in the saved run")
        if state["world_size"] != self.world_size and self.rank == 0:
            logger.warning("loader state saved at world size %d, resumed at %d: rows stay disjoint and unrepeated "
                           "within each epoch, but the batches differ from the uninterrupted run",
                           state["world_size"], self.world_size)
        self.set_weights(state["weights"])  # validates; then the exact saved values (no second normalisation)
        self._p = np.array([float(state["weights"][d]) for d in self.domains], dtype=np.float64)
        self.weights = {d: float(p) for d, p in zip(self.domains, self._p)}
        self._rng.bit_generator.state = state["rng"]
        self._cursor = [int(state["cursor"][d]) for d in self.domains]
        self._epoch = [int(state["epoch"][d]) for d in self.domains]
        self.batches = int(state["batches"])


def eval_batches(*, data_dir: str, domain: str, micro_batch: int, max_batches: int | None = None,
                 rank: int | None = None, world_size: int | None = None, remote: str | None = None,
                 cache_dir: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """A deterministic pass over ``domain``'s eval split: rank r of W reads rows r, r+W, ... in order.

    The ranks' shares are disjoint. Every rank gets the same number of rows (the last N mod W rows
    are left out), so every rank yields the same number of batches and a ZeRO-3 model runs the same
    number of forwards everywhere; the last batch may be smaller than ``micro_batch``.
    ``batch["domain"]`` is the domain's index in the manifest's order. ``max_batches`` caps the batches.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch} must be >= 1")
    manifest = load_manifest(data_dir, remote=remote, cache_dir=cache_dir)
    if _domain_rows(manifest, domain=domain, split="eval", data_dir=data_dir) == 0:
        raise ValueError(f"domain {domain!r} has no eval rows in {data_dir}; prepare it with --eval_fraction > 0")
    index = list(manifest["domains"]).index(domain)
    reader = open_split(data_dir, domain=domain, split="eval", remote=remote, cache_dir=cache_dir)
    r, w = resolve_rank_world(rank, world_size)
    mine = np.arange(r, len(reader) // w * w, w)
    if not len(mine):
        raise ValueError(f"domain {domain!r} has {len(reader)} eval rows, fewer than the {w} ranks; prepare it "
                         f"with a larger --eval_fraction / --eval_docs")
    n_batches = math.ceil(len(mine) / micro_batch)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        idx = mine[b * micro_batch:(b + 1) * micro_batch]
        yield _to_batch(reader.rows(idx), np.full(len(idx), index))
