"""csrc/trit_plane/kernels.cu run in the CUDA emulator, against the CPU ops and the float64
reference: the quantizer, the direct batch 1..16 GEMV/GEMM, activation rounding, dequantize."""

import ctypes

import pytest
import torch

import weightkit  # noqa: F401  (registers the ops)
from tests.cuda_emu import harness
from tests.cuda_emu.harness import device_copy, device_empty, host, ptr
from tests.reference.trit_plane import round_activations_ref

pytestmark = pytest.mark.skipif(not harness.available(), reason="the CUDA emulator needs g++ on x86-64")

i64 = ctypes.c_int64
# (out, in, group): ragged last groups, odd groups, out not a multiple of 8, several row blocks,
# a row longer than the GEMV block's 128 word slices (in 4200 -> 263 words).
SHAPES = [(20, 96, 32), (8, 576, 128), (13, 37, 15), (3, 5, 4), (17, 4200, 128), (9, 300, 7)]


@pytest.fixture(scope="module")
def lib():
    lib = harness.load("trit_plane")
    lib.emu_reset()
    return lib


def quantize(lib, W: torch.Tensor, group: int):
    out, inf = W.shape
    packed = device_empty(weightkit.ops.trit_plane.packed_shape(out, inf, group), torch.int32)
    scales = device_empty((out, -(-inf // group), 2), torch.float16)
    overflow = device_empty((1,), torch.int32)
    lib.tp_quantize(ptr(device_copy(W)), i64(out), i64(inf), i64(group), i64(50), ctypes.c_double(1e-4),
                    ptr(packed), ptr(scales), ptr(overflow))
    harness.check(lib)
    return host(packed, torch.int32), host(scales, torch.float16), int(overflow[0])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_matches_cpu(lib, shape):
    out, inf, group = shape
    W = torch.randn(out, inf, generator=torch.Generator().manual_seed(out * inf))
    packed, scales, overflow = quantize(lib, W, group)
    ref_packed, ref_scales = torch.ops.weightkit.ptqtp_quantize(W, group, 50, 1e-4)
    assert overflow == 0
    # Same algorithm and candidate order; Gaussian weights sit on no midpoint, so bit-identical.
    assert torch.equal(scales, ref_scales)
    assert torch.equal(packed, ref_packed)


def test_quantize_reports_scale_overflow(lib):
    # 1e5 splits into two scales of ~5e4 (fits float16); 3e5 cannot (the CPU op refuses it too).
    assert quantize(lib, torch.full((8, 16), 1e5), 16)[2] == 0
    assert quantize(lib, torch.full((8, 16), 3e5), 16)[2] == 1


def _matmul(lib, x: torch.Tensor, packed, scales, out: int, group: int) -> torch.Tensor:
    batch, inf = x.shape
    y = device_empty((batch, out), x.dtype)
    lib.tp_matmul_direct(ptr(device_copy(x)), harness.DTYPE_CODE[x.dtype], i64(batch), ptr(device_copy(packed)),
                         ptr(device_copy(scales)), i64(out), i64(inf), i64(group), ptr(y))
    harness.check(lib)
    return host(y, x.dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 9, 16])
def test_matmul_direct_matches_cpu(lib, shape, batch):
    out, inf, group = shape
    gen = torch.Generator().manual_seed(batch + out)
    packed, scales = torch.ops.weightkit.ptqtp_quantize(torch.randn(out, inf, generator=gen), group, 50, 1e-4)
    x = torch.randn(batch, inf, generator=gen)
    ref = torch.ops.weightkit.trit_plane_matmul(x, packed, scales, inf, group)
    y = _matmul(lib, x, packed, scales, out, group)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_matmul_direct_half_dtypes(lib, dtype):
    out, inf, group = 20, 96, 32
    gen = torch.Generator().manual_seed(3)
    packed, scales = torch.ops.weightkit.ptqtp_quantize(torch.randn(out, inf, generator=gen), group, 50, 1e-4)
    x = torch.randn(4, inf, generator=gen).to(dtype)
    ref = torch.ops.weightkit.trit_plane_matmul(x, packed, scales, inf, group)
    y = _matmul(lib, x, packed, scales, out, group)
    # Both accumulate in fp32 and round once; summation orders differ.
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-2, atol=1e-2 * ref.float().abs().max().item())


@pytest.mark.parametrize("shape", [(13, 37, 15), (17, 4200, 128)], ids=str)
def test_dequantize_matches_cpu(lib, shape):
    out, inf, group = shape
    packed, scales = torch.ops.weightkit.ptqtp_quantize(torch.randn(out, inf), group, 50, 1e-4)
    ref = torch.ops.weightkit.trit_plane_unpack(packed, scales, inf, group)
    for dtype in (torch.float32, torch.bfloat16):
        W = device_empty((out, inf), dtype)
        lib.tp_dequantize(ptr(device_copy(packed)), ptr(device_copy(scales)), i64(out), i64(inf), i64(group), ptr(W),
                          harness.DTYPE_CODE[dtype])
        harness.check(lib)
        assert torch.equal(host(W, dtype), ref.to(dtype))


def test_round_activations_matches_reference(lib):
    inf, group, batch = 300, 128, 5
    x = torch.randn(batch, inf) * torch.logspace(-3, 3, batch)[:, None]
    x[1, 130:256] = 0.0        # an all-zero group
    x[2, 5] = float("nan")     # NaN-sticky group
    x[3, 260:] = 1e-38         # flushed to zero (max|x| below the smallest normal scale)
    xq = device_empty((batch, inf), torch.float32)
    lib.tp_round_activations(ptr(device_copy(x)), i64(batch), i64(8), i64(inf), i64(group), ptr(xq))
    harness.check(lib)
    q, s = round_activations_ref(x, inf, group)
    ref = (q * s.repeat_interleave(group, dim=1)[:, :inf]).float()
    got = host(xq, torch.float32)
    assert torch.isnan(got[2, :128]).all()
    ok = ~torch.isnan(ref)
    torch.testing.assert_close(got[ok], ref[ok], rtol=1e-6, atol=0)
