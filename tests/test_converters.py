import pytest
import torch

from ast_ds.converters import (SLoRBLinear, add_slorb, add_weight_scaling, expand_scale,
                               scaled_weight, slorb_init)
from ast_ds.sparsity import magnitude_nm_mask


def test_slorb_init_against_the_formula():
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    keep = magnitude_nm_mask(w)
    s, x = slorb_init(w, keep, k=4)
    assert s.shape == (3, 2) and x.shape == (2, 8)
    for i in range(3):
        for j in range(2):
            expect = sum(w[i, p].item() * (0.0 if keep[i, p] else 1.0) for p in range(4 * j, 4 * j + 4)) / 4
            assert s[i, j].item() == pytest.approx(expect)
    for i in range(2):
        for j in range(8):
            assert x[i, j].item() == (1.0 if j // 4 == i else 0.0)


def test_slorb_forward_equals_explicit_product():
    torch.manual_seed(1)
    lin = torch.nn.Linear(16, 6)
    model = torch.nn.Sequential(lin)
    add_slorb(model, ["0.weight"], k=4)
    assert isinstance(lin, SLoRBLinear)
    with torch.no_grad():
        lin.slorb_x.add_(torch.randn_like(lin.slorb_x) * 0.1)  # trained X is no longer the indicator
    x = torch.randn(5, 16)
    expected = x @ lin.weight.T + lin.bias + x @ (lin.slorb_s @ lin.slorb_x).T
    torch.testing.assert_close(lin(x), expected)
    assert {n for n, _ in model.named_parameters()} == {"0.weight", "0.bias", "0.slorb_s", "0.slorb_x"}


def test_weight_scaling_folded_equals_unfolded_forward():
    torch.manual_seed(2)
    lin = torch.nn.Linear(8, 4, bias=False)
    model = torch.nn.Sequential(lin)
    add_weight_scaling(model, ["0.weight"], groups=2)
    with torch.no_grad():
        lin.cast_scale.copy_(torch.rand(4, 2) + 0.5)
        lin.weight.mul_(magnitude_nm_mask(lin.weight))
    x = torch.randn(3, 8)
    out = lin(x)
    folded = scaled_weight(lin.weight.detach(), lin.cast_scale.detach())  # what consolidation writes
    torch.testing.assert_close(x @ folded.T, out)
    assert torch.equal(folded == 0, lin.weight == 0)  # scaling keeps the N:M zeros
    assert expand_scale(torch.tensor([[1.0, 2.0]]), 4).tolist() == [[1.0, 1.0, 2.0, 2.0]]
    assert torch.equal(scaled_weight(torch.ones(1, 4), torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, 1, 2, 2]]))
