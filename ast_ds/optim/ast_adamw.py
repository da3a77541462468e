"""The AST optimizer: AdamW with the annealed SR-STE decay inside the first moment (paper appendix
6.6, eq. 20–23), applied to the N:M target weights; every other parameter gets plain AdamW.

For a target weight W with keep-mask m (bool, True = kept) at step t (1-based):

    u_t  = β1·u_{t−1} + (1−β1)·g_t                 first moment of the raw (straight-through) gradient
    ũ_t  = u_t + λ(t)·(¬m ⊙ W_t)                    the decay pulls only pruned weights, outside the EMA
    v_t  = β2·v_{t−1} + (1−β2)·ũ_t²                 second moment from the decayed moment
    W   −= γ_t · ũ_t / ((1−β1^t)·(√(v_t/(1−β2^t)) + ε))

Decoupled weight decay (``weight_decay``) is applied first, as torch.optim.AdamW does, and is kept
separate from λ. ``¬m`` is a *bool* negation: the authors' GPT-2 code negates an int mask with ``~``,
which gives −1/−2 and turns the decay into growth of every weight (docs/design.md, "The update";
``test_the_decay_check_catches_the_int_mask_bug`` guards it).

The optimizer does not know how parameters are laid out. A :class:`MaskStore` tells it, for each
tensor it steps, which contiguous runs of elements are N:M targets and their keep-masks, and
refreshes the masks every ``mask_interval`` steps. The single-process reference uses
:class:`ast_ds.optim.reference.FullTensorMasks` (one run per full weight); under ZeRO-3 DeepSpeed calls
``step()`` once per flat fp32 sub-group partition and :class:`ast_ds.zero.adapter.ShardedMasks` maps
the runs onto it. Every operation below is elementwise and written as separate correctly rounded
ops (no fused ``alpha=`` forms), so a run updated as a slice of a flat partition gives the same bits
as the same elements updated inside the full tensor.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch


class MaskStore(Protocol):
    def runs(self, param: torch.Tensor) -> Sequence[tuple[int, int, torch.Tensor]]:
        """Target runs of ``param.view(-1)`` as ``(offset, length, keep_mask)``, sorted, disjoint."""

    def refresh(self, param: torch.Tensor) -> None:
        """Recompute the keep-masks of ``param``'s runs from its current values (may be collective)."""


def decay_term(param: torch.Tensor, keep: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·(¬m ⊙ W): the pull toward zero on pruned positions only (``keep`` is a bool keep-mask)."""
    if keep.dtype != torch.bool:
        # ~ on an int mask is bitwise NOT (~1 = -2, ~0 = -1): it turns the decay into growth of every
        # weight (the authors' GPT-2 code). Refuse rather than convert silently.
        raise TypeError(f"keep masks must be torch.bool, got {keep.dtype}")
    # A multiply by the bool mask is ~3x faster than masked_fill on CPU; kept positions become ±0, and
    # u + (±0) == u, so the update is the same bit for bit.
    return torch.mul(param, ~keep).mul_(lam)


def adamw_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
                  step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  keep: torch.Tensor | None = None, lam: float = 0.0) -> None:
    """One update, in place. ``keep=None``: plain AdamW. Otherwise the AST rule (module docstring)
    with decay ``lam·(¬keep ⊙ param)``; ``lam=0`` still builds v from the first moment (eq. 22)."""
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    # One scratch tensor serves every temporary: large CPU allocations cost page faults each step.
    tmp = torch.mul(grad, 1.0 - beta1)
    exp_avg.mul_(beta1).add_(tmp)
    if keep is None:
        second, u = grad, exp_avg
    elif lam:
        u = decay_term(param, keep, lam).add_(exp_avg)  # λ(¬m⊙W) + u == u + λ(¬m⊙W) bit for bit
        second = u
    else:
        second = u = exp_avg
    torch.mul(second, second, out=tmp).mul_(1.0 - beta2)
    exp_avg_sq.mul_(beta2).add_(tmp)
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    torch.div(exp_avg_sq, bias2, out=tmp).sqrt_().add_(eps)
    torch.div(u, tmp, out=tmp).mul_(lr / bias1)
    param.sub_(tmp)


def adams_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
                  step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  keep: torch.Tensor | None = None, lam: float = 0.0, mix: float = 0.0) -> None:
    """CAST's AdamS, in place: on pruned entries the first moment is convex-mixed with the L1 decay,
    μ̃ = (1−α_t)·μ + α_t·λ·sign(θ) (α_t = ``mix`` = t/T); kept entries use μ̃ = μ; the second moment is
    built from μ̃ and the step is Adam's with bias correction. ``keep=None``: plain AdamW."""
    if keep is None:
        return adamw_update_(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
                             eps=eps, weight_decay=weight_decay)
    if keep.dtype != torch.bool:
        raise TypeError(f"keep masks must be torch.bool, got {keep.dtype}")
    l1 = torch.sign(param).mul_(lam * mix)  # sign of θ_{t−1}, before any update
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    tmp = torch.mul(grad, 1.0 - beta1)
    exp_avg.mul_(beta1).add_(tmp)
    u = torch.where(keep, exp_avg, torch.mul(exp_avg, 1.0 - mix).add_(l1))
    torch.mul(u, u, out=tmp).mul_(1.0 - beta2)
    exp_avg_sq.mul_(beta2).add_(tmp)
    bias1, bias2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    torch.div(exp_avg_sq, bias2, out=tmp).sqrt_().add_(eps)
    torch.div(u, tmp, out=tmp).mul_(lr / bias1)
    param.sub_(tmp)


def _split_runs(numel: int, runs: Sequence[tuple[int, int, torch.Tensor]]):
    """Cover ``[0, numel)`` with (offset, length, keep-or-None) pieces, dense gaps included."""
    pos = 0
    for offset, length, keep in runs:
        if offset > pos:
            yield pos, offset - pos, None
        if length:
            yield offset, length, keep
        pos = offset + length
    if pos < numel:
        yield pos, numel - pos, None


class ASTAdamW(torch.optim.Optimizer):
    """AdamW + annealed SR-STE (module docstring).

    Args:
        params: parameters or param groups (a group may override lr, betas, eps, weight_decay).
        masks: the :class:`MaskStore` that knows the target runs of each stepped tensor.
        decay: ``step -> λ`` (e.g. :class:`ast_ds.sparsity.DecaySchedule`); 0 disables the decay.
        mask_interval: Δt, refresh the masks after every Δt-th step; 0 keeps the mask fixed.
        rule: ``"ast"`` (eq. 20–23, L2 decay λ(t)·(¬m⊙W) added to the moment) or ``"adams"`` (CAST:
            L1 decay λ·sign(W) mixed into the moment with α_t = t / ``total_steps``).
    """

    def __init__(self, params, *, masks: MaskStore, decay: Callable[[int], float], mask_interval: int = 10,
                 lr: float = 2e-5, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, rule: str = "ast", total_steps: int | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid ASTAdamW hyperparameters lr={lr} betas={betas} eps={eps} "
                             f"weight_decay={weight_decay}")
        if mask_interval < 0:
            raise ValueError(f"mask_interval={mask_interval} must be >= 0 (0 = fixed mask)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        if rule not in ("ast", "adams"):
            raise ValueError(f"rule={rule!r}: choose 'ast' or 'adams'")
        if rule == "adams" and not total_steps:
            raise ValueError("rule='adams' needs total_steps (α_t = t / T)")
        self.masks = masks
        self.decay = decay
        self.mask_interval = mask_interval
        self.rule, self.total_steps = rule, total_steps

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"])
                lam = float(self.decay(step))
                flat = [t.view(-1) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
                runs = self.masks.runs(p)
                extra = {"mix": min(1.0, step / self.total_steps)} if self.rule == "adams" else {}
                update = adams_update_ if self.rule == "adams" else adamw_update_
                for offset, length, keep in _split_runs(p.numel(), runs):
                    update(*(t.narrow(0, offset, length) for t in flat), step=step, lr=group["lr"], beta1=beta1,
                           beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"], keep=keep, lam=lam,
                           **extra)
                if self.mask_interval and step % self.mask_interval == 0:
                    # The refresh decision depends only on the step and on the tensor's layout, which are
                    # the same on every rank, so a collective inside refresh() is safe.
                    self.masks.refresh(p)
        return loss
