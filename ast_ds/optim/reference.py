"""The single-process reference: the AST update on full tensors of an unsharded model, no DeepSpeed.

It mirrors what the ZeRO-3 engine does around the optimizer so the two can be compared exactly:
fp32 master copies of the trainable parameters live in the optimizer, the model holds the working
weights (its own dtype), gradients are clipped with DeepSpeed's formula, and after every step (and
once at construction) the working target weights are written as ``W ⊙ m``.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ast_ds.optim.ast_adamw import ASTAdamW
from ast_ds.sparsity.flip import FlipCounter
from ast_ds.sparsity.nm_mask import check_nm, magnitude_nm_mask


class FullTensorMasks:
    """Masks of whole target tensors (one run per tensor). ``targets`` maps tensor -> name."""

    def __init__(self, targets: dict[torch.Tensor, str], *, n: int = 2, m: int = 4, track_initial: bool = True):
        check_nm(n, m)
        self.n, self.m = n, m
        self.names = {id(t): name for t, name in targets.items()}
        self.keep: dict[int, torch.Tensor] = {}
        self.initial: dict[int, torch.Tensor] = {}
        self.counter = FlipCounter()
        for t, name in targets.items():
            if t.dim() != 2:
                raise ValueError(f"sparse target {name} has shape {tuple(t.shape)}; only 2-D [out, in] weights")
            self.keep[id(t)] = magnitude_nm_mask(t, n=n, m=m)
            if track_initial:
                self.initial[id(t)] = self.keep[id(t)].clone()

    def runs(self, param):
        keep = self.keep.get(id(param))
        return [] if keep is None else [(0, param.numel(), keep.view(-1))]

    def refresh(self, param) -> None:
        old = self.keep.get(id(param))
        if old is None:
            return
        new = magnitude_nm_mask(param, n=self.n, m=self.m)
        self.counter.add(new=new, old=old, initial=self.initial.get(id(param)))
        self.keep[id(param)] = new

    def mask_of(self, param) -> torch.Tensor:
        return self.keep[id(param)]


def global_grad_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.stack([g.double().norm(2) ** 2 for g in grads]).sum() ** 0.5


def clip_scale(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """DeepSpeed ZeRO's clip factor for global norm ``total``: ``1 / max(1, (total + 1e-6) / max_norm)``,
    computed in float64 as DeepSpeed does and cast to the gradient's dtype by the multiply."""
    if max_norm <= 0:
        return torch.ones((), dtype=torch.float64)
    clip = torch.clamp(((total + 1e-6) / max_norm), min=1.0)
    return 1.0 / clip


class ReferenceSparseTrainer:
    """Owns fp32 masters + :class:`ASTAdamW` for an unsharded ``model``.

    Call ``model``'s forward/backward yourself, then :meth:`step`. ``targets`` are the names of the
    N:M target weights (``model.named_parameters()`` names).
    """

    def __init__(self, model: torch.nn.Module, targets: Iterable[str], *, n: int = 2, m: int = 4, decay,
                 mask_interval: int = 10, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, grad_clip: float = 0.0):
        self.model = model
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.masters = {name: p.detach().float().clone() for name, p in self.params}
        targets = set(targets)
        missing = targets - set(self.masters)
        if missing:
            raise ValueError(f"unknown sparse targets: {sorted(missing)}")
        self.masks = FullTensorMasks({self.masters[t]: t for t in targets}, n=n, m=m)
        self.optimizer = ASTAdamW(list(self.masters.values()), masks=self.masks, decay=decay,
                                  mask_interval=mask_interval, lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay)
        self.target_names = targets
        self.grad_clip = grad_clip
        self.sync_working_weights()

    def mask(self, name: str) -> torch.Tensor:
        return self.masks.mask_of(self.masters[name])

    @torch.no_grad()
    def sync_working_weights(self) -> None:
        for name, p in self.params:
            w = self.masters[name]
            if name in self.target_names:
                w = w.masked_fill(~self.mask(name), 0.0)
            p.copy_(w.to(p.dtype))

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor] | None = None, *, grad_scale: float = 1.0,
             grad_norm: torch.Tensor | None = None) -> None:
        """Update from the model's ``.grad`` times ``grad_scale`` (or from explicit full ``grads`` by
        name), clip, step, write the working weights back. ``grad_norm`` overrides the global norm
        used for clipping (a sharded engine sums it in another order)."""
        for name, p in self.params:
            if grads is not None:
                g = grads[name].float().clone()
            elif p.grad is not None:
                g = p.grad.float() * grad_scale if grad_scale != 1.0 else p.grad.float().clone()
            else:
                g = torch.zeros_like(self.masters[name])
            self.masters[name].grad = g
            p.grad = None
        if self.grad_clip > 0:
            if grad_norm is None:
                grad_norm = global_grad_norm(m.grad for m in self.masters.values())
            scale = clip_scale(torch.as_tensor(grad_norm, dtype=torch.float64), self.grad_clip)
            for m in self.masters.values():
                m.grad.mul_(scale)
        self.optimizer.step()
        self.sync_working_weights()
