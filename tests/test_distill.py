import pytest
import torch

from ast_ds.distill import distill_loss, naive_distill_loss, shift_labels


@pytest.mark.parametrize("alpha,temperature,chunk", [(1 / 3, 1.0, 5), (2 / 3, 2.0, 7), (0.0, 1.0, 4),
                                                     (1.0, 1.0, 64)])
def test_chunked_equals_naive_loss_and_gradient(alpha, temperature, chunk):
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (3, 6))
    labels = shift_labels(ids)
    s1 = torch.randn(3, 6, 11, dtype=torch.float64, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_()
    t = torch.randn(3, 6, 11, dtype=torch.float64)
    loss, kl, ce = distill_loss(s1, t, labels, alpha=alpha, temperature=temperature, chunk_tokens=chunk)
    ref, rkl, rce = naive_distill_loss(s2, t, labels, alpha=alpha, temperature=temperature)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    if alpha > 0:
        assert kl.item() == pytest.approx(rkl.item(), rel=1e-6)
    assert ce.item() == pytest.approx(rce.item(), rel=1e-6)
    torch.testing.assert_close(s1.grad.float(), s2.grad.float(), rtol=1e-5, atol=1e-7)


def test_kl_zero_for_identical_logits_and_teacherless_mode():
    x = torch.randn(2, 5, 9)
    labels = shift_labels(torch.randint(0, 9, (2, 5)))
    _, kl, _ = distill_loss(x, x.clone(), labels, alpha=0.5)
    assert abs(kl.item()) < 1e-6
    loss, _, ce = distill_loss(x.requires_grad_(), None, labels, alpha=0.0)
    assert loss.item() == pytest.approx(ce.item())
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(x, None, labels, alpha=0.3)


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7]])
    assert shift_labels(ids).tolist() == [[6, 7, -100]]


def test_inputs_left_untouched_and_parts_carry_no_grad():
    s = torch.randn(2, 4, 7, requires_grad=True)
    t = torch.randn(2, 4, 7)
    s0, t0 = s.detach().clone(), t.clone()
    loss, kl, ce = distill_loss(s, t, shift_labels(torch.randint(0, 7, (2, 4))), alpha=0.5, temperature=2.0)
    assert torch.equal(s.detach(), s0) and torch.equal(t, t0)
    assert loss.requires_grad and not kl.requires_grad and not ce.requires_grad
