"""Post-training weight quantization: PTQTP trit-planes, the palette quantizers (Hadamard rotation
+ scalar / 2-D VQ / trellis codebooks), layer-wise bit allocation under bit and time budgets,
Hessian-aware (LDLQ) rounding from calibration text, and the baselines reported beside them; saving
a quantized model and loading it back."""

from weightkit.quant import allocation, codebooks, latency, ldlq, palette
from weightkit.quant.baselines import gptq_int, rtn_int, rtn_ternary, twn
from weightkit.quant.ldlq import collect_hessians
from weightkit.quant.quantize import DEFAULT_SKIP, METHODS, LayerReport, QuantReport, quantize_model
from weightkit.quant.sequential import sequential_hessians
from weightkit.quant.serialize import load_quantized, save_quantized

__all__ = [
    "DEFAULT_SKIP",
    "METHODS",
    "LayerReport",
    "QuantReport",
    "allocation",
    "codebooks",
    "collect_hessians",
    "gptq_int",
    "latency",
    "ldlq",
    "load_quantized",
    "palette",
    "quantize_model",
    "rtn_int",
    "rtn_ternary",
    "save_quantized",
    "sequential_hessians",
    "twn",
]
