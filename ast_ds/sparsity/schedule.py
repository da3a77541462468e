"""The annealed SR-STE decay schedule (paper eq. 2) as a pure function of the step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecaySchedule:
    """λ(t) = λ_max · t / T0 for t ≤ T0, then λ_max (linear ramp, then constant).

    ``t0=None`` means the paper's default T0 = T1 / 4 (T1 = total steps); ``t0=0`` is *static*
    SR-STE (λ_max from the first step).
    """

    lam_max: float
    total_steps: int
    t0: int | None = None

    def __post_init__(self):
        if self.lam_max < 0:
            raise ValueError(f"decay lam_max={self.lam_max} must be >= 0")
        if self.total_steps <= 0:
            raise ValueError(f"decay total_steps={self.total_steps} must be > 0 (T1, the number of training steps)")
        if self.t0 is not None and not (0 <= self.t0 <= self.total_steps):
            raise ValueError(f"decay t0={self.t0} must lie in [0, total_steps={self.total_steps}] "
                             f"(0 = static SR-STE; omit it for T1/4)")

    @property
    def ramp_steps(self) -> int:
        return self.total_steps // 4 if self.t0 is None else self.t0

    def __call__(self, step: int) -> float:
        return annealed_decay(step, lam_max=self.lam_max, t0=self.ramp_steps)


def annealed_decay(step: int, *, lam_max: float, t0: int) -> float:
    """λ at ``step``: linear from 0 at step 0 to ``lam_max`` at ``t0``, constant after; ``t0=0`` is static."""
    if t0 <= 0:
        return float(lam_max)
    return float(lam_max) * min(max(step, 0), t0) / t0
