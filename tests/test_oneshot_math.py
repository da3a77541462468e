import itertools

import pytest
import torch

from ast_ds.sparsity import magnitude_nm_mask, verify_nm
from ast_ds.sparsity.oneshot_math import layer_error, sparsegpt_prune, wanda_mask


def correlated_inputs(samples, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(samples, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) * 0.5 + torch.eye(cols)
    scale = torch.linspace(0.2, 3.0, cols)  # channels of very different magnitude (Wanda's point)
    return (base @ mix) * scale


def test_wanda_matches_brute_force_of_its_objective():
    """Per group, Wanda keeps the N weights that maximise the retained Σ |W_ij|²‖X_j‖² (its metric)."""
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    x = correlated_inputs(64, 8)
    act = (x ** 2).sum(0)
    keep = wanda_mask(w, act, n=2, m=4)
    metric = (w ** 2) * act
    for r in range(3):
        for c in range(0, 8, 4):
            best = max(itertools.combinations(range(4), 2), key=lambda idx: sum(metric[r, c + i] for i in idx))
            assert sorted(torch.nonzero(keep[r, c:c + 4]).flatten().tolist()) == sorted(best)


def brute_force_optimum(w_row, x, n, m):
    """min over all N:M masks of the least-squares reconstruction error of one output row."""
    cols = w_row.numel()
    target = x @ w_row
    groups = [list(itertools.combinations(range(g, g + m), n)) for g in range(0, cols, m)]
    best = float("inf")
    for choice in itertools.product(*groups):
        idx = [i for grp in choice for i in grp]
        sol = torch.linalg.lstsq(x[:, idx], target.unsqueeze(1)).solution.squeeze(1)
        best = min(best, float(((x[:, idx] @ sol - target) ** 2).sum()))
    return best


def test_sparsegpt_beats_magnitude_and_wanda_and_approaches_the_optimum():
    torch.manual_seed(1)
    x = correlated_inputs(256, 8, seed=3).double()
    w = torch.randn(4, 8, dtype=torch.float64)
    h = x.T @ x
    pruned, keep = sparsegpt_prune(w, h, n=2, m=4, blocksize=8, percdamp=0.0)
    assert verify_nm(pruned, n=2, m=4).ok and torch.equal(pruned != 0, keep & (pruned != 0))
    e_sgpt = layer_error(w, pruned, x)
    e_mag = layer_error(w, w * magnitude_nm_mask(w), x)
    e_wanda = layer_error(w, w * wanda_mask(w, (x ** 2).sum(0)), x)
    assert e_sgpt < e_mag and e_sgpt <= e_wanda * 1.0001
    # the exhaustive optimum (every N:M mask, least-squares refit) is the floor; SparseGPT's greedy
    # mask + error propagation closes a real part of the distance from magnitude to it
    optimum = sum(brute_force_optimum(w[r], x, 2, 4) for r in range(4))
    assert optimum <= e_sgpt + 1e-6
    assert (e_mag - e_sgpt) > 0.3 * (e_mag - optimum), (e_mag, e_sgpt, optimum)


def test_sparsegpt_shapes_and_errors():
    w = torch.randn(16, 256)
    x = torch.randn(512, 256)
    pruned, keep = sparsegpt_prune(w, x.T @ x, n=2, m=4)
    assert pruned.shape == w.shape and pruned.dtype == w.dtype and verify_nm(pruned).ok
    with pytest.raises(ValueError, match="divisible"):
        sparsegpt_prune(torch.randn(2, 6), torch.eye(6), n=2, m=4)
