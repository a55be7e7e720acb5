"""TritPlaneLinear, the baseline quantizers and quantize_model."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import weightkit as wk
from weightkit.nn import TritPlaneLinear
from weightkit.ops import trit_plane as tp
from weightkit.quant import rtn_int, rtn_ternary, twn


def gaussian(out, inf, seed=0, sigma=1.0):
    return torch.randn(out, inf, generator=torch.Generator().manual_seed(seed)) * sigma


def mse(W, W_hat):
    return ((W.float() - W_hat.float()) ** 2).mean().item()


def test_ptqtp_beats_ternary_baselines_on_gaussian():
    W = gaussian(128, 1024, seed=1)
    p, s = tp.ptqtp_quantize(W, 128)
    e_ptqtp = mse(W, tp.trit_plane_unpack(p, s, 1024, 128))
    e_rtn, bits_rtn = rtn_ternary(W)[0], rtn_ternary(W)[1]
    e_rtn = mse(W, e_rtn)
    e_twn = mse(W, twn(W)[0])
    e_int4, bits4 = rtn_int(W, 4, 128)
    e_int4 = mse(W, e_int4)
    e_int3 = mse(W, rtn_int(W, 3, 128)[0])
    assert e_ptqtp < 0.035
    assert e_ptqtp < e_twn < e_rtn  # one ternary plane: ~0.19 (Lloyd-Max) at best
    assert 0.15 < e_twn < 0.25
    assert e_int4 < e_ptqtp  # PAPERS.md: int4 RTN g128 ≈ 0.0116σ²
    assert 0.008 < e_int4 < 0.016
    assert e_int3 > e_int4
    assert abs(bits4 - (4 + 32 / 128)) < 1e-9 and bits_rtn < 1.6 + 16 / 1024 + 1e-9


def test_rtn_int_symmetric_and_ragged():
    W = gaussian(8, 200, seed=2)
    Q, bits = rtn_int(W, 4, 64, symmetric=True)
    assert Q.shape == W.shape and bits == 4 + 16 / 64
    g = Q[:, :64] / (W[:, :64].abs().amax(1, keepdim=True) / 7)
    torch.testing.assert_close(g, g.round(), atol=1e-4, rtol=0)
    Qa, _ = rtn_int(W, 3, 64)
    assert Qa.shape == W.shape and mse(W, Qa) < mse(W, torch.zeros_like(W))
    with pytest.raises(ValueError, match="bits must be an int in"):
        rtn_int(W, 1)
    with pytest.raises(ValueError, match="W must be a 2-D tensor"):
        twn(W[0])


def make_linear(inf=300, out=37, bias=True, seed=3):
    torch.manual_seed(seed)
    lin = nn.Linear(inf, out, bias=bias)
    return lin


@pytest.mark.parametrize("bias", [True, False])
def test_trit_plane_linear_forward(bias):
    lin = make_linear(bias=bias)
    q = TritPlaneLinear.from_linear(lin, group_size=128)
    W = q.dequantize()
    assert W.shape == (37, 300) and W.dtype == torch.float32
    x = torch.randn(4, 5, 300)
    ref = torch.nn.functional.linear(x, W, lin.bias)
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
    assert q(x.bfloat16()).dtype == torch.bfloat16
    rel = (W - lin.weight).norm() / lin.weight.norm()
    assert rel < 0.2
    # 37 rows pad to 40 and 300 columns to 3 groups: 4.93 here, 4.25 on aligned shapes.
    assert 4.0 < q.bits_per_weight() < 5.0
    assert TritPlaneLinear(1024, 64, group_size=128).bits_per_weight() == 4.25
    assert "pack_version=1" in repr(q)


def test_trit_plane_linear_int8_activations():
    lin = make_linear()
    q = TritPlaneLinear.from_linear(lin, group_size=128, activations="int8")
    x = torch.randn(4, 300)
    want = tp.trit_plane_matmul_a8(x, q.packed, q.scales, 300, 128) + lin.bias
    torch.testing.assert_close(q(x), want, rtol=0, atol=0)
    q.activations = "fp32"
    assert not torch.equal(q(x), want)
    assert "activations=fp32" in repr(q)
    with pytest.raises(ValueError, match="activations must be one of"):
        TritPlaneLinear(300, 37, activations="int4")
    q.activations = "int4"
    with pytest.raises(ValueError, match="activations must be one of"):
        q(x)


def test_trit_plane_linear_state_dict_round_trip():
    lin = make_linear()
    q = TritPlaneLinear.from_linear(lin, group_size=64)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    q2 = TritPlaneLinear(300, 37, bias=True, group_size=64)
    q2.load_state_dict(sd)
    for k, v in q.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, q2.state_dict()[k]), k
    x = torch.randn(3, 300)
    assert torch.equal(q(x), q2(x))
    assert sd["_extra_state"]["pack_version"] == tp.PACK_VERSION


def test_trit_plane_linear_rejects_other_versions_and_shapes():
    q = TritPlaneLinear.from_linear(make_linear(), group_size=64)
    sd = q.state_dict()
    sd["_extra_state"] = dict(sd["_extra_state"], pack_version=99)
    with pytest.raises(ValueError, match="pack version 99"):
        TritPlaneLinear(300, 37, group_size=64).load_state_dict(sd)
    with pytest.raises(ValueError, match="group_size"):
        TritPlaneLinear(300, 37, group_size=128).load_state_dict(q.state_dict(), strict=False)
    with pytest.raises(ValueError, match="group_size must be an int >= 1"):
        TritPlaneLinear(300, 37, group_size=0)
    with pytest.raises(TypeError, match="must be an nn.Linear"):
        TritPlaneLinear.from_linear(nn.Conv1d(3, 3, 1))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        self.blocks = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64))
        self.lm_head = nn.Linear(64, 50, bias=False)

    def forward(self, idx):
        return self.lm_head(self.blocks(self.embed(idx)))


@pytest.mark.parametrize("method", ["ptqtp", "rtn_ternary", "twn", "int4", "int3"])
def test_quantize_model(method):
    torch.manual_seed(0)
    model = Tiny()
    idx = torch.randint(0, 50, (2, 7))
    ref = model(idx)
    W0 = model.blocks[0].weight.detach().clone()
    report = wk.quant.quantize_model(model, method=method, group_size=32, progress=False)
    assert [r.name for r in report.layers] == ["blocks.0", "blocks.2"]
    assert report.skipped == ["lm_head"]
    assert isinstance(model.lm_head, nn.Linear)
    if method == "ptqtp":
        assert isinstance(model.blocks[0], TritPlaneLinear) and isinstance(model.blocks[2], TritPlaneLinear)
        W_hat = model.blocks[0].dequantize()
    else:
        assert isinstance(model.blocks[0], nn.Linear)
        W_hat = model.blocks[0].weight
    rel = ((W_hat - W0).norm() / W0.norm()).item()
    assert report.layers[0].rel_error == pytest.approx(rel, rel=1e-4)
    assert 0 < report.rel_error < 0.7 and report.bits_per_weight > 1.5 and report.seconds >= 0
    assert method in report.summary()
    out = model(idx)
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_quantize_model_int8_activations():
    model = Tiny()
    wk.quant.quantize_model(model, method="ptqtp", group_size=32, progress=False, activations="int8")
    assert model.blocks[0].activations == "int8" and model.blocks[2].activations == "int8"
    with pytest.raises(ValueError, match="activations must be one of"):
        wk.quant.quantize_model(Tiny(), method="ptqtp", progress=False, activations="int4")


def test_quantize_model_skip_and_errors():
    model = Tiny()
    report = wk.quant.quantize_model(model, "int4", group_size=32, skip=["blocks.2"], progress=False)
    assert [r.name for r in report.layers] == ["blocks.0", "lm_head"]
    with pytest.raises(ValueError, match="method must be one of"):
        wk.quant.quantize_model(model, "int2")


@pytest.mark.cuda
def test_trit_plane_linear_cuda():
    lin = make_linear().cuda()
    q = TritPlaneLinear.from_linear(lin)
    x = torch.randn(3, 300, device="cuda")
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, q.dequantize(), lin.bias), rtol=1e-4, atol=1e-4)


def test_quantize_model_palette_method_swaps_in_palette_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 512))
    x = torch.randn(5, 512)
    y = model(x)
    report = wk.quant.quantize_model(model, method="palette", quantizer="sq", bits=4, progress=False)
    assert [type(m).__name__ for m in model] == ["PaletteLinear", "ReLU", "PaletteLinear"]
    assert len(report.layers) == 2 and report.method == "palette"
    assert 4.0 <= report.bits_per_weight < 4.6  # 4-bit codes plus per-row scales and block padding
    assert ((model(x) - y).norm() / y.norm()).item() < 0.2
