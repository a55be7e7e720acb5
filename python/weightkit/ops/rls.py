"""Recursive least squares for sequential model editing (RLSEdit).

For one linear map W (d_v, d_k) in ``nn.Linear`` layout (k ↦ W·k) the edited weight after t
batches of (key, value) rows solves

    W_t = argmin_W  Σ_{i≤t} ‖K_i Wᵀ − V_i‖² + λ‖W − W0‖² + μ‖K0 Wᵀ − K0 W0ᵀ‖²

and is kept up to date by one Woodbury step per batch with the float64 matrix
C_t = (λI + μ·K0ᵀK0 + Σ K_iᵀK_i)⁻¹ (d_k, d_k). The cost of a step does not depend on t.

``rls_init(gram, lam, mu)`` → C0 = (λI + μ·gram)⁻¹, float64 (d_k, d_k).
``rls_update_(W, C, K, V)`` updates W (any float dtype, math in float64) and C in place for
K (u, d_k), V (u, d_v); a refused call (bad shapes, dtypes, non-finite input) changes neither.
"""

from __future__ import annotations

import torch

__all__ = ["rls_init", "rls_update_"]


def rls_init(gram: torch.Tensor, lam: float = 1.0, mu: float = 1.0) -> torch.Tensor:
    """C0 = (lam·I + mu·gram)⁻¹ as a symmetric float64 (d_k, d_k) tensor on gram's device.

    gram (d_k, d_k) is the anchor key Gram K0ᵀK0 (any float dtype); lam, mu ≥ 0, not both 0.
    """
    return torch.ops.weightkit.rls_init(gram, float(lam), float(mu))


def rls_update_(W: torch.Tensor, C: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> None:
    """One RLS step in place: W (d_v, d_k) += Rᵀ·Gᵀ and C (d_k, d_k, float64) −= G·Fᵀ.

    K (u, d_k) and V (u, d_v) are the new keys and target outputs (rows); R = V − K·Wᵀ,
    F = C·Kᵀ, S = I_u + K·F, G = F·S⁻¹. A 1-D key/value is one row (u = 1).
    """
    if K.dim() == 1:
        K = K.unsqueeze(0)
    if V.dim() == 1:
        V = V.unsqueeze(0)
    torch.ops.weightkit.rls_update_(W, C, K, V)


@torch.library.register_fake("weightkit::rls_init")
def _rls_init_fake(gram, lam, mu):
    torch._check(gram.dim() == 2 and gram.shape[0] == gram.shape[1], lambda: "weightkit.rls_init: gram must be square")
    return gram.new_empty(gram.shape, dtype=torch.float64)


@torch.library.register_fake("weightkit::rls_update_")
def _rls_update_fake(W, C, K, V):
    torch._check(W.dim() == 2 and C.dim() == 2, lambda: "weightkit.rls_update_: W and C must be 2-D")
    torch._check(K.shape[1] == W.shape[1], lambda: "weightkit.rls_update_: K must be (u, d_k)")
    torch._check(V.shape[1] == W.shape[0], lambda: "weightkit.rls_update_: V must be (u, d_v)")
    return None
