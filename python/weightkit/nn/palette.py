"""PaletteLinear: a linear layer whose weight is stored as codebook codes of its Hadamard-rotated
rows (Q-Palette style incoherence processing + a scalar, 2-D vector or trellis quantizer).

Forward: y = hadamard(x, signs)·Ŵᵀ + bias with Ŵ = scales[:, None]·decode(codes); since the
rotation R = H·diag(signs)/√n is orthogonal and Ŵ approximates W·Rᵀ, y ≈ x·Wᵀ + bias.
"""

from __future__ import annotations

import torch
from torch import nn

from weightkit.nn.fixed_dtype import FixedDtypeBuffers
from weightkit.ops import palette as P

__all__ = ["PaletteLinear", "PALETTE_FORMAT_VERSION"]

#: Version of the stored format (packed layout of csrc/palette/cpu.h, TCQ stream layout).
PALETTE_FORMAT_VERSION = 1


class PaletteLinear(FixedDtypeBuffers):
    """Quantized linear layer (out_features, in_features).

    Buffers: ``signs`` (in,) float32 ±1, ``scales`` (out,) float32, ``codebook`` (2^c, d) float32
    (sq / vq; empty for tcq), ``packed`` int32 codes (sq / vq: (out, words) palette layout; tcq:
    (out, words) trellis bit streams; tcq half variants: (1, words) with both halves' streams). ``kind`` ("sq", "vq", "tcq"), ``bits`` (bits per weight of
    the codes) and the trellis parameters travel in the extra state, so ``state_dict`` round trips
    are exact.
    """

    FIXED_DTYPE_BUFFERS = ("signs", "scales", "codebook")  # float32 by format

    def __init__(self, in_features: int, out_features: int, kind: str, bits: float, bias: bool = True,
                 tcq_params: dict | None = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kind, self.bits = kind, float(bits)
        self.tcq_params = dict(tcq_params or {})
        self.register_buffer("signs", torch.ones(self.in_features))
        self.register_buffer("scales", torch.ones(self.out_features))
        self.register_buffer("codebook", torch.zeros(0, 1))
        self.register_buffer("packed", torch.zeros(self.out_features, 0, dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str = "sq", bits: float = 4, seed: int = 0,
                    hessian: torch.Tensor | None = None, damp: float = 0.01, **tcq) -> "PaletteLinear":
        """Quantize an nn.Linear (see weightkit.quant.palette.quantize_weight; ``hessian`` (in, in),
        the layer's input second moment, makes the rounding Hessian-aware)."""
        from weightkit.quant.palette import quantize_weight

        q = quantize_weight(linear.weight.detach(), kind, bits, seed=seed, hessian=hessian, damp=damp, **tcq)
        layer = cls(linear.in_features, linear.out_features, kind, bits, bias=linear.bias is not None,
                    tcq_params=q.get("tcq_params"))
        layer.load_quantized(q)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def load_quantized(self, q: dict) -> None:
        """Take the tensors of a quantize_weight result (signs, scales, codebook, packed)."""
        for name in ("signs", "scales", "codebook", "packed"):
            setattr(self, name, q[name].to(self.signs.device))

    def dequantize(self) -> torch.Tensor:
        """Ŵ in the original (unrotated) basis: (out, in) float32 ≈ W."""
        # hadamard_transform(I) = Rᵀ, and Ŵ_rot ≈ W·Rᵀ, so W ≈ Ŵ_rot·R (an n×n matrix: analysis only).
        Rt = P.hadamard_transform(torch.eye(self.in_features, device=self.signs.device), self.signs)
        return self.rotated_weight() @ Rt.T

    def rotated_weight(self) -> torch.Tensor:
        """Ŵ in the rotated basis, (out, in) float32."""
        if self.kind == "tcq":
            return torch.cat([P.tcq_dequantize(packed, scales, self.in_features, p["L"], p["bits_per_step"],
                                               p["values_per_step"]) for packed, scales, p in self._tcq_parts()])
        return P.palette_dequantize(self.packed, self.codebook, self.scales, self.in_features)

    def _tcq_parts(self) -> list:
        """[(packed (rows, words) int32, scales (rows,) float32, trellis params)] of consecutive row
        ranges: one part, or two for a half variant (two trellis rates over the two halves of the
        rows, both streams in one flat ``packed``)."""
        p = self.tcq_params
        if "split" not in p:
            return [(self.packed, self.scales, p)]
        flat, k, split = self.packed.reshape(-1), p["lo_words"], p["split"]

        def words(q):  # per row; explicit, as a half may have no rows (a one-row layer)
            return P.tcq_words(self.in_features // q["values_per_step"], q["L"], q["bits_per_step"])

        return [(flat[:k].reshape(split, words(p["lo"])), self.scales[:split].contiguous(), p["lo"]),
                (flat[k:].reshape(self.out_features - split, words(p["hi"])), self.scales[split:].contiguous(),
                 p["hi"])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr = P.hadamard_transform(x, self.signs)
        if self.kind == "tcq":
            ys = [P.tcq_matmul(xr, packed, scales, self.in_features, p["L"], p["bits_per_step"], p["values_per_step"])
                  for packed, scales, p in self._tcq_parts()]
            y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
        else:
            y = P.palette_matmul(xr, self.packed, self.codebook, self.scales, self.in_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def get_extra_state(self) -> dict:
        return {"version": PALETTE_FORMAT_VERSION, "kind": self.kind, "bits": self.bits,
                "tcq_params": dict(self.tcq_params)}

    def set_extra_state(self, state: dict) -> None:
        if state.get("version") != PALETTE_FORMAT_VERSION:
            raise ValueError(f"PaletteLinear: stored format version {state.get('version')} is not "
                             f"{PALETTE_FORMAT_VERSION}")
        self.kind, self.bits, self.tcq_params = state["kind"], float(state["bits"]), dict(state["tcq_params"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Code tensors change shape with the quantizer: take the stored shapes before copying.
        for name in ("codebook", "packed"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.signs.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}, "
                f"bits={self.bits}, bias={self.bias is not None}")
