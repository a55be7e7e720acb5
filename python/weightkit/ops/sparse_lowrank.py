"""SLTrain's sparse + low-rank linear map and its pieces.

``sl_linear(x, A, B, values, row_ptr, col_idx, bias, scale)`` computes

    y = x · (scale · B·A + S)ᵀ + bias

for x (..., in), A (r, in), B (out, r) and S (out, in) given by ``values`` (nnz) on a CSR support
(``row_ptr`` int32/int64 of out + 1 entries, ``col_idx`` int16/int32 of nnz entries, sorted and
unique within each row). x, A, B, values and bias share one dtype (float32, bfloat16, float16);
y has x's dtype. It is differentiable in x, A, B, values and bias. Each call picks the factored
path (x·Aᵀ·Bᵀ plus the sparse product) or a transient dense W by a cost model;
``WEIGHTKIT_SL_PATH=factored|dense`` forces one.
"""

from __future__ import annotations

import torch

__all__ = ["sddmm", "sl_linear", "sl_support"]


def sl_linear(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    values: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """y = x·(scale·B·A + S)ᵀ + bias, shape (..., out) in x's dtype (see the module docstring)."""
    return torch.ops.weightkit.sl_linear(x, A, B, values, row_ptr, col_idx, bias, float(scale))


def sddmm(a: torch.Tensor, b: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """(aᵀ·b) sampled at the support: out[k] = Σ_t a[t, row_k]·b[t, col_k].

    a (T, rows) and b (T, cols) share a float dtype; returns (nnz,) in that dtype, accumulated in
    fp32. With a = grad_out and b = x it is the gradient of the sparse values.
    """
    return torch.ops.weightkit.sddmm(a, b, row_ptr, col_idx)


def sl_support(
    out_features: int, in_features: int, density: float, seed: int, kind: str = "row_balanced"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random support (row_ptr, col_idx) on the CPU, the same on every machine.

    ``kind="row_balanced"``: round(density·in) columns in every row (at least one);
    ``"uniform"``: round(density·out·in) positions over the whole matrix (the SLTrain reference's
    sampling). row_ptr is int32 (int64 beyond 2³¹ nonzeros), col_idx int16 when in_features
    ≤ 32767, else int32.
    """
    return torch.ops.weightkit.sl_support(int(out_features), int(in_features), float(density), int(seed), kind)


def _out_shape(x: torch.Tensor, out_features: int) -> list:
    return [*x.shape[:-1], out_features]


@torch.library.register_fake("weightkit::sl_linear")
def _sl_linear_fake(x, A, B, values, row_ptr, col_idx, bias, scale):
    torch._check(x.dim() >= 1, lambda: "weightkit.sl_linear: x must have at least 1 dimension")
    torch._check(A.dim() == 2 and B.dim() == 2, lambda: "weightkit.sl_linear: A and B must be 2-D")
    torch._check(A.shape[1] == x.shape[-1], lambda: "weightkit.sl_linear: A must have shape (rank, x.size(-1))")
    torch._check(B.shape[1] == A.shape[0], lambda: "weightkit.sl_linear: B must have shape (out, rank)")
    return x.new_empty(_out_shape(x, B.shape[0]))


@torch.library.register_fake("weightkit::sl_linear_backward")
def _sl_linear_backward_fake(grad_out, x, A, B, values, row_ptr, col_idx, scale, output_mask):
    def grad(mask: bool, like: torch.Tensor) -> torch.Tensor:
        return like.new_empty(like.shape) if mask else like.new_empty((0,))

    return tuple(grad(m, t) for m, t in zip(output_mask, (x, A, B, values)))


@torch.library.register_fake("weightkit::sddmm")
def _sddmm_fake(a, b, row_ptr, col_idx):
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "weightkit.sddmm: a and b must be 2-D")
    return a.new_empty((col_idx.shape[0],))


def _setup_context(ctx, inputs, output):
    x, A, B, values, row_ptr, col_idx, bias, scale = inputs
    ctx.save_for_backward(x, A, B, values, row_ptr, col_idx)
    ctx.scale = scale
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, A, B, values, row_ptr, col_idx = ctx.saved_tensors
    need = list(ctx.needs_input_grad[:4])
    grad_bias = None
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
    gx = gA = gB = gv = None
    if any(need):
        gx, gA, gB, gv = torch.ops.weightkit.sl_linear_backward(
            grad_out.contiguous(), x, A, B, values, row_ptr, col_idx, ctx.scale, need
        )
    keep = lambda g, n: g if n else None  # noqa: E731  (masked gradients come back empty)
    return keep(gx, need[0]), keep(gA, need[1]), keep(gB, need[2]), keep(gv, need[3]), None, None, grad_bias, None


torch.library.register_autograd("weightkit::sl_linear", _backward, setup_context=_setup_context)
