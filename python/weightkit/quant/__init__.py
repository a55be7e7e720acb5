"""Post-training weight quantization: PTQTP trit-planes, the palette quantizers (Hadamard rotation
+ scalar / 2-D VQ / trellis codebooks), layer-wise bit allocation, and the baselines reported
beside them."""

from weightkit.quant import allocation, codebooks, palette
from weightkit.quant.baselines import rtn_int, rtn_ternary, twn
from weightkit.quant.quantize import DEFAULT_SKIP, METHODS, LayerReport, QuantReport, quantize_model

__all__ = [
    "DEFAULT_SKIP",
    "METHODS",
    "LayerReport",
    "QuantReport",
    "allocation",
    "codebooks",
    "palette",
    "quantize_model",
    "rtn_int",
    "rtn_ternary",
    "twn",
]
