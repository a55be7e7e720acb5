"""Hessians measured block by block on the partly quantized model (GPTQ's sequential order).

``collect_hessians`` measures every layer's inputs on the unquantized model, so each layer is
rounded for inputs it will not see once the layers below it are quantized. Here the calibration
windows run through the model's transformer blocks one at a time: block i's Hessians come from
the outputs of blocks 0 … i−1 *as quantized*, the caller quantizes block i, and the block runs
again (quantized) to give block i+1 its inputs. The layers above later blocks thus absorb the
error below them. Cost: about two forwards of the blocks over the calibration tokens (one to
measure, one to propagate), plus one of the layers before the first block.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from weightkit.edit.partial_forward import StopForward, block_output, hooks
from weightkit.optim.drop import find_blocks
from weightkit.quant.ldlq import HessianAccumulator, calibration_windows, check_hessians, collect_hessians

__all__ = ["layer_hessians", "sequential_hessians"]


def layer_hessians(where: str, model: nn.Module, layers: list[tuple[str, nn.Linear]],
                   calibration: torch.Tensor | None, calibration_ctx: int, hessians: dict | None, sequential: bool,
                   progress: bool) -> Iterable[tuple[str, torch.Tensor | None]]:
    """(name, H) for each of ``layers`` ((name, nn.Linear) of ``model``, module order), where a
    quantizer gets its Hessians: given (``hessians``, checked complete), measured once on the
    unquantized model from ``calibration`` tokens, or with ``sequential`` block by block, for
    which the caller must quantize each layer before taking the next pair (sequential_hessians).
    None for every layer when there is no source. Errors name ``where``; they come before the
    first pair (the sequential path's on the first ``next``)."""
    if sequential and calibration is None:
        raise ValueError(f"{where}: sequential=True needs calibration tokens")
    named = dict(layers)
    if sequential:
        return ((name, H[name]) for names, H in sequential_hessians(
            model, calibration, named, ctx=calibration_ctx, progress=progress) for name in names)
    if calibration is not None:
        hessians = collect_hessians(model, calibration, named, ctx=calibration_ctx, progress=progress)
    if hessians is not None:
        check_hessians(where, layers, hessians, "; nothing was quantized")
    return ((name, None if hessians is None else hessians[name]) for name in named)


@torch.no_grad()
def sequential_hessians(model: nn.Module, tokens: torch.Tensor, layers: dict[str, nn.Linear], ctx: int = 512,
                        batch_size: int = 4, progress: bool = False
                        ) -> Iterator[tuple[list[str], dict[str, torch.Tensor]]]:
    """Yields, for each transformer block of ``model`` (weightkit.optim.drop.find_blocks) that
    holds some of ``layers`` (name → nn.Linear), ``(names, hessians)``: those layers' names in
    module order and name → H = XᵀX / N (in, in) float64 CPU, X their inputs over ``tokens`` (1-D
    int64, windows of ``ctx``, ``batch_size`` per forward) given the blocks below as they are now.

    Between two yields the caller quantizes the block's layers in place (new weights, or modules
    swapped for quantized ones); on resuming, the block runs again to feed the next one. Every
    layer must sit inside a block. The model runs in eval mode; its mode is restored at the end
    (also when the caller stops early). Hugging Face models run with ``use_cache=False``.
    """
    fn = "weightkit.quant.sequential_hessians"
    windows = calibration_windows(fn, tokens, layers, ctx, batch_size)
    blocks = find_blocks(model, where=fn, hint="sequential Hessians need the model's transformer blocks")
    owner = {}  # layer name → index of its block
    for i, block in enumerate(blocks):
        inside = {id(m) for m in block.modules()}
        owner.update({name: i for name, lin in layers.items() if id(lin) in inside})
    outside = [name for name in layers if name not in owner]
    if outside:
        raise ValueError(f"{fn}: these layers are not inside the model's {len(blocks)} blocks: {outside[:5]}")

    steps = enumerate(blocks)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(blocks), desc="sequential hessians", unit="block")
    was_training = model.training
    model.eval()
    try:
        states = _first_block_inputs(model, blocks[0], windows, batch_size)
        for i, block in steps:
            names = [name for name in layers if owner[name] == i]
            if names:
                acc = HessianAccumulator(fn, {name: layers[name] for name in names})
                with acc:
                    for args, kwargs in states:
                        block(*args, **kwargs)
                        acc.end_batch(_hidden(args, kwargs).shape[:-1].numel())
                yield names, acc.result()
            if i + 1 < len(blocks):  # the block as the caller left it feeds the next
                states = [_with_hidden(args, kwargs, block_output(block(*args, **kwargs))) for args, kwargs in states]
    finally:
        model.train(was_training)


def _first_block_inputs(model: nn.Module, first: nn.Module, windows: torch.Tensor, batch_size: int) -> list:
    """[(args, kwargs)] the first block is called with, one per batch of windows; nothing above
    the first block runs."""
    device = next(model.parameters()).device
    no_cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    states = []

    def catch(module, args, kwargs):
        states.append((args, kwargs))
        raise StopForward

    with hooks([first.register_forward_pre_hook(catch, with_kwargs=True)]):
        for s in range(0, windows.shape[0], batch_size):
            try:
                model(windows[s : s + batch_size].to(device), **no_cache)
            except StopForward:
                continue
            raise RuntimeError("weightkit.quant.sequential_hessians: the model's forward never called its first block")
    return states


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states (batch, T, d) a block was called with: first positional argument, or the
    ``hidden_states`` keyword."""
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The same call with its hidden states replaced by ``hidden``."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}
