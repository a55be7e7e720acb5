"""PTQTP trit-plane quantization: W ≈ α¹·T¹ + α²·T² with T¹, T² ∈ {−1, 0, +1}.

Scales are per output row and per group of ``group_size`` consecutive input columns (the last
group of a row may be shorter, e.g. 576 = 4·128 + 64). No calibration data: each group minimizes
its own squared error (PAPERS.md, PTQTP).

Packing format, version :data:`PACK_VERSION` = 1 (``csrc/trit_plane/layout.h`` holds the
authoritative description):

* ``scales``: float16, shape ``(out, n_groups, 2)``; ``[..., 0]`` = α¹, ``[..., 1]`` = α²,
  ``n_groups = ceil(in_features / group_size)``.
* ``packed``: int32, shape ``(ceil(out / 8), words_per_row, 2, 8)``. Each group is cut into
  pairs of columns (the last pair of an odd-length group zero-padded) and a row's pairs are
  numbered group after group. Per plane a pair is a 4-bit code ``pos | neg << 2``: bit b of
  ``pos`` (``neg``) is set when the trit of column 2q + b is +1 (−1). A 32-bit word holds the
  codes of 8 consecutive pairs (pair p in bits 4·(p % 8) .. 4·(p % 8) + 3 of word p // 8).
  ``packed[rb, w, k, j]`` is word w of plane k (0: T¹, 1: T²) of row 8·rb + j (rows past ``out``
  are zero). ``words_per_row = ceil(P / 8)`` with ``P = Σ_g ceil(len_g / 2)``.

Storage: 4 bits per weight for the planes (even group sizes) + 0.25 for the scales at group 128.
The layout keeps rows in the lanes of a vector register so the CPU kernel sums activations by
table lookup (one vpermps per pair of columns and plane for 16 rows with AVX-512: the table holds
the 16 signed sums of the pair) with no multiplications by weights.

The quantizer's stopping rule is relative: iterate until max|α − α_prev| ≤ tol·max|α| (or
``max_iters`` rounds), so quantizing c·W gives the same trits as W for any c > 0.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "PACK_VERSION",
    "n_groups",
    "packed_shape",
    "ptqtp_quantize",
    "stored_bits",
    "trit_plane_matmul",
    "trit_plane_matmul_a8",
    "trit_plane_pack",
    "trit_plane_trits",
    "trit_plane_unpack",
]

#: Version of the packed format written by :func:`ptqtp_quantize` and read by every op here.
PACK_VERSION = 1

_ROWS_PER_BLOCK = 8
_PAIRS_PER_WORD = 8
_PLANES = 2
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def n_groups(in_features: int, group_size: int) -> int:
    """Number of column groups of a row: ceil(in_features / group_size)."""
    return 0 if in_features == 0 else -(-in_features // group_size)


def packed_shape(out_features: int, in_features: int, group_size: int) -> tuple[int, int, int, int]:
    """Shape of ``packed`` for an (out_features, in_features) weight (format version 1)."""
    g = n_groups(in_features, group_size)
    last = in_features - (g - 1) * group_size if g else 0
    pairs = (g - 1) * (-(-group_size // 2)) + (-(-last // 2)) if g else 0
    words = -(-pairs // _PAIRS_PER_WORD)
    return (-(-out_features // _ROWS_PER_BLOCK), words, _PLANES, _ROWS_PER_BLOCK)


def stored_bits(out_features: int, in_features: int, group_size: int) -> float:
    """Bits per weight an (out_features, in_features) weight stores: its packed int32 planes and its
    float16 scales, two per row and group (0 for an empty weight)."""
    n = out_features * in_features
    words = math.prod(packed_shape(out_features, in_features, group_size))
    scales = out_features * n_groups(in_features, group_size) * _PLANES
    return (32 * words + 16 * scales) / n if n else 0.0


def ptqtp_quantize(
    W: torch.Tensor, group_size: int = 128, max_iters: int = 50, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize W (out, in) float32/bfloat16/float16 to two trit-planes.

    Returns ``(packed, scales)``: int32 ``packed_shape(out, in, group_size)`` and float16
    ``(out, n_groups, 2)``, on W's device. Raises on non-finite W, group_size < 1,
    max_iters < 1, tol < 0, and scales that overflow float16.
    """
    return torch.ops.weightkit.ptqtp_quantize(W, int(group_size), int(max_iters), float(tol))


def trit_plane_matmul(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int, group_size: int = 128
) -> torch.Tensor:
    """y = x·Ŵᵀ for the packed weight Ŵ: x (..., in_features) float32/bfloat16/float16 ->
    (..., out) in x's dtype, accumulated in fp32.

    One exception, for speed: bf16 x with more than 16 rows, on CUDA or on a CPU with bf16 units,
    takes a bf16 dense product, so Ŵ is rounded to bf16 first (as a bf16 ``nn.Linear`` would hold
    it; each output moves by at most 2⁻⁹·Σ|x|·|Ŵ|, plus on CUDA whatever cuBLAS's reduced-precision
    bf16 reductions add where torch allows them). Everywhere else Ŵ enters exactly."""
    return torch.ops.weightkit.trit_plane_matmul(x, packed, scales, int(in_features), int(group_size))


def trit_plane_matmul_a8(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int, group_size: int = 128
) -> torch.Tensor:
    """y ≈ x·Ŵᵀ with the activations rounded to int8: x (..., in_features) float32/bfloat16/float16
    -> (..., out) in x's dtype.

    Per row of x and per weight group g (the scales' column groups): s = max|x_g| / 127 and
    q = round(x_g / s) ∈ [−127, 127], computed in fp32 as ``rint(x * (127 / max|x_g|))``. Then
    y = Σ_g s_g·(α¹·T¹q + α²·T²q) with exact integer plane sums. Against
    :func:`trit_plane_matmul` (same W, fp32 x) each output moves by at most
    Σ_g (s_g / 2)·(|α¹|·nnz(T¹_g) + |α²|·nnz(T²_g)) (tests/reference/trit_plane.py computes it);
    ~0.65% relative on Gaussian activations. A group whose |x| is all below ~3.7e−37 is flushed
    to zero (its term of the bound is max|x_g| instead of s_g / 2); a NaN or Inf in a group makes
    that row's outputs NaN.

    Why: on CPUs without AVX-512 the fp32 kernel is limited by table lookups; with int8
    activations one byte shuffle and one u8·s8 multiply-add handle 32 weights. On CUDA the
    activations are rounded by a small kernel and the fp32 kernel does the rest (the same y up to
    fp32 rounding, no faster).
    """
    return torch.ops.weightkit.trit_plane_matmul_a8(x, packed, scales, int(in_features), int(group_size))


def trit_plane_unpack(
    packed: torch.Tensor, scales: torch.Tensor, in_features: int, group_size: int = 128
) -> torch.Tensor:
    """The dequantized weight α¹·T¹ + α²·T², float32 (out, in_features)."""
    return torch.ops.weightkit.trit_plane_unpack(packed, scales, int(in_features), int(group_size))


def trit_plane_pack(trits: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Pack int8 trits (2, out, in) with values in {−1, 0, +1} into the version-1 layout."""
    return torch.ops.weightkit.trit_plane_pack(trits, int(group_size))


def trit_plane_trits(packed: torch.Tensor, out_features: int, in_features: int, group_size: int = 128) -> torch.Tensor:
    """The planes of ``packed`` as int8 (2, out_features, in_features)."""
    return torch.ops.weightkit.trit_plane_trits(packed, int(out_features), int(in_features), int(group_size))


# ---------------------------------------------------------------- fake (meta) kernels


def _fail(op: str, msg: str) -> None:
    raise RuntimeError(f"weightkit.{op}: {msg}")


def _check_packed_fake(op: str, packed, scales, in_features: int, group_size: int) -> int:
    if group_size < 1:
        _fail(op, f"group_size must be >= 1, got {group_size}")
    if scales.dtype != torch.float16:
        _fail(op, f"scales must be float16, got {scales.dtype}")
    if packed.dtype != torch.int32:
        _fail(op, f"packed must be int32, got {packed.dtype}")
    if packed.device != scales.device:
        _fail(op, f"packed and scales must be on the same device, got {packed.device} and {scales.device}")
    g = n_groups(in_features, group_size)
    if scales.dim() != 3 or scales.shape[1] != g or scales.shape[2] != 2:
        _fail(op, f"scales must have shape (out, n_groups, 2) with n_groups = {g}, got {tuple(scales.shape)}")
    out = scales.shape[0]
    want = packed_shape(out, in_features, group_size)
    if tuple(packed.shape) != want:
        _fail(op, f"packed must have shape {want}, got {tuple(packed.shape)}")
    return out


@torch.library.register_fake("weightkit::ptqtp_quantize")
def _ptqtp_quantize_fake(W, group_size, max_iters, tol):
    op = "ptqtp_quantize"
    if W.dim() != 2:
        _fail(op, f"W must have 2 dimensions, got shape {tuple(W.shape)}")
    if W.dtype not in _FLOATS:
        _fail(op, f"W must be float32, bfloat16 or float16, got {W.dtype}")
    if group_size < 1:
        _fail(op, f"group_size must be >= 1, got {group_size}")
    out, inf = W.shape
    packed = W.new_empty(packed_shape(out, inf, group_size), dtype=torch.int32)
    scales = W.new_empty((out, n_groups(inf, group_size), 2), dtype=torch.float16)
    return packed, scales


def _matmul_fake(op: str, x, packed, scales, in_features: int, group_size: int):
    out = _check_packed_fake(op, packed, scales, in_features, group_size)
    if x.dtype not in _FLOATS:
        _fail(op, f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.device != packed.device:
        _fail(op, f"x and packed must be on the same device, got {x.device} and {packed.device}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        _fail(op, f"x's last dimension must equal in_features = {in_features}, got x of shape {tuple(x.shape)}")
    return x.new_empty((*x.shape[:-1], out))


@torch.library.register_fake("weightkit::trit_plane_matmul")
def _trit_plane_matmul_fake(x, packed, scales, in_features, group_size):
    return _matmul_fake("trit_plane_matmul", x, packed, scales, in_features, group_size)


@torch.library.register_fake("weightkit::trit_plane_matmul_a8")
def _trit_plane_matmul_a8_fake(x, packed, scales, in_features, group_size):
    return _matmul_fake("trit_plane_matmul_a8", x, packed, scales, in_features, group_size)


@torch.library.register_fake("weightkit::trit_plane_unpack")
def _trit_plane_unpack_fake(packed, scales, in_features, group_size):
    out = _check_packed_fake("trit_plane_unpack", packed, scales, in_features, group_size)
    return scales.new_empty((out, in_features), dtype=torch.float32)


@torch.library.register_fake("weightkit::trit_plane_pack")
def _trit_plane_pack_fake(trits, group_size):
    op = "trit_plane_pack"
    if trits.dtype != torch.int8 or trits.dim() != 3 or trits.shape[0] != 2:
        _fail(op, f"trits must be int8 of shape (2, out, in), got {trits.dtype} {tuple(trits.shape)}")
    if group_size < 1:
        _fail(op, f"group_size must be >= 1, got {group_size}")
    return trits.new_empty(packed_shape(trits.shape[1], trits.shape[2], group_size), dtype=torch.int32)


@torch.library.register_fake("weightkit::trit_plane_trits")
def _trit_plane_trits_fake(packed, out_features, in_features, group_size):
    op = "trit_plane_trits"
    if group_size < 1:
        _fail(op, f"group_size must be >= 1, got {group_size}")
    want = packed_shape(out_features, in_features, group_size)
    if packed.dtype != torch.int32 or tuple(packed.shape) != want:
        _fail(op, f"packed must be int32 of shape {want}, got {packed.dtype} {tuple(packed.shape)}")
    return packed.new_empty((2, out_features, in_features), dtype=torch.int8)
