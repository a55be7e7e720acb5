"""Float64 reference of RLS editing: the batch normal-equations solution, solved from scratch."""

from __future__ import annotations

import torch


def rls_closed_form(W0: torch.Tensor, gram: torch.Tensor, lam: float, mu: float, K: torch.Tensor, V: torch.Tensor):
    """(W, C) after all rows of K (n, d_k), V (n, d_v) from W0 (d_v, d_k) and anchor gram (d_k, d_k).

    W minimizes ‖K Wᵀ − V‖² + lam‖W − W0‖² + mu‖K0 Wᵀ − K0 W0ᵀ‖² with K0ᵀK0 = gram:
    (lam I + mu gram + KᵀK) Wᵀ = (lam I + mu gram) W0ᵀ + KᵀV; C is that system's inverse.
    """
    W0, gram, K, V = (t.double() for t in (W0, gram, K, V))
    A0 = lam * torch.eye(gram.shape[0], dtype=torch.float64) + mu * gram
    A = A0 + K.T @ K
    W = torch.linalg.solve(A, A0 @ W0.T + K.T @ V).T
    return W, torch.linalg.inv(A)
