"""TritPlaneLinear: an ``nn.Linear`` replacement holding PTQTP trit-planes (inference only)."""

from __future__ import annotations

import torch
from torch import nn

from weightkit.nn.fixed_dtype import FixedDtypeBuffers
from weightkit.ops import trit_plane as tp

__all__ = ["TritPlaneLinear"]


class TritPlaneLinear(FixedDtypeBuffers):
    """y = x·Ŵᵀ + b with Ŵ = α¹·T¹ + α²·T² stored packed (format :data:`weightkit.ops.trit_plane.PACK_VERSION`).

    Buffers: ``packed`` int32 ``packed_shape(out, in, group_size)``, ``scales`` float16
    ``(out, n_groups, 2)``, ``bias`` (out,) or None. The state dict also carries an extra state
    ``{"pack_version", "group_size", "in_features", "out_features"}``; loading a state dict of a
    different pack version or geometry raises ``ValueError``.

    ``forward``: x (..., in_features) float32/bfloat16/float16 -> (..., out_features), x's dtype.
    ``activations`` (an attribute, not saved): ``"fp32"`` multiplies x as given
    (:func:`~weightkit.ops.trit_plane.trit_plane_matmul`); ``"int8"`` rounds x to int8 per row and
    group first (:func:`~weightkit.ops.trit_plane.trit_plane_matmul_a8`: ~0.65% relative change on
    Gaussian inputs, faster on AVX2-only CPUs).
    """

    FIXED_DTYPE_BUFFERS = ("scales",)  # float16 by format

    ACTIVATIONS = ("fp32", "int8")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128, device=None,
                 bias_dtype: torch.dtype = torch.float32, activations: str = "fp32"):
        super().__init__()
        if activations not in self.ACTIVATIONS:
            raise ValueError(f"TritPlaneLinear: activations must be one of {self.ACTIVATIONS}, got {activations!r}")
        self.activations = activations
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"TritPlaneLinear: {name} must be an int >= 0, got {v!r}")
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"TritPlaneLinear: group_size must be an int >= 1, got {group_size!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.pack_version = tp.PACK_VERSION
        shape = tp.packed_shape(out_features, in_features, group_size)
        self.register_buffer("packed", torch.zeros(shape, dtype=torch.int32, device=device))
        groups = tp.n_groups(in_features, group_size)
        self.register_buffer("scales", torch.zeros(out_features, groups, 2, dtype=torch.float16, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, max_iters: int = 50, tol: float = 1e-4,
                    activations: str = "fp32") -> TritPlaneLinear:
        """Quantize ``linear.weight`` with PTQTP (on its device); the bias is copied as is."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"TritPlaneLinear.from_linear: linear must be an nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach()
        b = linear.bias
        mod = cls(linear.in_features, linear.out_features, bias=b is not None, group_size=group_size,
                  device=W.device, bias_dtype=b.dtype if b is not None else torch.float32, activations=activations)
        packed, scales = tp.ptqtp_quantize(W, group_size, max_iters, tol)
        mod.packed.copy_(packed)
        mod.scales.copy_(scales)
        if b is not None:
            mod.bias.copy_(b.detach())
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "int8":
            y = tp.trit_plane_matmul_a8(x, self.packed, self.scales, self.in_features, self.group_size)
        elif self.activations == "fp32":
            y = tp.trit_plane_matmul(x, self.packed, self.scales, self.in_features, self.group_size)
        else:
            raise ValueError(f"TritPlaneLinear: activations must be one of {self.ACTIVATIONS}, "
                             f"got {self.activations!r}")
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The dense weight α¹·T¹ + α²·T², float32 (out_features, in_features)."""
        return tp.trit_plane_unpack(self.packed, self.scales, self.in_features, self.group_size)

    def bits_per_weight(self) -> float:
        """Storage of planes and scales per weight (bias excluded)."""
        return tp.stored_bits(self.out_features, self.in_features, self.group_size)

    def get_extra_state(self) -> dict:
        return {"pack_version": self.pack_version, "group_size": self.group_size,
                "in_features": self.in_features, "out_features": self.out_features}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("pack_version") != tp.PACK_VERSION:
            got = state.get("pack_version") if isinstance(state, dict) else state
            raise ValueError(f"TritPlaneLinear: state dict has pack version {got!r}; this weightkit reads "
                             f"version {tp.PACK_VERSION} only (re-quantize the model)")
        mine = self.get_extra_state()
        for key in ("group_size", "in_features", "out_features"):
            if state.get(key) != mine[key]:
                raise ValueError(f"TritPlaneLinear: state dict has {key}={state.get(key)!r}, module has {mine[key]!r}")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, pack_version={self.pack_version}, activations={self.activations}")
