"""Hessian-aware (LDLQ) rounding of the palette quantizers: the rounding against its float64
definition, Hessians measured from calibration tokens, and quantize_model with calibration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightkit as wk
from tests.reference.ldlq import ldlq_ref, proxy_loss
from weightkit.nn import PaletteLinear
from weightkit.ops import palette as P
from weightkit.quant import codebooks
from weightkit.quant.allocation import Option, measured_options
from weightkit.quant.ldlq import (
    collect_hessians,
    hessian_weighted_error,
    ldlq_round,
    nearest_codewords,
    rotate_hessian,
)
from weightkit.quant.palette import quantize_weight


def correlated_inputs(n, tokens=2048, seed=0):
    """X (tokens, n) whose columns are strongly correlated, as a transformer's activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n) + 2 * torch.randn(n, n, generator=g) / n**0.5
    return torch.randn(tokens, n, generator=g) @ mix


def nearest_fn(cb):
    return lambda block: cb[P.palette_encode(block, cb).view(-1).long()]


@pytest.mark.parametrize("kind, bits, block", [("sq", 2, 16), ("sq", 3, 128), ("vq", 2, 16), ("vq", 3, 6)])
def test_ldlq_matches_its_float64_definition(kind, bits, block):
    cb = codebooks.lloyd_max(bits) if kind == "sq" else codebooks.vq2d(2 * bits)
    X = correlated_inputs(48)
    H = (X.T @ X).double() / X.shape[0]
    W = torch.randn(24, 48, generator=torch.Generator().manual_seed(1))
    want = ldlq_ref(W, H, nearest_fn(cb), d=cb.shape[1])
    got = ldlq_round(W, H, nearest_fn(cb), d=cb.shape[1], block=block, dtype=torch.float64)
    assert torch.equal(got.double(), want)
    fast = ldlq_round(W, H, nearest_codewords(cb), d=cb.shape[1], block=block)  # float32 feedback
    assert (fast.double() != want).float().mean() < 0.01  # ties at float32 resolution only
    plain = nearest_fn(cb)(W.reshape(-1, cb.shape[1]).contiguous()).reshape(W.shape)
    assert proxy_loss(W, got, H) < 0.8 * proxy_loss(W, plain, H)
    # Act order: the same, units by decreasing energy (here some inputs carry far more than others).
    Hs = H * torch.linspace(0.2, 3, 48, dtype=torch.float64).outer(torch.linspace(0.2, 3, 48, dtype=torch.float64))
    want = ldlq_ref(W, Hs, nearest_fn(cb), d=cb.shape[1], act_order=True)
    assert not torch.equal(want, ldlq_ref(W, Hs, nearest_fn(cb), d=cb.shape[1]))
    got = ldlq_round(W, Hs, nearest_fn(cb), d=cb.shape[1], block=block, dtype=torch.float64, act_order=True)
    assert torch.equal(got.double(), want)


@pytest.mark.parametrize("kind, bits", [("sq", 4), ("vq", 3)])
def test_identity_hessian_is_nearest_rounding(kind, bits):
    lin = nn.Linear(64, 40)
    plain = PaletteLinear.from_linear(lin, kind, bits)
    ldlq = PaletteLinear.from_linear(lin, kind, bits, hessian=torch.eye(64))
    assert torch.equal(plain.packed, ldlq.packed) and torch.equal(plain.scales, ldlq.scales)


@pytest.mark.parametrize("kind, bits", [("sq", 2), ("sq", 4), ("vq", 3)])
def test_ldlq_lowers_the_output_error_on_its_inputs(kind, bits):
    n = 128
    X = correlated_inputs(n, seed=2)
    H = (X.T @ X).double() / X.shape[0]
    lin = nn.Linear(n, 96, bias=False)

    def output_error(layer):
        return ((X @ (lin.weight - layer.dequantize()).T) ** 2).sum() / (X @ lin.weight.T).pow(2).sum()

    with torch.no_grad():
        plain = output_error(PaletteLinear.from_linear(lin, kind, bits))
        aware = output_error(PaletteLinear.from_linear(lin, kind, bits, hessian=H))
    assert aware < 0.75 * plain


def test_rotated_hessian_is_the_hessian_of_rotated_inputs():
    X = correlated_inputs(96, tokens=300)
    signs = P.hadamard_signs(96, 5)
    Xr = P.hadamard_transform(X, signs).double()
    torch.testing.assert_close(rotate_hessian((X.T @ X).double(), signs), Xr.T @ Xr, rtol=1e-5, atol=1e-5 * 300)


class SharedInputs(nn.Module):
    """Token ids → three linears on one tensor (like q/k/v) → a fourth on their sum."""

    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3))
        self.o = nn.Linear(d, 8)

    def forward(self, ids):
        x = self.emb(ids)
        return self.o(self.q(x) + self.k(x) * self.v(x))


def test_collect_hessians_is_the_inputs_second_moment():
    torch.manual_seed(0)
    model = SharedInputs().train()
    tokens = torch.randint(0, 50, (100,))  # ctx 8, batches of 3: 12 windows, 96 tokens (4 dropped)
    layers = {name: getattr(model, name) for name in "qkvo"}
    H = collect_hessians(model, tokens, layers, ctx=8, batch_size=3)
    assert model.training  # mode restored
    with torch.no_grad():
        x = model.emb(tokens[:96]).double()
        mid = (model.q(x.float()) + model.k(x.float()) * model.v(x.float())).double()
    for name in "qkv":
        torch.testing.assert_close(H[name], x.T @ x / 96)
    assert H["q"] is H["k"] is H["v"]  # measured once
    torch.testing.assert_close(H["o"], mid.T @ mid / 96, rtol=1e-5, atol=1e-6)
    assert all(not lin._forward_pre_hooks for lin in layers.values())  # hooks removed


def tiny_gpt(state=None):
    model = wk.nn.GPT(vocab=256, d=64, layers=2, heads=4, ctx=64)
    if state is not None:
        model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def trained_tiny_gpt():
    """(state_dict, tokens) of a tiny byte-level GPT trained a little on pydoc, so that its
    activations have structure."""
    torch.manual_seed(0)
    model = tiny_gpt()
    tokens = wk.data.encode(wk.data.load_text("pydoc"))[:4096]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss = model.loss(wk.data.random_batch(tokens, 8, 64, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict(), tokens


@pytest.mark.parametrize("quantizer, trellis", [("sq", {}), ("tcq", {"L": 10})], ids=["sq", "tcq"])
def test_quantize_model_with_calibration_tracks_the_layers_better(trained_tiny_gpt, quantizer, trellis):
    # The measure is each quantized layer's output error on held-out text, Σ tr(ΔW·H·ΔWᵀ) with H
    # from held-out tokens: what LDLQ lowers, tested on inputs it did not see. (The logits of this
    # tiny model move by ~1e-5 in KL under any 2-bit quantizer, too little to rank the rounding:
    # on the AVX2 EPYC plain TCQ came out ahead there.)
    state, tokens = trained_tiny_gpt
    model = tiny_gpt(state)
    calib, held_out = tokens[:2048], tokens[2048:3072]
    layers = wk.eval.linear_layers(model)
    H = wk.quant.collect_hessians(model, held_out, layers, ctx=64)
    errors = {}
    for label, options in [("plain", {}), ("ldlq", {"calibration": calib, "calibration_ctx": 64})]:
        q = tiny_gpt(state)
        rep = wk.quant.quantize_model(q, method="palette", quantizer=quantizer, bits=2, progress=False, **options,
                                      **trellis)
        assert len(rep.layers) == 8  # 4 per block; the head is skipped
        errors[label] = 0.0
        for name, lin in layers.items():
            dW = lin.weight.detach().double() - q.get_submodule(name).dequantize().double()
            errors[label] += torch.trace(dW @ H[name].double() @ dW.T).item()
    assert errors["ldlq"] < 0.8 * errors["plain"]


def test_hessians_are_checked_before_any_layer_changes(trained_tiny_gpt):
    state, tokens = trained_tiny_gpt
    model = tiny_gpt(state)
    kinds = lambda: [type(m).__name__ for m in model.modules()]  # noqa: E731
    before = kinds()
    fn = "weightkit.quant.quantize_model"
    with pytest.raises(ValueError, match=rf"{fn}: hessians lacks layers \['blocks.0.out'.*\(5 of 8\)"):
        wk.quant.quantize_model(model, method="palette", quantizer="sq", bits=4, progress=False,
                                hessians={f"blocks.0.{n}": torch.eye(64) for n in ("attn.qkv", "attn.proj", "fc")})
    with pytest.raises(ValueError, match=rf"{fn}: give calibration tokens or hessians, not both"):
        wk.quant.quantize_model(model, method="palette", quantizer="sq", bits=4, progress=False,
                                calibration=tokens, hessians={})
    with pytest.raises(TypeError, match=r"quantize_model: \['calibration'\] are options of method='palette' or 'gptq', not of 'ptqtp'"):
        wk.quant.quantize_model(model, method="ptqtp", calibration=tokens, progress=False)
    assert kinds() == before


def test_bad_hessians_and_tokens_are_refused():
    W = torch.randn(8, 32)
    with pytest.raises(ValueError, match=r"quantize_weight: hessian must be \(32, 32\) .* got \(16, 16\)"):
        quantize_weight(W, "sq", 4, hessian=torch.eye(16))
    with pytest.raises(ValueError, match=r"quantize_weight: hessian must be \(32, 32\) .* got \(16, 16\)"):
        quantize_weight(W, "tcq", 2, hessian=torch.eye(16))
    cb = codebooks.lloyd_max(4)
    H = torch.eye(32)
    H[3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"ldlq_round: H has NaN or Inf"):
        ldlq_round(W, H, nearest_fn(cb))
    with pytest.raises(ValueError, match=r"ldlq_round: H is not positive definite even after damp=0"):
        ldlq_round(W, 2 * torch.ones(32, 32) - torch.eye(32), nearest_fn(cb), damp=0.0)  # indefinite
    with pytest.raises(ValueError, match=r"ldlq_round: the unit width d=2 must divide in_features=31"):
        ldlq_round(W[:, :31], torch.eye(31), nearest_fn(cb), d=2)
    model = SharedInputs()
    layers = {"q": model.q}
    with pytest.raises(ValueError, match=r"collect_hessians: tokens must be a 1-D integer tensor"):
        collect_hessians(model, torch.rand(64), layers, ctx=8)
    with pytest.raises(ValueError, match=r"collect_hessians: need at least ctx=8 tokens, got 5"):
        collect_hessians(model, torch.arange(5), layers, ctx=8)
    with pytest.raises(ValueError, match=r"collect_hessians: these layers were never called .*\['stray'\]"):
        collect_hessians(model, torch.arange(16), {"q": model.q, "stray": nn.Linear(16, 16)}, ctx=8)


def test_dead_inputs_are_rounded_plainly():
    # An input that never fires has a zero row and column in H: its weights cannot change the
    # output, so they are rounded to nearest and take no part in the feedback.
    X = correlated_inputs(32, seed=3)
    X[:, 5] = 0
    H = (X.T @ X).double() / X.shape[0]
    W = torch.randn(16, 32)
    cb = codebooks.lloyd_max(3)
    got = ldlq_round(W, H, nearest_fn(cb))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[:, 5], nearest_fn(cb)(W[:, 5:6].contiguous())[:, 0])


@pytest.mark.parametrize("kind, bits", [("sq", 3), ("vq", 2.5), ("vq", 4)])
def test_nearest_codewords_agree_with_the_encoder(kind, bits):
    cb = codebooks.lloyd_max(bits) if kind == "sq" else codebooks.vq2d(int(2 * bits))
    block = 1.5 * torch.randn(4096, cb.shape[1], generator=torch.Generator().manual_seed(4))
    assert torch.equal(nearest_codewords(cb)(block), nearest_fn(cb)(block))


def test_hessian_weighted_error_is_on_the_scale_of_a_relative_mse():
    n = 256
    X = correlated_inputs(n, seed=4)
    H = (X.T @ X).double() / X.shape[0]
    W = torch.randn(128, n, generator=torch.Generator().manual_seed(5))
    noisy = W + 0.1 * torch.randn(W.shape, generator=torch.Generator().manual_seed(6))
    rel_mse = ((W - noisy).pow(2).sum() / W.pow(2).sum()).item()
    # Against the float64 proxy loss, by definition; scale-free in H; = relative MSE for H = I.
    want = proxy_loss(W, noisy, H) * n / (H.trace().item() * W.double().pow(2).sum().item())
    assert hessian_weighted_error(W, noisy, H) == pytest.approx(want, rel=1e-12)
    assert hessian_weighted_error(W, noisy, 7 * H) == pytest.approx(want, rel=1e-12)
    assert hessian_weighted_error(W, noisy, torch.eye(n)) == pytest.approx(rel_mse, rel=1e-6)
    # Isotropic noise: its H-weighted error is its relative MSE up to sampling (32K entries).
    assert want == pytest.approx(rel_mse, rel=0.05)
    assert hessian_weighted_error(W, W, H) == 0.0 and hessian_weighted_error(W, noisy, 0 * H) == 0.0


def test_measured_options_are_the_errors_quantize_model_makes(trained_tiny_gpt):
    state, tokens = trained_tiny_gpt
    model = tiny_gpt(state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    H = collect_hessians(model, tokens[:1024], wk.eval.linear_layers(model), ctx=64)
    options = [Option("sq", 2, 0.0), Option("vq", 2.5, 0.0), Option("sq", 4, 0.0), Option("tcq", 2, 0.0)]
    plain = measured_options(model, options, seed=3, L=10)
    aware = measured_options(model, options, hessians=H, seed=3, L=10)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model unchanged
    assert list(plain) == list(aware) and len(plain) == 8  # the head is skipped, as quantize_model does
    for i, o in enumerate(options):
        q = tiny_gpt(state)
        rep = wk.quant.quantize_model(q, method="palette", quantizer=o.quantizer, bits=o.bits, hessians=H, seed=3,
                                      progress=False, L=10)
        p = tiny_gpt(state)
        rep_plain = wk.quant.quantize_model(p, method="palette", quantizer=o.quantizer, bits=o.bits, seed=3,
                                            progress=False, L=10)
        for r, r_plain in zip(rep.layers, rep_plain.layers):
            name = r.name
            assert aware[name][i].cost == pytest.approx(r.bits_per_weight, rel=1e-12)
            # Same seeds as quantize_model: the same layer, so the same errors.
            assert plain[name][i].error == pytest.approx(r_plain.rel_error**2, rel=1e-5)
            W = model.get_submodule(name).weight
            W_hat = q.get_submodule(name).dequantize()
            assert aware[name][i].error == pytest.approx(hessian_weighted_error(W, W_hat, H[name]), rel=1e-6)
            # LDLQ lowers the output error it is scored by (2 bits: far from the codewords' reach).
            if o.bits == 2:
                assert aware[name][i].error < plain[name][i].error


def test_measured_options_refuse_what_quantize_model_refuses(trained_tiny_gpt):
    state, tokens = trained_tiny_gpt
    model = tiny_gpt(state)
    fn = "weightkit.quant.allocation.measured_options"
    with pytest.raises(ValueError, match=rf"{fn}: hessians lacks layers \['blocks.0.attn.qkv'.*\(8 of 8\)"):
        measured_options(model, [Option("sq", 4, 0.0)], hessians={})
    with pytest.raises(ValueError, match=rf"{fn}: no option fits layer '0' \(4x100\)"):
        measured_options(nn.Sequential(nn.Linear(100, 4)), [Option("sq", 4, 0.0)])


def int_grid_factory(bits):
    """The asymmetric grid of rtn_int, fitted per row to a group's weights (float64 for the reference)."""
    qmax = 2**bits - 1

    def fit(Wg):
        lo, hi = Wg.amin(1, keepdim=True), Wg.amax(1, keepdim=True)
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zero = (-lo / scale).round()
        return lambda col: ((col / scale).round() + zero).clamp(0, qmax).sub(zero) * scale

    return fit


@pytest.mark.parametrize("group_size, in_f", [(16, 48), (16, 40), (32, 32)])
def test_grouped_ldlq_matches_its_float64_definition(group_size, in_f):
    # GPTQ's groups: each grid is fitted when its first column comes up, to the fed-back weights.
    X = correlated_inputs(in_f, seed=7)
    H = (X.T @ X).double() / X.shape[0]
    W = torch.randn(12, in_f, generator=torch.Generator().manual_seed(8))
    want = ldlq_ref(W, H, int_grid_factory(3), group_size=group_size)
    got = ldlq_round(W, H, int_grid_factory(3), dtype=torch.float64, group_size=group_size)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # Act order: the groups are runs of the processing order.
    want_act = ldlq_ref(W, H, int_grid_factory(3), group_size=group_size, act_order=True)
    got_act = ldlq_round(W, H, int_grid_factory(3), dtype=torch.float64, group_size=group_size, act_order=True)
    torch.testing.assert_close(got_act.double(), want_act, rtol=1e-6, atol=1e-6)
    # Grids fitted to the original weights instead (as if before any feedback) give another answer:
    # when the grid is fitted matters, and the comparison above can see it (one group: the same).
    frozen = iter([int_grid_factory(3)(W[:, g : g + group_size].float()) for g in range(0, in_f, group_size)])
    early = ldlq_ref(W, H, lambda Wg: next(frozen), group_size=group_size)
    assert torch.allclose(early, want) == (in_f <= group_size)


def test_gptq_int_is_rtn_for_white_inputs_and_beats_it_on_correlated_ones():
    from weightkit.quant import gptq_int, rtn_int

    W = torch.randn(64, 320, generator=torch.Generator().manual_seed(9))
    for bits, g in ((4, 128), (3, 64)):
        want, want_bits = rtn_int(W, bits, g)  # ragged last group at g = 128 (320 = 2·128 + 64)
        got, got_bits = gptq_int(W, torch.eye(320), bits, g)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert got_bits == want_bits
    X = correlated_inputs(320, seed=10)
    H = (X.T @ X).double() / X.shape[0]
    plain, _ = rtn_int(W, 3, 128)
    gptq, _ = gptq_int(W, H, 3, 128)
    assert proxy_loss(W, gptq, H) < 0.7 * proxy_loss(W, plain, H)


def test_gptq_act_order_rounds_columns_by_decreasing_energy():
    from weightkit.quant import gptq_int, rtn_int

    g = torch.Generator().manual_seed(11)
    W = torch.randn(48, 320, generator=g)
    # Diagonal H: no feedback, so GPTQ is RTN whose groups are runs of the columns in act order.
    energy = torch.rand(320, generator=g) + 0.1
    order = torch.argsort(energy, descending=True)
    want, want_bits = rtn_int(W[:, order], 4, 64)
    got, got_bits = gptq_int(W, torch.diag(energy), 4, 64, act_order=True)
    torch.testing.assert_close(got, want[:, torch.argsort(order)], rtol=0, atol=1e-6)
    assert got_bits == want_bits + 3 / 48  # 5 groups: a 3-bit group index per column
    # Correlated inputs with the energetic columns last: in order GPTQ rounds them when no column is
    # left to absorb their error; act order rounds them first (proxy loss 0.44-0.46 of in order).
    X = correlated_inputs(320, seed=12) * torch.linspace(0.2, 3, 320)
    H = (X.T @ X).double() / X.shape[0]
    in_order, _ = gptq_int(W, H, 3, 64)
    act, _ = gptq_int(W, H, 3, 64, act_order=True)
    assert proxy_loss(W, act, H) < 0.6 * proxy_loss(W, in_order, H)


def test_gptq_int_refuses_bad_input():
    from weightkit.quant import gptq_int

    W = torch.randn(8, 32)
    with pytest.raises(ValueError, match=r"gptq_int: bits must be an int in \[2, 8\], got 9"):
        gptq_int(W, torch.eye(32), 9)
    with pytest.raises(ValueError, match=r"gptq_int: group_size must be an int >= 1, got 0"):
        gptq_int(W, torch.eye(32), 4, 0)
    with pytest.raises(ValueError, match=r"gptq_int: W must be finite"):
        gptq_int(W * float("nan"), torch.eye(32), 4)
    for act_order in (False, True):
        with pytest.raises(ValueError, match=r"ldlq_round: H must be \(32, 32\) for W of shape \(8, 32\), got \(16, 16\)"):
            gptq_int(W, torch.eye(16), 4, act_order=act_order)
    with pytest.raises(ValueError, match=r"ldlq_round: group_size must be a positive multiple of d=2, got 5"):
        ldlq_round(W, torch.eye(32), int_grid_factory(4), d=2, group_size=5)
