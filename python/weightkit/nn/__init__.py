"""Modules: a small GPT for training experiments, and quantized replacements for nn.Linear."""

from weightkit.nn.gpt import GPT
from weightkit.nn.trit_plane import TritPlaneLinear

__all__ = ["GPT", "TritPlaneLinear"]
