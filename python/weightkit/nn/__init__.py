"""Modules: a small GPT for training experiments (more layers come with their issues)."""

from weightkit.nn.gpt import GPT

__all__ = ["GPT"]
