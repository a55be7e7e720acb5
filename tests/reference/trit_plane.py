"""Float64 reference of PTQTP (PAPERS.md) in plain torch, per weight and with no tricks: the oracle
for tests/ops/test_trit_plane.py, and the baselines it is compared with.

Same algorithm and conventions as csrc/trit_plane/quantizer.h: t1 = t2 = sign(w); repeat
(a) ridge scales, (b) each weight takes the first minimizer over the 9 (t1, t2) pairs in the
candidate order below; stop when max|Δα| <= tol·max|α| or after max_iters rounds; refit the scales,
round them to float16 and re-choose the trits for the rounded scales.
"""

from __future__ import annotations

import torch

CAND_T1 = (0, 1, -1, 0, 0, 1, -1, 1, -1)
CAND_T2 = (0, 0, 0, 1, -1, 1, -1, -1, 1)
LAMBDAS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
COND_MAX = 1e6


def ridge(t1: torch.Tensor, t2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(G, n) trits and weights -> (G, 2) scales of (SᵀS + λI)⁻¹Sᵀw, λ from the schedule."""
    s11, s12, s22 = (t1 * t1).sum(1), (t1 * t2).sum(1), (t2 * t2).sum(1)
    b1, b2 = (t1 * w).sum(1), (t2 * w).sum(1)
    lam = torch.full_like(s11, LAMBDAS[-1])
    chosen = torch.zeros_like(s11, dtype=torch.bool)
    for value in LAMBDAS:
        p, q = s11 + value, s22 + value
        half_tr = 0.5 * (p + q)
        disc = torch.sqrt(0.25 * (p - q) ** 2 + s12**2)
        lmax, lmin = half_tr + disc, half_tr - disc
        ok = (lmin > 0) & (lmax <= COND_MAX * lmin) & ~chosen
        lam = torch.where(ok, torch.full_like(lam, value), lam)
        chosen |= ok
    p, q = s11 + lam, s22 + lam
    det = p * q - s12**2
    return torch.stack(((q * b1 - s12 * b2) / det, (p * b2 - s12 * b1) / det), 1)


def select(alpha: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight the first (in candidate order) of the 9 pairs nearest to w."""
    c1 = torch.tensor(CAND_T1, dtype=w.dtype)
    c2 = torch.tensor(CAND_T2, dtype=w.dtype)
    values = alpha[:, 0:1] * c1 + alpha[:, 1:2] * c2  # (G, 9)
    err = (w.unsqueeze(-1) - values.unsqueeze(1)).abs()  # (G, n, 9)
    idx = err.argmin(-1)  # first minimum
    return c1[idx], c2[idx]


def ptqtp_groups(w: torch.Tensor, max_iters: int, tol: float):
    """w (G, n) float64 -> (t1, t2, alpha (G, 2) float16-valued float64, rounds run per group)."""
    t1 = torch.sign(w)
    t2 = t1.clone()
    prev = None
    active = torch.ones(w.shape[0], dtype=torch.bool)
    rounds = torch.zeros(w.shape[0], dtype=torch.long)
    for it in range(max_iters):
        a = ridge(t1, t2, w)
        n1, n2 = select(a, w)
        t1 = torch.where(active[:, None], n1, t1)
        t2 = torch.where(active[:, None], n2, t2)
        rounds += active.long()
        if prev is not None:
            done = (a - prev).abs().amax(1) <= tol * a.abs().amax(1)
            active &= ~done
        prev = a
        if not active.any():
            break
    a = ridge(t1, t2, w).to(torch.float16).double()
    t1, t2 = select(a, w)
    return t1, t2, a, rounds


def ptqtp_ref(W: torch.Tensor, group_size: int, max_iters: int = 50, tol: float = 1e-4):
    """W (out, in) -> (trits int8 (2, out, in), scales float16 (out, n_groups, 2)), float64 inside."""
    W = W.double().cpu()
    out, inf = W.shape
    groups = -(-inf // group_size)
    trits = torch.zeros(2, out, inf, dtype=torch.int8)
    scales = torch.zeros(out, groups, 2, dtype=torch.float16)
    full = inf // group_size
    spans = []
    if full:
        spans.append((0, full, group_size))
    if inf % group_size:
        spans.append((full, 1, inf % group_size))
    for g0, count, length in spans:
        w = W[:, g0 * group_size : g0 * group_size + count * length].reshape(out * count, length)
        t1, t2, a, _ = ptqtp_groups(w, max_iters, tol)
        cols = slice(g0 * group_size, g0 * group_size + count * length)
        trits[0][:, cols] = t1.reshape(out, count * length).to(torch.int8)
        trits[1][:, cols] = t2.reshape(out, count * length).to(torch.int8)
        scales[:, g0 : g0 + count] = a.reshape(out, count, 2).half()
    return trits, scales


def dequantize_ref(trits: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """(2, out, in) trits and (out, n_groups, 2) scales -> float64 (out, in)."""
    inf = trits.shape[2]
    a = scales.double().repeat_interleave(group_size, dim=1)[:, :inf]  # (out, in, 2)
    return a[..., 0] * trits[0].double() + a[..., 1] * trits[1].double()


def round_activations_ref(x: torch.Tensor, in_features: int, group_size: int):
    """int8 activations of trit_plane_matmul_a8 (csrc/trit_plane/act_quant.h), in the op's fp32
    arithmetic: x (batch, in) float32 -> (q float64 (batch, in), s float64 (batch, n_groups))."""
    x = x.float().cpu()
    groups = -(-in_features // group_size)
    q = torch.zeros(x.shape, dtype=torch.float64)
    s = torch.zeros(x.shape[0], groups, dtype=torch.float64)
    for g in range(groups):
        cols = slice(g * group_size, min((g + 1) * group_size, in_features))
        amax = x[:, cols].abs().amax(1)
        inv = torch.tensor(127.0) / amax  # fp32, as the op
        finite = torch.isfinite(inv) & (amax > 0)
        qg = torch.round(x[:, cols] * torch.where(finite, inv, 0.0)[:, None]).clamp(-127, 127)
        q[:, cols] = qg.double()
        s[:, g] = torch.where(finite, amax / 127.0, 0.0).double()
        s[~torch.isfinite(amax), g] = float("nan")  # a NaN or Inf in the group
    return q, s


def matmul_a8_ref(x: torch.Tensor, trits: torch.Tensor, scales: torch.Tensor, group_size: int):
    """y of trit_plane_matmul_a8 in float64, and the bound on its distance from x·Ŵᵀ:
    x (batch, in) float32, trits (2, out, in), scales (out, n_groups, 2) ->
    (y (batch, out), bound (batch, out)) with bound = Σ_g e_g·(|α¹|·nnz(T¹_g) + |α²|·nnz(T²_g)),
    e_g = s_g / 2, or max|x_g| for a group flushed to zero (s_g = 0)."""
    inf = trits.shape[2]
    q, s = round_activations_ref(x, inf, group_size)
    step = s.repeat_interleave(group_size, dim=1)[:, :inf]
    y = (q * step) @ dequantize_ref(trits, scales, group_size).T
    amax = torch.stack([x[:, g * group_size:(g + 1) * group_size].abs().amax(1) for g in range(s.shape[1])], 1)
    err = torch.where(s > 0, s / 2, amax.double()).repeat_interleave(group_size, dim=1)[:, :inf]
    a = scales.double().abs().repeat_interleave(group_size, dim=1)[:, :inf]  # (out, in, 2)
    weight = a[..., 0] * trits[0].abs().double() + a[..., 1] * trits[1].abs().double()  # (out, in)
    return y, err @ weight.T
