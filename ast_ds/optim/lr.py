"""Learning-rate schedule: linear warmup, then cosine to ``min_ratio·lr`` at the last step."""

from __future__ import annotations

import math


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based, the step about to be taken)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
