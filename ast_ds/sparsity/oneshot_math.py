"""One-shot N:M criteria as pure tensor functions: Wanda and SparseGPT (no model code here).

For a linear layer y = x Wᵀ with W [out, in] and calibration inputs X [samples, in]:

* Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖₂ per input channel j; keep the N best of each group of
  M along the input dimension.
* SparseGPT (Frantar & Alistarh 2023): optimal-brain-surgeon pruning with the Hessian H = 2XᵀX (the
  factor 2 cancels): columns are processed left to right in blocks; at the start of every group of M
  columns the N:M mask is chosen from w²/[H⁻¹]_jj², and each pruned column's error is propagated to
  the not-yet-processed columns through the upper Cholesky factor of H⁻¹. Dampening λ = percdamp·
  mean(diag H) is added to the diagonal.
"""

from __future__ import annotations

import torch

from ast_ds.sparsity.nm_mask import check_nm, nm_mask_from_scores


def wanda_mask(weight: torch.Tensor, act_sq_sum: torch.Tensor, *, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep-mask from |W|·‖X_j‖ (``act_sq_sum[j]`` = Σ over samples of x_j²)."""
    return nm_mask_from_scores(weight.abs() * act_sq_sum.sqrt().unsqueeze(0), n=n, m=m)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, *, n: int = 2, m: int = 4, blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pruned weight, keep mask)``; ``hessian`` = Σ xᵀx over calibration inputs ([in, in])."""
    check_nm(n, m)
    W = weight.detach().double().clone()
    H = hessian.detach().double().clone()
    cols = W.shape[1]
    if cols % m or blocksize % m:
        raise ValueError(f"SparseGPT N:M needs in_features ({cols}) and blocksize ({blocksize}) divisible by M={m}")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    for b0 in range(0, cols, blocksize):
        b1 = min(cols, b0 + blocksize)
        W1, Hinv1 = W[:, b0:b1].clone(), Hinv[b0:b1, b0:b1]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(b1 - b0):
            if i % m == 0:
                scores = W1[:, i:i + m] ** 2 / torch.diag(Hinv1)[i:i + m].unsqueeze(0) ** 2
                keep[:, b0 + i:b0 + i + m] = nm_mask_from_scores(scores, n=n, m=m)
            w, d = W1[:, i], Hinv1[i, i]
            q = torch.where(keep[:, b0 + i], w, torch.zeros((), dtype=w.dtype))
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, b0:b1] = Q1
        W[:, b1:] -= Err1 @ Hinv[b0:b1, b1:]
    pruned = torch.where(keep, W, torch.zeros((), dtype=W.dtype)).to(weight.dtype)
    return pruned, keep


def layer_error(weight: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor) -> float:
    """‖X Wᵀ − X Ŵᵀ‖²_F: the reconstruction error both methods aim to keep small."""
    return float(((inputs.double() @ (weight.double() - pruned.double()).T) ** 2).sum())
