"""weightkit.rls_init / rls_update_ against the float64 normal-equations solution."""

from __future__ import annotations

import pytest
import torch

import weightkit  # noqa: F401  (loads the ops)
from tests.reference.rls import rls_closed_form
from weightkit.ops.rls import rls_init, rls_update_

D_K, D_V = 24, 7


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return ((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def problem(seed=0, d_k=D_K, d_v=D_V, n_anchor=40):
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(n_anchor, d_k, generator=g, dtype=torch.float64)
    W0 = torch.randn(d_v, d_k, generator=g, dtype=torch.float64) / d_k**0.5
    return g, K0.T @ K0, W0


@pytest.mark.parametrize("steps,u", [(1, 1), (10, 1), (10, 3), (1000, 1), (40, 25)])
def test_update_equals_closed_form(device, steps, u):
    g, gram, W0 = problem()
    lam, mu = 0.5, 2.0
    K = torch.randn(steps * u, D_K, generator=g, dtype=torch.float64)
    V = torch.randn(steps * u, D_V, generator=g, dtype=torch.float64)
    W = W0.clone().to(device)
    C = rls_init(gram.to(device), lam, mu)
    assert C.dtype == torch.float64 and C.shape == (D_K, D_K)
    for t in range(steps):
        rls_update_(W, C, K[t * u : (t + 1) * u].to(device), V[t * u : (t + 1) * u].to(device))
    W_ref, C_ref = rls_closed_form(W0, gram, lam, mu, K, V)
    assert rel_err(W, W_ref) < 1e-9
    assert rel_err(C, C_ref) < 1e-9
    C = C.cpu()
    assert torch.equal(C, C.T)
    assert torch.linalg.eigvalsh(C).min() > 0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_weights(device, dtype, tol):
    g, gram, W0 = problem(1)
    K = torch.randn(5, D_K, generator=g, dtype=torch.float64)
    V = torch.randn(5, D_V, generator=g, dtype=torch.float64)
    W = W0.to(device=device, dtype=dtype)
    C = rls_init(gram.to(device), 1.0, 1.0)
    for t in range(5):
        rls_update_(W, C, K[t].to(device=device, dtype=dtype), V[t].to(device=device, dtype=dtype))
    assert W.dtype == dtype
    W_ref, _ = rls_closed_form(W0, gram, 1.0, 1.0, K.to(dtype), V.to(dtype))
    assert rel_err(W, W_ref) < tol


def test_init_zero_lambda_nonsingular_gram():
    _, gram, _ = problem(2)
    C = rls_init(gram, 0.0, 1.0)
    assert rel_err(C, torch.linalg.inv(gram)) < 1e-10


def test_opcheck(device):
    g, gram, W0 = problem(3)
    torch.library.opcheck(torch.ops.weightkit.rls_init.default, (gram.to(device), 1.0, 0.5))
    C = rls_init(gram.to(device), 1.0, 0.5)
    K = torch.randn(2, D_K, generator=g).to(device)
    V = torch.randn(2, D_V, generator=g).to(device)
    torch.library.opcheck(torch.ops.weightkit.rls_update_.default, (W0.float().to(device), C.clone(), K, V))


def _bad_update_cases():
    nan_k = torch.randn(2, D_K)
    nan_k[1, 3] = float("nan")
    inf_v = torch.randn(2, D_V)
    inf_v[0, 0] = float("inf")
    return [
        (torch.randn(2, D_K), torch.randn(3, D_V), None, "same number of rows"),
        (torch.randn(2, D_K + 1), torch.randn(2, D_V), None, "K must be \\(u, d_k\\)"),
        (torch.randn(2, D_K), torch.randn(2, D_V + 2), None, "V must be \\(u, d_v\\)"),
        (nan_k, torch.randn(2, D_V), None, "K must be finite"),
        (torch.randn(2, D_K), inf_v, None, "V must be finite"),
        (torch.randn(2, D_K), torch.randn(2, D_V), torch.float32, "C must be float64"),
        (torch.randn(0, D_K), torch.randn(0, D_V), None, "at least one key"),
    ]


@pytest.mark.parametrize("K,V,c_dtype,msg", _bad_update_cases())
def test_bad_update_leaves_state(K, V, c_dtype, msg):
    _, gram, W0 = problem(4)
    W = W0.float()
    C = rls_init(gram, 1.0, 1.0)
    if c_dtype is not None:
        C = C.to(c_dtype)
    W_before, C_before = W.clone(), C.clone()
    with pytest.raises(RuntimeError, match=f"weightkit.rls_update_: .*{msg}"):
        torch.ops.weightkit.rls_update_(W, C, K, V)
    assert torch.equal(W, W_before) and torch.equal(C, C_before)


def test_bad_update_shapes_of_state():
    _, gram, W0 = problem(5)
    C = rls_init(gram, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="weightkit.rls_update_: C must be \\(d_k, d_k\\)"):
        rls_update_(W0[:, :-1].clone(), C, torch.randn(1, D_K - 1), torch.randn(1, D_V))
    with pytest.raises(RuntimeError, match="weightkit.rls_update_: C must be contiguous"):
        rls_update_(W0.clone(), C.T, torch.randn(1, D_K), torch.randn(1, D_V))
    W = W0.clone()
    W[0, 0] = float("nan")
    C_before = C.clone()
    with pytest.raises(RuntimeError, match="weightkit.rls_update_: W must be finite"):
        rls_update_(W, C, torch.randn(1, D_K), torch.randn(1, D_V))
    assert torch.equal(C, C_before)
    # A NaN in C is named as such, not as the Cholesky failure it also causes.
    C_nan = C.clone()
    C_nan[2, 2] = float("nan")
    with pytest.raises(RuntimeError, match="weightkit.rls_update_: C must be finite"):
        rls_update_(W0.clone(), C_nan, torch.randn(1, D_K), torch.randn(1, D_V))


def test_update_overflowing_a_float16_weight_is_refused():
    # Used to downdate C, then write Inf into W (and refuse every later call: "W must be finite").
    _, gram, W0 = problem(6)
    W = (W0 * 60000 / W0.abs().max()).half()
    C = rls_init(gram, 1e-6, 1.0)
    K = torch.randn(1, D_K, dtype=torch.float64)
    V = K @ W.double().T + 1e6
    W_before, C_before = W.clone(), C.clone()
    with pytest.raises(RuntimeError, match=r"weightkit.rls_update_: the update overflows W's dtype Half"):
        rls_update_(W, C, K, V)
    assert torch.equal(W, W_before) and torch.equal(C, C_before)


def test_bad_init():
    singular = torch.zeros(D_K, D_K)
    singular[0, 0] = 1.0
    with pytest.raises(RuntimeError, match="weightkit.rls_init: lam and mu must not both be 0"):
        rls_init(singular, 0.0, 0.0)
    with pytest.raises(RuntimeError, match="weightkit.rls_init: .*positive definite"):
        rls_init(singular, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="weightkit.rls_init: gram must be a square"):
        rls_init(torch.randn(3, 4), 1.0, 1.0)
    bad = torch.eye(3)
    bad[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="weightkit.rls_init: gram must be finite"):
        rls_init(bad, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="weightkit.rls_init: lam and mu must be finite"):
        rls_init(torch.eye(3), float("inf"), 1.0)
    with pytest.raises(RuntimeError, match="weightkit.rls_init: the inverse of lam \\* I \\+ mu \\* gram overflows float64"):
        rls_init(torch.zeros(3, 3), 1e-320, 1.0)


def test_compile_traces_update():
    _, gram, W0 = problem(6)
    C = rls_init(gram, 1.0, 1.0)
    W = W0.clone()
    W_eager, C_eager = W0.clone(), C.clone()
    K, V = torch.randn(1, D_K, dtype=torch.float64), torch.randn(1, D_V, dtype=torch.float64)

    @torch.compile(fullgraph=True, backend="eager")
    def step(W, C, K, V):
        torch.ops.weightkit.rls_update_(W, C, K, V)

    step(W, C, K, V)
    rls_update_(W_eager, C_eager, K, V)
    assert torch.equal(W, W_eager) and torch.equal(C, C_eager)


@pytest.mark.parametrize("u", [1, 5, 17])
def test_ragged_tiles(device, u):
    """d_k = 70: several 32 x 32 tiles of C and a ragged edge, fused (u <= 16) and GEMM paths."""
    g, gram, W0 = problem(7, d_k=70, d_v=9, n_anchor=100)
    K = torch.randn(6 * u, 70, generator=g, dtype=torch.float64)
    V = torch.randn(6 * u, 9, generator=g, dtype=torch.float64)
    W, C = W0.clone().to(device), rls_init(gram.to(device), 1.0, 1.0)
    for t in range(6):
        rls_update_(W, C, K[t * u : (t + 1) * u].to(device), V[t * u : (t + 1) * u].to(device))
    W_ref, C_ref = rls_closed_form(W0, gram, 1.0, 1.0, K, V)
    assert rel_err(W, W_ref) < 1e-9 and rel_err(C, C_ref) < 1e-9
    assert torch.equal(C.cpu(), C.cpu().T)
