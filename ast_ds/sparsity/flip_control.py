"""``--sparsity.lam_max auto``: choose λ_max online so the total flipped ratio lands in a target band.

The total flipped ratio is the fraction of mask entries that differ from the initial mask (the paper's
appendix Table 8 reports 3.4–11.1% at the end of its runs). λ_max decides it: a weak decay lets pruned
and kept weights keep trading places (churn), a strong one freezes the initial mask. No value carries
over between models, so instead of a table lookup a controller steers λ_max during the run:

* at every mask refresh (every Δt steps) the all-reduced ratio r(t) is compared with a target path
  r*(t) = r_final · √(t / T1) (concave: most of the movement away from the initial mask happens early, when
  the learning rate is high and the decay still ramping);
* λ_max ← λ_max · (r(t) / r*(t))^gain, the factor clipped to [1/4, 4] per refresh and λ_max to
  [lam_min, lam_cap]: more flips than planned → a stronger decay, fewer → a weaker one. Multiplicative,
  because useful λ values span orders of magnitude (6e-5 … 3e-3);
* λ(t) = λ_max(t), without the paper's linear ramp: the ramp would hold the decay near zero for the first
  quarter of training whatever the controller says, so the early flips, most of them, would go unsteered.
  The rising target path gives the early exploration the ramp was for. Flips away from the initial mask
  are hard to undo, so λ_max starts high (``lam_init`` 1e-3): a too-strong start costs a few refreshes of
  too few flips, a too-weak one flips more than the whole budget before the controller catches up
  (measured on a model of the flip dynamics in tests/test_flip_control.py).

Why online and not a calibration phase: it costs nothing (the flip counts are already all-reduced at each
refresh, so every rank computes the same λ), it keeps working when the learning-rate schedule changes the
flip dynamics late in the run, and a calibration phase would have to guess how early flips extrapolate.
The controller's state (λ_max, last ratio) is saved with the run, so resume is exact.

``table8_flip_target(params)``: the default r_final, the paper's Table 8 ratios by model size (interpolated
in log-parameters, clamped at the ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (parameters, total flipped ratio) from the paper's appendix Table 8; columns of the same size averaged
TABLE8_FLIPS = ((125e6, (0.111 + 0.067) / 2), (350e6, (0.093 + 0.036) / 2), (774e6, 0.034), (1.3e9, 0.044),
                (1.5e9, 0.042), (7e9, 0.038))


def table8_flip_target(params: float) -> float:
    """The paper's total flipped ratio for a model of ``params`` parameters (log-linear interpolation)."""
    xs = [math.log(p) for p, _ in TABLE8_FLIPS]
    x = math.log(max(params, 1.0))
    if x <= xs[0]:
        return TABLE8_FLIPS[0][1]
    if x >= xs[-1]:
        return TABLE8_FLIPS[-1][1]
    i = max(j for j in range(len(xs)) if xs[j] <= x)
    w = (x - xs[i]) / (xs[i + 1] - xs[i])
    return TABLE8_FLIPS[i][1] * (1 - w) + TABLE8_FLIPS[i + 1][1] * w


@dataclass
class FlipController:
    """The multiplicative controller of the module docstring (pure; its state is ``lam`` and ``last``)."""

    target: float
    total_steps: int
    lam: float = 1e-3
    gain: float = 1.0
    max_factor: float = 4.0
    lam_min: float = 1e-7
    lam_cap: float = 1e-1
    last: float = 0.0

    def __post_init__(self):
        if not 0 < self.target < 1:
            raise ValueError(f"flip target {self.target} must lie in (0, 1) (a fraction of mask entries)")
        if self.lam <= 0:
            raise ValueError(f"initial λ_max {self.lam} must be > 0")

    def target_at(self, step: int) -> float:
        return self.target * math.sqrt(min(max(step, 1), self.total_steps) / self.total_steps)

    def update(self, step: int, flip_ratio: float) -> float:
        """λ_max after observing the total flipped ratio at ``step``."""
        self.last = float(flip_ratio)
        ratio = max(flip_ratio, 1e-6) / self.target_at(step)
        factor = min(self.max_factor, max(1.0 / self.max_factor, ratio ** self.gain))
        self.lam = min(self.lam_cap, max(self.lam_min, self.lam * factor))
        return self.lam

    def state_dict(self) -> dict:
        return {"lam": self.lam, "last": self.last, "target": self.target}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.last = float(state["lam"]), float(state["last"])
        if abs(float(state["target"]) - self.target) > 1e-12:
            raise ValueError(f"the checkpoint's flip target {state['target']} differs from sparsity.flip_target "
                             f"{self.target}; resume with the same setting")


class AdaptiveDecay:
    """``step -> λ(t)`` = the controller's current λ_max (no ramp: see the module docstring)."""

    def __init__(self, controller: FlipController):
        self.controller = controller

    def __call__(self, step: int) -> float:
        return self.controller.lam

    @property
    def lam_max(self) -> float:
        return self.controller.lam

    def observe(self, step: int, flip_ratio: float) -> float:
        return self.controller.update(step, flip_ratio)

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)
