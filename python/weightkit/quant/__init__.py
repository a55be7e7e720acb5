"""Post-training weight quantization: the palette quantizers (Hadamard rotation + scalar / 2-D VQ /
trellis codebooks) and layer-wise bit allocation."""

from weightkit.quant import allocation, codebooks, palette

__all__ = ["allocation", "codebooks", "palette"]
