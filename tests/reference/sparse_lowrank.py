"""Float64 reference of SLTrain's layer in plain dense math: the oracle for weightkit.sl_linear."""

from __future__ import annotations

import torch


def support_rows(row_ptr: torch.Tensor) -> torch.Tensor:
    """Row index of every nonzero of a CSR support, int64."""
    counts = row_ptr.long().diff()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts)


def dense_sparse(values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, shape) -> torch.Tensor:
    """S as a dense float64 (out, in) matrix."""
    S = torch.zeros(shape, dtype=torch.float64, device=values.device)
    S[support_rows(row_ptr), col_idx.long()] = values.double()
    return S


def sl_linear_ref(x, A, B, values, row_ptr, col_idx, bias, scale) -> torch.Tensor:
    """y = x (scale B A + S)^T + bias in float64."""
    W = scale * B.double() @ A.double() + dense_sparse(values, row_ptr, col_idx, (B.shape[0], A.shape[1]))
    y = x.double() @ W.T
    return y + bias.double() if bias is not None else y


def sl_linear_grads_ref(grad_out, x, A, B, values, row_ptr, col_idx, scale):
    """(grad_x, grad_A, grad_B, grad_values) in float64 through the dense weight gradient."""
    g, xd = grad_out.double().reshape(-1, B.shape[0]), x.double().reshape(-1, A.shape[1])
    W = scale * B.double() @ A.double() + dense_sparse(values, row_ptr, col_idx, (B.shape[0], A.shape[1]))
    GW = g.T @ xd
    gx = (g @ W).reshape(x.shape)
    return gx, scale * B.double().T @ GW, scale * GW @ A.double().T, GW[support_rows(row_ptr), col_idx.long()]


def sddmm_ref(a, b, row_ptr, col_idx) -> torch.Tensor:
    """(a^T b) at the support, float64."""
    return (a.double().T @ b.double())[support_rows(row_ptr), col_idx.long()]
