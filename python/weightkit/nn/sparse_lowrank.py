"""SLTrain layers: ``W = (alpha / r)·B·A + S`` with a fixed random sparse support for S.

:class:`SparseLowRankLinear` is a drop-in ``nn.Linear`` replacement whose weight is never stored
dense; :func:`to_sparse_lowrank` converts the attention and MLP linears of a model.
"""

from __future__ import annotations

import fnmatch
import math
import zlib
from collections.abc import Sequence

import torch
from torch import nn

from weightkit.eval import linears_read_as_weights
from weightkit.ops.sparse_lowrank import sl_linear, sl_support

__all__ = ["SparseLowRankLinear", "ddp_ignore_support_buffers", "to_sparse_lowrank"]

SUPPORT_KINDS = ("row_balanced", "uniform")


def _check_config(in_features: int, out_features: int, rank: int, density: float, support: str,
                  alpha: float = 1.0) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"SparseLowRankLinear: {name} must be an int, got {v!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        # alpha = 0 would switch the low-rank part off (and from_weight divide by it)
        raise ValueError(f"SparseLowRankLinear: alpha must be a finite number > 0, got {alpha!r}")
    if in_features < 1 or out_features < 1:
        raise ValueError(f"SparseLowRankLinear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
    if not 1 <= rank <= min(in_features, out_features):
        raise ValueError(
            f"SparseLowRankLinear: rank must be in [1, min(in_features, out_features)] = "
            f"[1, {min(in_features, out_features)}], got {rank}"
        )
    if not 0.0 < density <= 1.0:
        raise ValueError(f"SparseLowRankLinear: density must be in (0, 1], got {density}")
    if support not in SUPPORT_KINDS:
        raise ValueError(f"SparseLowRankLinear: support must be one of {SUPPORT_KINDS}, got {support!r}")


class SparseLowRankLinear(nn.Module):
    """y = x·(scale·B·A + S)ᵀ + bias, scale = alpha / rank, S sparse on a seeded fixed support.

    Args:
        in_features, out_features: as ``nn.Linear``.
        rank: r, the inner dimension of B (out, r) · A (r, in); 1 ≤ r ≤ min(in, out).
        density: δ ∈ (0, 1], the fraction of W's entries S may make nonzero.
        alpha: scale numerator (LoRA-style); the product is scaled by alpha / rank.
        bias: whether to learn a bias (out,).
        support: ``"row_balanced"`` (the same count per row, kernel-friendly) or ``"uniform"``
            (positions drawn over the whole matrix, the paper's sampling).
        seed: the support's seed; the support is a pure function of (out, in, density, support, seed).

    Parameters ``A`` (r, in), ``B`` (out, r), ``values`` (nnz,), ``bias`` (out,); buffers
    ``row_ptr`` (out + 1,) int32 and ``col_idx`` (nnz,) int16 (int32 for in > 32767). The paper's
    initialization: B = 0, A Kaiming-uniform(a=√5), values and bias U(−1/√in, 1/√in). A state
    dict without the index buffers regenerates them from the seed on load.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        density: float = 0.03,
        alpha: float = 32.0,
        bias: bool = True,
        support: str = "row_balanced",
        seed: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_config(in_features, out_features, rank, density, support, alpha)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.density, self.alpha, self.support, self.seed = float(density), float(alpha), support, int(seed)
        row_ptr, col_idx = sl_support(out_features, in_features, density, seed, support)
        factory = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.B = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.values = nn.Parameter(torch.empty(col_idx.numel(), **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.register_buffer("row_ptr", row_ptr.to(device))
        self.register_buffer("col_idx", col_idx.to(device))
        self._init_parameters()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def reset_parameters(self) -> None:
        """The paper's initialization, and the support rebuilt from the seed: a layer built on the
        meta device and materialized with ``to_empty()`` (FSDP2, large-model init) gets it back."""
        if not self.row_ptr.is_meta:
            row_ptr, col_idx = sl_support(self.out_features, self.in_features, self.density, self.seed, self.support)
            with torch.no_grad():
                self.row_ptr.copy_(row_ptr)
                self.col_idx.copy_(col_idx)
        self._init_parameters()

    def _init_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.values, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B, values, bias = self.A, self.B, self.values, self.bias
        # Custom ops are opaque to autocast: cast here, so gradients flow to the fp32 masters.
        if torch.is_autocast_enabled(x.device.type):
            dt = torch.get_autocast_dtype(x.device.type)
            x, A, B, values = x.to(dt), A.to(dt), B.to(dt), values.to(dt)
            bias = bias.to(dt) if bias is not None else None
        return sl_linear(x, A, B, values, self.row_ptr, self.col_idx, bias, self.scale)

    def sparse_weight(self) -> torch.Tensor:
        """S as a dense (out, in) tensor."""
        rows = torch.repeat_interleave(
            torch.arange(self.out_features, device=self.values.device), self.row_ptr.diff().long()
        )
        S = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        S[rows, self.col_idx.long()] = self.values
        return S

    def dense_weight(self) -> torch.Tensor:
        """W = scale·B·A + S, (out, in) in the parameters' dtype."""
        return self.B @ self.A * self.scale + self.sparse_weight()

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with this layer's dense weight and bias."""
        W = self.dense_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=W.device, dtype=W.dtype)
        linear.weight.copy_(W)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        rank: int,
        density: float = 0.03,
        alpha: float = 32.0,
        support: str = "row_balanced",
        seed: int = 0,
        iters: int = 10,
    ) -> SparseLowRankLinear:
        """The best sparse + low-rank fit of a dense weight (out, in) on the layer's support.

        Alternates the two exact block minimizations of ‖W − L − S‖_F: L = the rank-r truncated
        SVD of W − S, then S = (W − L) on the support. Each step cannot increase the error.
        """
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            got = f"{tuple(weight.shape)} {weight.dtype}" if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"SparseLowRankLinear.from_weight: weight must be a 2-D float tensor (out, in), got {got}")
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, rank, density, alpha, bias is not None, support, seed,
                    device=weight.device, dtype=weight.dtype)
        W = weight.detach().to(torch.float64)
        rows = torch.repeat_interleave(torch.arange(out_features, device=W.device), layer.row_ptr.diff().long())
        cols = layer.col_idx.long()
        S_vals = torch.zeros(layer.nnz, dtype=torch.float64, device=W.device)
        for _ in range(max(1, iters)):
            R = W.clone()
            R[rows, cols] -= S_vals
            U, sigma, Vh = torch.linalg.svd(R, full_matrices=False)
            L = (U[:, :rank] * sigma[:rank]) @ Vh[:rank]
            S_vals = (W - L)[rows, cols]
        root = sigma[:rank].sqrt() / math.sqrt(layer.scale)
        layer.B.copy_(U[:, :rank] * root)
        layer.A.copy_(root[:, None] * Vh[:rank])
        layer.values.copy_(S_vals)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, **kwargs) -> SparseLowRankLinear:
        """:meth:`from_weight` of an ``nn.Linear``'s weight and bias."""
        return cls.from_weight(linear.weight, linear.bias, rank, **kwargs)

    def get_extra_state(self) -> dict:
        return {"format": 1, "density": self.density, "alpha": self.alpha, "support": self.support, "seed": self.seed}

    def set_extra_state(self, state: dict) -> None:
        if state.get("format") != 1:
            raise ValueError(f"SparseLowRankLinear: unknown state format {state.get('format')!r} (expected 1)")
        self.density, self.alpha, self.support, self.seed = state["density"], state["alpha"], state["support"], state["seed"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Index buffers are a pure function of the seed: regenerate them when a checkpoint omits them.
        if prefix + "row_ptr" not in state_dict or prefix + "col_idx" not in state_dict:
            cfg = state_dict.get(prefix + "_extra_state", self.get_extra_state())
            row_ptr, col_idx = sl_support(self.out_features, self.in_features, cfg["density"], cfg["seed"], cfg["support"])
            state_dict[prefix + "row_ptr"] = row_ptr
            state_dict[prefix + "col_idx"] = col_idx
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"density={self.density}, nnz={self.nnz}, alpha={self.alpha}, support={self.support!r}, "
            f"bias={self.bias is not None}"
        )


def ddp_ignore_support_buffers(model: nn.Module) -> nn.Module:
    """Tell ``DistributedDataParallel`` not to broadcast the layers' index buffers.

    They are a pure function of the seed (equal on every rank), and NCCL and gloo cannot
    broadcast int16 tensors, so DDP's start-up sync of ``model`` would fail on them.
    :func:`to_sparse_lowrank` calls this; call it yourself on a model built from
    :class:`SparseLowRankLinear` layers directly, before wrapping it in DDP. Returns the model.
    """
    names = [
        f"{name}.{buf}" if name else buf
        for name, m in model.named_modules()
        if isinstance(m, SparseLowRankLinear)
        for buf in ("row_ptr", "col_idx")
    ]
    previous = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, sorted(set(previous) | set(names))
    )
    return model


def _linear_weight(module: nn.Module) -> torch.Tensor | None:
    """(out, in) weight of an ``nn.Linear`` or a Hugging Face ``Conv1D`` (stored (in, out))."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        return module.weight.t()
    return None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or p in name for p in patterns)


def to_sparse_lowrank(
    model: nn.Module,
    rank_ratio: float | None = None,
    rank: int | None = None,
    density: float = 0.03,
    alpha: float = 32.0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = ("embed", "lm_head", "wte", "wpe"),
    support: str = "row_balanced",
    seed: int = 0,
    fit: bool = False,
    verbose: bool = True,
) -> nn.Module:
    """Replace a model's linear layers (``nn.Linear``, Hugging Face ``Conv1D``) in place.

    Layers whose qualified name matches ``exclude`` (substring or glob) stay dense, as do
    embeddings and the output head by default; with ``include`` only matching names convert.
    Each layer gets rank ``rank`` or ``round(rank_ratio·min(in, out))``. ``fit=False`` gives the
    paper's fresh initialization (for pretraining); ``fit=True`` the best sparse + low-rank fit
    of the current weight. Each layer's support seed is ``seed`` mixed with its name, so layers
    differ and conversions repeat. Prints a parameter-count summary when ``verbose``. The index
    buffers are marked for DDP to skip (:func:`ddp_ignore_support_buffers`). Returns the model.
    """
    if (rank is None) == (rank_ratio is None):
        raise ValueError("to_sparse_lowrank: give exactly one of rank and rank_ratio")
    if isinstance(model, nn.Linear):
        raise ValueError("to_sparse_lowrank: the model itself is an nn.Linear, which cannot be replaced in place; "
                         "use SparseLowRankLinear.from_linear, or wrap it (e.g. nn.Sequential(linear))")
    # One pattern is a pattern, not a sequence of one-character patterns.
    include = (include,) if isinstance(include, str) else include
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    read_directly = linears_read_as_weights(model)  # torch's attention / transformer layers
    if rank_ratio is not None and not 0.0 < rank_ratio <= 1.0:
        raise ValueError(f"to_sparse_lowrank: rank_ratio must be in (0, 1], got {rank_ratio}")
    before = sum(p.numel() for p in model.parameters())
    targets = []
    for name, module in model.named_modules():
        weight = _linear_weight(module)
        if weight is None or _matches(name, exclude) or (include is not None and not _matches(name, include)):
            continue
        if id(module) in read_directly:
            continue
        targets.append((name, module, weight))
    if not targets:
        raise ValueError("to_sparse_lowrank: no linear layer matched include/exclude")
    for name, module, weight in targets:
        out_f, in_f = weight.shape
        r = rank if rank is not None else max(1, round(rank_ratio * min(in_f, out_f)))
        r = min(r, in_f, out_f)
        layer_seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**62)
        kwargs = {"density": density, "alpha": alpha, "support": support, "seed": layer_seed}
        if fit:
            new = SparseLowRankLinear.from_weight(weight, module.bias, r, **kwargs)
        else:
            new = SparseLowRankLinear(in_f, out_f, r, bias=module.bias is not None, device=weight.device,
                                      dtype=weight.dtype, **kwargs)
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
    ddp_ignore_support_buffers(model)
    if verbose:
        after = sum(p.numel() for p in model.parameters())
        print(
            f"weightkit.to_sparse_lowrank: {len(targets)} linear layers converted "
            f"(density {density}, {'rank ' + str(rank) if rank is not None else f'rank ratio {rank_ratio}'}); "
            f"parameters {before:,} -> {after:,} ({after / before:.1%})"
        )
    return model
