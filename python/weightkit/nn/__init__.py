"""Modules: a small GPT for training experiments, SLTrain's sparse + low-rank linear layer, and
quantized replacements for nn.Linear."""

from weightkit.nn.gpt import GPT
from weightkit.nn.palette import PaletteLinear
from weightkit.nn.sparse_lowrank import SparseLowRankLinear, ddp_ignore_support_buffers, to_sparse_lowrank
from weightkit.nn.trit_plane import TritPlaneLinear

__all__ = ["GPT", "PaletteLinear", "SparseLowRankLinear", "TritPlaneLinear", "ddp_ignore_support_buffers",
           "to_sparse_lowrank"]
