"""The small GPT the optimizer tests train (the library's own, at test size)."""

from __future__ import annotations

from torch.nn import functional as F

from weightkit.nn import GPT


def TinyGPT(vocab: int = 64, d: int = 32, layers: int = 4, ctx: int = 16) -> GPT:
    return GPT(vocab=vocab, d=d, layers=layers, heads=2, ctx=ctx)


def lm_loss(model, idx):
    """Next-token loss of a (B, T+1) window through `model` (may be a DDP/FSDP/compiled wrapper)."""
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten())
