"""A module mixin for buffers whose dtype is part of a packed format."""

from __future__ import annotations

from torch import nn


class FixedDtypeBuffers(nn.Module):
    """Buffers named in ``FIXED_DTYPE_BUFFERS`` follow device moves but not dtype casts:
    ``model.half()`` / ``.to(torch.bfloat16)`` cast every floating buffer, and the quantized ops
    refuse scales or codebooks in another dtype than their format's. ``to_empty`` and other calls
    that keep the dtype are untouched."""

    FIXED_DTYPE_BUFFERS: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        before = {name: self._buffers[name] for name in self.FIXED_DTYPE_BUFFERS}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:  # moved and cast: keep the move only
                self._buffers[name] = old.to(new.device)
        return self
