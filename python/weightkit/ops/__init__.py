"""Python wrappers of the ``torch.ops.weightkit`` ops: presets, argument checks, fake kernels."""

from weightkit.ops import newton_schulz, palette, sparse_lowrank

__all__ = ["newton_schulz", "palette", "sparse_lowrank"]
