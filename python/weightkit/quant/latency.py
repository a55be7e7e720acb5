"""How long a palette layer's forward takes, per quantizer and rate, on this machine: the cost
that a latency budget in weightkit.quant.allocation counts.

The trellis (TCQ) has the lowest error per bit but decodes with a multiply and a byte sum per
weight; 2-D VQ and scalar codes decode with a table lookup. On the 2-core Zen 4 EPYC a batch-1
TCQ forward takes ~1.5-2x as long as a VQ one of the same rate, so the best plan for a memory budget
alone can be the slowest one. Timing every (shape, quantizer, rate) of a model once is cheap: a
model's linear layers come in a few shapes (SmolLM2-135M: four), and a kernel's speed does not
depend on the values of its codes, so each is timed on a random Gaussian weight with nearest
rounding.

A batch-1 forward is memory-bound, so a layer that stays in the cache between calls would time
too fast. Each timing runs over copies of the layer's code tensor that together exceed
``min_bytes`` (default 64 MiB, beyond the caches), as DESIGN.md asks of memory-bound kernels.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

__all__ = ["layer_seconds", "linear_seconds", "timed_options"]

#: Most copies of a layer's codes one timing pass runs over: 64 MiB of the smallest SmolLM2 layer
#: (192x576 at 2 bits, 28 KiB) are ~2400.
MAX_COPIES = 4096


def _time_calls(layers: list[nn.Module], x: torch.Tensor, repeats: int) -> float:
    """Median over ``repeats`` passes of the seconds per call, one pass calling every layer once."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        for layer in layers[: min(len(layers), 8)]:  # warm-up: first calls allocate
            layer(x)
        samples = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for layer in layers:
                layer(x)
            sync()
            samples.append((time.perf_counter() - t0) / len(layers))
    return sorted(samples)[len(samples) // 2]


def _copies(layer: nn.Module, tensor_names, min_bytes: int) -> list[nn.Module]:
    """``layer`` and shallow copies of it, each with its own clone of the named tensors (the weights
    a forward streams), enough of them to hold ``min_bytes`` in all (at most MAX_COPIES)."""
    nbytes = sum(getattr(layer, n).numel() * getattr(layer, n).element_size() for n in tensor_names)
    count = max(1, min(MAX_COPIES, math.ceil(min_bytes / max(nbytes, 1))))
    out = [layer]
    for _ in range(count - 1):
        c = copy.copy(layer)
        c._parameters, c._buffers = dict(layer._parameters), dict(layer._buffers)
        for n in tensor_names:
            t = getattr(layer, n)
            setattr(c, n, nn.Parameter(t.detach().clone(), requires_grad=False) if isinstance(t, nn.Parameter)
                    else t.clone())
        out.append(c)
    return out


def _check(fn: str, batch: int, repeats: int) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"weightkit.quant.latency.{fn}: batch must be an int >= 1, got {batch!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"weightkit.quant.latency.{fn}: repeats must be an int >= 1, got {repeats!r}")


def layer_seconds(out_features: int, in_features: int, quantizer: str, bits: float, batch: int = 1,
                  dtype: torch.dtype = torch.float32, device="cpu", L: int | None = None, group_size: int = 128,
                  activations: str = "fp32", min_bytes: int = 64 << 20, repeats: int = 7) -> float:
    """Seconds of one forward of a PaletteLinear (out_features, in_features) with ``quantizer`` at
    ``bits`` (the Hadamard rotation of the input included) on a (batch, in_features) input of
    ``dtype`` on ``device``: the median of ``repeats`` passes over copies of the codes that exceed
    ``min_bytes``. ``L``: the trellis's state bits (tcq; default as weightkit.quant.tcq). ("ptqtp", 4)
    times a TritPlaneLinear of ``group_size`` and ``activations``."""
    from weightkit.quant.palette import build_layer

    _check("layer_seconds", batch, repeats)
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False)
    linear.weight.data = torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)
    options = {"L": L} if L is not None else {}
    layer = build_layer(linear, quantizer, bits, group_size=group_size, activations=activations, **options).to(device)
    x = torch.randn(batch, in_features, generator=g).to(device=device, dtype=dtype)
    return _time_calls(_copies(layer, ("packed",), min_bytes), x, repeats)


def linear_seconds(out_features: int, in_features: int, batch: int = 1, dtype: torch.dtype = torch.float32,
                   device="cpu", min_bytes: int = 64 << 20, repeats: int = 7) -> float:
    """Seconds of one forward of an unquantized nn.Linear (no bias) in ``dtype``, timed like
    :func:`layer_seconds`: the baseline a quantized layer replaces."""
    _check("linear_seconds", batch, repeats)
    layer = nn.Linear(in_features, out_features, bias=False).to(device=device, dtype=dtype)
    x = torch.randn(batch, in_features).to(device=device, dtype=dtype)
    return _time_calls(_copies(layer, ("weight",), min_bytes), x, repeats)


def timed_options(measured: dict, shapes: dict, batch: int = 1, dtype: torch.dtype = torch.float32, device="cpu",
                  L: int | None = None, group_size: int = 128, activations: str = "fp32", progress: bool = False,
                  **timing) -> dict:
    """``measured`` (name → [Option], as weightkit.quant.allocation.measured_options returns) with
    each Option's ``seconds`` set to :func:`layer_seconds` of its layer's shape: name → [Option].

    ``shapes``: name → (out_features, in_features). Each distinct (shape, quantizer, bits) is timed
    once. ``L``, ``group_size``, ``activations`` and ``timing`` (min_bytes, repeats): as
    :func:`layer_seconds`."""
    from dataclasses import replace

    missing = [n for n in measured if n not in shapes]
    if missing:
        raise ValueError(f"weightkit.quant.latency.timed_options: no shape given for layers {missing[:3]}")
    keys = sorted({(tuple(shapes[n]), o.quantizer, o.bits) for n, opts in measured.items() for o in opts})
    if progress:
        from tqdm.auto import tqdm

        keys = tqdm(keys, desc="timing options", unit="kernel")
    seconds = {k: layer_seconds(*k[0], k[1], k[2], batch=batch, dtype=dtype, device=device, L=L,
                                group_size=group_size, activations=activations, **timing)
               for k in keys}
    return {n: [replace(o, seconds=seconds[(tuple(shapes[n]), o.quantizer, o.bits)]) for o in opts]
            for n, opts in measured.items()}
