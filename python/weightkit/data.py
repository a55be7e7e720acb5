"""Real text that ships with Python, as byte tokens, with fixed evaluation slices.

No downloads: ``pydoc`` is the reference manual's topic pages that every CPython carries
(``pydoc_data.topics``, ~466 KB); ``stdlib`` is the docstrings of a fixed list of standard-library
modules. Text is tokenized as UTF-8 bytes (vocabulary 256), so nothing needs training or fetching.
"""

from __future__ import annotations

import importlib
import inspect

import torch

__all__ = ["VOCAB_SIZE", "decode", "encode", "load_text", "random_batch", "train_val_split"]

VOCAB_SIZE = 256

_STDLIB_MODULES = (
    "abc", "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "enum", "fractions", "functools", "heapq", "inspect", "itertools", "json", "logging",
    "math", "operator", "os", "pathlib", "pickle", "random", "re", "shutil", "statistics", "string",
    "subprocess", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)


def load_text(source: str = "pydoc") -> str:
    """The corpus ``source``: ``"pydoc"`` (topic pages, sorted by name), ``"stdlib"``
    (module and member docstrings) or ``"all"`` (both, pydoc first)."""
    if source == "pydoc":
        from pydoc_data import topics

        return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    if source == "stdlib":
        parts = []
        for name in _STDLIB_MODULES:
            module = importlib.import_module(name)
            parts.append(inspect.getdoc(module) or "")
            for member_name, member in sorted(vars(module).items()):
                if member_name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                    continue
                doc = inspect.getdoc(member)
                if doc:
                    parts.append(f"{name}.{member_name}\n{doc}")
        return "\n\n".join(p for p in parts if p)
    if source == "all":
        return load_text("pydoc") + "\n\n" + load_text("stdlib")
    raise ValueError(f"weightkit.data.load_text: source must be 'pydoc', 'stdlib' or 'all', got {source!r}")


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes as a 1-D int64 tensor of token ids in [0, 256)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def decode(tokens: torch.Tensor) -> str:
    return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def train_val_split(tokens: torch.Tensor, val_tokens: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val): the first ``val_tokens`` tokens are the fixed evaluation slice."""
    if not 0 < val_tokens < tokens.numel():
        raise ValueError(
            f"weightkit.data.train_val_split: val_tokens must be in (0, {tokens.numel()}), got {val_tokens}"
        )
    return tokens[val_tokens:], tokens[:val_tokens]


def random_batch(tokens: torch.Tensor, batch: int, ctx: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, ctx + 1) windows at random offsets: inputs are [:, :-1], targets [:, 1:]."""
    starts = torch.randint(0, tokens.numel() - ctx - 1, (batch,), generator=generator)
    return torch.stack([tokens[s : s + ctx + 1] for s in starts.tolist()])
