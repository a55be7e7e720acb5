"""Where an editor reads and writes a Hugging Face causal LM: the MLP down-projection of a layer
(the map an edit changes), the layer's residual-stream output (where target values are optimized)
and the key statistics of general text (the anchor Gram K0ᵀK0), cached on disk.

Weights are always handed out in ``nn.Linear`` layout, W (d_v, d_k) with the layer mapping
k ↦ W·k: GPT-2's ``Conv1D`` stores Wᵀ, so its weight is transposed on the way in and out.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass

import torch
from torch import nn

from weightkit.edit.partial_forward import StopForward, forward_until_stop, hooks
from weightkit.edit.requests import pad_batch, token_ids

__all__ = ["LayerAccess", "TEMPLATES", "key_gram", "layer_access"]

#: model_type -> (down-projection module template, layer module template).
TEMPLATES = {
    "llama": ("model.layers.{}.mlp.down_proj", "model.layers.{}"),
    "mistral": ("model.layers.{}.mlp.down_proj", "model.layers.{}"),
    "qwen2": ("model.layers.{}.mlp.down_proj", "model.layers.{}"),
    "qwen3": ("model.layers.{}.mlp.down_proj", "model.layers.{}"),
    "gpt2": ("transformer.h.{}.mlp.c_proj", "transformer.h.{}"),
}


@dataclass
class LayerAccess:
    """The down-projection of one layer and the layer itself (whose output is the residual stream)."""

    index: int
    name: str
    proj: nn.Module
    block: nn.Module
    transposed: bool  # GPT-2 Conv1D: proj.weight is (d_k, d_v)

    def weight(self) -> torch.Tensor:
        """The live weight in nn.Linear layout (d_v, d_k): a view, so in-place changes reach the model."""
        return self.proj.weight.data.t() if self.transposed else self.proj.weight.data

    @property
    def d_k(self) -> int:
        return self.weight().shape[1]


def _resolve(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"weightkit.edit: model has no module {name!r}") from exc


def layer_access(model: nn.Module, layers, templates: tuple[str, str] | None = None) -> list[LayerAccess]:
    """One :class:`LayerAccess` per index in ``layers`` (sorted), from ``templates`` or the model type."""
    if templates is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in TEMPLATES:
            raise ValueError(
                f"weightkit.edit: no module templates for model_type {model_type!r}; pass "
                f"templates=('<down-proj name with {{}}>', '<layer name with {{}}>'), known: {sorted(TEMPLATES)}"
            )
        templates = TEMPLATES[model_type]
    if not layers:
        raise ValueError("weightkit.edit: layers must name at least one layer index")
    out = []
    for i in sorted(set(int(i) for i in layers)):
        proj = _resolve(model, templates[0].format(i))
        transposed = not isinstance(proj, nn.Linear)
        if transposed and type(proj).__name__ != "Conv1D":
            raise ValueError(f"weightkit.edit: {templates[0].format(i)} must be nn.Linear or Conv1D, got {type(proj).__name__}")
        out.append(LayerAccess(i, templates[0].format(i), proj, _resolve(model, templates[1].format(i)), transposed))
    return out


def _cache_dir() -> pathlib.Path:
    if os.environ.get("WEIGHTKIT_CACHE"):
        return pathlib.Path(os.environ["WEIGHTKIT_CACHE"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "weightkit"


def _fingerprint(model: nn.Module) -> str:
    """A hash of a strided sample of every parameter: different weights give different statistics."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 257)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# Text whose token ids tell tokenizers apart in the statistics cache's file names.
_TOKENIZER_PROBE = "The quick brown fox jumps over the lazy dog: 0123456789, naïve café, déjà vu."


def _rows(tokenizer, source, n_tokens: int, ctx: int, offset: int) -> list[list[int]]:
    """Token rows of a statistics source: windows of ``ctx`` over tokens ``[offset, offset +
    n_tokens)`` of a ``weightkit.data.load_text`` name, or one row per sentence of a list."""
    if isinstance(source, str):
        from weightkit.data import eval_tokens

        tokens = eval_tokens(tokenizer, source, n_tokens, offset)
        return [tokens[s : s + ctx].tolist() for s in range(0, tokens.numel() - ctx + 1, ctx)]
    return [ids for ids in (token_ids(tokenizer, text) for text in source) if ids]


@torch.no_grad()
def _collect(model, rows: list[list[int]], accesses, batch_size: int, progress: bool):
    device = next(model.parameters()).device
    d = {a.index: a.d_k for a in accesses}
    grams = {i: torch.zeros(k, k, dtype=torch.float64, device=device) for i, k in d.items()}
    last = accesses[-1].index
    current = {}

    def hook_for(i):
        def hook(module, args):
            x = args[0][current["mask"]].double()  # real tokens only, not padding
            grams[i].addmm_(x.T, x)
            if i == last:
                raise StopForward  # the layers above the last needed one never run

        return hook

    batches = [rows[b : b + batch_size] for b in range(0, len(rows), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="key statistics", unit="batch")
    with hooks([a.proj.register_forward_pre_hook(hook_for(a.index)) for a in accesses]):
        for batch in batches:
            ids, mask = pad_batch(batch, device)
            current["mask"] = mask.bool()
            forward_until_stop(model, ids, mask)
    count = sum(len(r) for r in rows)
    return {i: g / count for i, g in grams.items()}, count


def key_gram(
    model: nn.Module,
    tokenizer,
    accesses: list[LayerAccess],
    source: str | list[str] = "pydoc",
    n_tokens: int = 32768,
    ctx: int = 512,
    batch_size: int = 4,
    cache: bool | str | os.PathLike = True,
    progress: bool = True,
    offset: int = 0,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (d_k, d_k, float64) of the down-projection inputs per layer index, over tokens
    ``[offset, offset + n_tokens)`` of ``weightkit.data.load_text(source)`` in windows of ``ctx``
    (keep them apart from any slice you evaluate perplexity on), or, when ``source`` is a list of
    sentences, over every token of each sentence run alone (``n_tokens``, ``ctx`` and ``offset``
    unused; ``batch_size`` × 8 sentences per forward).

    The mean (not the sum) so that ``mu`` means the same whatever the number of tokens is. Cached
    as ``<cache>/edit-stats/<model>-<tokenizer>-<source>-<n_tokens>-<ctx>[-o<offset>]-L<i>-<module>.pt``
    (model, tokenizer and module name as short hashes; a sentence
    list is named by a hash of its text; cache True: ``$WEIGHTKIT_CACHE`` or
    ``~/.cache/weightkit``; a path; False: never cached).
    """
    sentences = not isinstance(source, str)
    if sentences:
        source = [str(t) for t in source]
        if not source:
            raise ValueError("weightkit.edit.key_gram: the sentence list is empty")
        name = "sentences-" + hashlib.sha1("\n".join(source).encode()).hexdigest()[:12]
        n_tokens, ctx, offset, batch_size = 0, 0, 0, 8 * batch_size
    else:
        name = source
    root = None if cache is False else (_cache_dir() if cache is True else pathlib.Path(cache))
    # The tokenizer and the hooked module are part of the key: the same text tokenized otherwise,
    # or another projection of the same layer, has other statistics.
    tok_tag = hashlib.sha1(repr(token_ids(tokenizer, _TOKENIZER_PROBE)).encode()).hexdigest()[:8]
    tag = f"{_fingerprint(model)}-{tok_tag}-{name}-{n_tokens}-{ctx}" + (f"-o{offset}" if offset else "")
    paths = {a.index: root / "edit-stats" / f"{tag}-L{a.index}-{hashlib.sha1(a.name.encode()).hexdigest()[:6]}.pt"
             for a in accesses} if root else {}
    out = {}
    for a in accesses:
        if root and paths[a.index].is_file():
            out[a.index] = torch.load(paths[a.index], map_location=a.proj.weight.device)
    missing = [a for a in accesses if a.index not in out]
    if missing:
        rows = _rows(tokenizer, source, n_tokens, ctx, offset)
        if not rows:  # a mean over no tokens is NaN, which must not reach the cache
            raise ValueError(f"weightkit.edit.key_gram: {name!r} gives no tokens to average over "
                             f"(n_tokens={n_tokens}, ctx={ctx}: at least one whole window is needed)")
        grams, count = _collect(model, rows, missing, batch_size, progress)
        out.update(grams)
        if root:
            paths[missing[0].index].parent.mkdir(parents=True, exist_ok=True)
            for i, g in grams.items():
                tmp = paths[i].with_suffix(".tmp")
                torch.save(g.cpu(), tmp)
                os.replace(tmp, paths[i])
            meta = {"source": name, "n_tokens": n_tokens, "ctx": ctx, "offset": offset, "tokens_used": count}
            (root / "edit-stats" / f"{tag}.json").write_text(json.dumps(meta))
    return out
