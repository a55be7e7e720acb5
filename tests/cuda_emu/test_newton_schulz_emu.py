"""csrc/newton_schulz/kernels.cu run in the CUDA emulator: per-matrix normalization, AuON's scale
and the upper-tile symmetric product X·Xᵀ (+ beta·D) on (emulated) tensor cores, against float64
torch math."""

import ctypes

import pytest
import torch

from tests.cuda_emu import harness
from tests.cuda_emu.harness import DTYPE_CODE, device_copy, device_empty, host, ptr

pytestmark = pytest.mark.skipif(not harness.available(), reason="the CUDA emulator needs g++ on x86-64")

i64 = ctypes.c_int64
TOL = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(scope="module")
def lib():
    lib = harness.load("newton_schulz")
    lib.emu_reset()
    return lib


@pytest.mark.parametrize("in_t", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("out_t", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch,per", [(1, 5), (3, 1000), (2, 9000)])
def test_normalize_batched(lib, in_t, out_t, batch, per):
    x = (torch.randn(batch, per, generator=torch.Generator().manual_seed(per)) * 1e3).to(in_t)
    out = device_empty((batch, per), out_t)
    ws = device_empty((batch,), torch.float64)
    lib.ns_normalize_batched(ptr(device_copy(x)), DTYPE_CODE[in_t], ptr(out), DTYPE_CODE[out_t], i64(batch), i64(per),
                             ctypes.c_double(1.01), ctypes.c_double(1e-7), ptr(ws))
    harness.check(lib)
    xd = x.double()
    ref = xd / (xd.norm(dim=1, keepdim=True) * 1.01 + 1e-7)
    torch.testing.assert_close(host(out, out_t).double(), ref, rtol=TOL[out_t] + 1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch,per", [(1, 7), (2, 5000)])
def test_auon_batched(lib, dtype, batch, per):
    # Few, large entries, where the cosh brake acts.
    x = torch.randn(batch, per, generator=torch.Generator().manual_seed(per)).to(dtype)
    x[:, 0] = 50.0
    out = device_empty((batch, per), dtype)
    ws = device_empty((2 * batch,), torch.float64)
    lib.ns_auon_batched(ptr(device_copy(x)), DTYPE_CODE[dtype], ptr(out), i64(batch), i64(per), ctypes.c_double(1e-7),
                        ptr(ws))
    harness.check(lib)
    xd = x.double()
    X = xd / (xd.norm(dim=1, keepdim=True) + 1e-7)
    r = torch.cosh(X).pow(2).mean(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(host(out, dtype).double(), X / (r + 1e-8), rtol=TOL[dtype] + 1e-6, atol=1e-9)


# m: one partial 64-row tile, exactly two tiles, three tiles with a ragged edge; k: a multiple of 8
# (16-byte loads) and not (element loads), shorter and longer than the 32-wide K chunk.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,k", [(10, 8), (64, 40), (150, 37), (70, 96)])
@pytest.mark.parametrize("with_d", [False, True])
def test_sym_product(lib, dtype, m, k, with_d):
    gen = torch.Generator().manual_seed(m * k)
    batch = 2
    X = torch.randn(batch, m, k, generator=gen).to(dtype)
    D = torch.randn(batch, m, m, generator=gen)
    D = (D + D.transpose(1, 2)).to(dtype)
    C = device_empty((batch, m, m), dtype)
    alpha, beta = -4.775, 2.0315
    lib.ns_sym_product(ptr(device_copy(X)), ptr(C), ptr(device_copy(D)) if with_d else None, DTYPE_CODE[dtype],
                       i64(batch), i64(m), i64(k), ctypes.c_float(alpha), ctypes.c_float(beta))
    harness.check(lib)
    got = host(C, dtype)
    Xd = X.double()
    ref = alpha * Xd @ Xd.transpose(1, 2) + (beta * D.double() if with_d else 0.0)
    scale = ref.abs().max().item()
    torch.testing.assert_close(got.double(), ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    assert torch.equal(got, got.transpose(1, 2))  # every pair computed once, mirrored


def test_sym_product_beta_zero_ignores_d(lib):
    X = torch.randn(1, 20, 16).to(torch.bfloat16)
    D = torch.full((1, 20, 20), float("nan")).to(torch.bfloat16)
    C = device_empty((1, 20, 20), torch.bfloat16)
    lib.ns_sym_product(ptr(device_copy(X)), ptr(C), ptr(device_copy(D)), DTYPE_CODE[torch.bfloat16], i64(1), i64(20),
                       i64(16), ctypes.c_float(1.0), ctypes.c_float(0.0))
    harness.check(lib)
    got = host(C, torch.bfloat16)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), X.double() @ X.double().transpose(1, 2), rtol=1e-2, atol=1e-2)
