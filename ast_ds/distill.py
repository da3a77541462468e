"""The distillation loss, chunked over tokens: L = α·T²·KL(p_teacher^T ‖ p_student^T) + (1−α)·CE.

Full B×T×V fp32 logits are the largest activation of a LLaMA step (V = 32000). The loss below never
builds more than ``chunk_tokens`` rows of fp32 softmax at a time: a custom autograd function computes
loss *and* the gradient w.r.t. the student logits chunk by chunk in the forward, keeps that gradient
(in the logits' dtype) for the backward, and frees the fp32 temporaries as it goes.

Token weighting: every position with a label (the next token; the last position of each row has
none) counts once; KL and CE are both means over those positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChunkedDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, labels, alpha: float, temperature: float, chunk: int):
        n = labels.numel()
        valid = labels >= 0
        count = valid.sum().clamp(min=1).to(torch.float64)
        grad = torch.empty_like(student)
        kl_sum = torch.zeros((), dtype=torch.float64, device=student.device)
        ce_sum = torch.zeros((), dtype=torch.float64, device=student.device)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            w = valid[lo:hi].unsqueeze(1).to(torch.float32)
            y = labels[lo:hi].clamp(min=0).unsqueeze(1)
            # at most four [chunk, V] fp32 temporaries are alive at any point below
            g = F.log_softmax(student[lo:hi].float(), dim=-1)  # CE is always reported, even with no weight
            ce_sum -= (g.gather(1, y) * w).sum().double()
            g.exp_().scatter_add_(1, y, torch.full_like(w, -1.0)).mul_(w * (1.0 - alpha))  # (1−α)(p − onehot)
            if alpha > 0.0:
                # not in place: .float() of fp32 logits is the caller's tensor itself
                log_pt = F.log_softmax(teacher[lo:hi].float() / temperature, dim=-1)
                log_ps = F.log_softmax(student[lo:hi].float() / temperature, dim=-1)
                diff = log_pt - log_ps
                p_t = log_pt.exp_()
                kl_sum += (diff.mul_(p_t).sum(1, keepdim=True) * w).sum().double()
                del diff
                # d/ds T²·KL(p_t ‖ p_s) = T·(softmax(s/T) − p_t)
                g.add_(log_ps.exp_().sub_(p_t).mul_(w * (alpha * temperature)))
                del p_t, log_ps
            grad[lo:hi] = g.div_(count.float()).to(grad.dtype)
            del g
        kl = (kl_sum / count * temperature ** 2).float()
        ce = (ce_sum / count).float()
        loss = alpha * kl + (1.0 - alpha) * ce
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(kl, ce)
        return loss, kl, ce

    @staticmethod
    def backward(ctx, grad_loss, _gkl, _gce):
        (grad,) = ctx.saved_tensors
        # in place: a second B×T×V buffer would double the loss's memory (the graph is used once)
        return grad.mul_(grad_loss.to(grad.dtype)), None, None, None, None, None


def shift_labels(input_ids: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token labels for causal LM rows: position t predicts input t+1; the last has none."""
    labels = torch.full_like(input_ids, ignore_index)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, *,
                 alpha: float, temperature: float = 1.0, chunk_tokens: int = 256):
    """``(loss, kl, ce)``; logits ``[B, T, V]``, labels ``[B, T]`` (negative = ignored).

    ``teacher_logits=None`` requires ``alpha=0`` (plain cross-entropy, the dense mode and the no-KD
    ablation). Only ``loss`` carries a gradient.
    """
    if teacher_logits is None and alpha > 0:
        raise ValueError("distill_loss: alpha > 0 needs teacher logits (set distill.alpha=0 for no distillation)")
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.reshape(-1, vocab) if teacher_logits is not None else s.detach()
    if t.shape != s.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                         f"{tuple(student_logits.shape)}: teacher and student need the same vocabulary")
    return _ChunkedDistill.apply(s, t, labels.reshape(-1), float(alpha), float(temperature), int(chunk_tokens))


def naive_distill_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float = 1.0):
    """The textbook full-logits version (autograd through full fp32 tensors): reference and benchmark."""
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()
    y = labels.reshape(-1)
    valid = y >= 0
    ce = F.cross_entropy(s[valid], y[valid])
    if teacher_logits is None:
        return (1 - alpha) * ce, torch.zeros(()), ce
    t = teacher_logits.reshape(-1, vocab).float()
    log_ps = F.log_softmax(s[valid] / temperature, dim=-1)
    log_pt = F.log_softmax(t[valid] / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * temperature ** 2
    return alpha * kl + (1 - alpha) * ce, kl, ce
