"""weightkit.newton_schulz / newton_schulz_grouped / auon against the float64 reference."""

from __future__ import annotations

import pytest
import torch

import weightkit as wk
from tests.reference.newton_schulz import auon_ref, newton_schulz_ref
from weightkit.ops.newton_schulz import resolve_coefficients

HALF = (torch.bfloat16, torch.float16)
FP32_TOL = 2e-4  # measured <= 3e-5 relative Frobenius error on these inputs


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((x.double().cpu() - ref.cpu()).norm() / ref.norm().clamp_min(1e-30)).item()


def make_input(kind: str, m: int = 48, n: int = 160, seed: int = 0) -> torch.Tensor:
    """Test matrices: Gaussian, ill-conditioned (sigma over 4 decades), rank 6, tall, batched."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(m, n, generator=g)
    if kind == "ill":
        U, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
        V, _ = torch.linalg.qr(torch.randn(n, m, generator=g))
        return (U * torch.logspace(0, -4, m)) @ V.T
    if kind == "rank_deficient":
        return torch.randn(m, 6, generator=g) @ torch.randn(6, n, generator=g)
    if kind == "tall":
        return torch.randn(n, m, generator=g)
    if kind == "batched":
        return torch.randn(3, m, n, generator=g)
    raise ValueError(kind)


def plain_torch(G: torch.Tensor, steps: int, coeffs: list[float], eps: float, norm_scale: float, dtype):
    """The same iteration in plain torch at `dtype`: the accuracy yardstick for half precision."""
    return newton_schulz_ref(G, steps, coeffs, eps, norm_scale, dtype=dtype)


@pytest.mark.parametrize("gram", ["never", "always"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["random", "ill", "rank_deficient", "tall", "batched"])
@pytest.mark.parametrize("preset", ["jordan", "polar_express"])
def test_matches_reference(device, preset, kind, compute, gram, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_NS_GRAM", gram)
    G = make_input(kind).to(device)
    coeffs, eps, norm_scale = resolve_coefficients(preset, 5)
    ref = newton_schulz_ref(G, 5, coeffs, eps, norm_scale)
    out = wk.newton_schulz(G, 5, preset, compute_dtype=compute)
    assert out.shape == G.shape and out.dtype == G.dtype and out.device == G.device
    err = rel_err(out, ref)
    if compute == torch.float32:
        assert err <= FP32_TOL
    else:
        # flash-attention's rule: at most 2x the error of plain torch in the same precision.
        plain_err = rel_err(plain_torch(G, 5, coeffs, eps, norm_scale, compute), ref)
        assert err <= 2 * plain_err + 1e-3, (err, plain_err)


def projected_singular_values(G: torch.Tensor, X: torch.Tensor):
    """diag(U^T X V) in G's singular basis, G's singular values, and the norms of X along G's
    left null directions (exact arithmetic keeps the basis; these say where each sigma went)."""
    U, S, Vh = torch.linalg.svd(G.double().cpu(), full_matrices=False)
    Xd = X.double().cpu()
    d = (U.T @ Xd @ Vh.T).diagonal()
    null = U[:, S < 1e-6 * S[0]]
    return d, S, (null.T @ Xd).norm(dim=1)


BANDS = {"jordan": (3e-3, 0.65, 1.25), "polar_express": (1e-3, 0.80, 1.20)}


# Both product forms: the CPU picks the Gram form for these bf16 inputs, CUDA the plain one.
@pytest.mark.parametrize("gram", ["never", "always"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["random", "ill", "rank_deficient"])
@pytest.mark.parametrize("preset", ["jordan", "polar_express"])
def test_singular_value_bands(device, preset, kind, compute, gram, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_NS_GRAM", gram)
    G = make_input(kind, seed=1).to(device)
    X = wk.newton_schulz(G, 5, preset, compute_dtype=compute)
    d, S, null = projected_singular_values(G, X)
    rel_floor, lo, hi = BANDS[preset]
    kept = d[S >= rel_floor * S.norm()]
    assert kept.numel() > 0
    assert lo <= kept.min().item() and kept.max().item() <= hi, (kept.min(), kept.max())
    if compute == torch.float32:
        # In half precision each step's rounding noise is amplified by ~a along null
        # directions (0.1-0.3 here, as in plain torch bf16); fp32 keeps them at zero.
        assert null.numel() == 0 or null.max().item() <= 1e-2


# The opt-in tensor-core X·Xᵀ kernel (WEIGHTKIT_NS_SYRK=1): several 64-row tiles, off-diagonal
# tiles, m % 64 != 0, k % 8 != 0 (scalar loads), batches.
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(48, 160), (3, 100, 264), (130, 130), (65, 67), (2, 17, 40), (200, 72)])
def test_syrk_kernel_matches_reference(monkeypatch, shape, dtype):
    monkeypatch.setenv("WEIGHTKIT_NS_GRAM", "never")
    monkeypatch.setenv("WEIGHTKIT_NS_SYRK", "1")
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(7)).to("cuda", dtype)
    coeffs = list(wk.ops.newton_schulz.JORDAN)
    ref = newton_schulz_ref(G, 5, coeffs, 1e-7)
    plain_err = rel_err(plain_torch(G, 5, coeffs, 1e-7, 1.0, dtype), ref)
    assert rel_err(wk.newton_schulz(G, 5), ref) <= 2 * plain_err + 1e-3


# The CPU's own bf16 products (AVX512-BF16 CPUs: Zen 4, Sapphire Rapids): X X^T on its upper
# blocks of 32 columns in 8-row tiles, and a X + B X. Shapes straddle both tile sizes, odd k,
# one row, batches; the coefficient triples with zeros take the paths without an addend.
CPU_BF16_SHAPES = [(48, 160), (3, 100, 264), (130, 130), (65, 67), (2, 17, 40), (200, 72), (1, 9), (33, 31)]


def needs_cpu_bf16_products():
    if not wk.build_info()["cpu_features"]["avx512_bf16"]:
        pytest.skip("this CPU has no AVX512-BF16: the ATen products run instead")


def bf16_products_emulated(G: torch.Tensor, steps: int, coeffs: list[float], eps: float = 1e-7) -> torch.Tensor:
    """The iteration as a bf16 GEMM computes it: each product (with its scaled addend) exact in
    float64, rounded once to bf16. An fp32-accumulating kernel differs only where its
    accumulation error crosses a rounding boundary: rarely, by one bf16 step."""

    def rnd(t):
        return t.to(torch.bfloat16).double()

    X = G.double()
    tall = X.shape[-2] > X.shape[-1]
    X = X.mT if tall else X
    X = rnd(X / (torch.linalg.matrix_norm(X, keepdim=True) + eps))
    for s in range(steps):
        a, b, c = coeffs[3 * s : 3 * s + 3]
        A = rnd(X @ X.mT)
        B = rnd(b * A + c * (A @ A))
        X = rnd(a * X + B @ X)
    return X.mT if tall else X


@pytest.mark.parametrize("shape", CPU_BF16_SHAPES)
@pytest.mark.parametrize(
    "coeffs",
    [list(wk.ops.newton_schulz.JORDAN) * 2, [0.0, 1.5, 0.0, 2.0, 0.0, -0.5]],  # a = 0, then b = 0 and c = 0
    ids=["jordan", "zero_terms"],
)
def test_cpu_bf16_products_match_emulated_bf16_gemm(monkeypatch, shape, coeffs):
    needs_cpu_bf16_products()
    monkeypatch.setenv("WEIGHTKIT_NS_GRAM", "never")
    monkeypatch.setenv("WEIGHTKIT_CPU_ISA", "avx512")
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(7)).bfloat16()
    out = wk.newton_schulz(G, 2, coeffs)
    # One bf16 step is 2^-8 = 3.9e-3 relative; a wrong or missing term costs far more than 1e-3.
    assert rel_err(out, bf16_products_emulated(G, 2, coeffs)) <= 1e-3


def check_huge_and_tiny(device):
    """The Frobenius norm is summed in fp64: fp32 squares would overflow above ~1.8e19."""
    G = make_input("random")
    ref = newton_schulz_ref(G, 5, list(wk.ops.newton_schulz.JORDAN), 1e-7)
    for scale in (1e20, 1e-20):
        out = wk.newton_schulz((G.double() * scale).float().to(device), 5, eps=0.0)
        assert torch.isfinite(out).all() and rel_err(out, ref) <= FP32_TOL, scale


@pytest.mark.cuda
def test_huge_and_tiny_inputs_are_scaled_exactly_cuda():
    check_huge_and_tiny("cuda")


def test_huge_and_tiny_inputs_are_scaled_exactly_every_isa(cpu_isa):
    check_huge_and_tiny("cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_keep_their_dtype(device, dtype):
    G = make_input("random").to(device, dtype)
    out = wk.newton_schulz(G, 5, "jordan")
    assert out.dtype == dtype and out.shape == G.shape
    ref = newton_schulz_ref(G, 5, list(wk.ops.newton_schulz.JORDAN), 1e-7)
    plain_err = rel_err(plain_torch(G, 5, list(wk.ops.newton_schulz.JORDAN), 1e-7, 1.0, dtype), ref)
    assert rel_err(out, ref) <= 2 * plain_err + 1e-3


def test_coefficient_forms_agree(device):
    G = make_input("random").to(device)
    flat, eps, scale = resolve_coefficients("polar_express", 5)
    triples = [flat[i : i + 3] for i in range(0, 15, 3)]
    by_name = wk.newton_schulz(G, 5, "polar_express")
    by_flat = wk.newton_schulz(G, 5, flat, eps=eps, norm_scale=scale)
    by_triples = wk.newton_schulz(G, 5, triples, eps=eps, norm_scale=scale)
    torch.testing.assert_close(by_name, by_flat, rtol=0, atol=0)
    torch.testing.assert_close(by_name, by_triples, rtol=0, atol=0)
    jordan = wk.newton_schulz(G, 5, list(wk.ops.newton_schulz.JORDAN))
    torch.testing.assert_close(jordan, wk.newton_schulz(G), rtol=0, atol=0)


def test_polar_express_longer_than_schedule_repeats_last_triple():
    coeffs, _, _ = resolve_coefficients("polar_express", 7)
    assert len(coeffs) == 21 and coeffs[15:18] == coeffs[12:15] == coeffs[18:21]


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_grouped_equals_per_matrix(device, compute):
    g = torch.Generator().manual_seed(3)
    Gs = [
        torch.randn(32, 96, generator=g),
        torch.randn(96, 32, generator=g),  # tall: same oriented shape, joins the batch above
        torch.randn(2, 32, 96, generator=g),
        torch.randn(40, 40, generator=g),
        torch.randn(17, 5, generator=g).to(torch.bfloat16),
        torch.randn(0, 8, generator=g),
    ]
    Gs = [G.to(device) for G in Gs]
    grouped = wk.newton_schulz_grouped(Gs, 5, "jordan", compute_dtype=compute)
    assert len(grouped) == len(Gs)
    for G, out in zip(Gs, grouped):
        single = wk.newton_schulz(G, 5, "jordan", compute_dtype=compute)
        assert out.shape == G.shape and out.dtype == G.dtype
        # Same arithmetic; a batched product may block its sums differently from a single one.
        tol = 1e-5 if compute == torch.float32 and G.dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out, single, rtol=tol, atol=tol)


def test_grouped_results_do_not_alias(device):
    Gs = [torch.randn(8, 16, device=device) for _ in range(3)]
    outs = wk.newton_schulz_grouped(Gs)
    assert len({o.untyped_storage().data_ptr() for o in outs}) == 3


def test_inputs_are_not_modified(device):
    G = make_input("random").to(device)
    before = G.clone()
    wk.newton_schulz(G)
    wk.newton_schulz_grouped([G])
    wk.auon(G)
    assert torch.equal(G, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(5, 7), (2, 9, 4), (64, 200)])
def test_auon_matches_reference(device, shape, dtype):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    out = wk.auon(G, 1e-7)
    assert out.dtype == dtype and out.shape == G.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    assert rel_err(out, auon_ref(G, 1e-7)) <= tol


def test_auon_cosh_brake_acts_on_large_entries(device):
    # One dominant entry: X has an entry near 1, cosh(1) ~ 1.54 pulls the update down.
    G = torch.tensor([[30.0, 0.1, -0.2], [0.3, -0.1, 0.2]], device=device)
    out = wk.auon(G, 1e-7)
    ref = auon_ref(G, 1e-7)
    torch.testing.assert_close(out.double().cpu(), ref.cpu(), rtol=1e-5, atol=1e-6)
    X = G.double().cpu() / G.double().norm()
    brake = (X.norm() / out.double().cpu().norm()).item()  # = RMS(cosh X) + 1e-8
    assert brake > 1.05


def test_hybrid_auon_is_one_ns_step_then_auon(device):
    G = make_input("random").to(device)
    ref = auon_ref(newton_schulz_ref(G, 1, list(wk.ops.newton_schulz.JORDAN), 1e-7), 1e-7)
    assert rel_err(wk.hybrid_auon(G), ref) <= 1e-5


# ------------------------------------------------------------------ SIMD paths (CPU)


def test_every_simd_path_matches_reference(cpu_isa):
    assert wk._C.cpu_isa("test") == cpu_isa
    for shape in [(7, 13), (3, 33, 70), (48, 160)]:  # lengths that leave SIMD tails
        G = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
        assert rel_err(wk.auon(G), auon_ref(G, 1e-7)) <= 1e-5
        coeffs = list(wk.ops.newton_schulz.JORDAN)
        ref = newton_schulz_ref(G, 5, coeffs, 1e-7)
        assert rel_err(wk.newton_schulz(G, 5), ref) <= FP32_TOL
        for compute in HALF:
            plain_err = rel_err(plain_torch(G, 5, coeffs, 1e-7, 1.0, compute), ref)
            assert rel_err(wk.newton_schulz(G, 5, compute_dtype=compute), ref) <= 2 * plain_err + 1e-3


@pytest.mark.parametrize("compute", HALF)
def test_simd_rounding_matches_torch_casts(cpu_isa, compute):
    # One step with (a, b, c) = (1, 0, 0) returns the normalized input rounded to `compute`:
    # a direct test of the rounding kernels (ties to even, every lane and the scalar tail).
    G = torch.randn(37, 41, generator=torch.Generator().manual_seed(6)) * 3
    out = wk.newton_schulz(G, 1, [1.0, 0.0, 0.0], eps=0.0, compute_dtype=compute)
    scale = torch.tensor(1.0 / G.double().norm().item(), dtype=torch.float32)
    expected = (G * scale).to(compute).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_unknown_isa_is_refused(monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match=r"weightkit.auon: WEIGHTKIT_CPU_ISA must be one of"):
        wk.auon(torch.randn(4, 4))


def test_isa_beyond_cpu_is_refused(monkeypatch):
    if wk.build_info()["cpu_isa_best"] == "avx512":
        pytest.skip("this CPU runs every path")
    monkeypatch.setenv("WEIGHTKIT_CPU_ISA", "avx512")
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: WEIGHTKIT_CPU_ISA=avx512 but this CPU"):
        wk.newton_schulz(torch.randn(4, 4))


# ------------------------------------------------------------------ op contract


def test_opcheck(device):
    G2 = torch.randn(12, 20, device=device)
    G3 = torch.randn(2, 20, 12, device=device)
    coeffs = list(wk.ops.newton_schulz.JORDAN)
    ops = torch.ops.weightkit
    torch.library.opcheck(ops.newton_schulz.default, (G2, 5, coeffs, 1e-7, 1.0, None))
    torch.library.opcheck(ops.newton_schulz.default, (G3, 2, coeffs * 2, 1e-7, 1.02, torch.bfloat16))
    torch.library.opcheck(ops.newton_schulz_grouped.default, ([G2, G3, G2.T], 3, coeffs, 1e-7, 1.0, None))
    torch.library.opcheck(ops.auon.default, (G2, 1e-7))
    torch.library.opcheck(ops.auon.default, (G3.to(torch.bfloat16), 1e-7))


@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("shape", [(20, 12), (2, 20, 12)])
def test_tall_input_gives_a_contiguous_result(device, shape, compute_dtype):
    # Tall matrices are iterated transposed; the result must come back contiguous (as the fake
    # kernel says) whether or not its dtype changes on the way back.
    G = torch.randn(shape, device=device)
    X = wk.newton_schulz(G, 3, "jordan", compute_dtype=compute_dtype)
    assert X.shape == G.shape and X.is_contiguous()
    Y = wk.newton_schulz(G.mT.contiguous(), 3, "jordan", compute_dtype=compute_dtype)
    torch.testing.assert_close(X, Y.mT, rtol=0, atol=0)


def test_torch_compile_fullgraph(device):
    def update(G, H):
        X = wk.newton_schulz(G, 5, "polar_express", compute_dtype=torch.bfloat16)
        Y, Z = wk.newton_schulz_grouped([G, H], 5, "jordan")
        return X + Y, Z, wk.auon(H) * 2

    G = torch.randn(24, 40, device=device)
    H = torch.randn(40, 24, device=device)
    compiled = torch.compile(update, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    for got, want in zip(compiled(G, H), update(G, H)):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------ edge cases and bad input


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 0, 4), (0, 4, 4)])
def test_empty_matrix_returns_empty(device, shape):
    G = torch.empty(shape, device=device)
    for out in (wk.newton_schulz(G), wk.newton_schulz_grouped([G])[0], wk.auon(G)):
        assert out.shape == G.shape and out.numel() == 0


def test_nan_propagates_without_error(device):
    G = torch.randn(6, 10, device=device)
    G[2, 3] = float("nan")
    assert torch.isnan(wk.newton_schulz(G)).any()
    assert torch.isnan(wk.newton_schulz(G, compute_dtype=torch.bfloat16)).any()
    assert torch.isnan(wk.newton_schulz_grouped([G])[0]).any()
    assert torch.isnan(wk.auon(G)).any()


@pytest.mark.parametrize(
    "shape, match",
    [((8,), r"G must have 2 to 3 dimensions, got shape \[8\]"), ((2, 2, 3, 4), r"G must have 2 to 3 dimensions")],
)
def test_bad_rank(device, shape, match):
    G = torch.randn(shape, device=device)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: " + match):
        wk.newton_schulz(G)
    with pytest.raises(RuntimeError, match=r"weightkit.auon: " + match):
        wk.auon(G)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz_grouped: Gs\[0\] must have 2 to 3"):
        wk.newton_schulz_grouped([G])


def test_integer_dtype(device):
    G = torch.ones(4, 4, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: G must be float32, bfloat16 or float16, got Int"):
        wk.newton_schulz(G)
    with pytest.raises(RuntimeError, match=r"weightkit.auon: G must be float32, bfloat16 or float16"):
        wk.auon(G)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz_grouped: Gs\[1\] must be float32"):
        wk.newton_schulz_grouped([G.float(), G])


def test_wrong_coefficient_count(device):
    G = torch.randn(4, 6, device=device)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: coeffs must hold 3 values .* 3 \* steps = 15 values, got 4"):
        torch.ops.weightkit.newton_schulz(G, 5, [1.0, 2.0, 3.0, 4.0], 1e-7)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz_grouped: coeffs must hold"):
        wk.newton_schulz_grouped([G], 2, [1.0] * 9)
    with pytest.raises(ValueError, match=r"weightkit.newton_schulz: each coefficient triple must hold 3"):
        wk.newton_schulz(G, 2, [(1.0, 2.0), (1.0, 2.0, 3.0)])


def test_bad_scalar_arguments(device):
    G = torch.randn(4, 6, device=device)
    with pytest.raises(ValueError, match=r"weightkit.newton_schulz: unknown coefficients preset 'keller'"):
        wk.newton_schulz(G, 5, "keller")
    with pytest.raises(ValueError, match=r"weightkit.newton_schulz: steps must be an int >= 1, got 0"):
        wk.newton_schulz(G, 0)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: steps must be in \[1, 10000\], got 0"):
        torch.ops.weightkit.newton_schulz(G, 0, [1.0, 0.0, 0.0], 1e-7)
    # A mistyped huge count is refused before its coefficient table is allocated.
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz_grouped: steps must be in \[1, 10000\], got 2147483648"):
        torch.ops.weightkit.newton_schulz_grouped([G], 2**31, [1.0, 0.0, 0.0], 1e-7)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: eps must be finite and >= 0"):
        wk.newton_schulz(G, eps=-1.0)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: norm_scale must be finite and > 0"):
        wk.newton_schulz(G, norm_scale=0.0)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: compute_dtype must be float32, bfloat16 or float16"):
        wk.newton_schulz(G, compute_dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz: coeffs must be finite"):
        wk.newton_schulz(G, 1, [float("nan"), 0.0, 0.0])
    with pytest.raises(RuntimeError, match=r"weightkit.auon: eps must be finite and >= 0"):
        wk.auon(G, float("inf"))


def test_grouped_empty_list():
    assert wk.newton_schulz_grouped([]) == []


def test_grouped_mixed_devices_meta():
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz_grouped: Gs\[1\] and Gs\[0\] must be on the same device"):
        wk.newton_schulz_grouped([torch.randn(4, 4), torch.randn(4, 4, device="meta")])


@pytest.mark.cuda
def test_grouped_mixed_devices_cuda():
    with pytest.raises(RuntimeError, match=r"weightkit.newton_schulz_grouped: Gs\[1\] and Gs\[0\] must be on the same device"):
        wk.newton_schulz_grouped([torch.randn(4, 4, device="cuda"), torch.randn(4, 4)])
