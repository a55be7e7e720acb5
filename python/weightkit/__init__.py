"""weightkit: layer-wise weight work for PyTorch with a compiled C++/CUDA core.

Ops live under ``torch.ops.weightkit`` and are wrapped with presets and fake kernels in
``weightkit.ops``; ``weightkit.build_info()`` says what this build contains.
"""

from __future__ import annotations

import torch

from weightkit._loader import load_extension

_C = load_extension()

from weightkit import data, edit, eval, nn, ops, optim, quant  # noqa: E402  (registers fake kernels; needs _C loaded first)
from weightkit.ops.newton_schulz import auon, hybrid_auon, newton_schulz, newton_schulz_grouped  # noqa: E402

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """What this build contains: CUDA or not, arch list, SIMD paths, the torch it was built for."""
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    info["cpu_isa_selected"] = _C.cpu_isa("build_info")
    info["cuda_available"] = torch.cuda.is_available()
    return info


__all__ = [
    "auon",
    "build_info",
    "data",
    "edit",
    "eval",
    "hybrid_auon",
    "newton_schulz",
    "newton_schulz_grouped",
    "nn",
    "ops",
    "optim",
    "quant",
]
