"""csrc/palette/kernels.cu run in the CUDA emulator, against the CPU ops and the float64
references: the Hadamard transform (fp32/bf16/fp16, n = 2^k·m for every small order m, up to
kHadamardMaxN), the palette-code GEMV (c = 1..8 bits, d = 1 and 2, 1..35 tokens), the trellis
decoder and GEMV, and the Viterbi encoder (whole rows and windows after a given state)."""

import ctypes
import math

import numpy as np
import pytest
import torch

import weightkit  # noqa: F401  (registers the ops)
from tests.cuda_emu import harness
from tests.cuda_emu.harness import device_copy, device_empty, guarded, host, ptr
from tests.reference.palette import (
    dequantize_ref,
    hadamard_transform_ref,
    small_hadamard,
    tcq_best_error_bruteforce,
    tcq_decode_ref,
)
from weightkit.ops.palette import HADAMARD_ORDERS, hadamard_order, hadamard_signs, packed_words, tcq_words

pytestmark = pytest.mark.skipif(not harness.available(), reason="the CUDA emulator needs g++ on x86-64")

i32, i64, f32, vp = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
ops = torch.ops.weightkit
DEFAULT_SEED = 0x9E3779B97F4A7C15  # emu::State's schedule seed


@pytest.fixture(scope="module")
def lib():
    lib = harness.load("palette")
    lib.pal_hadamard_rows.argtypes = [vp, vp, i32, i64, i64, i32, vp, vp, f32]
    lib.pal_hadamard_rows.restype = i32
    lib.pal_palette_gemv.argtypes = [vp, i64, vp, i64, i64, i32, i32, vp, vp, vp]
    lib.pal_tcq_decode.argtypes = [vp, i64, i64, i32, i32, i32, vp, vp]
    lib.pal_tcq_gemv.argtypes = [vp, i64, vp, i64, i64, i32, i32, i32, vp, vp]
    lib.pal_tcq_viterbi.argtypes = [vp, i64, i64, i32, i32, i32, vp, vp, vp]
    lib.pal_tcq_viterbi_window.argtypes = [vp, vp, i64, i64, i32, i32, i32, i64, vp, vp, vp]
    lib.pal_hadamard_max_n.restype = i64
    lib.emu_reset()
    return lib


# ------------------------------------------------------------------------------- Hadamard

def small_hadamard_int8(m: int) -> torch.Tensor:
    """H_m exactly as the glue uploads it (small_hadamard_tensor): read back from the CPU op,
    whose transform of the identity with scale 1 is H_m^T."""
    return ops.hadamard_transform(torch.eye(m), None, 1.0).T.round().to(torch.int8).contiguous()


def hadamard64(x: torch.Tensor, signs, scale: float, m: int) -> torch.Tensor:
    """scale·(x ⊙ signs)·H_nᵀ in float64 without the dense n x n matrix of hadamard_transform_ref
    (4.8 GB at n = 24576): Sylvester butterflies over each length-P segment, then H_m across them."""
    rows, n = x.shape
    P = n // m
    v = x.double() * (signs.double() if signs is not None else 1.0)
    h = 1
    while h < P:
        v = v.reshape(rows, m, P // (2 * h), 2, h)
        v = torch.stack((v[..., 0, :] + v[..., 1, :], v[..., 0, :] - v[..., 1, :]), dim=-2)
        h *= 2
    return torch.einsum("ab,rbp->rap", small_hadamard(m), v.reshape(rows, m, P)).reshape(rows, n) * scale


def test_hadamard64_is_the_reference_transform():
    for n in (1, 12, 80, 112, 576, 1376):
        x, signs = torch.randn(2, n), hadamard_signs(n, seed=1)
        torch.testing.assert_close(hadamard64(x, signs, 0.5, hadamard_order(n)),
                                   hadamard_transform_ref(x, signs, 0.5, hadamard_order(n)), rtol=1e-12, atol=1e-12)


def hadamard(lib, x: torch.Tensor, signs, scale: float, m: int | None = None):
    """The emulated hadamard_rows on x (rows, n); returns (launched, y)."""
    rows, n = x.shape
    m = m or hadamard_order(n)
    y = device_empty((rows, n), x.dtype)
    Hm = device_copy(small_hadamard_int8(m))
    s = device_copy(signs.float()) if signs is not None else None
    launched = lib.pal_hadamard_rows(ptr(device_copy(x)), ptr(y), harness.DTYPE_CODE[x.dtype], rows, n, m, ptr(Hm),
                                     ptr(s) if s is not None else None, scale)
    harness.check(lib)
    return bool(launched), host(y, x.dtype)


# n = 2^k·m: every small order m (each alone and with a power of two), powers of two from 1, a row
# longer than the 1024 threads of a block (several elements per thread, P > blockDim), rows whose
# shared-memory buffer needs the 96 KiB opt-in (n > 12288) and kHadamardMaxN itself.
HADAMARD_N = [1, 2, 32, 1024, 12, 24, 20, 80, 28, 112, 576, 104, 60, 108, 280, 156, 1376, 4096, 12288, 20480, 24576]


def test_hadamard_orders_cover_every_small_order():
    assert {hadamard_order(n) for n in HADAMARD_N} == set(HADAMARD_ORDERS)
    assert hadamard_order(576) == 36 and hadamard_order(80) == 40 and hadamard_order(20) == 20


@pytest.mark.parametrize("n", HADAMARD_N)
def test_hadamard_fp32_matches_cpu(lib, n):
    rows = 3 if n <= 4096 else 1
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(rows, n, generator=gen)
    signs = hadamard_signs(n, seed=n)
    m = hadamard_order(n)
    for sg, scale in ((signs, 1.0 / math.sqrt(n)), (None, 0.75)):
        launched, y = hadamard(lib, x, sg, scale)
        assert launched
        ref_cpu = ops.hadamard_transform(x, sg, scale)
        ref64 = hadamard64(x, sg, scale, m)
        # Both sum in fp32 in different orders (the CPU applies the scale per term of the small
        # factor): errors of a few ulps of max|y| (observed <= 4e-7 relative; ~10x margin).
        tol = 2e-7 * (math.log2(n) + m / 4 + 4) * ref64.abs().max().item()
        torch.testing.assert_close(y.double(), ref64, rtol=0, atol=tol)
        torch.testing.assert_close(y, ref_cpu, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n", [12, 64, 576, 1376, 20480])
def test_hadamard_half_dtypes(lib, dtype, n):
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(n + 1)).to(dtype)
    signs = hadamard_signs(n, seed=3)
    launched, y = hadamard(lib, x, signs, 1.0 / math.sqrt(n))
    assert launched and y.dtype == dtype
    ref = ops.hadamard_transform(x, signs, 1.0 / math.sqrt(n))
    # Both widen to fp32, transform, and round once: at most one ulp of the 16-bit type apart
    # (the fp32 sums differ in the last bits and may straddle a rounding boundary). Small outputs
    # (cancellation) can be a few 16-bit ulps apart: their fp32 error is relative to the row.
    m = hadamard_order(n)
    ref64 = hadamard64(x, signs, 1.0 / math.sqrt(n), m)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    fp32_tol = 2e-7 * (math.log2(n) + m / 4 + 4) * ref64.abs().max().item()
    diff = (y.double() - ref.double()).abs()
    assert (diff <= ulp * ref.double().abs() + fp32_tol).all(), diff.max()
    assert (diff > 0).float().mean() < 0.05  # almost all bit-identical
    torch.testing.assert_close(y.double(), ref64, rtol=2 * ulp, atol=2 * ulp * ref64.abs().max().item())


def test_hadamard_many_rows_and_schedules(lib):
    # More rows than anything else here, under several thread schedules (a missing barrier between
    # the butterfly stages or before the small factor would show under some order).
    n, rows = 40, 37
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(9))
    ref = hadamard64(x, None, 1.0, 40)
    try:
        for seed in (1, 2, 12345):
            lib.emu_set_seed(ctypes.c_ulonglong(seed))
            _, y = hadamard(lib, x, None, 1.0)
            torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    finally:
        lib.emu_set_seed(ctypes.c_ulonglong(DEFAULT_SEED))


def test_hadamard_too_long_and_empty(lib):
    nmax = lib.pal_hadamard_max_n()
    assert nmax == 24576
    # n > kHadamardMaxN: false, nothing launched (the output stays NaN).
    launched, y = hadamard(lib, torch.ones(1, 2 * nmax), None, 1.0, m=12)
    assert not launched and torch.isnan(y).all()
    # rows = 0: true, nothing launched.
    Hm = device_copy(small_hadamard_int8(12))
    x = guarded((1,), np.float32)
    assert lib.pal_hadamard_rows(ptr(x), ptr(x), 0, 0, 12, 12, ptr(Hm), None, 1.0) == 1
    harness.check(lib)


# ------------------------------------------------------------------------------ palette GEMV

def random_codes(rows: int, units: int, c: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(1 << c, d, generator=g)
    idx = torch.randint(0, 1 << c, (rows, units), generator=g, dtype=torch.int32)
    scales = torch.rand(rows, generator=g) + 0.5
    return codebook, ops.palette_pack(idx, c), scales


def palette_gemv(lib, x: torch.Tensor, packed, codebook, scales) -> torch.Tensor:
    T = x.shape[0]
    rows, d, c = packed.shape[0], codebook.shape[1], (codebook.shape[0] - 1).bit_length()
    units = x.shape[1] // d
    y = device_empty((T, rows), torch.float32)
    lib.pal_palette_gemv(ptr(device_copy(x)), T, ptr(device_copy(packed)), rows, units, c, d,
                         ptr(device_copy(codebook)), ptr(device_copy(scales)), ptr(y))
    harness.check(lib)
    return host(y, torch.float32)


def assert_gemv_close(y: torch.Tensor, x: torch.Tensor, W64: torch.Tensor):
    """y against the float64 product x W^T, within fp32 summation error of |x| |W|^T (each lane
    adds ~in/32 products, then 5 shuffle steps: ~(in/32 + 5) roundings of 2^-24 at worst)."""
    ref = x.double() @ W64.T
    bound = 2e-7 * (x.shape[1] / 32 + 8) * (x.double().abs() @ W64.abs().T) + 1e-30
    err = (y.double() - ref).abs()
    assert not torch.isnan(y).any()
    assert (err <= bound).all(), f"max err {err.max().item():.3g}, at {torch.nonzero(err > bound)[:4].tolist()}"


def palette_weights(packed, codebook, scales, in_f):
    """W as the CPU op dequantizes it (fp32, exact products), checked against the float64 unpacker."""
    W = ops.palette_dequantize(packed, codebook, scales, in_f)
    torch.testing.assert_close(W.double(), dequantize_ref(packed, codebook, scales, in_f), rtol=1e-6, atol=0)
    return W.double()


# units per c: a ragged last block, and rows spanning more than 32 words (lanes loop).
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 6, 7, 8])
def test_palette_gemv_code_widths(lib, c, d, monkeypatch):
    P = 32 // c
    units = 2 * 16 * P + 16 * (P // 2) + 5  # 3 blocks (48 words), the last one partly used
    rows, T = 11, 3  # rows not a multiple of the 8 warps of a block
    codebook, packed, scales = random_codes(rows, units, c, d, seed=10 * c + d)
    assert packed.shape[1] == packed_words(units, c)
    x = torch.randn(T, units * d, generator=torch.Generator().manual_seed(c))
    W = palette_weights(packed, codebook, scales, units * d)
    y = palette_gemv(lib, x, packed, codebook, scales)
    assert_gemv_close(y, x, W)
    # The CPU op on the same codes, on its scalar path: the SIMD paths round 2-D VQ operands to
    # int8 for c >= 5 (csrc/palette/cpu.h: uses_int8_vq), the scalar one is fp32 like the kernel.
    monkeypatch.setenv("WEIGHTKIT_CPU_ISA", "scalar")
    torch.testing.assert_close(y, ops.palette_matmul(x, packed, codebook, scales, units * d), rtol=1e-4,
                               atol=1e-4 * y.abs().max().item())


@pytest.mark.parametrize("T", [1, 3, 16, 17, 35])
@pytest.mark.parametrize("cd", [(2, 1), (4, 2), (8, 2)], ids=str)
def test_palette_gemv_token_counts(lib, T, cd):
    # T > 16: one launch per 16 tokens, each offset into x and y.
    c, d = cd
    rows, units = 17, 16 * (32 // c) + 3
    codebook, packed, scales = random_codes(rows, units, c, d, seed=T)
    x = torch.randn(T, units * d, generator=torch.Generator().manual_seed(100 + T))
    y = palette_gemv(lib, x, packed, codebook, scales)
    assert_gemv_close(y, x, palette_weights(packed, codebook, scales, units * d))


@pytest.mark.parametrize("shape", [(1, 1), (8, 16), (9, 7), (1, 700)], ids=str)
def test_palette_gemv_small_shapes(lib, shape):
    # A single unit, exactly one 16-unit slot, a partial first slot, one row of many blocks.
    rows, units = shape
    codebook, packed, scales = random_codes(rows, units, 3, 2, seed=rows * units)
    x = torch.randn(2, units * 2, generator=torch.Generator().manual_seed(units))
    y = palette_gemv(lib, x, packed, codebook, scales)
    assert_gemv_close(y, x, palette_weights(packed, codebook, scales, units * 2))


def test_palette_gemv_nothing_to_do(lib):
    y = device_empty((1, 1), torch.float32)
    dummy = guarded((16,), np.int32)
    lib.pal_palette_gemv(ptr(guarded((4,), np.float32)), 0, ptr(dummy), 1, 4, 2, 1, ptr(guarded((4,), np.float32)),
                         ptr(guarded((1,), np.float32)), ptr(y))
    lib.pal_palette_gemv(ptr(guarded((4,), np.float32)), 1, ptr(dummy), 0, 4, 2, 1, ptr(guarded((4,), np.float32)),
                         ptr(guarded((1,), np.float32)), ptr(y))
    harness.check(lib)
    assert np.isnan(y).all()


# ------------------------------------------------------------------------------- trellis

# (L, bits_per_step, values_per_step) as tcq_params gives them (rates 2, 1.5, 4, 3.5, 2.5) at the
# library's L = 16 and the tests' L = 12, plus L = 20 (the maximum: windows spanning three words'
# worth of shifts) and kb = 8 (the largest the op accepts).
TCQ_PARAMS = [(16, 2, 1), (12, 3, 2), (12, 4, 1), (16, 7, 2), (20, 5, 2), (10, 8, 1)]


def random_streams(rows: int, steps: int, L: int, kb: int, seed: int) -> torch.Tensor:
    """Random bits for every word of every row (the spare word too): any stream decodes."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(-(2**31), 2**31, (rows, tcq_words(steps, L, kb)), generator=g, dtype=torch.int64)
    return words.to(torch.int32)


def tcq_decode(lib, packed, scales, steps, L, kb, V) -> torch.Tensor:
    rows = packed.shape[0]
    W = device_empty((rows, steps * V), torch.float32)
    lib.pal_tcq_decode(ptr(device_copy(packed)), rows, steps, L, kb, V, ptr(device_copy(scales)), ptr(W))
    harness.check(lib)
    return host(W, torch.float32)


@pytest.mark.parametrize("params", TCQ_PARAMS, ids=str)
@pytest.mark.parametrize("shape", [(3, 1), (5, 53), (2, 300)], ids=str)
def test_tcq_decode_matches_cpu(lib, params, shape):
    (L, kb, V), (rows, steps) = params, shape
    packed = random_streams(rows, steps, L, kb, seed=L * kb + steps)
    scales = torch.rand(rows, generator=torch.Generator().manual_seed(1)) + 0.5
    W = tcq_decode(lib, packed, scales, steps, L, kb, V)
    # The same float operations (one product per value): bit-identical to the CPU decoder.
    assert torch.equal(W, ops.tcq_decode(packed, scales, steps * V, L, kb, V))
    torch.testing.assert_close(W.double(), tcq_decode_ref(packed, scales, steps * V, L, kb, V), rtol=1e-6, atol=1e-6)


def tcq_gemv(lib, x, packed, scales, L, kb, V) -> torch.Tensor:
    T, rows, steps = x.shape[0], packed.shape[0], x.shape[1] // V
    y = device_empty((T, rows), torch.float32)
    lib.pal_tcq_gemv(ptr(device_copy(x)), T, ptr(device_copy(packed)), rows, steps, L, kb, V,
                     ptr(device_copy(scales)), ptr(y))
    harness.check(lib)
    return host(y, torch.float32)


@pytest.mark.parametrize("params", TCQ_PARAMS, ids=str)
def test_tcq_gemv_matches_cpu(lib, params):
    L, kb, V = params
    rows, steps, T = 13, 70, 3  # 70 steps: lanes loop 2-3 times; 13 rows: a partial second block
    packed = random_streams(rows, steps, L, kb, seed=kb)
    scales = torch.rand(rows, generator=torch.Generator().manual_seed(2)) + 0.5
    x = torch.randn(T, steps * V, generator=torch.Generator().manual_seed(L))
    y = tcq_gemv(lib, x, packed, scales, L, kb, V)
    W = ops.tcq_decode(packed, scales, steps * V, L, kb, V).double()
    assert_gemv_close(y, x, W)
    torch.testing.assert_close(y, ops.tcq_matmul(x, packed, scales, steps * V, L, kb, V), rtol=1e-4,
                               atol=1e-4 * y.abs().max().item())


@pytest.mark.parametrize("T", [1, 3, 16, 17, 33])
def test_tcq_gemv_token_counts(lib, T):
    L, kb, V = 12, 3, 2
    rows, steps = 9, 40
    packed = random_streams(rows, steps, L, kb, seed=T)
    scales = torch.rand(rows, generator=torch.Generator().manual_seed(T)) + 0.5
    x = torch.randn(T, steps * V, generator=torch.Generator().manual_seed(200 + T))
    y = tcq_gemv(lib, x, packed, scales, L, kb, V)
    assert_gemv_close(y, x, tcq_decode_ref(packed, scales, steps * V, L, kb, V))


# ------------------------------------------------------------------------------- Viterbi

def viterbi(lib, W: torch.Tensor, L: int, kb: int, V: int) -> torch.Tensor:
    rows, steps = W.shape[0], W.shape[1] // V
    S = 1 << L
    cost = device_empty((rows, 2, S), torch.float32)  # scratch: NaN, so reads before writes show
    bp = guarded((rows, steps, S >> kb), np.uint8, 0xFF)
    packed = guarded((rows, tcq_words(steps, L, kb)), np.int32)  # zeroed, as the glue's at::zeros
    lib.pal_tcq_viterbi(ptr(device_copy(W)), rows, steps, L, kb, V, ptr(cost), ptr(bp), ptr(packed))
    harness.check(lib)
    return host(packed, torch.int32)


def sq_error(packed, W, L, kb, V) -> torch.Tensor:
    rows, in_f = W.shape
    return (tcq_decode_ref(packed, torch.ones(rows), in_f, L, kb, V) - W.double()).pow(2).sum(1)


@pytest.mark.parametrize("params", [(12, 2, 1), (12, 3, 2), (10, 4, 1), (12, 7, 2), (16, 2, 1), (9, 8, 1)],
                         ids=str)
def test_viterbi_matches_cpu(lib, params):
    L, kb, V = params
    rows, steps = 3, (24 if L >= 16 else 40)
    W = torch.randn(rows, steps * V, generator=torch.Generator().manual_seed(L + kb))
    got = viterbi(lib, W, L, kb, V)
    ref = ops.tcq_encode(W, L, kb, V)
    # Both are exact Viterbi searches with the same tie-breaking (lowest predecessor, lowest final
    # state), but they add the step distances in different orders (and the CPU's AVX-512 path with
    # FMA), so two paths whose costs differ by an ulp may swap. Where a stream differs, its error
    # must equal the CPU's to float rounding; on this data every row has been identical.
    err_got, err_ref = sq_error(got, W, L, kb, V), sq_error(ref, W, L, kb, V)
    same = (got == ref).all(1)
    torch.testing.assert_close(err_got, err_ref, rtol=1e-5, atol=0)
    assert same.float().mean() >= 0.5, f"streams differ on rows {torch.nonzero(~same).flatten().tolist()}"


@pytest.mark.parametrize("params", [(4, 1, 1), (3, 2, 2), (5, 3, 1)], ids=str)
def test_viterbi_is_optimal(lib, params):
    # Small enough to try every stream: the emulated encoder reaches the minimum squared error.
    L, kb, V = params
    steps = {1: 6, 2: 4, 3: 3}[kb]
    W = torch.randn(2, steps * V, generator=torch.Generator().manual_seed(L))
    got = viterbi(lib, W, L, kb, V)
    err = sq_error(got, W, L, kb, V)
    for r in range(2):
        best = tcq_best_error_bruteforce(W[r], L, kb, V)
        assert err[r].item() == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert torch.equal(got, ops.tcq_encode(W, L, kb, V))


@pytest.mark.parametrize("steps", [1, 2, 30])
@pytest.mark.parametrize("params", [(12, 2, 1), (10, 3, 2)], ids=str)
def test_viterbi_exact_ties_break_like_cpu(lib, params, steps):
    # W decoded from a random stream: that stream has error 0, and every other zero-error stream
    # (1MAD values repeat across states) is an exact tie, so the streams must match bit for bit.
    # With one or two steps the tied final states sit in different threads (s mod 1024), which
    # tests the block-wide argmin's tie-break (lowest state, as std::min_element).
    L, kb, V = params
    rows = 3
    src = random_streams(rows, steps, L, kb, seed=7)
    W = ops.tcq_decode(src, torch.ones(rows), steps * V, L, kb, V)
    ref = ops.tcq_encode(W, L, kb, V)
    try:
        for seed in (5, 99):  # two thread schedules
            lib.emu_set_seed(ctypes.c_ulonglong(seed))
            assert torch.equal(viterbi(lib, W, L, kb, V), ref)
    finally:
        lib.emu_set_seed(ctypes.c_ulonglong(DEFAULT_SEED))
    assert torch.equal(ops.tcq_decode(ref, torch.ones(rows), steps * V, L, kb, V), W)  # error 0 (fp32 codes)


def test_viterbi_single_step(lib):
    # steps = 1: no recursion, the best single state in the first L bits.
    L, kb, V = 10, 2, 2
    W = torch.randn(4, V, generator=torch.Generator().manual_seed(4))
    got = viterbi(lib, W, L, kb, V)
    assert torch.equal(got, ops.tcq_encode(W, L, kb, V))


def viterbi_window(lib, W: torch.Tensor, prev: torch.Tensor, L: int, kb: int, V: int, commit: int) -> torch.Tensor:
    rows, steps = W.shape[0], W.shape[1] // V
    S = 1 << L
    cost = device_empty((rows, 2, S), torch.float32)
    bp = guarded((rows, steps, S >> kb), np.uint8, 0xFF)
    states = device_empty((rows, commit), torch.int32)  # -1: no state, so an unwritten entry shows
    lib.pal_tcq_viterbi_window(ptr(device_copy(W)), ptr(device_copy(prev)), rows, steps, L, kb, V, commit,
                               ptr(cost), ptr(bp), ptr(states))
    harness.check(lib)
    return host(states, torch.int32)


@pytest.mark.parametrize("params", [(12, 2, 1), (10, 5, 2), (9, 3, 1)], ids=str)
@pytest.mark.parametrize("commit", [1, 7, 20])
def test_viterbi_window_matches_cpu(lib, params, commit):
    # Free and chained starts (including states 0 and 2^L - 1), a committed prefix of the path: the
    # CPU op's states (both exact searches, same tie-breaking; see test_viterbi_matches_cpu).
    L, kb, V = params
    rows, steps = 5, 20
    W = torch.randn(rows, steps * V, generator=torch.Generator().manual_seed(L * commit))
    prev = torch.tensor([-1, 0, (1 << L) - 1, 37, -1], dtype=torch.int32)
    got = viterbi_window(lib, W, prev, L, kb, V, commit)
    assert torch.equal(got, ops.tcq_encode_window(W, prev, L, kb, V, commit))
