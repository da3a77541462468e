"""Pure N:M sparsity math: masks, verification, the decay schedule, flip rates."""

from ast_ds.sparsity.flip import FlipCounter, flip_count, reduce_flip_counts
from ast_ds.sparsity.nm_mask import (NMReport, check_nm, magnitude_nm_mask, nm_mask_flat, nm_mask_from_scores,
                                     pack_bits, parse_nm, unpack_bits, verify_nm)
from ast_ds.sparsity.schedule import DecaySchedule, annealed_decay

__all__ = ["NMReport", "check_nm", "magnitude_nm_mask", "nm_mask_flat", "nm_mask_from_scores", "pack_bits",
           "parse_nm", "unpack_bits", "verify_nm", "DecaySchedule", "annealed_decay", "FlipCounter",
           "flip_count", "reduce_flip_counts"]
