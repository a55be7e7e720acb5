"""Hessian-aware trellis coding (block LDLQ over the row streams, weightkit.quant.tcq.tcq_encode_ldlq):
against its float64 definition, its limits (H = I), its gain, and quantize_weight's tcq path."""

from __future__ import annotations

import pytest
import torch

from tests.quant.test_ldlq import correlated_inputs
from tests.reference.ldlq import proxy_loss, tcq_ldlq_ref
from weightkit.nn import PaletteLinear
from weightkit.ops import palette as P
from weightkit.quant import tcq as T
from weightkit.quant.ldlq import hessian_weighted_error, rotate_hessian
from weightkit.quant.palette import quantize_weight


def decoded(packed, rows, in_f, L, kb, V):
    return P.tcq_dequantize(packed, torch.ones(rows), in_f, L, kb, V)


def hessian(n, seed=0):
    X = correlated_inputs(n, seed=seed)
    return (X.T @ X / X.shape[0]).double()


@pytest.mark.parametrize("L,kb,V,block,lookahead", [(5, 2, 1, 8, 4), (6, 3, 2, 6, 3), (5, 1, 1, 5, 0), (6, 2, 1, 7, 2)],
                         ids=str)
def test_matches_its_float64_definition(L, kb, V, block, lookahead):
    # Small trellises (the reference's Viterbi is plain Python); ragged last blocks (24 = 3·7 + 3).
    rows, n = 4, 24
    W = torch.randn(rows, n, generator=torch.Generator().manual_seed(L + block))
    H = hessian(n, seed=1)
    got = T.tcq_encode_ldlq(W, H, L, kb, V, damp=0.01, block=block, lookahead=lookahead)
    ref = tcq_ldlq_ref(W, H, L, kb, V, damp=0.01, block=block, lookahead=lookahead)
    assert torch.equal(got, T.tcq_pack_states(ref, L, kb))


def test_identity_hessian_with_full_lookahead_is_plain_viterbi():
    # No feedback (H = I, no dampening) and a look-ahead past the row's end: each block's search
    # covers the rest of the row from the state the full path passed through, so the streams are
    # the whole-row Viterbi's.
    L, kb, V = 10, 2, 1
    W = torch.randn(6, 96, generator=torch.Generator().manual_seed(2))
    got = T.tcq_encode_ldlq(W, torch.eye(96), L, kb, V, damp=0.0, block=16, lookahead=96)
    assert torch.equal(got, P.tcq_encode(W, L, kb, V))


@pytest.mark.parametrize("L,kb,V", [(12, 2, 1), (12, 5, 2), (16, 2, 1)])
def test_default_lookahead_costs_little_mse(L, kb, V):
    # H = I: only the look-ahead's truncation separates it from the whole-row search (within 3%;
    # ~0 look-ahead would cost ~90%, and at L = 16 32 steps cost ~7.5%: see docs/design-notes.md).
    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    plain = (decoded(P.tcq_encode(W, L, kb, V), 64, 256, L, kb, V) - W).pow(2).mean()
    windowed = (decoded(T.tcq_encode_ldlq(W, torch.eye(256), L, kb, V, damp=0.0), 64, 256, L, kb, V) - W).pow(2).mean()
    assert plain <= windowed <= 1.03 * plain


@pytest.mark.parametrize("L,kb,V", [(10, 2, 1), (10, 5, 2)])
def test_lowers_the_output_error_on_correlated_inputs(L, kb, V):
    # The proxy loss Σ (w − ŵ)·H·(w − ŵ)ᵀ falls below the plain trellis's (measured ~0.78×), while
    # the weights' own squared error rises: the error moves to directions the inputs rarely take.
    H = hessian(64)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    plain = decoded(P.tcq_encode(W, L, kb, V), 32, 64, L, kb, V)
    aware = decoded(T.tcq_encode_ldlq(W, H, L, kb, V), 32, 64, L, kb, V)
    assert proxy_loss(W, aware, H) < 0.85 * proxy_loss(W, plain, H)
    assert (aware - W).pow(2).sum() > (plain - W).pow(2).sum()


@pytest.mark.parametrize("bits", [2, 2.5, 2.25])
def test_palette_layer_with_hessian(bits):
    # Integer, half (two values a step) and half-variant rates (two parts, one H) through
    # PaletteLinear: the stored codes decode to a layer whose Hessian-weighted error is below the
    # plain trellis's, and the state_dict round trip is exact.
    lin = torch.nn.Linear(64, 48)
    torch.nn.init.normal_(lin.weight, generator=torch.Generator().manual_seed(6))
    H = hessian(64, seed=2)
    layers = {label: PaletteLinear.from_linear(lin, "tcq", bits, seed=1, hessian=h, L=10)
              for label, h in (("plain", None), ("aware", H))}
    err = {k: hessian_weighted_error(lin.weight, v.dequantize(), H) for k, v in layers.items()}
    assert err["aware"] < 0.9 * err["plain"]
    clone = PaletteLinear(64, 48, "tcq", bits, tcq_params=layers["aware"].tcq_params)
    clone.load_state_dict(layers["aware"].state_dict())
    assert torch.equal(clone.dequantize(), layers["aware"].dequantize())


def test_quantize_weight_runs_the_rotated_problem():
    # quantize_weight's tcq codes with a hessian are tcq_encode_ldlq's on the rotated, normalized rows
    # with the rotated Hessian; progress counts columns.
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(8))
    H = hessian(64, seed=3)
    seen = []
    q = quantize_weight(W, "tcq", 2, seed=4, hessian=H, L=9, progress=lambda done, total: seen.append((done, total)))
    signs = P.hadamard_signs(64, 4)
    Wr = P.hadamard_transform(W, signs)
    Wn = Wr / Wr.pow(2).mean(1).sqrt()[:, None]
    p = T.tcq_params(2, 9)
    assert torch.equal(q["packed"], T.tcq_encode_ldlq(Wn, rotate_hessian(H, signs), **p))
    assert seen == [(c, 64) for c in range(16, 65, 16)]


def test_bad_input():
    fn = "weightkit.quant.tcq_encode_ldlq"
    W = torch.randn(4, 32)
    with pytest.raises(ValueError, match=rf"{fn}: H must be \(32, 32\) for Wn of shape \(4, 32\), got \(16, 16\)"):
        T.tcq_encode_ldlq(W, torch.eye(16), 8, 2, 1)
    H = torch.eye(32)
    H[1, 2] = float("inf")
    with pytest.raises(ValueError, match=rf"{fn}: H has NaN or Inf"):
        T.tcq_encode_ldlq(W, H, 8, 2, 1)
    with pytest.raises(ValueError, match=rf"{fn}: block must be a positive multiple of values_per_step=2, got 5"):
        T.tcq_encode_ldlq(W, torch.eye(32), 8, 3, 2, block=5)
    with pytest.raises(ValueError, match=rf"{fn}: lookahead must be an int >= 0, got -1"):
        T.tcq_encode_ldlq(W, torch.eye(32), 8, 2, 1, lookahead=-1)
    with pytest.raises(ValueError, match=rf"{fn}: H is not positive definite even after damp=0"):
        T.tcq_encode_ldlq(W, 2 * torch.ones(32, 32) - torch.eye(32), 8, 2, 1, damp=0.0)
    with pytest.raises(RuntimeError, match=r"weightkit.tcq_encode_window: W must be finite"):
        T.tcq_encode_ldlq(W / 0, torch.eye(32), 8, 2, 1)
