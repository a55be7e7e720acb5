"""Hessian-aware rounding (LDLQ, the rounding of QuIP / GPTQ) for the palette's scalar and 2-D
vector quantizers.

A linear layer's output error on inputs X (N tokens × in) is ‖X·(W − Ŵ)ᵀ‖² = Σ_rows (w − ŵ)·H·(w − ŵ)ᵀ
with H = XᵀX. Rounding each weight to its nearest codeword ignores H. LDLQ rounds the columns one
unit at a time (d columns: 1 for the scalar quantizer, 2 for the 2-D VQ, whose codewords are pairs
of adjacent columns) and shifts the columns not yet rounded so that, for this H, they cancel the
error made so far as well as a linear correction can. With H = I it is nearest rounding.

``collect_hessians`` measures H of every layer from calibration tokens; ``ldlq_round`` rounds a
normalized, rotated weight matrix; ``rotate_hessian`` carries H into the Hadamard basis the palette
quantizes in (Ŵ approximates W·Rᵀ, its inputs are X·Rᵀ, so its H is R·H·Rᵀ);
``hessian_weighted_error`` is the output error a rounding leaves, on the scale of a relative weight
MSE (what the bit allocation weighs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from weightkit.ops import palette as P

__all__ = ["collect_hessians", "feedback_factor", "hessian_weighted_error", "ldlq_round", "nearest_codewords",
           "rotate_hessian"]


@torch.no_grad()
def collect_hessians(model: nn.Module, tokens: torch.Tensor, layers: dict[str, nn.Linear], ctx: int = 512,
                     batch_size: int = 4, progress: bool = False) -> dict[str, torch.Tensor]:
    """H = XᵀX / N (in, in) float64 on the CPU for each of ``layers`` (name → nn.Linear of ``model``),
    X being the layer's inputs over ``tokens`` (1-D int64, cut into windows of ``ctx`` tokens run
    ``batch_size`` at a time through ``model(input_ids)``; N = number of tokens).

    Layers called on the same input tensor one after another (q/k/v, gate/up) share one H, computed
    once (the same tensor object in the result). The model runs in eval mode without autograd; its
    mode is restored after.
    """
    fn = "weightkit.quant.collect_hessians"
    windows = calibration_windows(fn, tokens, layers, ctx, batch_size)
    device = next(model.parameters()).device
    acc = HessianAccumulator(fn, layers)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, windows.shape[0], batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="hessians", unit="batch")
        with acc:
            for i in starts:
                batch = windows[i : i + batch_size].to(device)
                model(batch)
                acc.end_batch(batch.numel())
    finally:
        model.train(was_training)
    return acc.result()


def check_hessians(where: str, layers, hessians: dict, after: str = "") -> None:
    """Raises ValueError (message from ``where`` to ``after``) unless ``hessians`` has an entry for
    every one of ``layers`` ((name, module) pairs)."""
    missing = [name for name, _ in layers if name not in hessians]
    if missing:
        raise ValueError(f"{where}: hessians lacks layers {missing[:3]} ({len(missing)} of {len(layers)}){after}")


def calibration_windows(fn: str, tokens: torch.Tensor, layers: dict, ctx: int, batch_size: int) -> torch.Tensor:
    """``tokens`` cut into windows (n, ctx) int64 (the tail that fills no window dropped), after
    checking the arguments of a Hessian collection; errors name ``fn``."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype.is_floating_point:
        raise ValueError(f"{fn}: tokens must be a 1-D integer tensor, got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if not isinstance(ctx, int) or ctx < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{fn}: ctx and batch_size must be positive ints, got {ctx!r}, {batch_size!r}")
    if tokens.numel() < ctx:
        raise ValueError(f"{fn}: need at least ctx={ctx} tokens, got {tokens.numel()}")
    if not layers:
        raise ValueError(f"{fn}: no layers given")
    for name, lin in layers.items():
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"{fn}: layers[{name!r}] must be an nn.Linear, got {type(lin).__name__}")
    return tokens[: tokens.numel() // ctx * ctx].view(-1, ctx).long()


class HessianAccumulator:
    """Sums XᵀX (float64, CPU) over the inputs X of each layer (name → nn.Linear) while active
    (``with acc:`` registers forward pre-hooks and removes them on exit); ``end_batch(n_tokens)``
    after each batch, ``result()`` for name → XᵀX / N.

    Layers called on the same input tensor one after another (q/k/v, gate/up) share one sum, and
    ``result`` gives them the same tensor object. ``where`` names the caller in errors.
    """

    def __init__(self, where: str, layers: dict[str, nn.Linear]):
        self.where, self.layers = where, layers
        self.sums: dict[str, torch.Tensor] = {}
        self.owner: dict[str, str] = {}  # layer → the layer whose sum it shares (itself when it owns one)
        self.last = {"x": None, "name": None}
        self.n_tokens = 0
        self.handles = []

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            if x is self.last["x"]:  # same tensor as the layer just before: same H
                shared = self.last["name"]
            else:
                X = x.detach().reshape(-1, x.shape[-1]).float()
                self.sums[name] = self.sums.get(name, 0) + (X.T @ X).double().cpu()
                self.last.update(x=x, name=name)
                shared = name
            if self.owner.setdefault(name, shared) != shared:
                raise RuntimeError(f"{self.where}: layer {name!r} shared its input with {self.owner[name]!r} in one "
                                   f"batch and with {shared!r} in another; this model's call order is not fixed")
        return hook

    def __enter__(self):
        self.handles = [lin.register_forward_pre_hook(self._hook(name)) for name, lin in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def end_batch(self, n_tokens: int) -> None:
        self.last.update(x=None, name=None)  # never match a tensor of another batch
        self.n_tokens += n_tokens

    def result(self) -> dict[str, torch.Tensor]:
        missing = [n for n in self.layers if n not in self.owner]
        if missing:
            raise ValueError(f"{self.where}: these layers were never called by the model's forward: {missing[:5]}")
        means = {name: total / self.n_tokens for name, total in self.sums.items()}
        return {name: means[self.owner[name]] for name in self.layers}


def rotate_hessian(H: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """R·H·Rᵀ (n, n) float64 for R = Hadamard·diag(signs)/√n, the palette's rotation of the inputs.

    Two fast transforms (hadamard_transform(A) = A·Rᵀ over rows; H is symmetric), O(n² log n)
    instead of two dense n³ products; they compute in float32, ~1e-7 relative, far below the
    dampening ldlq_round adds."""
    signs = signs.float().cpu()
    half = P.hadamard_transform(H.detach().float().cpu(), signs)  # H·Rᵀ
    full = P.hadamard_transform(half.t().contiguous(), signs).double()  # (R·H)·Rᵀ
    return (full + full.t()) / 2


def hessian_weighted_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔW·H·ΔWᵀ) / (tr(H)·‖W‖²/in) for ΔW = W − Ŵ (out, in) and H (in, in): the output error on
    the calibration inputs, divided by the output error that isotropic weight noise of relative MSE 1
    would cause there. For nearest rounding (error uncorrelated with H's eigenvectors) it is close to the
    relative weight MSE ‖ΔW‖²/‖W‖²; LDLQ lowers it below that, by pushing error into directions the
    inputs rarely take. Computed in float64; 0 when W or H is zero."""
    dW = W.detach().double().cpu() - W_hat.detach().double().cpu()
    H = H.detach().double().cpu()
    scale = H.diagonal().sum().item() * W.detach().double().pow(2).sum().item() / W.shape[1]
    return ((dW @ H) * dW).sum().item() / scale if scale > 0 else 0.0


def nearest_codewords(codebook: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function mapping an (rows, d) float block to its nearest rows of ``codebook`` (K, d) float32
    (d = 1: by the midpoints of the sorted codewords; d > 1: by squared distance)."""
    cb = codebook.detach().float().cpu()
    if cb.shape[1] == 1:
        values = cb.view(-1).sort().values
        midpoints = (values[1:] + values[:-1]) / 2
        return lambda block: values[torch.bucketize(block.float(), midpoints)]
    half_norms = cb.pow(2).sum(1) / 2
    # argmin ‖b − c‖² = argmax (b·c − ‖c‖²/2)
    return lambda block: cb[torch.addmm(half_norms, block.float(), cb.t(), beta=-1).argmax(1)]


def feedback_factor(fn: str, H: torch.Tensor, damp: float) -> torch.Tensor:
    """U (n, n) float64, the upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, for H (n, n)
    symmetric positive semidefinite (any float dtype; inputs with diag(H) = 0 never fire and are
    decoupled first). Row i of U, scaled by U_ii⁻¹, is the optimal feedback of column i's rounding
    error onto the columns after it (GPTQ); errors name ``fn``."""
    H = H.detach().double().cpu().clone()
    n = H.shape[0]
    dead = H.diagonal() <= 0  # inputs that never fire: their weights cannot matter, round them plainly
    H[dead, :] = 0
    H[:, dead] = 0
    H.diagonal()[dead] = 1
    H.diagonal().add_(damp * H.diagonal().mean())
    # With J the order reversal and J·H·J = L·Lᵀ, H⁻¹ = (J·L⁻¹·J)ᵀ·(J·L⁻¹·J) and J·L⁻¹·J is upper
    # triangular: U without forming H⁻¹ (one factorization and one triangular inverse).
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if info != 0:
        raise ValueError(f"{fn}: H is not positive definite even after damp={damp}; raise damp")
    eye = torch.eye(n, dtype=torch.float64)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)


def ldlq_round(W: torch.Tensor, H: torch.Tensor, nearest: Callable, d: int = 1, damp: float = 0.01, block: int = 32,
               dtype: torch.dtype = torch.float32, group_size: int | None = None,
               act_order: bool = False) -> torch.Tensor:
    """Round W (out, in) float to codewords, unit by unit (``d`` adjacent columns), with LDLQ's
    error feedback for the proxy loss Σ_rows (w − ŵ)·H·(w − ŵ)ᵀ; returns Ŵ (out, in) float32.

    ``nearest`` maps an (out, d) float32 block to its nearest codewords (out, d); ``H`` (in, in) is
    symmetric positive semidefinite (any float dtype), ``damp``·mean(diag H) is added to its
    diagonal (GPTQ's dampening: keeps the Cholesky factors finite when some inputs are nearly
    dependent). The factors are computed in float64, the feedback in ``dtype`` (float32, as GPTQ;
    float64 for comparisons with a reference). Columns are processed in ``block``s: inside a block
    the feedback is applied column by column, to the rest of the matrix once per block (GPTQ's
    lazy batch updates).

    ``group_size``: the grid is fitted as rounding goes (GPTQ with groups). ``nearest`` is then a
    factory, called at the first column of each group of ``group_size`` columns (ragged last) with
    that group's weights (out, group) float32, earlier errors already fed back, and returning the
    rounding function of the group. Blocks are the groups, so each group is complete when fitted.

    ``act_order``: round the units by decreasing energy (the sum of their columns' diag(H)), GPTQ's
    act order: the inputs that carry the most are rounded while the most columns remain to absorb
    their error. Ŵ comes back in W's column order; with ``group_size`` the groups are runs of that
    order.
    """
    fn = "weightkit.quant.ldlq_round"
    out_f, in_f = W.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"{fn}: H must be ({in_f}, {in_f}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if not torch.isfinite(H).all():
        raise ValueError(f"{fn}: H has NaN or Inf")
    if d < 1 or in_f % d:
        raise ValueError(f"{fn}: the unit width d={d} must divide in_features={in_f}")
    if not damp >= 0:
        raise ValueError(f"{fn}: damp must be >= 0, got {damp!r}")
    if group_size is not None:
        if not isinstance(group_size, int) or group_size < 1 or group_size % d:
            raise ValueError(f"{fn}: group_size must be a positive multiple of d={d}, got {group_size!r}")
        block = group_size
    block = max(d, block - block % d)
    H = H.detach().double().cpu()
    order = None  # the processing order of W's columns, when not 0 .. in − 1
    if act_order:
        by_energy = torch.argsort(H.diagonal().view(-1, d).sum(1), descending=True, stable=True)
        order = (by_energy[:, None] * d + torch.arange(d)).reshape(-1)
        H = H[order][:, order]
    U = feedback_factor(fn, H, damp)  # a unit of d columns sends its error through U_ii⁻¹ first
    units = U.diagonal().reshape(-1, 1) if d == 1 else torch.stack(
        [U[i : i + d, i : i + d] for i in range(0, in_f, d)])
    inv_diag = (1 / units).view(-1, 1, 1) if d == 1 else torch.linalg.inv(units)

    # Columns as rows: a unit's weights and every update below touch contiguous memory.
    Wt = W.detach().to("cpu", dtype).t()  # (in, out)
    Wt = (Wt if order is None else Wt[order]).contiguous()
    Qt = torch.empty_like(Wt)
    Ut = U.t().to(dtype).contiguous()  # Ut[c, i] = U[i, c]
    inv_diag = inv_diag.to(dtype)
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        Et = torch.empty(b1 - b0, out_f, dtype=dtype)
        round_unit = nearest if group_size is None else nearest(Wt[b0:b1].t().float().contiguous())
        for i in range(b0, b1, d):
            w = Wt[i : i + d]  # (d, out)
            q = round_unit(w.t().float().contiguous()).t().to(dtype)
            Qt[i : i + d] = q
            e = inv_diag[i // d].t() @ (w - q)  # (d, out): the unit's error through U_ii⁻¹
            Et[i - b0 : i - b0 + d] = e
            Wt[i + d : b1].addmm_(Ut[i + d : b1, i : i + d], e, alpha=-1)
        Wt[b1:].addmm_(Ut[b1:, b0:b1], Et, alpha=-1)
    return (Qt if order is None else Qt[torch.argsort(order)]).t().float()
