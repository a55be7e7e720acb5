"""Codebooks of the palette quantizers, designed for unit-Gaussian data (the rotated, row-normalized
weights are close to it): Lloyd-Max scalar codebooks (2^b levels) and 2-D k-means codebooks
(2^c codewords for c bits per pair, i.e. c / 2 bits per weight).

Both are deterministic (fixed seeds, float64 design) and cached in memory; a layer stores its own
codebook, so a saved model never depends on recomputing them.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["lloyd_max", "vq2d", "gaussian_mse"]


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


@functools.lru_cache(maxsize=None)
def _lloyd_max64(levels: int) -> torch.Tensor:
    # Start at the Gaussian quantiles; Lloyd iterations on the exact density converge to the
    # unique optimum (log-concave density).
    p = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    c = math.sqrt(2) * torch.erfinv(2 * p - 1)
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    for _ in range(20000):
        t = torch.cat([-inf, 0.5 * (c[1:] + c[:-1]), inf])
        mass = _Phi(t[1:]) - _Phi(t[:-1])
        new = (_phi(t[:-1]) - _phi(t[1:])) / mass
        if (new - c).abs().max() < 1e-13:
            c = new
            break
        c = new
    return c


def lloyd_max(bits: int) -> torch.Tensor:
    """Lloyd-Max codebook for N(0, 1): (2^bits, 1) float32, ascending; bits in 1..8."""
    if not (1 <= int(bits) <= 8):
        raise ValueError(f"bits must be in 1..8 for the scalar quantizer, got {bits}")
    return _lloyd_max64(1 << int(bits)).float().reshape(-1, 1)


@functools.lru_cache(maxsize=None)
def _vq2d(code_bits: int, samples: int, iters: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # float32 design: the k-means steps dominate and double precision changes nothing visible.
    X = torch.randn(samples, 2, generator=g)
    K = 1 << code_bits
    # k-means++ seeding on a subsample, then Lloyd iterations on all samples.
    sub = X[: min(samples, 65536)]
    C = sub[torch.randint(0, sub.shape[0], (1,), generator=g)]
    d2 = ((sub - C[0]) ** 2).sum(1)
    for _ in range(1, K):
        nxt = sub[torch.multinomial(d2 / d2.sum(), 1, generator=g)]
        C = torch.cat([C, nxt])
        d2 = torch.minimum(d2, ((sub - nxt[0]) ** 2).sum(1))
    for _ in range(iters):
        assign = torch.cdist(X, C).argmin(1)
        sums = torch.zeros_like(C).index_add_(0, assign, X)
        counts = torch.bincount(assign, minlength=K).to(X.dtype)
        C = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], C)
    return C


def vq2d(code_bits: int) -> torch.Tensor:
    """2-D k-means codebook for N(0, I₂): (2^code_bits, 2) float32; code_bits in 2..8 (1–4 bits a
    weight). Trained on 2^18 seeded samples (2^17 for 256 codewords: the cost grows with K)."""
    if not (2 <= int(code_bits) <= 8):
        raise ValueError(f"code_bits must be in 2..8 for the 2-D VQ, got {code_bits}")
    c = int(code_bits)
    samples = 1 << (18 if c <= 6 else 17)
    return _vq2d(c, samples, 40 if c <= 6 else 25, 1234 + c).float()


def gaussian_mse(codebook: torch.Tensor, n: int = 1 << 16, seed: int = 0) -> float:
    """Per-coordinate MSE of nearest-codeword quantization of n seeded N(0, 1) samples."""
    from weightkit.ops.palette import palette_encode

    d = codebook.shape[1]
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1, n, generator=g)
    idx = palette_encode(X, codebook)
    Xq = codebook[idx.long()].reshape(1, n)
    return (X - Xq).pow(2).mean().item() if d else 0.0
