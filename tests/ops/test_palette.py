"""weightkit.hadamard_transform and the palette code ops against the float64 references."""

from __future__ import annotations

import math

import pytest
import torch

import weightkit  # noqa: F401  (loads the ops)
from tests.reference.palette import (
    dequantize_ref,
    hadamard_transform_ref,
    int8_vq_operands,
    small_hadamard,
    unpack_ref,
)
from weightkit.ops.palette import (
    HADAMARD_ORDERS,
    hadamard_order,
    hadamard_signs,
    hadamard_transform,
    packed_words,
    palette_dequantize,
    palette_encode,
    palette_matmul,
    palette_pack,
)

# The small orders with a power of two, and the LLM widths named in DESIGN.md that we support;
# then segments (n / m) of 8, 16 and 32 floats, where the AVX2 / AVX-512 paths change shape, with
# small factors that mix 6-row and 4-row tiles (28, 40, 140, 172).
WIDTHS = [1, 2, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172, 24, 80, 576, 1536, 4096, 5120, 11008, 14336,
          96, 192, 384, 448, 640, 2240, 2752]


def rel_err(x, ref):
    ref = ref.double().cpu()
    return ((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("m", HADAMARD_ORDERS)
def test_small_hadamard_is_orthogonal(m):
    H = small_hadamard(m)
    assert set(H.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(H @ H.T, m * torch.eye(m, dtype=torch.float64))
    # The op on the identity (n = m) returns H_m^T: the same matrix the reference builds.
    got = hadamard_transform(torch.eye(m), None, 1.0)
    assert torch.equal(got.double(), H.T)


@pytest.mark.parametrize("n", WIDTHS)
def test_hadamard_matches_reference(n, cpu_isa):
    m = hadamard_order(n)
    x = torch.randn(5, n)
    s = hadamard_signs(n, 3)
    y = hadamard_transform(x, s)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_err(y, hadamard_transform_ref(x, s, 1 / math.sqrt(n), m)) < 1e-6
    # Orthogonal: norms kept; inverse by the transposed matrix.
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-5)
    R_t = hadamard_transform(torch.eye(n), s)  # = Rᵀ
    assert torch.allclose(y @ R_t.T, x, atol=1e-4)


# The ATen composition (butterflies over 2^k, then H_m) that CUDA takes beyond its kernel's
# shared-memory row (24576 floats): Llama-70B's MLP width 28672 = 2^10 * 28 among them.
@pytest.mark.parametrize("n", [1, 12, 172, 576, 1536, 4096, 28672, 32768])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hadamard_aten_path(n, dtype, monkeypatch):
    x = torch.randn(3, n).to(dtype)
    s = hadamard_signs(n, 5)
    ref = hadamard_transform_ref(x.double(), s, 1 / math.sqrt(n), hadamard_order(n))
    monkeypatch.setenv("WEIGHTKIT_HADAMARD_PATH", "aten")
    y = hadamard_transform(x, s)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    monkeypatch.setenv("WEIGHTKIT_HADAMARD_PATH", "kernel")
    assert rel_err(hadamard_transform(x, s), ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    monkeypatch.setenv("WEIGHTKIT_HADAMARD_PATH", "fast")
    with pytest.raises(RuntimeError, match="weightkit.hadamard_transform: WEIGHTKIT_HADAMARD_PATH must be kernel or aten"):
        hadamard_transform(x, s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_hadamard_dtypes(dtype):
    x = torch.randn(2, 3, 576).to(dtype)
    y = hadamard_transform(x, None)
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-6 if dtype == torch.float64 else 1e-2
    assert rel_err(y, hadamard_transform_ref(x, None, 1 / 24, 36)) < tol


def test_hadamard_opcheck():
    x = torch.randn(4, 96)
    torch.library.opcheck(torch.ops.weightkit.hadamard_transform.default, (x, hadamard_signs(96, 0), 0.1))
    torch.library.opcheck(torch.ops.weightkit.hadamard_transform.default, (x, None, 1.0))


@pytest.mark.parametrize("n", [13, 22, 44, 78, 0])
def test_hadamard_rejects_widths(n):
    with pytest.raises(RuntimeError, match="weightkit.hadamard_transform: the last dimension must be 2\\^k"):
        hadamard_transform(torch.randn(2, n), None, 1.0)


def test_hadamard_rejects_bad_signs():
    with pytest.raises(RuntimeError, match="weightkit.hadamard_transform: signs must have shape"):
        hadamard_transform(torch.randn(2, 16), torch.ones(8), 1.0)
    with pytest.raises(RuntimeError, match="weightkit.hadamard_transform: x must be float32"):
        hadamard_transform(torch.ones(2, 16, dtype=torch.int32), None, 1.0)


# ------------------------------------------------------------------------------ codes


def random_codes(rows, in_f, c, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(1 << c, d, generator=g)
    idx = torch.randint(0, 1 << c, (rows, in_f // d), generator=g, dtype=torch.int32)
    scales = torch.rand(rows, generator=g) + 0.5
    return codebook, idx, scales


CASES = [(c, 1) for c in range(1, 9)] + [(c, 2) for c in range(2, 9)]


@pytest.mark.parametrize("c,d", CASES)
def test_pack_dequantize_roundtrip(c, d):
    rows, in_f = 7, 2 * 333  # a ragged last block
    codebook, idx, scales = random_codes(rows, in_f, c, d)
    packed = palette_pack(idx, c)
    assert packed.shape == (rows, packed_words(in_f // d, c)) and packed.dtype == torch.int32
    assert torch.equal(unpack_ref(packed, in_f // d, c), idx.long())
    W = palette_dequantize(packed, codebook, scales, in_f)
    assert torch.allclose(W.double(), dequantize_ref(packed, codebook, scales, in_f), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("d", [1, 2])
def test_encode_is_nearest(d):
    codebook, _, _ = random_codes(1, 2, 5, d)
    W = torch.randn(9, 64)
    idx = palette_encode(W, codebook).long()
    pts = W.reshape(-1, d)
    dist = torch.cdist(pts.double(), codebook.double())
    chosen = dist.gather(1, idx.reshape(-1, 1)).squeeze(1)
    assert torch.allclose(chosen, dist.min(1).values)


def uses_int8_tables(c, d, isa):
    """The 2-D VQ GEMV rounds codewords and activations to int8 for 5- to 8-bit codes on AVX2 and
    6- to 8-bit codes on AVX512-VBMI + VNNI (csrc/palette/cpu.h: uses_int8_vq)."""
    feats = weightkit._C.build_info()["cpu_features"]
    if d != 2:
        return False
    if isa == "avx2":
        return c >= 5
    return c >= 6 and isa == "avx512" and feats["avx512_vbmi"] and feats["avx512_vnni"]


@pytest.mark.parametrize("c,d", [(2, 1), (3, 1), (4, 1), (5, 1), (8, 1), (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2)])
@pytest.mark.parametrize("tokens", [(1,), (3,), (2, 5), (16,)])
def test_matmul_gemv_every_isa(c, d, tokens, cpu_isa, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", "gemv")
    rows, in_f = 37, 2 * 300
    codebook, idx, scales = random_codes(rows, in_f, c, d, seed=c)
    packed = palette_pack(idx, c)
    x = torch.randn(*tokens, in_f)
    y = palette_matmul(x, packed, codebook, scales, in_f)
    exact = x.double() @ dequantize_ref(packed, codebook, scales, in_f).T
    assert y.shape == (*tokens, rows) and y.dtype == x.dtype
    if uses_int8_tables(c, d, cpu_isa):
        # Exact for the int8-rounded operands; within 2% of the exact product on Gaussian data.
        xr, cr = int8_vq_operands(x, codebook, c)
        assert rel_err(y, xr @ dequantize_ref(packed, cr, scales, in_f).T) < 2e-6
        assert rel_err(y, exact) < 2e-2
    else:
        assert rel_err(y, exact) < 2e-6


@pytest.mark.parametrize("c", [5, 8])
def test_int8_vq_can_be_turned_off(c, cpu_isa, monkeypatch):
    """WEIGHTKIT_PALETTE_VQ_INT8=0 keeps the 2-D VQ GEMV in fp32 on every ISA; other values are refused."""
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", "gemv")
    codebook, idx, scales = random_codes(13, 2 * 200, c, 2, seed=3)
    packed = palette_pack(idx, c)
    x = torch.randn(2, 2 * 200)
    monkeypatch.setenv("WEIGHTKIT_PALETTE_VQ_INT8", "0")
    y = palette_matmul(x, packed, codebook, scales, 2 * 200)
    assert rel_err(y, x.double() @ dequantize_ref(packed, codebook, scales, 2 * 200).T) < 2e-6
    monkeypatch.setenv("WEIGHTKIT_PALETTE_VQ_INT8", "yes")
    with pytest.raises(RuntimeError, match="palette_matmul.*WEIGHTKIT_PALETTE_VQ_INT8 must be 0 or 1"):
        palette_matmul(x, packed, codebook, scales, 2 * 200)


@pytest.mark.parametrize("c", [5, 6, 7, 8])
def test_int8_vq_gemv_edge_cases(c, cpu_isa, monkeypatch):
    """Zero blocks, one huge activation in a block, a partial last block, and non-finite inputs
    (which take the exact fp32 path, so NaN and infinity propagate)."""
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", "gemv")
    rows, in_f = 9, 2 * 200  # 200 pairs: full blocks (64 or 80 pairs) and a partial one
    codebook, idx, scales = random_codes(rows, in_f, c, 2, seed=11)
    packed = palette_pack(idx, c)
    x = torch.randn(3, in_f)
    x[0, :128] = 0.0
    x[1, 130] = 1e4
    x[2, -3:] = -50.0
    y = palette_matmul(x, packed, codebook, scales, in_f)
    W = dequantize_ref(packed, codebook, scales, in_f)
    if uses_int8_tables(c, 2, cpu_isa):
        xr, cr = int8_vq_operands(x, codebook, c)
        assert rel_err(y, xr @ dequantize_ref(packed, cr, scales, in_f).T) < 2e-6
    else:
        assert rel_err(y, x.double() @ W.T) < 2e-6
    for bad in (float("nan"), float("inf")):
        xb = x.clone()
        xb[1, 7] = bad
        yb = palette_matmul(xb, packed, codebook, scales, in_f)
        ref = xb.double() @ W.T
        assert torch.equal(yb[1].isnan(), ref[1].isnan()) and torch.equal(yb[1].isinf(), ref[1].isinf())
        assert rel_err(yb[[0, 2]], ref[[0, 2]]) < 2e-6


@pytest.mark.parametrize("path", ["gemv", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_paths_and_dtypes(path, dtype, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", path)
    codebook, idx, scales = random_codes(24, 256, 4, 2)
    packed = palette_pack(idx, 4)
    x = torch.randn(20, 256).to(dtype)
    y = palette_matmul(x, packed, codebook, scales, 256)
    assert y.dtype == dtype
    ref = x.double() @ dequantize_ref(packed, codebook, scales, 256).T
    assert rel_err(y, ref) < (2e-6 if dtype == torch.float32 else 1e-2)


def test_code_ops_opcheck():
    codebook, idx, scales = random_codes(5, 64, 3, 2)
    packed = palette_pack(idx, 3)
    torch.library.opcheck(torch.ops.weightkit.palette_pack.default, (idx, 3))
    torch.library.opcheck(torch.ops.weightkit.palette_encode.default, (torch.randn(5, 64), codebook))
    torch.library.opcheck(torch.ops.weightkit.palette_dequantize.default, (packed, codebook, scales, 64))
    torch.library.opcheck(torch.ops.weightkit.palette_matmul.default, (torch.randn(2, 64), packed, codebook, scales, 64))


def test_code_ops_reject_bad_input():
    codebook, idx, scales = random_codes(5, 64, 3, 2)
    packed = palette_pack(idx, 3)
    with pytest.raises(RuntimeError, match="weightkit.palette_matmul: codebook must hold 2\\^c codewords"):
        palette_matmul(torch.randn(2, 64), packed, codebook[:6], scales, 64)
    cb3, idx3, sc3 = random_codes(5, 600, 3, 2)
    with pytest.raises(RuntimeError, match="weightkit.palette_matmul: packed must have"):
        # 3-bit codes (2 blocks of 160 pairs) read with a 4-bit codebook (3 blocks of 128 pairs).
        palette_matmul(torch.randn(2, 600), palette_pack(idx3, 3), torch.randn(16, 2), sc3, 600)
    with pytest.raises(RuntimeError, match="weightkit.palette_matmul: x must have shape"):
        palette_matmul(torch.randn(2, 63), packed, codebook, scales, 64)
    with pytest.raises(RuntimeError, match="weightkit.palette_dequantize: scales must be float32"):
        palette_dequantize(packed, codebook, scales[:3], 64)
    with pytest.raises(RuntimeError, match="weightkit.palette_pack: idx values must be in"):
        palette_pack(idx + 8, 3)
    with pytest.raises(RuntimeError, match="weightkit.palette_pack: code_bits must be in"):
        palette_pack(idx, 9)
    with pytest.raises(RuntimeError, match="weightkit.palette_encode: W must be finite"):
        palette_encode(torch.full((2, 64), float("nan")), codebook)
    for bad in (float("nan"), float("inf")):
        for cb in (codebook, torch.randn(8, 1)):
            cb = cb.clone()
            cb[3, 0] = bad
            with pytest.raises(RuntimeError, match="weightkit.palette_encode: codebook must be finite"):
                palette_encode(torch.randn(2, 64), cb)
    with pytest.raises(RuntimeError, match="weightkit.palette_encode: codebook must have shape"):
        palette_encode(torch.randn(2, 64), torch.randn(8, 3))
