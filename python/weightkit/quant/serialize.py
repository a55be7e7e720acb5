"""Saving a quantized model and loading it back into an unquantized model of the same
architecture, without quantizing again.

The file is a ``torch.save`` of plain data (readable with ``torch.load(weights_only=True)``)::

    {"format": "weightkit.quantized", "version": 1, "weightkit": "0.1.0",
     "modules": {"blocks.0.attn.qkv": "TritPlaneLinear", ...},   # which layers are quantized, as what
     "state_dict": model.state_dict()}                            # codes, scales, extra states, the rest

Each quantized layer's geometry (in/out features, group size, quantizer kind and bits, trellis
parameters, packing version) is already in its extra state, so loading needs only the module's
name to rebuild an empty layer of the right shape before ``load_state_dict``.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
from torch import nn

from weightkit.nn.palette import PaletteLinear
from weightkit.nn.trit_plane import TritPlaneLinear
from weightkit.quant.quantize import _set_module

__all__ = ["FORMAT", "FORMAT_VERSION", "QUANTIZED_LAYERS", "load_quantized", "save_quantized"]

FORMAT = "weightkit.quantized"
FORMAT_VERSION = 1
#: The layer classes a quantized model may hold, by the name stored in the file.
QUANTIZED_LAYERS = {cls.__name__: cls for cls in (TritPlaneLinear, PaletteLinear)}


def save_quantized(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model`` (quantized by :func:`weightkit.quant.quantize_model` or by hand) to ``path``;
    returns the file's size in bytes. Raises ``ValueError`` if the model has no quantized layer."""
    modules = {name: kind for name, m in model.named_modules()
               for kind, cls in QUANTIZED_LAYERS.items() if isinstance(m, cls)}
    if not modules:
        raise ValueError("weightkit.quant.save_quantized: the model has no quantized layer "
                         f"({' / '.join(QUANTIZED_LAYERS)}); quantize it first with weightkit.quant.quantize_model")
    from weightkit import __version__

    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "weightkit": __version__, "modules": modules,
                "state_dict": model.state_dict()}, path)
    return Path(path).stat().st_size


def load_quantized(model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu",
                   assign: bool = False) -> nn.Module:
    """Load a file of :func:`save_quantized` into ``model`` (same architecture, unquantized or
    quantized the same way) and return it.

    Each layer the file names is replaced by an empty quantized layer of the stored geometry on the
    device of the layer it replaces, then the whole state dict is loaded strictly (every key of the
    model and of the file must match). ``assign=True`` passes through to ``load_state_dict``: the
    loaded tensors are taken as they are, which lets a skeleton built on the meta device
    (``with torch.device("meta"): model = ...``) be filled without first allocating its weights,
    provided all its tensors are in the state dict (``ValueError`` names one that is not, such as
    the rotary tables of Hugging Face models: build those models on a real device).
    ``TritPlaneLinear.activations`` is a run-time choice, not stored: loaded layers use "fp32".
    """
    where = f"weightkit.quant.load_quantized({os.fspath(path)!r})"
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{where}: not a weightkit quantized-model file (write one with save_quantized)")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: file format version {blob.get('version')!r}; this weightkit reads "
                         f"version {FORMAT_VERSION} only")
    state = blob["state_dict"]
    # Every replacement is built (and checked) before the first swap, and a failed load puts the
    # original modules back, so no layer is left as an empty quantized one.
    swaps = []
    for name, kind in blob["modules"].items():
        if kind not in QUANTIZED_LAYERS:
            raise ValueError(f"{where}: layer {name!r} is a {kind!r}, which this weightkit does not know")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where}: the model has no module {name!r}; the file was saved from another "
                             "architecture") from None
        swaps.append((name, old, _empty_layer(where, name, QUANTIZED_LAYERS[kind], old, state)))
    for name, _, new in swaps:
        _set_module(model, name, new)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except Exception:
        for name, old, _ in swaps:
            _set_module(model, name, old)
        raise
    # Buffers outside the state dict (non-persistent ones, e.g. rotary tables) keep no data on meta.
    empty = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if empty:
        raise ValueError(f"{where}: {len(empty)} tensors are still on the meta device after loading ({empty[0]!r} "
                         "first): they are not in a state dict (non-persistent buffers); build the model on a "
                         "real device instead")
    return model


def _empty_layer(where: str, name: str, cls: type, old: nn.Module, state: dict) -> nn.Module:
    """A quantized layer of the geometry stored under ``name``, on ``old``'s device, to load into."""
    prefix = name + "."
    extra = state.get(prefix + "_extra_state")
    if not isinstance(extra, dict):
        raise ValueError(f"{where}: layer {name!r} has no stored extra state (a damaged file?)")
    if cls is TritPlaneLinear:
        in_f, out_f = extra["in_features"], extra["out_features"]
    else:
        in_f, out_f = state[prefix + "signs"].numel(), state[prefix + "scales"].numel()
    if not isinstance(old, (nn.Linear, cls)):
        raise ValueError(f"{where}: module {name!r} is a {type(old).__name__}; a {cls.__name__} replaces "
                         "an nn.Linear (or a layer of its own kind)")
    if (old.in_features, old.out_features) != (in_f, out_f):
        raise ValueError(f"{where}: module {name!r} is {old.in_features} -> {old.out_features} features, "
                         f"the file's layer {in_f} -> {out_f}")
    device = next(itertools.chain(old.parameters(), old.buffers())).device
    bias = state.get(prefix + "bias")
    if cls is TritPlaneLinear:
        return TritPlaneLinear(in_f, out_f, bias=bias is not None, group_size=extra["group_size"], device=device,
                               bias_dtype=bias.dtype if bias is not None else torch.float32)
    return PaletteLinear(in_f, out_f, extra["kind"], extra["bits"], bias=bias is not None,
                         tcq_params=extra["tcq_params"]).to(device)
