"""Domain weights during training: constant, or Sheared-LLaMA's dynamic batch loading.

Every ``update_every`` steps the per-domain eval losses ℓ are compared with reference losses ℓ_ref
(given, or the teacher's own, measured once and cached in the run folder) and

    w ← normalise((1 − c) · softmax(log w + η · max(ℓ − ℓ_ref, 0)) + c / k)

(the paper's Algorithm 1 clamps at 0; Sheared-LLaMA's code adds the uniform smoothing c). Domains
still above their reference loss gain weight; domains at or below it only lose weight relatively.

Every rank computes the same new weights from the same all-reduced losses, so no broadcast is needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Callable

import numpy as np
import torch

from ast_ds.atomic import atomic_path, write_json_atomic
from ast_ds.collectives import agree, all_reduce_floats, is_rank_zero

logger = logging.getLogger(__name__)

MODES = ("constant", "dynamic")
STATE_VERSION = 1


def update_domain_weights(weights: list[float], losses: list[float], ref_losses: list[float], *, eta: float,
                          smoothing: float) -> list[float]:
    """One dynamic-batch-loading update (see the module doc); the result sums to 1."""
    w = np.asarray(weights, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    ref = np.asarray(ref_losses, dtype=np.float64)
    k = len(w)
    if k == 0 or loss.shape != w.shape or ref.shape != w.shape:
        raise ValueError(f"weights, losses and ref_losses need the same non-zero length "
                         f"(got {len(w)}, {len(loss)}, {len(ref)})")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights {w.tolist()} must be finite, >= 0 and not all 0")
    if not (np.all(np.isfinite(loss)) and np.all(np.isfinite(ref))):
        raise ValueError(f"losses {loss.tolist()} and ref_losses {ref.tolist()} must be finite")
    if eta < 0 or not 0 <= smoothing <= 1:
        raise ValueError(f"need eta >= 0 and smoothing in [0, 1] (got eta={eta}, smoothing={smoothing})")
    with np.errstate(divide="ignore"):
        logits = np.log(w / w.sum()) + eta * np.maximum(loss - ref, 0.0)  # log 0 = -inf: weight stays 0
    a = np.exp(logits - logits.max())
    a /= a.sum()
    mixed = (1.0 - smoothing) * a + smoothing / k
    return (mixed / mixed.sum()).tolist()


@torch.no_grad()
def measure_domain_losses(loss_fn: Callable[[dict], torch.Tensor], corpus, *, domains: list[str],
                          micro_batch: int, max_batches: int | None = None, rank: int | None = None,
                          world_size: int | None = None) -> dict[str, float]:
    """Mean per-row loss of each domain's eval split, all-reduced: every rank gets the same numbers.

    ``loss_fn(batch)`` returns the per-row losses ``[B]`` of an ``eval_batches`` batch (e.g. each
    row's mean next-token cross-entropy; rows have equal length, so their mean is the token mean).
    Every rank must call this with the same arguments: each runs the same number of ``loss_fn``
    calls (``eval_batches`` gives every rank as many batches) and one all-reduce at the end.
    """
    from ast_ds.data.loader import eval_batches

    sums = []
    for domain in domains:
        total, rows = 0.0, 0
        for batch in eval_batches(corpus, domain=domain, micro_batch=micro_batch, max_batches=max_batches,
                                  rank=rank, world_size=world_size):
            per_row = loss_fn(batch).detach().double().reshape(-1)
            if per_row.numel() != len(batch["input_ids"]):
                raise ValueError(f"loss_fn returned {per_row.numel()} values for a batch of "
                                 f"{len(batch['input_ids'])} rows; it must return one loss per row")
            if "loss_mask" in batch:  # instruction data: a row of prompt tokens only has no loss (NaN)
                per_row = per_row[~torch.isnan(per_row)]
            total += float(per_row.sum())
            rows += per_row.numel()
        sums += [total, float(rows)]
    sums = all_reduce_floats(sums)
    return {d: sums[2 * i] / sums[2 * i + 1] for i, d in enumerate(domains)}


def load_or_measure_ref_losses(*, given: dict[str, float] | None, cache_path: str, domains: list[str],
                               measure: Callable[[], dict[str, float]], write: bool) -> dict[str, float]:
    """Reference losses: ``given`` (from the config), else the cache file, else ``measure()`` (cached).

    ``measure`` (e.g. the teacher's ``measure_domain_losses``) runs collectives, so all ranks agree on
    whether the cache is usable before any measures; only the rank with ``write=True`` writes it.
    """
    if given:
        missing = [d for d in domains if d not in given]
        if missing:
            raise ValueError(f"reference losses {given} lack domain(s) {missing}; give one per domain "
                             f"({', '.join(domains)}) or none to measure them from the teacher")
        return {d: float(given[d]) for d in domains}
    cached = _read_cached_losses(cache_path, domains)
    if agree(cached is not None):
        logger.info("reference losses from %s", cache_path)
        return cached
    losses = {d: float(v) for d, v in measure().items()}
    if write:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        write_json_atomic(cache_path, {"ref_losses": losses})
        logger.info("measured reference losses %s, cached in %s", losses, cache_path)
    return losses


def _read_cached_losses(path: str, domains: list[str]) -> dict[str, float] | None:
    try:
        with open(path) as f:
            losses = json.load(f)["ref_losses"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(d in losses and math.isfinite(losses[d]) for d in domains):
        return None
    return {d: float(losses[d]) for d in domains}


class DomainWeightUpdater:
    """The owner of the domain weights: holds them (validated and normalised in one place,
    :meth:`set_weights`), updates them every ``update_every`` steps (``mode="dynamic"``), records their
    ``history`` for the checkpoint and the plot. The loader reads :attr:`probabilities`.

    Use: ``if updater.due(step): updater.update(step, measured_losses)``.
    """

    def __init__(self, *, domains: list[str], weights: dict[str, float], mode: str = "constant",
                 ref_losses: dict[str, float] | None = None, eta: float = 1.0, smoothing: float = 1e-4,
                 update_every: int = 100, log: bool | None = None):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        if update_every < 1:
            raise ValueError(f"update_every={update_every} must be >= 1")
        if eta < 0 or not 0 <= smoothing <= 1:
            raise ValueError(f"need eta >= 0 and smoothing in [0, 1] (got eta={eta}, smoothing={smoothing})")
        self.domains, self.mode, self.eta, self.smoothing = list(domains), mode, float(eta), float(smoothing)
        self.update_every = int(update_every)
        self.ref_losses = None
        if ref_losses is not None:
            self.set_ref_losses(ref_losses)
        self.set_weights(weights)
        self.history: list[tuple[int, dict[str, float]]] = [(0, dict(self.weights))]
        self._log = is_rank_zero() if log is None else log

    def _complete(self, values: dict[str, float], what: str) -> dict[str, float]:
        missing = [d for d in self.domains if d not in values]
        if missing:
            raise ValueError(f"{what} {dict(values)} lack domain(s) {missing}")
        return {d: float(values[d]) for d in self.domains}

    def set_weights(self, weights: dict[str, float]) -> None:
        """The one validation and normalisation of domain weights: every domain named, finite, >= 0, not
        all 0; stored divided by their sum."""
        extra = [d for d in weights if d not in self.domains]
        if extra:
            raise ValueError(f"weights {dict(weights)} name unknown domain(s) {extra}; the domains are {self.domains}")
        values = np.array(list(self._complete(weights, "weights").values()), dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise ValueError(f"weights {dict(weights)} must be finite, >= 0 and not all 0")
        self._set_exact(values / values.sum())

    def _set_exact(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities  # read by the loader for every micro-batch
        self.weights = {d: float(p) for d, p in zip(self.domains, probabilities)}

    def set_ref_losses(self, ref_losses: dict[str, float]) -> None:
        """The per-domain targets of dynamic mode (given, or measured with ``load_or_measure_ref_losses``)."""
        self.ref_losses = self._complete(ref_losses, "ref_losses")

    def due(self, step: int) -> bool:
        return self.mode == "dynamic" and step > 0 and step % self.update_every == 0

    def update(self, step: int, losses: dict[str, float]) -> dict[str, float]:
        """New weights from this step's per-domain eval losses (unchanged in constant mode)."""
        if self.mode == "constant":
            return dict(self.weights)
        if self.ref_losses is None:
            raise ValueError("mode='dynamic' needs ref_losses before the first update: pass ref_losses= or call "
                             "set_ref_losses (given, or measured with load_or_measure_ref_losses)")
        losses = self._complete(losses, "losses")
        new = update_domain_weights([self.weights[d] for d in self.domains], [losses[d] for d in self.domains],
                                    [self.ref_losses[d] for d in self.domains], eta=self.eta, smoothing=self.smoothing)
        self.set_weights(dict(zip(self.domains, new)))
        self.history.append((int(step), dict(self.weights)))
        if self._log:
            logger.info("step %d domain weights: %s (eval - ref: %s)", step,
                        " ".join(f"{d}={w:.4f}" for d, w in self.weights.items()),
                        " ".join(f"{d}={losses[d] - self.ref_losses[d]:+.4f}" for d in self.domains))
        return dict(self.weights)

    def plot(self, path: str) -> None:
        """A PNG of every domain's weight over the steps (a step line per domain)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [s for s, _ in self.history]
        fig, ax = plt.subplots(figsize=(7, 4))
        for d in self.domains:
            ax.step(steps, [w[d] for _, w in self.history], where="post", label=d, marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("domain weight")
        ax.set_title(f"domain weights ({self.mode}, every {self.update_every} steps)")
        ax.legend(fontsize="small", ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "mode": self.mode, "domains": list(self.domains),
                "weights": dict(self.weights), "ref_losses": self.ref_losses,
                "history": [[s, [w[d] for d in self.domains]] for s, w in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"domain-weight state version {state.get('version')!r}, this code reads {STATE_VERSION}")
        if state["domains"] != self.domains:
            raise ValueError(f"domain-weight state is for domains {state['domains']}, this run has {self.domains}")
        # exactly as saved: renormalising would move the last bit and break bit-exact resume
        self._set_exact(np.array(list(self._complete(state["weights"], "weights").values()), dtype=np.float64))
        if state.get("ref_losses") is not None:
            self.ref_losses = self._complete(state["ref_losses"], "ref_losses")
        self.history = [(int(s), dict(zip(self.domains, w))) for s, w in state["history"]]

