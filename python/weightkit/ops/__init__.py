"""Python wrappers of the ``torch.ops.weightkit`` ops: presets, argument checks, fake kernels."""

from weightkit.ops import newton_schulz, palette, rls, sparse_lowrank, trit_plane

__all__ = ["newton_schulz", "palette", "rls", "sparse_lowrank", "trit_plane"]
