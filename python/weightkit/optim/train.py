"""A minimal, deterministic language-model training loop for comparing optimizers.

Used by the optimizer tests, ``bench/bench_optim.py`` and the demo: same data order and model
init for every optimizer, validation loss on a fixed slice at fixed steps, wall-clock per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from weightkit.data import random_batch

__all__ = ["TrainResult", "steps_to_reach", "train_lm", "val_loss"]


@dataclass
class TrainResult:
    """Curve of (step, validation loss, seconds of training so far) and the final loss."""

    curve: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.curve[-1][1]


@torch.no_grad()
def val_loss(model: nn.Module, val: torch.Tensor, ctx: int, batch: int = 32) -> float:
    """Mean next-token loss over non-overlapping windows of the fixed slice ``val``, in eval mode
    (the model's mode is restored after) and without autograd."""
    was_training = model.training
    model.eval()
    n = (val.numel() - 1) // ctx
    windows = torch.stack([val[i * ctx : i * ctx + ctx + 1] for i in range(n)])
    total = 0.0
    try:
        for chunk in windows.split(batch):
            total += model.loss(chunk).item() * chunk.shape[0]
    finally:
        model.train(was_training)
    return total / n


def train_lm(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train: torch.Tensor,
    val: torch.Tensor,
    *,
    steps: int,
    batch: int,
    ctx: int,
    eval_every: int,
    seed: int = 0,
    drop: bool = False,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains ``model`` (with a ``loss(batch)`` method) for ``steps`` steps on random windows of
    ``train`` drawn from ``seed``; evaluates on ``val`` every ``eval_every`` steps and at the end.
    ``drop=True`` wraps forward and backward in ``opt.drop_step(model)`` (Drop-Muon).
    Evaluation time is excluded from the wall-clock.
    """
    gen = torch.Generator().manual_seed(seed)
    result = TrainResult()
    result.curve.append((0, val_loss(model, val, ctx), 0.0))
    elapsed = 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        x = random_batch(train, batch, ctx, gen)
        opt.zero_grad(set_to_none=True)
        if drop:
            with opt.drop_step(model):
                loss = model.loss(x)
                loss.backward()
        else:
            loss = model.loss(x)
            loss.backward()
        opt.step()
        elapsed += time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"weightkit.optim.train_lm: loss became {loss.item()} at step {step}")
        if step % eval_every == 0 or step == steps:
            result.curve.append((step, val_loss(model, val, ctx), elapsed))
        if progress is not None:
            progress(step)
    return result


def steps_to_reach(result: TrainResult, target: float) -> tuple[int, float] | None:
    """First evaluated (step, seconds) whose validation loss is <= target, or None."""
    for step, loss, seconds in result.curve:
        if loss <= target:
            return step, seconds
    return None
