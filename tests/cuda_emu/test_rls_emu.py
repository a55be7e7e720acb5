"""csrc/rls/kernels.cu run in the CUDA emulator: the symmetric downdate of C and the in-place
symmetrization, against float64 torch math (bit for bit: both kernels round every operation
explicitly)."""

import ctypes

import pytest
import torch

from tests.cuda_emu import harness
from tests.cuda_emu.harness import device_copy, host, ptr

pytestmark = pytest.mark.skipif(not harness.available(), reason="the CUDA emulator needs g++ on x86-64")

i64 = ctypes.c_int64


@pytest.fixture(scope="module")
def lib():
    lib = harness.load("rls")
    lib.emu_reset()
    return lib


def _symmetric(n: int, gen) -> torch.Tensor:
    A = torch.randn(n, n, dtype=torch.float64, generator=gen)
    C = A @ A.T + n * torch.eye(n, dtype=torch.float64)
    return (C + C.T) * 0.5  # bitwise symmetric (a BLAS product need not be)


# n: below, at and above one 256-thread column tile and the 32-wide symmetrize tiles.
@pytest.mark.parametrize("n,u", [(1, 1), (7, 3), (32, 1), (45, 4), (257, 2)])
def test_downdate_sym(lib, n, u):
    gen = torch.Generator().manual_seed(n * 10 + u)
    C = _symmetric(n, gen)
    G = torch.randn(n, u, dtype=torch.float64, generator=gen)
    F = torch.randn(n, u, dtype=torch.float64, generator=gen)
    c = device_copy(C)
    lib.rls_downdate_sym(ptr(c), ptr(device_copy(G.T)), ptr(device_copy(F.T)), i64(n), i64(u))
    harness.check(lib)
    got = host(c, torch.float64)
    torch.testing.assert_close(got, C - (G @ F.T + F @ G.T) / 2, rtol=1e-13, atol=1e-12)
    assert torch.equal(got, got.T)  # the mirrored products are summed in the same order


@pytest.mark.parametrize("n", [1, 5, 32, 33, 70])
def test_symmetrize(lib, n):
    C = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    c = device_copy(C)
    lib.rls_symmetrize(ptr(c), i64(n))
    harness.check(lib)
    assert torch.equal(host(c, torch.float64), (C + C.T) * 0.5)


def test_empty_launches_nothing(lib):
    lib.rls_downdate_sym(None, None, None, i64(0), i64(3))
    lib.rls_symmetrize(None, i64(0))
    harness.check(lib)
