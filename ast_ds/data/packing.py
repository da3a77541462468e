"""Pure pieces of data preparation: the token dtype, the eval-document choice, and row packing.

Packing rule (what a reader of the shards can rely on): every kept document contributes
``[BOS] + encode(text) + [EOS]``; the documents of one domain and split are concatenated in input
order (files sorted, lines in order) and cut into rows of exactly ``seq_len`` tokens, a document's
remainder carrying over into the next row. Rows never contain padding. The final tail of the
domain's split (fewer than ``seq_len`` tokens) is dropped and counted as ``tokens_dropped`` in the
manifest. Nothing masks attention across document boundaries: BOS/EOS are the only separators
(as in Sheared-LLaMA, except that an exactly full last chunk is emitted instead of carried).
"""

from __future__ import annotations

import hashlib

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size={vocab_size} must be > 0")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size={vocab_size} does not fit in uint32")


def eval_doc_count(n_docs: int, *, eval_fraction: float, eval_docs: int | None) -> int:
    """How many of a domain's ``n_docs`` documents go to eval.

    ``eval_docs`` wins when given; otherwise round(``eval_fraction`` · n), at least 1 when the
    fraction is positive. Train must keep at least one document.
    """
    if eval_docs is not None:
        k = int(eval_docs)
    elif eval_fraction > 0:
        k = max(1, int(round(eval_fraction * n_docs)))
    else:
        k = 0
    if k < 0:
        raise ValueError(f"eval_docs={eval_docs} must be >= 0")
    if k >= n_docs:
        raise ValueError(f"the eval split would take {k} of {n_docs} documents, leaving none for train")
    return k


def domain_seed(seed: int, domain: str) -> list[int]:
    """A seed sequence specific to (seed, domain name), stable across Python runs and platforms."""
    return [int(seed), int.from_bytes(hashlib.sha256(domain.encode()).digest()[:8], "little")]


def choose_eval_docs(n_docs: int, k: int, *, seed: int, domain: str) -> np.ndarray:
    """Sorted indices of the ``k`` eval documents among ``n_docs``, a function of (seed, domain, n, k)."""
    rng = np.random.default_rng(domain_seed(seed, domain))
    return np.sort(rng.choice(n_docs, size=k, replace=False)).astype(np.int64)


class RowPacker:
    """Concatenates token arrays and cuts them into ``[n, seq_len]`` rows; the remainder carries over."""

    def __init__(self, seq_len: int, dtype):
        if seq_len <= 0:
            raise ValueError(f"seq_len={seq_len} must be > 0")
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.carry = np.zeros(0, self.dtype)

    def add(self, tokens: np.ndarray) -> np.ndarray:
        """Append ``tokens``; return the rows that are now full (possibly zero rows)."""
        stream = np.concatenate([self.carry, np.asarray(tokens, self.dtype)]) if len(self.carry) else \
            np.asarray(tokens, self.dtype)
        n_rows = len(stream) // self.seq_len
        cut = n_rows * self.seq_len
        self.carry = stream[cut:].copy()
        return stream[:cut].reshape(n_rows, self.seq_len)

    @property
    def tail(self) -> int:
        """Tokens waiting for a row; dropped at the end of the split."""
        return len(self.carry)
