"""PaletteLinear: forward equals x·Ŵᵀ + b, error in line with the codebook, exact state_dict round trip."""

from __future__ import annotations

import io

import pytest
import torch

from weightkit.nn.palette import PaletteLinear
from weightkit.quant.palette import quantize_model_palette, quantize_weight

KINDS = [("sq", 2), ("sq", 4), ("vq", 2), ("vq", 2.5), ("tcq", 2), ("tcq", 2.5), ("tcq", 2.25)]


@pytest.mark.parametrize("kind,bits", KINDS)
def test_forward_and_error(device, kind, bits, monkeypatch):
    # The CPU GEMV rounds 2-D VQ operands to int8 on some ISAs (tests/ops/test_palette.py checks
    # that path); here the forward must equal x·Ŵᵀ + b in fp32.
    monkeypatch.setenv("WEIGHTKIT_PALETTE_VQ_INT8", "0")
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 96)
    layer = PaletteLinear.from_linear(lin, kind, bits)
    W = layer.dequantize()
    rel = ((W - lin.weight).norm() / lin.weight.norm()).item() ** 2
    assert rel < {2: 0.125, 2.25: 0.1, 2.5: 0.065, 4: 0.011}[bits]
    layer = layer.to(device)
    for tokens in (3, 40):  # in-register decode (CUDA) and dequantize + GEMM
        x = torch.randn(tokens, 576)
        assert torch.allclose(layer(x.to(device)).cpu(), x @ W.T + lin.bias, atol=1e-4)


@pytest.mark.parametrize("kind,bits", KINDS)
def test_state_dict_round_trip(kind, bits):
    torch.manual_seed(1)
    layer = PaletteLinear.from_linear(torch.nn.Linear(96, 40), kind, bits, seed=5)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = PaletteLinear(96, 40, "sq", 4)
    fresh.load_state_dict(torch.load(buf))
    for k, v in layer.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, fresh.state_dict()[k]), k
    assert (fresh.kind, fresh.bits) == (kind, bits)
    x = torch.randn(2, 96)
    assert torch.equal(layer(x), fresh(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="not a rate of the 'sq' quantizer"):
        quantize_weight(torch.randn(4, 64), "sq", 2.5)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        quantize_weight(torch.randn(4, 64), "lattice", 2)
    with pytest.raises(ValueError, match="in_features=26 is not 2\\^k"):
        quantize_weight(torch.randn(4, 26), "sq", 2)
    with pytest.raises(ValueError, match="W must be finite"):
        quantize_weight(torch.full((4, 64), float("inf")), "sq", 2)


def test_quantize_model_report():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8))
    x = torch.randn(5, 64)
    ref = model(x)
    report = quantize_model_palette(model, bits=4, quantizer="sq")
    assert [r["name"] for r in report] == ["0", "2"]
    assert all(isinstance(model[i], PaletteLinear) for i in (0, 2))
    assert all(r["rel_error"] < 0.15 and r["stored_bits"] > 4 for r in report)
    assert ((model(x) - ref).norm() / ref.norm()).item() < 0.2


def test_quantize_model_with_plan():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8))
    report = quantize_model_palette(model, quantizer="mixed", plan={"0": ("tcq", 3), "2": ("vq", 2)}, L=10)
    assert [(r["quantizer"], r["bits"]) for r in report] == [("tcq", 3.0), ("vq", 2.0)]
    assert model[0].kind == "tcq" and model[2].kind == "vq"
    with pytest.raises(ValueError, match="needs a plan"):
        quantize_model_palette(torch.nn.Linear(64, 4), quantizer="mixed")
