"""Masks saved as per-rank slices: each rank's bit-packed keep-mask of its partition of every target,
with the layout ``[(name, global_start, length), ...]`` per sub-group (``ShardedMasks.state_dict``).

:func:`index_slices` lists, per target, where its elements lie in the saved ranks' packed tensors;
:func:`gather_bits` reads any element range of a target from them, unpacking only the bytes needed.
Consolidation reads whole targets one at a time; a resume on another world size reads each new rank's
slices.
"""

from __future__ import annotations

import torch

from ast_ds.sparsity.nm_mask import unpack_bit_range

# (start of the saved slice in the flat weight, its length, packed current mask, packed initial mask or
#  None, bit position of the slice inside the packed tensors)
Piece = tuple[int, int, torch.Tensor, "torch.Tensor | None", int]


def index_slices(states: list[dict]) -> dict[str, list[Piece]]:
    """Per target name, its saved slices from every rank's sparsity state."""
    pieces: dict[str, list[Piece]] = {}
    for st in states:
        initials = st.get("initial") or [None] * len(st["packed"])
        for layout, packed, initial in zip(st["layout"], st["packed"], initials):
            pos = 0
            for name, start, length in layout:
                pieces.setdefault(name, []).append((int(start), int(length), packed, initial, pos))
                pos += int(length)
    return pieces


def gather_bits(pieces: list[Piece], name: str, start: int, length: int, *, initial: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Elements ``[start, start + length)`` of ``name``'s current (and, with ``initial``, initial)
    keep-mask; each element must be covered by exactly one saved slice."""
    cur = torch.zeros(length, dtype=torch.bool)
    ini = torch.zeros(length, dtype=torch.bool) if initial else None
    covered = 0
    for p_start, p_len, packed, p_initial, pos in pieces:
        lo, hi = max(start, p_start), min(start + length, p_start + p_len)
        if lo >= hi:
            continue
        at = pos + lo - p_start
        cur[lo - start: hi - start] = unpack_bit_range(packed, at, hi - lo)
        if initial:
            if p_initial is None:
                raise ValueError(f"the saved state of {name} has no initial mask; resume with the same "
                                 f"sparsity.track_initial setting")
            ini[lo - start: hi - start] = unpack_bit_range(p_initial, at, hi - lo)
        covered += hi - lo
    if covered != length:
        raise ValueError(f"the saved masks cover {name} inconsistently ({covered} of the {length} elements asked "
                         f"for, counting overlaps): the ranks' files are from different saves or another model")
    return cur, ini
