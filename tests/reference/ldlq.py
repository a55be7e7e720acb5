"""float64 reference of LDLQ rounding, from its definition rather than through Cholesky factors.

Units (d adjacent columns) are rounded in order. After a unit b is rounded, with F the columns not
rounded before it (b included) and K = (H[F, F])⁻¹, the columns after it move by the optimal
correction of the error e = w_b − q_b for the proxy loss (w − ŵ)·H·(w − ŵ)ᵀ (optimal brain surgeon):
w_rest −= e·(K_bb)⁻¹·K_b,rest. K is recomputed by a plain inverse at every unit: O(in⁴), small sizes.
"""

from __future__ import annotations

import torch


def ldlq_ref(W: torch.Tensor, H: torch.Tensor, nearest, d: int = 1, damp: float = 0.01,
             group_size: int | None = None, act_order: bool = False) -> torch.Tensor:
    """Ŵ (out, in) float64; ``nearest`` maps an (out, d) float32 block to its nearest codewords.
    With ``group_size``, ``nearest`` is called with each group's current weights (out, group)
    float32 at its first column and returns the group's rounding function (GPTQ's groups).
    ``act_order``: the units are rounded by decreasing Σ diag(H) over their columns (ties in column
    order), i.e. the same rounding of the permuted problem, permuted back."""
    if act_order:
        energy = [float(H.double().diagonal()[u : u + d].sum()) for u in range(0, W.shape[1], d)]
        units = sorted(range(len(energy)), key=lambda u: -energy[u])  # sorted() is stable
        cols = torch.tensor([u * d + k for u in units for k in range(d)])
        Q = ldlq_ref(W[:, cols], H[cols][:, cols], nearest, d, damp, group_size)
        return Q[:, torch.argsort(cols)]
    W = W.double().clone()
    H = H.double().clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=torch.float64)
    n = W.shape[1]
    Q = torch.empty_like(W)
    for i in range(0, n, d):
        K = torch.linalg.inv(H[i:, i:])
        b, rest = slice(0, d), slice(d, None)
        if group_size is not None and i % group_size == 0:
            round_unit = nearest(W[:, i : i + group_size].float().contiguous())
        q = (nearest if group_size is None else round_unit)(W[:, i : i + d].float().contiguous()).double()
        Q[:, i : i + d] = q
        e = W[:, i : i + d] - q
        W[:, i + d :] -= e @ torch.linalg.inv(K[b, b]) @ K[b, rest]
    return Q


def proxy_loss(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """Σ_rows (w − ŵ)·H·(w − ŵ)ᵀ in float64."""
    E = (W.double() - W_hat.double())
    return float(((E @ H.double()) * E).sum())


def tcq_ldlq_ref(Wn: torch.Tensor, H: torch.Tensor, L: int, kb: int, V: int, damp: float, block: int,
                 lookahead: int) -> torch.Tensor:
    """States (rows, in/V) of block-LDLQ trellis coding in float64: the columns are taken ``block``
    at a time; a block's targets are the weights moved by the optimal correction of every earlier
    block's error (as ldlq_ref, with K = (H[F, F])⁻¹ recomputed by a plain inverse); each row's path
    goes on from its last state by a float64 Viterbi search (tests.reference.palette) over the block
    plus ``lookahead`` steps, of which the block's states are kept."""
    from tests.reference.palette import tcq_code_ref, tcq_viterbi_ref

    W = Wn.double().clone()
    H = H.double().clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=torch.float64)
    rows, n = W.shape
    states = torch.empty(rows, n // V, dtype=torch.int64)
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        end = min(b1 + lookahead * V, n)
        Q = torch.empty(rows, b1 - b0, dtype=torch.float64)
        for r in range(rows):
            prev = -1 if b0 == 0 else int(states[r, b0 // V - 1])
            _, path = tcq_viterbi_ref(W[r, b0:end], L, kb, V, prev)
            states[r, b0 // V : b1 // V] = torch.tensor(path[: (b1 - b0) // V])
            Q[r] = torch.tensor([tcq_code_ref(s, v) for s in path[: (b1 - b0) // V] for v in range(V)])
        K = torch.linalg.inv(H[b0:, b0:])
        blk, rest = slice(0, b1 - b0), slice(b1 - b0, None)
        W[:, b1:] -= (W[:, b0:b1] - Q) @ torch.linalg.inv(K[blk, blk]) @ K[blk, rest]
    return states
