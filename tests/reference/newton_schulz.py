"""Float64 references for the Newton–Schulz family: plain torch, written from the formulas in
PAPERS.md with no attempt at speed. The oracle for tests/ops/test_newton_schulz.py."""

from __future__ import annotations

import torch


def newton_schulz_ref(
    G: torch.Tensor, steps: int, coeffs: list[float], eps: float, norm_scale: float = 1.0, dtype=torch.float64
) -> torch.Tensor:
    """G (m, n) or (b, m, n) -> result of the quintic iteration in `dtype`, G's shape.

    float64 is the oracle; bf16/fp16 give the plain-torch yardstick that half-precision results
    are held to (flash-attention's rule: at most 2x its error)."""
    X = G.to(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X.double(), keepdim=True) * norm_scale + eps).to(dtype)
    for s in range(steps):
        a, b, c = coeffs[0:3] if len(coeffs) == 3 else coeffs[3 * s : 3 * s + 3]
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def auon_ref(G: torch.Tensor, eps: float) -> torch.Tensor:
    """AuON: X = G/(||G||_F + eps); X / (RMS(cosh X) + 1e-8), per matrix, float64."""
    X = G.to(torch.float64)
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    r = torch.cosh(X).square().mean(dim=(-2, -1), keepdim=True).sqrt()
    return X / (r + 1e-8)
