"""Hadamard rotation and the codebook quantizer ops of the palette family.

``hadamard_transform(x, signs, scale)``: y = scale·(x ⊙ signs)·H_nᵀ over the last dim with
H_n = H_m ⊗ H_{2^k} (entries ±1, n = 2^k·m, m ∈ {1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172});
``scale = n**-0.5`` makes it orthogonal. A weight row w and an activation x rotated the same way
keep their inner product, so rotating W's rows and x at run time gives the same y = x·Wᵀ.

Codes: a (2^c, d) float32 codebook (d = 1 scalar, d = 2 pairs); ``palette_encode`` picks the
nearest codeword per unit, ``palette_pack`` packs the c-bit indices into int32 words (32 // c a
word, layout in csrc/palette/cpu.h), ``palette_dequantize`` / ``palette_matmul`` read them with a
per-row float32 scale.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "hadamard_transform",
    "hadamard_signs",
    "packed_words",
    "palette_dequantize",
    "palette_encode",
    "palette_matmul",
    "palette_pack",
    "tcq_dequantize",
    "tcq_encode",
    "tcq_encode_window",
    "tcq_matmul",
    "tcq_words",
]

#: The small orders m of n = 2^k·m that hadamard_transform supports.
HADAMARD_ORDERS = (1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172)


def hadamard_order(n: int) -> int | None:
    """m with n = 2^k·m and m a supported order (the largest such), or None."""
    m = n
    while m > 0 and m not in HADAMARD_ORDERS and m % 2 == 0:
        m //= 2
    return m if m in HADAMARD_ORDERS else None


def hadamard_signs(n: int, seed: int) -> torch.Tensor:
    """Random ±1 float32 signs (n,) from ``seed`` (torch's CPU generator: stable across versions)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=g).float().mul_(2).sub_(1)


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """scale·(x ⊙ signs)·H_nᵀ over the last dim; x (..., n) float, same shape and dtype back.

    ``scale`` defaults to n**-0.5 (orthogonal).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(x.shape[-1])
    return torch.ops.weightkit.hadamard_transform(x, signs, float(scale))


def palette_encode(W: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest-codeword indices (rows, in / d) int32 of W (rows, in) float32."""
    return torch.ops.weightkit.palette_encode(W, codebook)


def palette_pack(idx: torch.Tensor, code_bits: int) -> torch.Tensor:
    """Packed codes (rows, packed_words(units, code_bits)) int32 of idx (rows, units) int32."""
    return torch.ops.weightkit.palette_pack(idx, int(code_bits))


def palette_dequantize(packed, codebook, scales, in_features: int) -> torch.Tensor:
    """W (out, in_features) float32 = scales[:, None]·codebook[codes]."""
    return torch.ops.weightkit.palette_dequantize(packed, codebook, scales, int(in_features))


def palette_matmul(x, packed, codebook, scales, in_features: int) -> torch.Tensor:
    """y (..., out) = x (..., in_features)·Wᵀ in x's dtype (W as palette_dequantize gives it).

    Up to 16 tokens decode in registers, more dequantize and call GEMM. On the CPU the
    in-register path of the 2-D VQ with 5- to 8-bit codes (AVX2; 6- to 8-bit on AVX-512 with VBMI
    and VNNI) rounds codewords and activations to int8 (one scale per codebook, one per token and
    16-word block of codes): ~1% from the exact product. ``WEIGHTKIT_PALETTE_VQ_INT8=0`` keeps fp32.
    """
    return torch.ops.weightkit.palette_matmul(x, packed, codebook, scales, int(in_features))


def packed_words(units: int, code_bits: int) -> int:
    """int32 words per row for ``units`` codes of ``code_bits`` bits (16-word blocks)."""
    per_block = 16 * (32 // code_bits)
    return 16 * ((units + per_block - 1) // per_block)


@torch.library.register_fake("weightkit::hadamard_transform")
def _hadamard_fake(x, signs, scale):
    torch._check(x.dim() >= 1, lambda: "weightkit.hadamard_transform: x must have at least 1 dimension")
    return torch.empty_like(x)


@torch.library.register_fake("weightkit::palette_encode")
def _encode_fake(W, codebook):
    return W.new_empty((W.shape[0], W.shape[1] // codebook.shape[1]), dtype=torch.int32)


@torch.library.register_fake("weightkit::palette_pack")
def _pack_fake(idx, code_bits):
    return idx.new_empty((idx.shape[0], packed_words(idx.shape[1], code_bits)))


@torch.library.register_fake("weightkit::palette_dequantize")
def _dequantize_fake(packed, codebook, scales, in_features):
    return codebook.new_empty((packed.shape[0], in_features))


@torch.library.register_fake("weightkit::palette_matmul")
def _matmul_fake(x, packed, codebook, scales, in_features):
    torch._check(x.shape[-1] == in_features, lambda: "weightkit.palette_matmul: x must have in_features columns")
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def tcq_encode(W: torch.Tensor, L: int, bits_per_step: int, values_per_step: int) -> torch.Tensor:
    """Viterbi-encode each row of W (rows, in) float32 on the bitshift trellis; returns the
    (rows, tcq_words(in / values_per_step, L, bits_per_step)) int32 bit streams."""
    return torch.ops.weightkit.tcq_encode(W, int(L), int(bits_per_step), int(values_per_step))


def tcq_encode_window(W: torch.Tensor, prev: torch.Tensor, L: int, bits_per_step: int, values_per_step: int,
                      commit: int) -> torch.Tensor:
    """Viterbi over a window: for each row of W (rows, steps·values_per_step) float32, the cheapest
    path whose first state follows ``prev`` (rows,) int32 (the state of the step before the window,
    its lower L − bits_per_step bits becoming the first state's upper ones; −1: free, a row's first
    step). Returns the first ``commit`` (1..steps) states of each path, (rows, commit) int32: the
    steps past ``commit`` are look-ahead, so a caller can commit a stream block by block
    (Hessian-aware trellis coding, weightkit.quant.tcq)."""
    return torch.ops.weightkit.tcq_encode_window(W, prev, int(L), int(bits_per_step), int(values_per_step),
                                                 int(commit))


def tcq_dequantize(packed: torch.Tensor, scales: torch.Tensor, in_features: int, L: int, bits_per_step: int,
                   values_per_step: int) -> torch.Tensor:
    """W (rows, in_features) float32 = scales[:, None]·code(trellis states)."""
    return torch.ops.weightkit.tcq_decode(packed, scales, int(in_features), int(L), int(bits_per_step),
                                          int(values_per_step))


def tcq_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int, L: int,
               bits_per_step: int, values_per_step: int) -> torch.Tensor:
    """y (..., rows) = x (..., in_features)·Wᵀ in x's dtype, W as tcq_dequantize gives it. Up to 16
    tokens decode the trellis in registers (CPU: AVX2 or scalar; CUDA), with fp32 accumulation;
    more tokens decode W once and call GEMM (``WEIGHTKIT_PALETTE_PATH=gemv|dense`` forces one)."""
    return torch.ops.weightkit.tcq_matmul(x, packed, scales, int(in_features), int(L), int(bits_per_step),
                                          int(values_per_step))


def tcq_words(steps: int, L: int, bits_per_step: int) -> int:
    """int32 words of one row's stream: L + bits_per_step·(steps − 1) bits, plus one spare word."""
    bits = L + bits_per_step * (steps - 1) if steps > 0 else 0
    return (bits + 31) // 32 + 1


@torch.library.register_fake("weightkit::tcq_encode")
def _tcq_encode_fake(W, L, bits_per_step, values_per_step):
    return W.new_empty((W.shape[0], tcq_words(W.shape[1] // values_per_step, L, bits_per_step)), dtype=torch.int32)


@torch.library.register_fake("weightkit::tcq_encode_window")
def _tcq_encode_window_fake(W, prev, L, bits_per_step, values_per_step, commit):
    return W.new_empty((W.shape[0], commit), dtype=torch.int32)


@torch.library.register_fake("weightkit::tcq_decode")
def _tcq_decode_fake(packed, scales, in_features, L, bits_per_step, values_per_step):
    return scales.new_empty((packed.shape[0], in_features))


@torch.library.register_fake("weightkit::tcq_matmul")
def _tcq_matmul_fake(x, packed, scales, in_features, L, bits_per_step, values_per_step):
    torch._check(x.shape[-1] == in_features, lambda: "weightkit.tcq_matmul: x must have in_features columns")
    return x.new_empty((*x.shape[:-1], packed.shape[0]))
