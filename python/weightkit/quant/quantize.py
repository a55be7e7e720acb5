"""quantize_model: replace a model's nn.Linear layers by quantized ones, with a per-layer report."""

from __future__ import annotations

import fnmatch
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from weightkit.eval import linears_read_as_weights
from weightkit.nn.trit_plane import TritPlaneLinear
from weightkit.quant import baselines

__all__ = ["DEFAULT_SKIP", "METHODS", "LayerReport", "QuantReport", "quantize_model"]

#: Methods: "ptqtp" swaps in TritPlaneLinear, "palette" PaletteLinear (weightkit.quant.palette);
#: the others write their dequantized weight into the nn.Linear (fake quantization, for accuracy
#: comparisons), "gptq" from calibration text (weightkit.quant.gptq).
METHODS = ("ptqtp", "palette", "rtn_ternary", "twn", "int4", "int3", "gptq")

#: Module-name globs left in full precision unless ``skip`` says otherwise: output heads and
#: embeddings (the usual practice of PTQ papers, PTQTP included).
DEFAULT_SKIP = ("*lm_head*", "*embed*", "*wte*", "*wpe*")


@dataclass
class LayerReport:
    """One quantized layer: relative Frobenius error ‖W − Ŵ‖/‖W‖, ‖W‖, storage, time taken."""

    name: str
    shape: tuple[int, int]
    rel_error: float
    bits_per_weight: float
    seconds: float
    norm: float


@dataclass
class QuantReport:
    """What :func:`quantize_model` did; totals are weighted by each layer's number of weights."""

    method: str
    group_size: int
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def num_weights(self) -> int:
        return sum(r.shape[0] * r.shape[1] for r in self.layers)

    @property
    def bits_per_weight(self) -> float:
        n = self.num_weights
        return sum(r.bits_per_weight * r.shape[0] * r.shape[1] for r in self.layers) / n if n else 0.0

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.layers)

    @property
    def rel_error(self) -> float:
        """Relative Frobenius error of all quantized weights taken together."""
        total = sum(r.norm**2 for r in self.layers)
        return (sum((r.rel_error * r.norm) ** 2 for r in self.layers) / total) ** 0.5 if total > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.method}: {len(self.layers)} layers, {self.num_weights:,} weights, "
                f"{self.bits_per_weight:.3f} bits/weight, rel. error {self.rel_error:.4f}, {self.seconds:.1f} s")


def _skipped(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def skip_patterns(fn: str, skip) -> tuple[str, ...]:
    """``skip`` as a tuple of globs: None gives DEFAULT_SKIP, one string is one glob (not its
    characters: "*lm_head*" iterated would skip every layer)."""
    if skip is None:
        return DEFAULT_SKIP
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"weightkit.quant.{fn}: skip must hold name globs (str), got {p!r}")
    return patterns


def target_linears(fn: str, model: nn.Module, patterns: tuple[str, ...], replace: bool
                   ) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """(targets, skipped): the model's nn.Linear layers by name, in module order. ``replace``: the
    method swaps in another module, so Linears that torch's own attention and transformer layers
    read as weights instead of calling them (:func:`linears_read_as_weights`) are skipped too.
    Hugging Face ``Conv1D`` layers (GPT-2) are listed as skipped: not converted."""
    if isinstance(model, nn.Linear):
        raise ValueError(f"weightkit.quant.{fn}: the model itself is an nn.Linear, which cannot be replaced in "
                         "place; wrap it (e.g. nn.Sequential(linear)) or use TritPlaneLinear / "
                         "PaletteLinear.from_linear")
    read_directly = linears_read_as_weights(model) if replace else set()
    targets, skipped = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            keep = not _skipped(name, patterns) and id(mod) not in read_directly
            (targets.append((name, mod)) if keep else skipped.append(name))
        elif type(mod).__name__ == "Conv1D":  # Hugging Face GPT-2's transposed linears: not converted
            skipped.append(name)
    return targets, skipped


def check_finite_weights(fn: str, targets) -> None:
    """Refuses, before any layer is touched, a target whose weight has NaN or Inf."""
    for name, lin in targets:
        if not torch.isfinite(lin.weight).all():
            raise ValueError(f"weightkit.quant.{fn}: layer {name!r} has NaN or Inf weights; nothing was quantized")


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _progress(items: Sequence, enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="layer", file=sys.stderr, dynamic_ncols=True)


def _rel_error(W: torch.Tensor, W_hat: torch.Tensor) -> tuple[float, float]:
    W = W.detach().float()
    norm = W.norm().item()
    err = (W - W_hat.to(W.device).float()).norm().item()
    return (err / norm if norm > 0 else 0.0 if err == 0 else float("nan")), norm


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    method: str = "ptqtp",
    group_size: int = 128,
    skip: Sequence[str] | None = None,
    progress: bool = True,
    max_iters: int = 50,
    tol: float = 1e-4,
    bits: float = 2.5,
    quantizer: str = "tcq",
    plan: dict | None = None,
    activations: str = "fp32",
    **options,
) -> QuantReport:
    """Quantize every ``nn.Linear`` of ``model`` in place (names matching ``skip`` globs excepted,
    default :data:`DEFAULT_SKIP`).

    ``method``: "ptqtp" (TritPlaneLinear, ``group_size`` / ``max_iters`` / ``tol`` as in
    :func:`weightkit.ops.trit_plane.ptqtp_quantize`; ``activations`` "fp32" or "int8" as in
    :class:`~weightkit.nn.TritPlaneLinear`), "rtn_ternary", "twn", "int4" or "int3"
    (RTN, asymmetric, ``group_size`` columns per group), or "palette": a Hadamard rotation and one
    palette quantizer per layer (``quantizer`` "tcq" | "vq" | "sq" at ``bits``, or "mixed" with a
    per-layer ``plan`` from :mod:`weightkit.quant.allocation`, whose ("ptqtp", 4) layers become
    TritPlaneLinear with ``group_size`` / ``max_iters`` / ``tol`` / ``activations``; ``options`` go to
    :func:`weightkit.quant.palette.quantize_model_palette`, e.g. the trellis size ``L``, or
    ``calibration=tokens`` for Hessian-aware (LDLQ) rounding of sq / vq layers), or "gptq": GPTQ
    at integer ``bits`` with ``group_size`` (fake quantization; ``options`` from
    :data:`weightkit.quant.gptq.GPTQ_OPTIONS`: ``calibration`` tokens or ``hessians``,
    ``act_order``, ``sequential``, ``calibration_ctx``, ``damp``; see
    :func:`weightkit.quant.gptq.quantize_layers_gptq`).
    Returns a :class:`QuantReport`.
    """
    if method not in METHODS:
        raise ValueError(f"weightkit.quant.quantize_model: method must be one of {METHODS}, got {method!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"weightkit.quant.quantize_model: group_size must be an int >= 1, got {group_size!r}")
    if activations not in TritPlaneLinear.ACTIVATIONS:
        raise ValueError(f"weightkit.quant.quantize_model: activations must be one of "
                         f"{TritPlaneLinear.ACTIVATIONS}, got {activations!r}")
    if method == "gptq":
        from weightkit.quant.gptq import GPTQ_OPTIONS

        unknown = sorted(set(options) - set(GPTQ_OPTIONS))
        if unknown:
            raise TypeError(f"weightkit.quant.quantize_model: {unknown} are not options of method='gptq' "
                            f"(it takes {GPTQ_OPTIONS})")
    elif options and method != "palette":
        raise TypeError(f"weightkit.quant.quantize_model: {sorted(options)} are options of method='palette' or "
                        f"'gptq', not of {method!r}")
    patterns = skip_patterns("quantize_model", skip)
    report = QuantReport(method=method, group_size=group_size)
    if method == "palette":
        from weightkit.quant.palette import quantize_model_palette

        layers = quantize_model_palette(model, bits=bits, quantizer=quantizer, plan=plan, skip=patterns,
                                        progress=progress, skipped=report.skipped, group_size=group_size,
                                        max_iters=max_iters, tol=tol, activations=activations, **options)
        report.layers = [LayerReport(r["name"], tuple(r["shape"]), r["rel_error"], r["stored_bits"], r["seconds"],
                                     r["norm"]) for r in layers]
        return report
    targets, report.skipped = target_linears("quantize_model", model, patterns, replace=method == "ptqtp")
    check_finite_weights("quantize_model", targets)
    if method == "gptq":
        from weightkit.quant.gptq import quantize_layers_gptq

        layers = quantize_layers_gptq(model, targets, bits, group_size, progress=progress, **options)
        report.layers = [LayerReport(r["name"], r["shape"], r["rel_error"], r["bits"], r["seconds"], r["norm"])
                         for r in layers]
        return report
    for name, lin in _progress(targets, progress, f"quantize {method}"):
        W = lin.weight
        t0 = time.perf_counter()
        if method == "ptqtp":
            new = TritPlaneLinear.from_linear(lin, group_size=group_size, max_iters=max_iters, tol=tol,
                                              activations=activations)
            seconds = time.perf_counter() - t0
            W_hat, bits = new.dequantize(), new.bits_per_weight()
            _set_module(model, name, new)
        else:
            if method == "rtn_ternary":
                W_hat, bits = baselines.rtn_ternary(W)
            elif method == "twn":
                W_hat, bits = baselines.twn(W)
            else:
                W_hat, bits = baselines.rtn_int(W, 4 if method == "int4" else 3, group_size)
            seconds = time.perf_counter() - t0
        rel, norm = _rel_error(W, W_hat)
        if method != "ptqtp":
            W.copy_(W_hat.to(W.dtype))
        report.layers.append(LayerReport(name, (W.shape[0], W.shape[1]), rel, bits, seconds, norm))
    return report
