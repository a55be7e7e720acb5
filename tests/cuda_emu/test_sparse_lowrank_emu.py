"""csrc/sparse_lowrank/kernels.cu run in the CUDA emulator, against plain dense float64 math
(tests/reference/sparse_lowrank.py) and the CPU ops: the support validator, spmm (YT = S XT),
spmm_t (ZT += S^T GT, fp32 atomics) and sddmm (out[k] = AT[row_k] . BT[col_k]).

Activations are feature-major as the CUDA glue passes them (XT is (in, T): ops_cuda.cpp transposes
with ATen); the support is row_ptr int32/int64 plus col_idx int16/int32 with the Csr width flags.
Every buffer is guarded (a read or write past its end crashes) and outputs start as NaN."""

import ctypes

import numpy as np
import pytest
import torch

import weightkit  # noqa: F401  (registers the ops)
from tests.cuda_emu import harness
from tests.cuda_emu.harness import device_copy, device_empty, guarded, host, ptr
from tests.reference.sparse_lowrank import dense_sparse, sddmm_ref, support_rows

pytestmark = pytest.mark.skipif(not harness.available(), reason="the CUDA emulator needs g++ on x86-64")

i64 = ctypes.c_int64
INT64_MAX = np.iinfo(np.int64).max
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOKENS = [1, 5, 33, 100]
# (row_ptr dtype, col_idx dtype): every combination the Csr flags select.
WIDTHS = [(torch.int32, torch.int16), (torch.int32, torch.int32), (torch.int64, torch.int16),
          (torch.int64, torch.int32)]
# (rows, cols): rows not a multiple of the 4 warps per block, cols not a multiple of 8, a single
# row, a single column, more rows than one block's warps several times over.
SHAPES = [(13, 11), (1, 3), (37, 13), (6, 1), (10, 45)]


@pytest.fixture(scope="module")
def lib():
    lib = harness.load("sparse_lowrank")
    lib.emu_reset()
    return lib


def wid(w):
    return f"rp{torch.iinfo(w[0]).bits}-ci{torch.iinfo(w[1]).bits}"


def make_support(rows: int, cols: int, seed: int):
    """A random CSR support (int64) with the edge rows every kernel must handle: row 0 empty, row 1
    a single nonzero, row 2 full, the last row empty, the rest random (empty ones included)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, cols + 1, (rows,), generator=g)
    if rows > 3:
        counts[0], counts[1], counts[2], counts[-1] = 0, 1, cols, 0
        counts[3 + int(torch.randint(0, rows - 3, (1,), generator=g))] = 0
    elif rows == 1:
        counts[0] = max(1, cols // 2)
    cols_per_row = [torch.randperm(cols, generator=g)[: int(n)].sort().values for n in counts]
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    col_idx = torch.cat(cols_per_row) if cols_per_row else torch.zeros(0, dtype=torch.int64)
    return row_ptr, col_idx.long()


def csr_args(row_ptr, col_idx, widths):
    """The device buffers and flags of the Csr (keeps the buffers alive with the returned list)."""
    rp_t, ci_t = widths
    rp, ci = device_copy(row_ptr.to(rp_t)), device_copy(col_idx.to(ci_t))
    return [ptr(rp), int(rp_t == torch.int64), ptr(ci), int(ci_t == torch.int32)], (rp, ci)


def run_spmm(lib, row_ptr, col_idx, widths, values, cols, XT):
    rows, T = row_ptr.numel() - 1, XT.shape[1]
    args, keep = csr_args(row_ptr, col_idx, widths)
    v, xt = device_copy(values.float()), device_copy(XT)
    YT = device_empty((rows, T), torch.float32)
    lib.sl_spmm(*args, ptr(v), i64(rows), i64(cols), ptr(xt), harness.DTYPE_CODE[XT.dtype], i64(T), ptr(YT))
    harness.check(lib)
    return host(YT, torch.float32)


def run_spmm_t(lib, row_ptr, col_idx, widths, values, cols, GT, ZT0=None):
    rows, T = GT.shape
    args, keep = csr_args(row_ptr, col_idx, widths)
    v, gt = device_copy(values.float()), device_copy(GT)
    ZT = device_copy(torch.zeros(cols, T) if ZT0 is None else ZT0)  # the caller zeroes ZT
    lib.sl_spmm_t(*args, ptr(v), i64(rows), i64(cols), ptr(gt), harness.DTYPE_CODE[GT.dtype], i64(T), ptr(ZT))
    harness.check(lib)
    return host(ZT, torch.float32)


def run_sddmm(lib, row_ptr, col_idx, widths, AT, BT):
    rows, T = AT.shape
    cols, nnz = BT.shape[0], col_idx.numel()
    args, keep = csr_args(row_ptr, col_idx, widths)
    at, bt = device_copy(AT), device_copy(BT)
    out = device_empty((nnz,), torch.float32)
    lib.sl_sddmm(*args, i64(rows), i64(cols), ptr(at), ptr(bt), harness.DTYPE_CODE[AT.dtype], i64(T), i64(nnz),
                 ptr(out))
    harness.check(lib)
    return host(out, torch.float32)


def run_validate(lib, row_ptr, col_idx, widths, rows, cols, nnz):
    args, keep = csr_args(torch.as_tensor(row_ptr, dtype=torch.int64), torch.as_tensor(col_idx, dtype=torch.int64),
                          widths)
    problem = guarded((1,), np.int64, INT64_MAX)  # set to INT64_MAX by the caller
    lib.sl_validate_support(*args, i64(rows), i64(cols), i64(nnz), ptr(problem))
    harness.check(lib)
    return int(problem[0])


def assert_close_fp32(got, ref, dtype, scale):
    """Sums of fp32 products (exact fp32 / 16-bit inputs) against float64: fp32 accumulation error,
    relative to `scale` = the same sums of absolute values."""
    tol = 2e-6 if dtype == torch.float32 else 1e-5
    assert not torch.isnan(got).any(), "unwritten (NaN) outputs"
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * max(float(scale.max()), 1e-30))


# ------------------------------------------------------------------ spmm


@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("widths", WIDTHS, ids=wid)
def test_spmm_matches_dense(lib, widths, dtype, T):
    for n, (rows, cols) in enumerate(SHAPES):
        row_ptr, col_idx = make_support(rows, cols, seed=n + 10 * T)
        g = torch.Generator().manual_seed(n + T)
        values = torch.randn(col_idx.numel(), generator=g)
        XT = torch.randn(cols, T, generator=g).to(dtype)
        S = dense_sparse(values, row_ptr, col_idx, (rows, cols))
        YT = run_spmm(lib, row_ptr, col_idx, widths, values, cols, XT)
        assert_close_fp32(YT, S @ XT.double(), dtype, S.abs() @ XT.double().abs())
        assert (YT[row_ptr.diff() == 0] == 0).all()  # empty rows are written, with zeros


def cpu_op_case(rows: int, cols: int, T: int, seed: int, widths, dtype):
    """(row_ptr, col_idx, values, x (T, cols), A, B) for the CPU ops with a zero low-rank part (A = B
    = 0), which leaves only the sparse product; indices in ``widths``, tensors in ``dtype``."""
    row_ptr, col_idx = make_support(rows, cols, seed=seed)
    values = torch.randn(col_idx.numel()).to(dtype)
    x = torch.randn(T, cols).to(dtype)
    A, B = torch.zeros(1, cols, dtype=dtype), torch.zeros(rows, 1, dtype=dtype)
    return row_ptr.to(widths[0]), col_idx.to(widths[1]), values, x, A, B


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spmm_matches_cpu_sl_linear(lib, dtype):
    # sl_linear with a zero low-rank part (A = B = 0) is x S^T: the CPU sparse kernel on the same
    # support, token-major; the CUDA glue feeds spmm with x^T.
    rows, cols, T = 37, 29, 33
    rp, ci, values, x, A, B = cpu_op_case(rows, cols, T, 5, (torch.int32, torch.int16), dtype)
    ref = torch.ops.weightkit.sl_linear(x, A, B, values, rp, ci, None, 0.0)
    YT = run_spmm(lib, rp, ci, (torch.int32, torch.int16), values.float(), cols, x.t().contiguous())
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # the CPU op rounds y to x's dtype
    torch.testing.assert_close(YT.t(), ref.float(), rtol=tol, atol=tol * ref.float().abs().max().item())


def test_spmm_sl_support_and_wide_columns(lib):
    # Supports as sl_support makes them ("uniform" leaves rows empty), and columns at the top of the
    # int16 range and beyond it (int32).
    cases = [(13, 11, 0.2, "uniform"), (9, 32767, 0.0005, "row_balanced"), (6, 40000, 0.0002, "row_balanced"),
             (21, 50, 0.05, "uniform")]
    for n, (rows, cols, density, kind) in enumerate(cases):
        rp, ci = torch.ops.weightkit.sl_support(rows, cols, density, n, kind)
        if cols == 32767:
            ci[-1] = 32766  # the largest column of int16 indices (still sorted: row_balanced rows are short)
            assert ci[-1] > ci[-2]
        widths = (rp.dtype, ci.dtype)
        values = torch.randn(ci.numel())
        XT = torch.randn(cols, 3)
        S = dense_sparse(values, rp, ci, (rows, cols))
        YT = run_spmm(lib, rp, ci, widths, values, cols, XT)
        assert_close_fp32(YT, S @ XT.double(), torch.float32, S.abs() @ XT.double().abs())


def test_spmm_empty_support_writes_zeros(lib):
    rows, cols, T = 7, 5, 4
    row_ptr, col_idx = torch.zeros(rows + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    YT = run_spmm(lib, row_ptr, col_idx, WIDTHS[0], torch.zeros(0), cols, torch.randn(cols, T))
    assert (YT == 0).all()


# ------------------------------------------------------------------ spmm_t


@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("widths", WIDTHS, ids=wid)
def test_spmm_t_matches_dense(lib, widths, dtype, T):
    for n, (rows, cols) in enumerate(SHAPES):
        row_ptr, col_idx = make_support(rows, cols, seed=100 + n + 10 * T)
        g = torch.Generator().manual_seed(n + T)
        values = torch.randn(col_idx.numel(), generator=g)
        GT = torch.randn(rows, T, generator=g).to(dtype)
        S = dense_sparse(values, row_ptr, col_idx, (rows, cols))
        ZT = run_spmm_t(lib, row_ptr, col_idx, widths, values, cols, GT)
        assert_close_fp32(ZT, S.T @ GT.double(), dtype, S.abs().T @ GT.double().abs())
        untouched = torch.ones(cols, dtype=torch.bool)
        untouched[col_idx] = False
        assert (ZT[untouched] == 0).all()  # columns no nonzero names stay as the caller left them


def test_spmm_t_accumulates_and_any_schedule(lib):
    # ZT += S^T GT on top of what ZT holds, the same (to fp32 rounding) whatever order the emulated
    # threads add in: a dense support makes every column shared by all rows.
    rows, cols, T = 23, 9, 37
    row_ptr = torch.arange(rows + 1) * cols
    col_idx = torch.arange(cols).repeat(rows)
    values, GT, ZT0 = torch.randn(rows * cols), torch.randn(rows, T), torch.randn(cols, T)
    ref = ZT0.double() + dense_sparse(values, row_ptr, col_idx, (rows, cols)).T @ GT.double()
    try:
        for seed in (1, 2, 3):
            lib.emu_set_seed(ctypes.c_ulonglong(seed))
            ZT = run_spmm_t(lib, row_ptr, col_idx, WIDTHS[3], values, cols, GT, ZT0)
            torch.testing.assert_close(ZT.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    finally:
        lib.emu_set_seed(ctypes.c_ulonglong(0x9E3779B97F4A7C15))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spmm_t_matches_cpu_backward(lib, dtype):
    # grad_x of sl_linear with A = B = 0 is g S: the CPU sparse backward on the same support.
    rows, cols, T = 13, 70, 33
    rp, ci, values, x, A, B = cpu_op_case(rows, cols, T, 7, (torch.int64, torch.int32), dtype)
    g = torch.randn(T, rows).to(dtype)
    gx = torch.ops.weightkit.sl_linear_backward(g, x, A, B, values, rp, ci, 0.0, [True, False, False, False])[0]
    ZT = run_spmm_t(lib, rp, ci, (torch.int64, torch.int32), values.float(), cols, g.t().contiguous())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ZT.t(), gx.float(), rtol=tol, atol=tol * gx.float().abs().max().item())


def test_spmm_t_wide_int16_columns(lib):
    rows, cols, T = 5, 32767, 2
    rp, ci = torch.ops.weightkit.sl_support(rows, cols, 0.0003, 3, "row_balanced")
    ci[-1] = 32766
    values, GT = torch.randn(ci.numel()), torch.randn(rows, T)
    S = dense_sparse(values, rp, ci, (rows, cols))
    ZT = run_spmm_t(lib, rp, ci, (rp.dtype, ci.dtype), values, cols, GT)
    assert_close_fp32(ZT, S.T @ GT.double(), torch.float32, S.abs().T @ GT.double().abs())


# ------------------------------------------------------------------ sddmm


@pytest.mark.parametrize("T", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("widths", WIDTHS, ids=wid)
def test_sddmm_matches_dense(lib, widths, dtype, T):
    for n, (rows, cols) in enumerate(SHAPES):
        row_ptr, col_idx = make_support(rows, cols, seed=200 + n + 10 * T)
        g = torch.Generator().manual_seed(n + T)
        AT = torch.randn(rows, T, generator=g).to(dtype)
        BT = torch.randn(cols, T, generator=g).to(dtype)
        out = run_sddmm(lib, row_ptr, col_idx, widths, AT, BT)
        ref = sddmm_ref(AT.t(), BT.t(), row_ptr, col_idx)
        scale = sddmm_ref(AT.t().abs(), BT.t().abs(), row_ptr, col_idx)
        assert_close_fp32(out, ref, dtype, scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sddmm_matches_cpu_op(lib, dtype):
    rows, cols, T = 37, 29, 100
    row_ptr, col_idx = make_support(rows, cols, seed=9)
    rp, ci = row_ptr.int(), col_idx.int()
    a, b = torch.randn(T, rows).to(dtype), torch.randn(T, cols).to(dtype)
    ref = torch.ops.weightkit.sddmm(a, b, rp, ci)
    out = run_sddmm(lib, rp, ci, (torch.int32, torch.int32), a.t().contiguous(), b.t().contiguous())
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # the CPU op rounds to a's dtype
    torch.testing.assert_close(out, ref.float(), rtol=tol, atol=tol * ref.float().abs().max().item())


def test_sddmm_row_search_over_empty_rows(lib):
    # Runs of empty rows at the start, in the middle and at the end, and single-nonzero rows: the
    # binary search must land on the row that holds each nonzero. AT's rows are their row index,
    # BT is all ones, so out[k] is T * row_k exactly.
    counts = torch.tensor([0, 0, 0, 1, 0, 0, 2, 1, 0, 0, 0, 0, 0, 3, 1, 0, 0])
    rows, cols, T = counts.numel(), 4, 3
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    col_idx = torch.cat([torch.arange(int(c)) for c in counts])
    AT = torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, T).contiguous()
    for widths in WIDTHS:
        out = run_sddmm(lib, row_ptr, col_idx, widths, AT, torch.ones(cols, T))
        assert torch.equal(out, T * support_rows(row_ptr).float())


def test_sddmm_without_nonzeros_launches_nothing(lib):
    rows, cols = 4, 3
    out = run_sddmm(lib, torch.zeros(rows + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), WIDTHS[0],
                    torch.randn(rows, 5), torch.randn(cols, 5))
    assert out.numel() == 0


def test_sddmm_wide_columns(lib):
    for n, cols in enumerate((32767, 40000)):
        rows, T = 6, 33
        rp, ci = torch.ops.weightkit.sl_support(rows, cols, 0.0003, n, "row_balanced")
        if cols == 32767:
            ci[-1] = 32766
        AT, BT = torch.randn(rows, T), torch.randn(cols, T)
        out = run_sddmm(lib, rp, ci, (rp.dtype, ci.dtype), AT, BT)
        ref = sddmm_ref(AT.t(), BT.t(), rp, ci)
        assert_close_fp32(out, ref, torch.float32, sddmm_ref(AT.t().abs(), BT.t().abs(), rp, ci))


# ------------------------------------------------------------------ long and empty token runs


def test_tokens_over_several_grid_rows(lib):
    # T > 1024: spmm / spmm_t split the tokens over blockIdx.y chunks of 1024 (the last one ragged);
    # sddmm's lanes stride over all of them.
    rows, cols, T = 6, 5, 2100
    row_ptr, col_idx = make_support(rows, cols, seed=17)
    g = torch.Generator().manual_seed(17)
    values = torch.randn(col_idx.numel(), generator=g)
    XT, GT = torch.randn(cols, T, generator=g).to(torch.bfloat16), torch.randn(rows, T, generator=g)
    S = dense_sparse(values, row_ptr, col_idx, (rows, cols))
    for widths in (WIDTHS[0], WIDTHS[3]):
        YT = run_spmm(lib, row_ptr, col_idx, widths, values, cols, XT)
        assert_close_fp32(YT, S @ XT.double(), torch.bfloat16, S.abs() @ XT.double().abs())
        ZT = run_spmm_t(lib, row_ptr, col_idx, widths, values, cols, GT)
        assert_close_fp32(ZT, S.T @ GT.double(), torch.float32, S.abs().T @ GT.double().abs())
        AT, BT = GT, XT.float()
        out = run_sddmm(lib, row_ptr, col_idx, widths, AT, BT)
        scale = sddmm_ref(AT.t().abs(), BT.t().abs(), row_ptr, col_idx)
        assert_close_fp32(out, sddmm_ref(AT.t(), BT.t(), row_ptr, col_idx), torch.float32, scale)


def test_zero_tokens(lib):
    # T = 0: spmm and spmm_t launch nothing; sddmm's dots over no tokens are 0.
    rows, cols = 5, 4
    row_ptr, col_idx = make_support(rows, cols, seed=3)
    values = torch.randn(col_idx.numel())
    assert run_spmm(lib, row_ptr, col_idx, WIDTHS[0], values, cols, torch.zeros(cols, 0)).numel() == 0
    assert run_spmm_t(lib, row_ptr, col_idx, WIDTHS[0], values, cols, torch.zeros(rows, 0)).numel() == 0
    out = run_sddmm(lib, row_ptr, col_idx, WIDTHS[0], torch.zeros(rows, 0), torch.zeros(cols, 0))
    assert out.numel() == col_idx.numel() and (out == 0).all()


# ------------------------------------------------------------------ validate_support


def code(c, row=0):
    return (c << 40) + row


# (name, rows, cols, row_ptr, col_idx, nnz, expected *problem)
VALIDATE_CASES = [
    ("valid", 5, 7, [0, 0, 2, 3, 3, 5], [1, 4, 6, 0, 2], 5, INT64_MAX),
    ("valid-single-col", 3, 1, [0, 1, 1, 2], [0, 0], 2, INT64_MAX),
    ("valid-no-rows", 0, 4, [0], [], 0, INT64_MAX),
    ("valid-no-nonzeros", 4, 4, [0, 0, 0, 0, 0], [], 0, INT64_MAX),
    ("1-rp0-positive", 2, 4, [1, 2, 3], [0, 1, 2], 3, code(1)),
    ("1-rp0-negative", 1, 2, [-1, 1], [0], 1, code(1)),
    ("1-no-rows", 0, 4, [2], [0, 1], 2, code(1)),
    ("2-end-past-nnz", 2, 4, [0, 1, 3], [0, 1], 2, code(2)),
    ("2-end-short", 2, 4, [0, 1, 1], [0, 1], 2, code(2)),
    ("2-no-rows", 0, 4, [0], [3], 1, code(2)),
    ("3-decreasing", 3, 4, [0, 2, 1, 3], [0, 1, 2], 3, code(3, 1)),
    ("3-last-row", 4, 4, [0, 1, 2, 3, 2], [0, 1, 2], 2, code(3, 3)),
    ("4-col-eq-cols", 3, 5, [0, 1, 3, 4], [0, 2, 5, 4], 4, code(4, 1)),
    ("4-negative", 3, 5, [0, 1, 2, 4], [0, 2, -3, 1], 4, code(4, 2)),
    ("4-single-col-matrix", 2, 1, [0, 1, 2], [0, 1], 2, code(4, 1)),
    ("5-duplicate", 2, 5, [0, 2, 4], [1, 3, 2, 2], 4, code(5, 1)),
    ("5-decreasing", 2, 5, [0, 2, 3], [3, 1, 0], 3, code(5, 0)),
    # the smallest code wins over rows, then the smallest row
    ("min-code-over-rows", 4, 5, [0, 2, 3, 4, 5], [3, 1, 0, 2, 9], 5, code(4, 3)),
    ("min-row", 4, 5, [0, 1, 2, 3, 4], [0, 7, 1, 8], 4, code(4, 1)),
    ("3-beats-4", 3, 5, [0, 1, 3, 2], [9, 0, 1], 2, code(3, 2)),
    ("1-beats-all", 3, 5, [1, 0, 3, 2], [9, 9, 1], 2, code(1)),
    # Within one row the kernel stops at the first violation in column order (as the CPU validator
    # does): a non-increasing pair before an out-of-range column reports code 5 for that row.
    ("first-in-row", 1, 10, [0, 3], [5, 3, 99], 3, code(5, 0)),
    ("first-in-row-4", 1, 10, [0, 3], [5, 99, 3], 3, code(4, 0)),
]


@pytest.mark.parametrize("widths", WIDTHS, ids=wid)
@pytest.mark.parametrize("case", VALIDATE_CASES, ids=lambda c: c[0])
def test_validate_support(lib, case, widths):
    name, rows, cols, row_ptr, col_idx, nnz, expected = case
    col_buf = col_idx[:nnz] if len(col_idx) >= nnz else col_idx + [0] * (nnz - len(col_idx))
    got = run_validate(lib, row_ptr, col_buf, widths, rows, cols, nnz)
    assert got == expected, f"{name}: got code {got >> 40} row {got & ((1 << 40) - 1)}"


def validate_model(row_ptr, col_idx, rows, cols, nnz):
    """The kernel's contract in Python: min over code * 2^40 + row, the first violation of each row."""
    best = INT64_MAX
    if row_ptr[0] != 0:
        best = min(best, code(1))
    if row_ptr[rows] != nnz:
        best = min(best, code(2))
    for i in range(rows):
        k0, k1 = row_ptr[i], row_ptr[i + 1]
        if k1 < k0:
            best = min(best, code(3, i))
            continue
        if k0 < 0 or k1 > nnz:
            continue
        for k in range(k0, k1):
            c = col_idx[k]
            if c < 0 or c >= cols:
                best = min(best, code(4, i))
                break
            if k > k0 and c <= col_idx[k - 1]:
                best = min(best, code(5, i))
                break
    return best


def test_validate_support_many_blocks(lib):
    # 600 rows: three blocks of 256 threads; violations only in the later blocks.
    rows, cols = 600, 40
    row_ptr, col_idx = make_support(rows, cols, seed=11)
    nnz = col_idx.numel()
    for widths in WIDTHS:
        assert run_validate(lib, row_ptr, col_idx, widths, rows, cols, nnz) == INT64_MAX
    ci = col_idx.clone()
    long_rows = (row_ptr.diff() >= 2).nonzero().flatten()
    r_dup, r_oob = int(long_rows[long_rows > 256][-1]), int(long_rows[long_rows > 512][0])
    ci[int(row_ptr[r_dup]) + 1] = ci[int(row_ptr[r_dup])]  # a duplicate column in a late row
    ci[int(row_ptr[r_oob + 1]) - 1] = cols  # an out-of-range column in a row of the third block
    rp = row_ptr.clone()
    expect = validate_model(rp.tolist(), ci.tolist(), rows, cols, nnz)
    assert expect != INT64_MAX
    for widths in WIDTHS:
        assert run_validate(lib, rp, ci, widths, rows, cols, nnz) == expect
    assert expect == code(4, r_oob)
    rp[400] = rp[399] - 1  # row_ptr decreasing at row 399 and increasing again after
    expect = validate_model(rp.tolist(), ci.tolist(), rows, cols, nnz)
    assert expect == code(3, 399)
    assert run_validate(lib, rp, ci, WIDTHS[3], rows, cols, nnz) == expect


def test_validate_support_random_corruptions(lib):
    # Small random supports with one random corruption each, against the model of the kernel.
    g = np.random.default_rng(0)
    seen = set()
    for trial in range(60):
        rows, cols = int(g.integers(1, 9)), int(g.integers(1, 9))
        row_ptr, col_idx = make_support(rows, cols, seed=1000 + trial)
        rp, ci, nnz = row_ptr.tolist(), col_idx.tolist(), col_idx.numel()
        what = trial % 6
        if what == 1:
            rp[0] += int(g.choice([-2, -1, 1]))
        elif what == 2:
            rp[rows] += int(g.choice([-1, 1]))
        elif what == 3:
            i = int(g.integers(1, rows + 1))
            rp[i] = rp[i - 1] - int(g.integers(1, 3))
        elif what == 4 and nnz:
            ci[int(g.integers(0, nnz))] = int(g.choice([-1, cols, cols + 5]))
        elif what == 5 and nnz:
            k = int(g.integers(0, nnz))
            ci[k] = ci[k - 1] if k else ci[k]
        expect = validate_model(rp, ci, rows, cols, nnz)
        seen.add(expect >> 40 if expect != INT64_MAX else 0)
        widths = WIDTHS[trial % 4]
        got = run_validate(lib, rp, ci, widths, rows, cols, nnz)
        assert got == expect, f"trial {trial}: row_ptr {rp} col_idx {ci} cols {cols}"
    assert seen >= {0, 1, 2, 3, 4, 5}
