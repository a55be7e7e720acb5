"""Evaluating Hugging Face causal language models: perplexity over a token slice, and the Linear
layers that quantizers and editors work on.

Nothing here imports ``transformers``: a model is anything called as ``model(input_ids=...)`` that
returns an object with ``.logits`` of shape (batch, seq, vocab).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["linear_layers", "linears_read_as_weights", "perplexity"]


def _windows(n: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: the window feeds tokens[begin:end] and scores its last
    ``scored`` targets, none scored twice; a window's first token is never its own target."""
    out = []
    scored_to = 1
    begin = 0
    while scored_to < n:
        end = min(begin + ctx, n)
        scored = min(end - scored_to, end - begin - 1)
        if scored > 0:
            out.append((begin, end, scored))
        scored_to = end
        begin += stride
    return out


def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    ctx: int = 512,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> float:
    """exp(mean negative log-likelihood) of ``tokens`` (1-D integer tensor, N ≥ 2) under a causal LM.

    ``stride=None`` (or ``ctx``) cuts the tokens into non-overlapping windows of ``ctx`` (the last one
    may be shorter); the first token of each window is context only, so N − (number of windows)
    tokens are scored. A ``stride`` < ``ctx`` slides windows of ``ctx`` by ``stride`` and scores in
    each only the tokens the previous window did not, so all N − 1 tokens after the first are
    scored, each with at least ``ctx − stride`` tokens of context (Hugging Face's recipe).

    Runs under ``torch.no_grad`` in eval mode (the model's mode is restored after), ``batch_size``
    windows per forward, on the model's device; log-probabilities in float32, the sum in float64.
    Memory: the logits of a batch, batch_size × ctx × vocab floats (4 × 512 × 49152 fp32 = 400 MB).
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype.is_floating_point:
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"weightkit.eval.perplexity: tokens must be a 1-D integer tensor, got {got}")
    if tokens.numel() < 2:
        raise ValueError(f"weightkit.eval.perplexity: tokens must hold at least 2 tokens, got {tokens.numel()}")
    if not isinstance(ctx, int) or ctx < 2:
        raise ValueError(f"weightkit.eval.perplexity: ctx must be an int >= 2, got {ctx!r}")
    stride = ctx if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= ctx:
        raise ValueError(f"weightkit.eval.perplexity: stride must be an int in [1, ctx={ctx}], got {stride!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"weightkit.eval.perplexity: batch_size must be a positive int, got {batch_size!r}")

    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("weightkit.eval.perplexity: the model has no parameters to find its device from")
    device = param.device
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    vocab = getattr(embed, "num_embeddings", None)
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        # Out of range, the embedding lookup fails obscurely (on CUDA: a device-side assert).
        raise ValueError(f"weightkit.eval.perplexity: token ids must be in [0, {vocab if vocab is not None else '...'}), "
                         f"got [{lo}, {hi}]")
    tokens = tokens.to(device=device, dtype=torch.long)
    windows = _windows(tokens.numel(), ctx, stride)
    # Windows of one length batch together; only the last ones can be shorter than ctx.
    batches = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and batches[-1][0][1] - batches[-1][0][0] == w[1] - w[0]:
            batches[-1].append(w)
        else:
            batches.append([w])
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:
            raise ImportError("weightkit.eval.perplexity: progress=True needs tqdm (pip install tqdm)") from exc
        batches = tqdm(batches, desc="perplexity", unit="batch")

    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                input_ids = torch.stack([tokens[b:e] for b, e, _ in batch])
                logits = model(input_ids=input_ids, use_cache=False).logits
                for row, (b, e, scored) in enumerate(batch):
                    # Position t predicts token t + 1: the last `scored` targets use logits[-scored-1:-1].
                    pred = logits[row, e - b - scored - 1 : e - b - 1].float()
                    target = input_ids[row, e - b - scored :]
                    total += nn.functional.cross_entropy(pred, target, reduction="sum").double()
                    count += scored
                del logits
    finally:
        model.train(was_training)
    return math.exp(total.item() / count)


def linear_layers(
    model: nn.Module,
    include=None,
    exclude=("lm_head", "embed"),
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` by qualified name, in module order, that quantizers and
    editors convert: for a Llama-style model the attention q/k/v/o and MLP gate/up/down projections
    (SmolLM2-135M: 30 layers × 7 = 210), not the embedding or the (often tied) ``lm_head``.

    ``include``: name substrings of which one must occur (``None`` keeps all), e.g. ``"mlp"`` or
    ``"layers.5."``; ``exclude``: name substrings of which none may occur. Either may be a string.
    """
    include = (include,) if isinstance(include, str) else include
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and (include is None or any(s in name for s in include))
        and not any(s in name for s in exclude)
    }


def linears_read_as_weights(model: nn.Module) -> set[int]:
    """ids of the Linears that torch's nn.MultiheadAttention (out_proj) and nn.Transformer*Layer
    (their fast path in eval mode: linear1, linear2, out_proj) read as ``.weight`` tensors instead
    of calling: a replacement without a dense weight breaks their forward."""
    native = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    return {id(child) for m in model.modules() if isinstance(m, native)
            for child in m.modules() if isinstance(child, nn.Linear)}
