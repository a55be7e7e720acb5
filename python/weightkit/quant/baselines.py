"""Baseline weight quantizers to report beside PTQTP and the palette (fake quantization:
dequantized weights).

Each function takes W (out, in) float32/bfloat16/float16 and returns ``(W_hat, bits_per_weight)``
with W_hat float32 of W's shape; the bit count includes the scales (float16) and zero points.
``gptq_int`` also takes the layer's input second moment H (weightkit.quant.collect_hessians).
"""

from __future__ import annotations

import math

import torch

__all__ = ["gptq_int", "rtn_int", "rtn_ternary", "twn"]

_LOG2_3 = math.log2(3.0)


def _check(name: str, W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"weightkit.quant.{name}: W must be a 2-D tensor, got {getattr(W, 'shape', type(W))}")
    if not W.is_floating_point():
        raise TypeError(f"weightkit.quant.{name}: W must be floating point, got {W.dtype}")
    if not torch.isfinite(W).all():
        raise ValueError(f"weightkit.quant.{name}: W must be finite (it has NaN or Inf)")
    return W.detach().float()


def _check_grid(name: str, bits, group_size) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"weightkit.quant.{name}: bits must be an int in [2, 8], got {bits!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"weightkit.quant.{name}: group_size must be an int >= 1, got {group_size!r}")


def _asymmetric_grid(Wg: torch.Tensor, qmax: int):
    """Per row of Wg (out, g): scale = (max − min)/qmax and an integer zero point."""
    lo, hi = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
    scale = ((hi - lo) / qmax).clamp_min(1e-12)
    return scale, (-lo / scale).round()


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
    _check_grid("rtn_int", bits, group_size)
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
        # Padding takes a value of its group (its first), so it moves neither the min nor the max.
        scale, zero = _asymmetric_grid(torch.where(valid, Wp, Wp[..., :1]), qmax)
        Q = ((Wp / scale).round() + zero).clamp(0, qmax).sub(zero) * scale
        extra = 32.0 / group_size
    return Q.view(out, -1)[:, :inf].contiguous(), bits + extra


def gptq_int(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, damp: float = 0.01,
             act_order: bool = False) -> tuple[torch.Tensor, float]:
    """GPTQ: rtn_int's asymmetric b-bit grid per row and group of ``group_size`` columns, but the
    columns are rounded in order with the error fed back to the columns not yet rounded
    (weightkit.quant.ldlq_round, which is GPTQ's loop), and each group's grid is fitted when its
    first column comes up, to weights that already carry the earlier feedback. ``H`` (in, in): the
    layer's input second moment; ``damp`` as in ldlq_round. Bits as rtn_int.

    ``act_order``: round the columns by decreasing diag(H) (the inputs with the most energy first,
    while the most columns are left to absorb their error), GPTQ's ``desc_act``. The groups are then
    runs of ``group_size`` columns in that order, so a model stores each column's group index too:
    ⌈log2(groups)⌉ bits per column, counted in the bits (⌈log2(groups)⌉/out per weight: SmolLM2's
    576 → 192 projections, 3/192)."""
    from weightkit.quant.ldlq import ldlq_round

    W = _check("gptq_int", W)
    _check_grid("gptq_int", bits, group_size)
    qmax = 2**bits - 1

    def fit(Wg):
        scale, zero = _asymmetric_grid(Wg, qmax)
        return lambda col: ((col / scale).round() + zero).clamp(0, qmax).sub(zero) * scale

    bits_per_weight = bits + 32.0 / group_size
    Q = ldlq_round(W, H, fit, damp=damp, group_size=group_size, act_order=act_order)
    groups = -(-W.shape[1] // group_size)
    if act_order and groups > 1:  # one group needs no index
        bits_per_weight += W.shape[1] * math.ceil(math.log2(groups)) / W.numel()
    return Q, bits_per_weight
