import math

import pytest
import torch

from ast_ds.optim import ast_adamw
from ast_ds.optim.ast_adamw import ASTAdamW, adamw_update_
from ast_ds.optim.reference import FullTensorMasks
from ast_ds.sparsity import DecaySchedule, magnitude_nm_mask


def test_plain_branch_matches_torch_adamw():
    torch.manual_seed(0)
    w0 = torch.randn(6, 8)
    a, b = w0.clone().requires_grad_(), w0.clone()
    ref = torch.optim.AdamW([a], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    m, v = torch.zeros_like(b), torch.zeros_like(b)
    for step in range(1, 6):
        g = torch.randn(6, 8)
        a.grad = g.clone()
        ref.step()
        adamw_update_(b, g, m, v, step=step, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    torch.testing.assert_close(b, a.detach(), rtol=1e-6, atol=1e-7)


def test_ast_step_against_hand_computation():
    """Eq. 20–23 for two steps, computed elementwise in float64."""
    w = torch.tensor([0.5, -0.3, 0.2, 0.1], dtype=torch.float64)
    keep = torch.tensor([True, True, False, False])
    grads = [torch.tensor([0.1, -0.2, 0.3, -0.4], dtype=torch.float64), torch.tensor([0.05, 0.1, -0.1, 0.2],
                                                                                      dtype=torch.float64)]
    lr, b1, b2, eps, lam, wd = 0.01, 0.9, 0.95, 1e-8, 0.5, 0.0
    p, m, v = w.clone(), torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    exp = w.tolist()
    mu, nu = [0.0] * 4, [0.0] * 4
    for t, g in enumerate(grads, start=1):
        adamw_update_(p, g, m, v, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, keep=keep, lam=lam)
        for i in range(4):
            mu[i] = b1 * mu[i] + (1 - b1) * g[i].item()
            ut = mu[i] + (0.0 if keep[i] else lam * exp[i])
            nu[i] = b2 * nu[i] + (1 - b2) * ut * ut
            exp[i] -= lr * ut / ((1 - b1 ** t) * (math.sqrt(nu[i] / (1 - b2 ** t)) + eps))
        assert p.tolist() == pytest.approx(exp, rel=1e-12, abs=1e-15)
    # the first moment stays the EMA of the raw gradient (decay not folded into it)
    assert m.tolist() == pytest.approx(mu, rel=1e-12)


def test_masks_must_be_bool():
    p = torch.ones(4)
    with pytest.raises(TypeError, match="bool"):
        adamw_update_(p, torch.zeros(4), torch.zeros(4), torch.zeros(4), step=1, lr=0.1, beta1=0.9, beta2=0.95,
                      eps=1e-8, weight_decay=0.0, keep=torch.tensor([1, 1, 0, 0], dtype=torch.int32), lam=0.1)


def check_decay_shrinks_pruned_only():
    """No loss gradient, fixed mask: the annealed decay alone must pull the pruned weights to ~0 and
    leave the kept ones untouched."""
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    masks = FullTensorMasks({w: "w"}, n=2, m=4)
    keep = masks.mask_of(w).clone()
    before = w.clone()
    opt = ASTAdamW([w], masks=masks, decay=DecaySchedule(1.0, 200, 50), mask_interval=0, lr=1e-2)
    for _ in range(200):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w[keep], before[keep]), "kept weights must not be touched by the decay"
    ratio = w[~keep].abs().mean() / before[~keep].abs().mean()
    assert ratio < 0.05, f"pruned weights should shrink toward 0, mean |w| ratio {ratio:.3f}"
    assert w[~keep].abs().max() < 0.1
    assert torch.equal(masks.mask_of(w), keep)


def test_decay_drives_pruned_weights_to_zero_and_keeps_the_rest():
    check_decay_shrinks_pruned_only()


def test_the_decay_check_catches_the_int_mask_bug(monkeypatch):
    """The authors' GPT-2 code computes the decay as λ·(~mask)·W with an int32 mask: ~1 = -2, ~0 = -1.
    Swapping that in must make the check above fail."""

    def int_mask_decay(param, keep, lam):
        return (~keep.int()).to(param.dtype) * param * lam

    monkeypatch.setattr(ast_adamw, "decay_term", int_mask_decay)
    with pytest.raises(AssertionError):
        check_decay_shrinks_pruned_only()


def test_mask_refresh_every_interval_and_fixed_mask():
    torch.manual_seed(1)
    w = torch.randn(8, 16)
    masks = FullTensorMasks({w: "w"}, n=2, m=4)
    opt = ASTAdamW([w], masks=masks, decay=lambda t: 0.0, mask_interval=3, lr=0.2)
    expected = masks.mask_of(w).clone()
    for step in range(1, 7):
        w.grad = torch.randn_like(w)
        opt.step()
        if step % 3 == 0:  # refreshed from the updated master after steps 3 and 6
            expected = magnitude_nm_mask(w)
        assert torch.equal(masks.mask_of(w), expected), step
    assert masks.counter.flips > 0

    w2 = torch.randn(8, 16)
    fixed = FullTensorMasks({w2: "w2"}, n=2, m=4)
    initial = fixed.mask_of(w2).clone()
    opt = ASTAdamW([w2], masks=fixed, decay=lambda t: 0.0, mask_interval=0, lr=0.2)
    for _ in range(6):
        w2.grad = torch.randn_like(w2)
        opt.step()
    assert torch.equal(fixed.mask_of(w2), initial)
    assert not torch.equal(magnitude_nm_mask(w2), initial)


def test_adams_step_against_hand_computation():
    """CAST AdamS: pruned entries mix λ·sign(θ) into the first moment with α_t = t/T."""
    from ast_ds.optim.ast_adamw import adams_update_

    w = torch.tensor([0.5, -0.3, 0.2, -0.1], dtype=torch.float64)
    keep = torch.tensor([True, False, True, False])
    grads = [torch.tensor([0.1, -0.2, 0.3, -0.4], dtype=torch.float64),
             torch.tensor([-0.05, 0.1, 0.1, 0.2], dtype=torch.float64)]
    lr, b1, b2, eps, lam, T = 0.01, 0.9, 0.95, 1e-8, 0.3, 4
    p, m, v = w.clone(), torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    exp, mu, nu = w.tolist(), [0.0] * 4, [0.0] * 4
    for t, g in enumerate(grads, start=1):
        a = t / T
        adams_update_(p, g, m, v, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=0.0, keep=keep, lam=lam,
                      mix=a)
        for i in range(4):
            mu[i] = b1 * mu[i] + (1 - b1) * g[i].item()
            sign = math.copysign(1.0, exp[i])
            ut = mu[i] if keep[i] else (1 - a) * mu[i] + a * lam * sign
            nu[i] = b2 * nu[i] + (1 - b2) * ut * ut
            exp[i] -= lr * ut / ((1 - b1 ** t) * (math.sqrt(nu[i] / (1 - b2 ** t)) + eps))
        assert p.tolist() == pytest.approx(exp, rel=1e-12, abs=1e-15)


def test_adams_rule_in_the_optimizer_needs_total_steps():
    w = torch.randn(4, 8)
    masks = FullTensorMasks({w: "w"})
    with pytest.raises(ValueError, match="total_steps"):
        ASTAdamW([w], masks=masks, decay=lambda t: 1e-3, rule="adams")
    opt = ASTAdamW([w], masks=masks, decay=lambda t: 1e-3, rule="adams", total_steps=10, lr=1e-2)
    w.grad = torch.zeros_like(w)
    before = w.clone()
    opt.step()
    keep = masks.mask_of(w)
    assert torch.equal(w[keep], before[keep]) and not torch.equal(w[~keep], before[~keep])
