"""N:M masks as pure tensor functions (no modules, no distributed code).

Layout convention, used everywhere in ast_ds: a weight of shape ``[out, in]`` is split into groups of
``m`` *consecutive* elements along the input dimension, and each group keeps at most ``n`` nonzeros.
Because ``in % m == 0``, group ``g`` of the row-major flattened weight is exactly the elements
``[g*m, (g+1)*m)``; that is what lets a ZeRO-3 rank work on its flat slice alone
(:func:`nm_mask_flat`).

Tie-breaking is deterministic: among equal scores the element with the lower index is kept. The
mask therefore depends only on the values of a group, never on how a tensor is sliced or on the
sort kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def check_nm(n: int, m: int) -> None:
    """Raise ``ValueError`` unless ``0 < n <= m``."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"invalid N:M pattern {n}:{m}: need integers with 0 < N <= M (e.g. 2:4)")


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``, with an error that names the expected form."""
    try:
        n_str, m_str = pattern.split(":")
        n, m = int(n_str), int(m_str)
    except ValueError:
        raise ValueError(f"sparsity pattern {pattern!r} is not of the form 'N:M', e.g. '2:4'") from None
    check_nm(n, m)
    return n, m


def nm_mask_groups(scores_GM: torch.Tensor, n: int) -> torch.Tensor:
    """Keep-mask for a ``[G, M]`` tensor of group scores: the ``n`` largest per row.

    Ties go to the lower column index: element i is kept iff fewer than ``n`` elements of its group
    beat it, where j beats i if s_j > s_i, or s_j == s_i and j < i. For small M this counts by pairwise
    comparison (about 2x faster than a sort on CPU); larger M uses the equivalent stable sort.
    """
    num_groups, m = scores_GM.shape
    if m <= 8:
        beaten_by = torch.zeros((num_groups, m), dtype=torch.uint8, device=scores_GM.device)
        for j in range(m):
            col = scores_GM[:, j: j + 1]
            beats = col > scores_GM
            if j < m - 1:
                tie = col == scores_GM
                tie[:, : j + 1] = False  # a tie only beats the elements after it
                beats |= tie
            beaten_by += beats
        return beaten_by < n
    order = torch.argsort(scores_GM, dim=1, descending=True, stable=True)
    keep = torch.zeros(scores_GM.shape, dtype=torch.bool, device=scores_GM.device)
    keep.scatter_(1, order[:, :n], True)
    return keep


def nm_mask_from_scores(scores: torch.Tensor, *, n: int = 2, m: int = 4) -> torch.Tensor:
    """Bool keep-mask of ``scores``'s shape: the ``n`` highest scores of every group of ``m``
    consecutive elements along the last (input) dimension."""
    check_nm(n, m)
    if scores.dim() == 0 or scores.shape[-1] % m != 0:
        raise ValueError(
            f"input dimension {tuple(scores.shape)[-1:]} is not divisible by M={m}: N:M groups run along the "
            f"input dimension; exclude this layer from the sparse targets or choose an M that divides it")
    keep = nm_mask_groups(scores.reshape(-1, m), n)
    return keep.reshape(scores.shape)


def magnitude_nm_mask(weight: torch.Tensor, *, n: int = 2, m: int = 4) -> torch.Tensor:
    """Magnitude criterion (the paper's choice): keep the ``n`` largest ``|w|`` of each group."""
    return nm_mask_from_scores(weight.detach().abs(), n=n, m=m)


def nm_mask_flat(values: torch.Tensor, *, offset: int, n: int = 2, m: int = 4,
                 head: torch.Tensor | None = None, tail: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask for a flat slice of a flattened ``[out, in]`` weight (magnitude criterion).

    ``values`` holds elements ``[offset, offset + len(values))`` of ``weight.view(-1)``. If the slice
    starts inside a group, ``head`` must hold the ``offset % m`` elements of that group that precede
    it; if it ends inside a group, ``tail`` must hold the elements of that group that follow it. The
    result equals ``magnitude_nm_mask(weight).view(-1)[offset : offset + len(values)]``.
    """
    check_nm(n, m)
    values = values.reshape(-1)
    head_len = offset % m
    tail_len = (-(offset + values.numel())) % m
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=values.device)
    parts = []
    if head_len:
        if head is None or head.numel() != head_len:
            raise ValueError(f"slice at offset {offset} starts inside a group of {m}: pass the {head_len} "
                             f"preceding elements as head")
        parts.append(head.reshape(-1).to(values.dtype))
    parts.append(values)
    if tail_len:
        if tail is None or tail.numel() != tail_len:
            raise ValueError(f"slice ends inside a group of {m}: pass the {tail_len} following elements as tail")
        parts.append(tail.reshape(-1).to(values.dtype))
    full = torch.cat(parts) if len(parts) > 1 else values
    keep = nm_mask_groups(full.abs().reshape(-1, m), n).reshape(-1)
    return keep[head_len: head_len + values.numel()]


@dataclass
class NMReport:
    """Result of :func:`verify_nm`. ``offenders`` lists up to ``max_offenders`` bad groups as
    ``(row, first_column, nonzeros)``."""

    n: int
    m: int
    num_groups: int
    num_bad_groups: int
    max_nonzeros: int
    sparsity: float
    offenders: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.num_bad_groups == 0

    def to_dict(self) -> dict:
        return {"pattern": f"{self.n}:{self.m}", "ok": self.ok, "num_groups": self.num_groups,
                "num_bad_groups": self.num_bad_groups, "max_nonzeros_per_group": self.max_nonzeros,
                "sparsity": self.sparsity, "offenders": [list(o) for o in self.offenders]}


def verify_nm(tensor: torch.Tensor, *, n: int = 2, m: int = 4, max_offenders: int = 10) -> NMReport:
    """Check that every group of ``m`` consecutive elements along the last dimension has at most
    ``n`` nonzeros; report the offending groups (row, first column, nonzero count)."""
    check_nm(n, m)
    if tensor.dim() == 0 or tensor.shape[-1] % m != 0:
        raise ValueError(f"cannot check {n}:{m} on shape {tuple(tensor.shape)}: last dimension not divisible by {m}")
    cols = tensor.shape[-1]
    nnz_G = (tensor.detach().reshape(-1, m) != 0).sum(dim=1, dtype=torch.int16)  # m < 2^15
    bad = torch.nonzero(nnz_G > n).flatten()
    offenders = []
    groups_per_row = cols // m
    for g in bad[:max_offenders].tolist():
        offenders.append((g // groups_per_row, (g % groups_per_row) * m, int(nnz_G[g])))
    numel = tensor.numel()
    return NMReport(n=n, m=m, num_groups=nnz_G.numel(), num_bad_groups=int(bad.numel()),
                    max_nonzeros=int(nnz_G.max()) if nnz_G.numel() else 0,
                    sparsity=1.0 - float(nnz_G.sum(dtype=torch.int64)) / numel if numel else 0.0,
                    offenders=offenders)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8 (8 elements per byte, little-endian bit order, zero padded)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` bits as a flat bool tensor."""
    if packed.device.type == "cpu":  # numpy's C loop: 10x the shifts below on CPU
        import numpy as np

        bits = np.unpackbits(packed.reshape(-1).numpy(), bitorder="little")[:numel]
        return torch.from_numpy(bits.view(np.bool_))
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return (((packed.view(-1, 1) >> shifts) & 1).view(-1)[:numel]).bool()


def unpack_bit_range(packed: torch.Tensor, start: int, numel: int) -> torch.Tensor:
    """Bits ``[start, start + numel)`` of a :func:`pack_bits` tensor, unpacking only the bytes they are in."""
    first, end = start // 8, -(-(start + numel) // 8)
    return unpack_bits(packed[first:end], (end - first) * 8)[start - 8 * first: start - 8 * first + numel]
