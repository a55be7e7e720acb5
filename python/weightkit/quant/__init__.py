"""Post-training weight quantization: PTQTP trit-planes and the baselines reported beside it."""

from weightkit.quant.baselines import rtn_int, rtn_ternary, twn
from weightkit.quant.quantize import DEFAULT_SKIP, METHODS, LayerReport, QuantReport, quantize_model

__all__ = [
    "DEFAULT_SKIP",
    "METHODS",
    "LayerReport",
    "QuantReport",
    "quantize_model",
    "rtn_int",
    "rtn_ternary",
    "twn",
]
