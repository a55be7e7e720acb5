"""weightkit.sl_linear / sl_linear_backward / sddmm / sl_support against the float64 reference."""

from __future__ import annotations

import pytest
import torch

import weightkit  # noqa: F401  (loads the ops)
from tests.reference.sparse_lowrank import dense_sparse, sddmm_ref, sl_linear_grads_ref, sl_linear_ref
from weightkit.ops.sparse_lowrank import sddmm, sl_linear, sl_support

PATHS = ["factored", "dense"]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return ((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_layer(out_f=29, in_f=37, rank=5, density=0.1, support="row_balanced", dtype=torch.float32, device="cpu",
               bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    row_ptr, col_idx = sl_support(out_f, in_f, density, seed, support)
    A = torch.randn(rank, in_f, generator=g)
    B = torch.randn(out_f, rank, generator=g)
    values = torch.randn(col_idx.numel(), generator=g)
    b = torch.randn(out_f, generator=g) if bias else None
    to = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return to(A), to(B), to(values), row_ptr.to(device), col_idx.to(device), to(b)


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Forces the factored or the dense execution path through WEIGHTKIT_SL_PATH."""
    monkeypatch.setenv("WEIGHTKIT_SL_PATH", request.param)
    return request.param


# Tokens: one, fewer than a SIMD block, exactly one block, blocks plus a tail; and a 3-D batch.
TOKEN_SHAPES = [(1,), (7,), (64,), (2, 65)]


@pytest.mark.parametrize("support", ["row_balanced", "uniform"])
@pytest.mark.parametrize("tokens", TOKEN_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_fp32(device, path, support, tokens, bias):
    A, B, v, rp, ci, b = make_layer(support=support, device=device, bias=bias)
    x = torch.randn(*tokens, A.shape[1], device=device)
    y = sl_linear(x, A, B, v, rp, ci, b, 0.7)
    assert y.shape == (*tokens, B.shape[0]) and y.dtype == x.dtype
    assert rel_err(y, sl_linear_ref(x, A, B, v, rp, ci, b, 0.7)) < 2e-6
    g = torch.randn_like(y)
    grads = torch.ops.weightkit.sl_linear_backward(g, x, A, B, v, rp, ci, 0.7, [True] * 4)
    for got, ref in zip(grads, sl_linear_grads_ref(g, x, A, B, v, rp, ci, 0.7)):
        assert got.shape == ref.shape
        assert rel_err(got, ref) < 2e-6


def test_every_cpu_isa_matches(cpu_isa, path):
    """Each SIMD path (token blocks of 64 plus a tail) against the reference."""
    A, B, v, rp, ci, b = make_layer(out_f=70, in_f=90, rank=8, density=0.2)
    x = torch.randn(150, 90)
    assert rel_err(sl_linear(x, A, B, v, rp, ci, b, 0.5), sl_linear_ref(x, A, B, v, rp, ci, b, 0.5)) < 2e-6
    g = torch.randn(150, 70)
    grads = torch.ops.weightkit.sl_linear_backward(g, x, A, B, v, rp, ci, 0.5, [True] * 4)
    for got, ref in zip(grads, sl_linear_grads_ref(g, x, A, B, v, rp, ci, 0.5)):
        assert rel_err(got, ref) < 2e-6
    a2, b2 = torch.randn(150, 70), torch.randn(150, 90)
    assert rel_err(sddmm(a2, b2, rp, ci), sddmm_ref(a2, b2, rp, ci)) < 2e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_twice_plain_torch(device, path, dtype):
    """Error against float64 at most 2x that of plain PyTorch in the same dtype (+ a floor)."""
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("float16 matrix products are not a CPU use case")
    A, B, v, rp, ci, b = make_layer(out_f=96, in_f=80, rank=16, dtype=torch.float32, device=device)
    x = torch.randn(100, 80, device=device)
    ref = sl_linear_ref(x, A, B, v, rp, ci, b, 0.3)
    lo = [t.to(dtype) for t in (x, A, B, v, b)]
    S = dense_sparse(lo[3], rp, ci, (96, 80)).to(dtype)
    plain = torch.nn.functional.linear(lo[0], lo[2] @ lo[1] * 0.3 + S, lo[4])
    ours = sl_linear(lo[0], lo[1], lo[2], lo[3], rp, ci, lo[4], 0.3)
    assert ours.dtype == dtype
    assert rel_err(ours, ref) <= 2 * rel_err(plain, ref) + 1e-3
    g = torch.randn(100, 96, device=device)
    grads = torch.ops.weightkit.sl_linear_backward(g.to(dtype), lo[0], lo[1], lo[2], lo[3], rp, ci, 0.3, [True] * 4)
    for got, want in zip(grads, sl_linear_grads_ref(g, x, A, B, v, rp, ci, 0.3)):
        assert got.dtype == dtype and rel_err(got, want) < 3e-2


@pytest.mark.parametrize("rank,density", [(1, 0.1), (5, 1e-6), (29, 1.0)])
def test_edge_shapes(path, rank, density):
    """Rank 1, one nonzero per row (tiny density), and a full support with full rank."""
    A, B, v, rp, ci, b = make_layer(rank=rank, density=density)
    if density == 1e-6:
        assert torch.equal(rp.long().diff(), torch.ones(29, dtype=torch.long))
    x = torch.randn(9, 37)
    assert rel_err(sl_linear(x, A, B, v, rp, ci, b, 1.0), sl_linear_ref(x, A, B, v, rp, ci, b, 1.0)) < 2e-6


def test_output_mask_skips_gradients(path):
    A, B, v, rp, ci, _ = make_layer()
    x, g = torch.randn(5, 37), torch.randn(5, 29)
    gx, gA, gB, gv = torch.ops.weightkit.sl_linear_backward(g, x, A, B, v, rp, ci, 1.0, [False, True, False, True])
    assert gx.numel() == 0 and gB.numel() == 0 and gA.shape == A.shape and gv.shape == v.shape


def test_autograd_and_gradcheck_fp64(path):
    A, B, v, rp, ci, b = make_layer(out_f=6, in_f=7, rank=2, density=0.3, dtype=torch.float64)
    x = torch.randn(3, 7, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, A, B, v, b)]
    fn = lambda x_, A_, B_, v_, b_: sl_linear(x_, A_, B_, v_, rp, ci, b_, 0.9)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_autograd_matches_reference(path):
    A, B, v, rp, ci, b = make_layer()
    leaves = [t.clone().requires_grad_() for t in (A, B, v, b)]
    x = torch.randn(4, 37, requires_grad=True)
    sl_linear(x, *leaves[:3], rp, ci, leaves[3], 0.5).square().sum().backward()
    ref_leaves = [t.double().clone().requires_grad_() for t in (A, B, v, b)]
    xr = x.detach().double().requires_grad_()
    sl_linear_ref(xr, *ref_leaves[:3], rp, ci, ref_leaves[3], 0.5).square().sum().backward()
    for got, ref in zip([x, *leaves], [xr, *ref_leaves]):
        assert rel_err(got.grad, ref.grad) < 1e-5


def test_opcheck(path):
    A, B, v, rp, ci, b = make_layer(out_f=9, in_f=11, rank=3, density=0.3)
    x = torch.randn(2, 3, 11, requires_grad=True)
    A, B, v, b = (t.requires_grad_() for t in (A, B, v, b))
    torch.library.opcheck(torch.ops.weightkit.sl_linear.default, (x, A, B, v, rp, ci, b, 0.5))
    torch.library.opcheck(torch.ops.weightkit.sl_linear.default, (x.detach(), A.detach(), B.detach(), v.detach(), rp, ci, None, 0.5))
    g = torch.randn(2, 3, 9)
    args = (g, x.detach(), A.detach(), B.detach(), v.detach(), rp, ci, 0.5, [True, False, True, True])
    torch.library.opcheck(torch.ops.weightkit.sl_linear_backward.default, args)
    torch.library.opcheck(torch.ops.weightkit.sddmm.default, (torch.randn(5, 9), torch.randn(5, 11), rp, ci))


def test_sddmm_matches_reference(device):
    _, _, _, rp, ci, _ = make_layer(device=device, support="uniform")
    a, b = torch.randn(33, 29, device=device), torch.randn(33, 37, device=device)
    assert rel_err(sddmm(a, b, rp, ci), sddmm_ref(a, b, rp, ci)) < 2e-6


# ----------------------------------------------------------------------------- support generator


def test_support_is_seeded_and_compact():
    rp, ci = sl_support(64, 300, 0.05, 7, "row_balanced")
    assert rp.dtype == torch.int32 and ci.dtype == torch.int16
    assert torch.equal(rp.long().diff(), torch.full((64,), 15))
    rows = ci.long().view(64, 15)
    assert bool((rows.diff(dim=1) > 0).all()) and int(rows.min()) >= 0 and int(rows.max()) < 300
    again = sl_support(64, 300, 0.05, 7, "row_balanced")
    assert torch.equal(again[0], rp) and torch.equal(again[1], ci)
    assert not torch.equal(sl_support(64, 300, 0.05, 8, "row_balanced")[1], ci)
    _, wide = sl_support(2, 40000, 0.001, 0, "row_balanced")
    assert wide.dtype == torch.int32


def test_support_is_identical_across_machines():
    """Golden values: the generator is our own SplitMix64 + Floyd, not torch's RNG, so these
    indices must never change between builds, torch versions or devices."""
    _, ci = sl_support(4, 1000, 0.004, 1234, "row_balanced")
    rp_u, ci_u = sl_support(8, 8, 0.25, 1234, "uniform")
    assert ci.tolist() == GOLDEN_ROW_BALANCED
    assert rp_u.tolist() == GOLDEN_UNIFORM_ROW_PTR and ci_u.tolist() == GOLDEN_UNIFORM_COLS


def test_uniform_support_counts():
    rp, ci = sl_support(200, 100, 0.03, 3, "uniform")
    counts = rp.long().diff()
    assert int(counts.sum()) == ci.numel() == 600
    assert int(counts.max()) > int(counts.min())  # rows differ, as in the paper's sampling


# ----------------------------------------------------------------------------- bad input


def test_bad_support_is_rejected(device):
    """The same messages on every device (a GPU check that finds a problem asks the CPU to name it)."""
    A, B, v, rp, ci, b = make_layer(out_f=4, in_f=10, rank=2, density=0.3, device=device)
    x = torch.randn(3, 10, device=device)
    bad_col = ci.clone()
    bad_col[2] = 10
    with pytest.raises(RuntimeError, match=r"weightkit.sl_linear: invalid sparse support: col_idx\[2\] = 10 is out of range"):
        sl_linear(x, A, B, v, rp, bad_col, b, 1.0)
    unsorted = ci.clone()
    unsorted[0], unsorted[1] = ci[1], ci[0]
    with pytest.raises(RuntimeError, match="sorted and unique within each row"):
        sl_linear(x, A, B, v, rp, unsorted, b, 1.0)
    dup = ci.clone()
    dup[1] = ci[0]
    with pytest.raises(RuntimeError, match="sorted and unique within each row"):
        sl_linear(x, A, B, v, rp, dup, b, 1.0)
    bad_rp = rp.clone()
    bad_rp[2] = bad_rp[3] + 1
    with pytest.raises(RuntimeError, match="row_ptr must be non-decreasing"):
        sl_linear(x, A, B, v, bad_rp, ci, b, 1.0)
    with pytest.raises(RuntimeError, match="weightkit.sddmm: invalid sparse support"):
        sddmm(torch.randn(3, 4, device=device), torch.randn(3, 10, device=device), rp, bad_col)


def test_sddmm_of_a_support_without_rows(device):
    a, b = torch.randn(3, 0, device=device), torch.randn(3, 10, device=device)
    rp, ci = torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(0, dtype=torch.int32, device=device)
    assert sddmm(a, b, rp, ci).shape == (0,)
    with pytest.raises(RuntimeError, match=r"weightkit.sddmm: invalid sparse support: row_ptr\[0\] must be 0"):
        sddmm(a, b, torch.ones_like(rp), ci)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(v=a["v"][:-1]), "values and col_idx must have one entry per nonzero"),
        (lambda a: a.update(A=a["A"].double()), "A must have x's dtype"),
        (lambda a: a.update(x=a["x"].int()), "x must be float32, bfloat16, float16 or float64"),
        (lambda a: a.update(A=torch.randn(2, 9)), r"A must have shape \(rank, in_features\)"),
        (lambda a: a.update(B=torch.randn(4, 3)), r"B must have shape \(out_features, rank\)"),
        (lambda a: a.update(A=torch.randn(5, 10), B=torch.randn(4, 5)), r"rank must be in \[1, min"),
        (lambda a: a.update(rp=a["rp"][:-1]), "row_ptr must have out_features \\+ 1"),
        (lambda a: a.update(ci=a["ci"].long()), "col_idx must be int16 or int32"),
        (lambda a: a.update(rp=a["rp"].float()), "row_ptr must be int32 or int64"),
        (lambda a: a.update(b=torch.randn(5)), "bias must have out_features = 4 entries"),
    ],
)
def test_bad_arguments_name_the_problem(mutate, message):
    A, B, v, rp, ci, b = make_layer(out_f=4, in_f=10, rank=2, density=0.3)
    args = {"x": torch.randn(3, 10), "A": A, "B": B, "v": v, "rp": rp, "ci": ci, "b": b}
    mutate(args)
    with pytest.raises(RuntimeError, match="weightkit.sl_linear: " + message):
        sl_linear(args["x"], args["A"], args["B"], args["v"], args["rp"], args["ci"], args["b"], 1.0)


def test_bad_backward_and_support_arguments():
    A, B, v, rp, ci, _ = make_layer(out_f=4, in_f=10, rank=2, density=0.3)
    x = torch.randn(3, 10)
    with pytest.raises(RuntimeError, match=r"weightkit.sl_linear_backward: grad_out must have shape \[3, 4\]"):
        torch.ops.weightkit.sl_linear_backward(torch.randn(3, 5), x, A, B, v, rp, ci, 1.0, [True] * 4)
    with pytest.raises(RuntimeError, match=r"weightkit.sl_support: density must be in \(0, 1\]"):
        sl_support(4, 10, 0.0, 0)
    with pytest.raises(RuntimeError, match=r"weightkit.sl_support: density must be in \(0, 1\]"):
        sl_support(4, 10, 1.5, 0)
    with pytest.raises(RuntimeError, match="weightkit.sl_support: kind must be 'row_balanced' or 'uniform'"):
        sl_support(4, 10, 0.5, 0, "banded")
    # Sizes that cannot be indexed or allocated are refused with the op's name, not std::bad_alloc.
    with pytest.raises(RuntimeError, match=r"weightkit.sl_support: the support would hold .* nonzeros"):
        sl_support(2**62, 10, 0.5, 0)
    with pytest.raises(RuntimeError, match=r"weightkit.sl_support: cannot allocate a support of 105553116266496 nonzeros"):
        sl_support(2**45, 30, 0.1, 0)
    with pytest.raises(RuntimeError, match="weightkit.sddmm: a \\(T, rows\\) and b \\(T, cols\\)"):
        sddmm(torch.randn(3, 4), torch.randn(2, 10), rp, ci)


def test_bad_path_override(monkeypatch):
    A, B, v, rp, ci, b = make_layer(out_f=4, in_f=10, rank=2, density=0.3)
    monkeypatch.setenv("WEIGHTKIT_SL_PATH", "fastest")
    with pytest.raises(RuntimeError, match="WEIGHTKIT_SL_PATH must be factored, dense or auto"):
        sl_linear(torch.randn(3, 10), A, B, v, rp, ci, b, 1.0)


@pytest.mark.cuda
def test_device_mismatch_is_rejected():
    A, B, v, rp, ci, b = make_layer(out_f=4, in_f=10, rank=2, density=0.3, device="cuda")
    with pytest.raises(RuntimeError, match="weightkit.sl_linear: x and A must be on the same device"):
        sl_linear(torch.randn(3, 10, device="cuda"), A.cpu(), B, v, rp, ci, b, 1.0)
    with pytest.raises(RuntimeError, match="weightkit.sl_linear: x and col_idx must be on the same device"):
        sl_linear(torch.randn(3, 10, device="cuda"), A, B, v, rp, ci.cpu(), b, 1.0)


@pytest.mark.cuda
def test_cuda_sparse_grad_x_is_flagged_nondeterministic(monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_SL_PATH", "factored")
    A, B, v, rp, ci, b = make_layer(out_f=4, in_f=10, rank=2, density=0.3, device="cuda")
    x = torch.randn(3, 10, device="cuda", requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="weightkit.sl_linear_backward: grad_x of the CUDA sparse kernel"):
            sl_linear(x, A, B, v, rp, ci, b, 1.0).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.cuda
def test_cuda_support_matches_cpu_and_cost_model_paths_agree():
    A, B, v, rp, ci, b = make_layer(out_f=300, in_f=260, rank=40, density=0.05)
    x = torch.randn(1000, 260)
    cpu = sl_linear(x, A, B, v, rp, ci, b, 0.25)
    gpu = sl_linear(*(t.cuda() for t in (x, A, B, v, rp, ci, b)), 0.25)
    assert rel_err(gpu, cpu) < 1e-5


# Filled in from the generator's first run and frozen (see test_support_is_identical_across_machines).
GOLDEN_ROW_BALANCED = [425, 551, 572, 875, 92, 174, 575, 854, 114, 212, 671, 839, 54, 182, 438, 921]
GOLDEN_UNIFORM_ROW_PTR = [0, 0, 4, 5, 7, 9, 11, 15, 16]
GOLDEN_UNIFORM_COLS = [1, 2, 6, 7, 3, 4, 7, 6, 7, 3, 6, 2, 3, 5, 7, 2]
