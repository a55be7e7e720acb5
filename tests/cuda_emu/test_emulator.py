"""The CUDA emulator itself: it runs correct kernels correctly and reports the defects it is
meant to catch (a missing barrier or atomic, a shuffle with an exited lane, a deadlock, a bad launch,
shared memory carried over from another block, a shared-array overrun, a misaligned vector load, an access past the end of a buffer)."""

import ctypes

import numpy as np
import pytest

from tests.cuda_emu import harness
from tests.cuda_emu.harness import guarded, ptr

pytestmark = pytest.mark.skipif(not harness.available(), reason="the CUDA emulator needs g++ on x86-64")


@pytest.fixture(scope="module")
def lib():
    lib = harness.load("selftest", harness.HERE / "selftest.cu")
    lib.emu_reset()
    return lib


def test_barrier_orders_shared_memory(lib):
    x = guarded((3, 64), np.float32)
    x[...] = np.arange(192, dtype=np.float32).reshape(3, 64)
    for seed in range(4):
        lib.emu_set_seed(ctypes.c_ulonglong(seed))
        y = guarded((3, 64), np.float32, np.nan)
        lib.st_reverse(ptr(x), ptr(y), 3, 1)
        harness.check(lib)
        np.testing.assert_array_equal(y, x[:, ::-1])


def test_missing_barrier_is_reported_as_a_race(lib):
    # Each thread writes its slot and reads its mirror's: without the barrier the race detector
    # sees a read and a write of one shared word by two threads with no barrier between.
    x = guarded((1, 64), np.float32)
    y = guarded((1, 64), np.float32, np.nan)
    lib.st_reverse(ptr(x), ptr(y), 1, 0)
    with pytest.raises(AssertionError, match=r"data race at address .* block 0 thread \d+ (reads|writes) at pc "
                                             r"0x[0-9a-f]+ \(.*selftest.cu:1[45]\) after block 0 thread \d+"):
        harness.check(lib)


def test_missing_atomic_is_reported_as_a_race(lib):
    # Every thread of two blocks adds into out[0]: fine with atomicAdd, a race with a plain +=.
    y = guarded((1,), np.float32, 0.0)
    lib.st_sum_all(ptr(y), 1)
    harness.check(lib)
    assert y[0] == 64.0
    lib.st_sum_all(ptr(y), 0)
    with pytest.raises(AssertionError, match=r"data race .*selftest.cu"):
        harness.check(lib)


def test_warp_shuffle_sums(lib):
    x = guarded((32,), np.float32)
    x[...] = np.arange(32, dtype=np.float32)
    y = guarded((1,), np.float32, np.nan)
    lib.st_warp_sum(ptr(x), ptr(y), 32)
    harness.check(lib)
    assert y[0] == 496.0


def test_shuffle_with_exited_lanes_is_reported(lib):
    x = guarded((32,), np.float32)
    y = guarded((1,), np.float32, np.nan)
    lib.st_warp_sum(ptr(x), ptr(y), 20)
    with pytest.raises(AssertionError, match=r"__shfl_xor_sync: mask 0xffffffff names lane (2\d|3[01]), which has exited"):
        harness.check(lib)


def test_deadlock_is_reported(lib):
    y = guarded((32,), np.float32, np.nan)
    lib.st_deadlock(ptr(y))
    with pytest.raises(AssertionError, match="deadlock: every live thread waits"):
        harness.check(lib)


def test_invalid_launch_is_reported(lib):
    y = guarded((32,), np.float32, np.nan)
    lib.st_too_many_threads(ptr(y))
    assert lib.st_last_error() == 9  # cudaErrorInvalidConfiguration
    with pytest.raises(AssertionError, match="invalid launch configuration: block of 2048 threads"):
        harness.check(lib)
    assert np.isnan(y).all()


def test_static_shared_memory_starts_undefined_in_every_block(lib):
    # A GPU block never sees another block's shared memory: here the later blocks read 0xff (NaN).
    y = guarded((3, 32), np.float32, 0.0)
    lib.st_first_block_fills(ptr(y), 3)
    harness.check(lib)
    assert (y[0] == 2).all()
    assert np.isnan(y[1:]).all()


def test_shared_array_overrun_is_reported(lib):
    y = guarded((32,), np.float32, np.nan)
    lib.st_shared_overrun(ptr(y), 0)
    harness.check(lib)
    assert (y == 1).all()
    lib.st_shared_overrun(ptr(y), 1)
    with pytest.raises(AssertionError, match=r"array index out of bounds .* at .*selftest.cu:\d+"):
        harness.check(lib)


def test_misaligned_vector_load_is_reported(lib):
    x = guarded((8,), np.float32)
    x[...] = 1.0
    y = guarded((32,), np.float32, np.nan)
    lib.st_vector_load(ptr(x), ptr(y), 4)
    harness.check(lib)
    assert (y == 4).all()
    lib.st_vector_load(ptr(x), ptr(y), 1)
    with pytest.raises(AssertionError, match=r"misaligned or null memory access .* at .*selftest.cu:\d+"):
        harness.check(lib)


def test_write_past_the_end_crashes():
    # guarded() puts an inaccessible page right after the array: checked here in a child process.
    import subprocess
    import sys

    code = ("import ctypes; from tests.cuda_emu.harness import guarded; a = guarded((5,), 'float32'); "
            "ctypes.memset(a.ctypes.data + a.nbytes, 0, 16)")
    res = subprocess.run([sys.executable, "-c", code], cwd=harness.ROOT, capture_output=True)
    assert res.returncode < 0  # killed by SIGSEGV
