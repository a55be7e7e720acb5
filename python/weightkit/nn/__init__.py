"""Modules: a small GPT for training experiments and SLTrain's sparse + low-rank linear layer."""

from weightkit.nn.gpt import GPT
from weightkit.nn.palette import PaletteLinear
from weightkit.nn.sparse_lowrank import SparseLowRankLinear, ddp_ignore_support_buffers, to_sparse_lowrank

__all__ = ["GPT", "PaletteLinear", "SparseLowRankLinear", "ddp_ignore_support_buffers", "to_sparse_lowrank"]
