"""Baseline weight quantizers to report beside PTQTP (fake quantization: dequantized weights).

Each function takes W (out, in) float32/bfloat16/float16 and returns ``(W_hat, bits_per_weight)``
with W_hat float32 of W's shape; the bit count includes the scales (float16) and zero points.
"""

from __future__ import annotations

import math

import torch

__all__ = ["rtn_int", "rtn_ternary", "twn"]

_LOG2_3 = math.log2(3.0)


def _check(name: str, W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"weightkit.quant.{name}: W must be a 2-D tensor, got {getattr(W, 'shape', type(W))}")
    if not W.is_floating_point():
        raise TypeError(f"weightkit.quant.{name}: W must be floating point, got {W.dtype}")
    if not torch.isfinite(W).all():
        raise ValueError(f"weightkit.quant.{name}: W must be finite (it has NaN or Inf)")
    return W.detach().float()


def rtn_ternary(W: torch.Tensor) -> tuple[torch.Tensor, float]:
    """BitNet b1.58 style: per row γ = mean|w|, W_hat = γ·clamp(round(w/γ), −1, 1).

    Bits: log₂3 per weight + one float16 scale per row."""
    W = _check("rtn_ternary", W)
    gamma = W.abs().mean(dim=1, keepdim=True).clamp_min(1e-12)
    return (W / gamma).round().clamp(-1, 1) * gamma, _LOG2_3 + 16.0 / max(W.shape[1], 1)


def twn(W: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ternary weight networks, per row: threshold Δ = 0.7·mean|w|, scale α = mean of |w| above Δ
    (the least-squares scale for that support), W_hat = α·sign(w)·[|w| > Δ].

    Bits: log₂3 per weight + one float16 scale per row."""
    W = _check("twn", W)
    a = W.abs()
    mask = a > 0.7 * a.mean(dim=1, keepdim=True)
    alpha = (a * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    return alpha * torch.sign(W) * mask, _LOG2_3 + 16.0 / max(W.shape[1], 1)


def rtn_int(W: torch.Tensor, bits: int, group_size: int = 128, symmetric: bool = False) -> tuple[torch.Tensor, float]:
    """Round-to-nearest b-bit integers per row and group of ``group_size`` columns (ragged last).

    Asymmetric (default): scale = (max − min)/(2^b − 1), integer zero point; bits = b + 32/G
    (float16 scale and float16-stored zero point per group). Symmetric: scale = max|w|/(2^(b−1) − 1),
    levels −(2^(b−1) − 1) .. 2^(b−1) − 1; bits = b + 16/G."""
    W = _check("rtn_int", W)
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"weightkit.quant.rtn_int: bits must be an int in [2, 8], got {bits!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"weightkit.quant.rtn_int: group_size must be an int >= 1, got {group_size!r}")
    out, inf = W.shape
    if W.numel() == 0:  # no group to scale
        return W.clone(), bits + (16.0 if symmetric else 32.0) / group_size
    pad = (-inf) % group_size
    Wp = torch.nn.functional.pad(W, (0, pad)).view(out, -1, group_size)
    valid = torch.nn.functional.pad(torch.ones(inf, dtype=torch.bool), (0, pad)).view(1, -1, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (Wp.abs() * valid).amax(-1, keepdim=True).clamp_min(1e-12) / qmax
        Q = (Wp / scale).round().clamp(-qmax, qmax) * scale
        extra = 16.0 / group_size
    else:
        qmax = 2**bits - 1
        big = torch.finfo(W.dtype).max
        lo = torch.where(valid, Wp, big).amin(-1, keepdim=True)
        hi = torch.where(valid, Wp, -big).amax(-1, keepdim=True)
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zero = (-lo / scale).round()
        Q = ((Wp / scale).round() + zero).clamp(0, qmax).sub(zero) * scale
        extra = 32.0 / group_size
    return Q.view(out, -1)[:, :inf].contiguous(), bits + extra
