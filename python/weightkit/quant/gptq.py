"""GPTQ over a whole model: ``quantize_model(model, method="gptq", bits=4, calibration=tokens)``.

Each layer goes through :func:`weightkit.quant.gptq_int` (rtn_int's asymmetric grid per row and
group, columns rounded with Hessian error feedback) and its dequantized weight is written back into
the nn.Linear: fake quantization, for accuracy comparisons, like the RTN baselines. The Hessians
come from calibration tokens in one pass over the unquantized model (:func:`collect_hessians`), or
block by block on the partly quantized model (``sequential=True``, GPTQ's own order:
:func:`weightkit.quant.sequential_hessians`), or are given.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from weightkit.quant.baselines import gptq_int
from weightkit.quant.quantize import _rel_error
from weightkit.quant.sequential import layer_hessians

__all__ = ["GPTQ_OPTIONS", "quantize_layers_gptq"]

#: Keyword options of ``quantize_model(method="gptq", ...)``.
GPTQ_OPTIONS = ("calibration", "calibration_ctx", "hessians", "act_order", "sequential", "damp")


@torch.no_grad()
def quantize_layers_gptq(model: nn.Module, targets: list[tuple[str, nn.Linear]], bits: int, group_size: int,
                         calibration: torch.Tensor | None = None, calibration_ctx: int = 512,
                         hessians: dict | None = None, act_order: bool = False, sequential: bool = False,
                         damp: float = 0.01, progress: bool = False) -> list[dict]:
    """Fake-quantizes ``targets`` ((name, nn.Linear) of ``model``, module order) with GPTQ at
    ``bits`` (int, 2–8) and ``group_size``; returns one dict per layer in module order: name, shape,
    rel_error, bits (gptq_int's count: scales, zero points, act order's group index), seconds, norm.

    Exactly one of ``calibration`` (1-D int64 tokens, windows of ``calibration_ctx``) or ``hessians``
    (name → (in, in), e.g. from weightkit.quant.collect_hessians). ``sequential`` needs
    ``calibration``. Time spent measuring Hessians counts in the seconds of the first layer it serves.
    Everything is checked before the first weight changes.
    """
    fn = "weightkit.quant.quantize_model"
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"{fn}: method='gptq' needs bits an int in [2, 8], got {bits!r}")
    if (calibration is None) == (hessians is None):
        raise ValueError(f"{fn}: method='gptq' needs calibration tokens or hessians (one of them)")
    layers = dict(targets)
    t0 = time.perf_counter()
    steps = layer_hessians(fn, model, targets, calibration, calibration_ctx, hessians, sequential, progress)
    order = {name: i for i, name in enumerate(layers)}
    report = []
    for name, H in steps:  # a sequential step's Hessian pass runs while this loop waits for it
        W = layers[name].weight
        W_hat, b = gptq_int(W, H, bits, group_size, damp=damp, act_order=act_order)
        rel, norm = _rel_error(W, W_hat)
        W.copy_(W_hat.to(W.dtype))
        t1 = time.perf_counter()
        report.append({"name": name, "shape": tuple(W.shape), "rel_error": rel, "bits": b, "seconds": t1 - t0,
                       "norm": norm})
        t0 = t1
    return sorted(report, key=lambda r: order[r["name"]])
