"""quantize_model(method="gptq"): gptq_int on every layer with one-pass, given or block-by-block
Hessians, the dequantized weights written back; clear errors before any weight changes."""

from __future__ import annotations

import pytest
import torch

import weightkit as wk
from weightkit.quant import collect_hessians, gptq_int, sequential_hessians


def tiny_gpt():
    torch.manual_seed(0)
    return wk.nn.GPT(vocab=256, d=32, layers=2, heads=4, ctx=32)


TOKENS = torch.randint(0, 256, (256,), generator=torch.Generator().manual_seed(2))


def weights(model):
    return {n: lin.weight.detach().clone() for n, lin in wk.eval.linear_layers(model).items()}


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_method_is_gptq_int_on_every_layer(act_order):
    model = tiny_gpt()
    layers = wk.eval.linear_layers(model)
    H = collect_hessians(model, TOKENS, layers, ctx=32)
    want = {n: gptq_int(lin.weight, H[n], 3, 16, act_order=act_order) for n, lin in layers.items()}
    rep = wk.quant.quantize_model(model, method="gptq", bits=3, group_size=16, calibration=TOKENS, calibration_ctx=32,
                                  act_order=act_order, progress=False)
    assert [r.name for r in rep.layers] == list(layers)
    for r in rep.layers:
        W_hat, bits = want[r.name]
        assert torch.equal(layers[r.name].weight, W_hat)
        assert r.bits_per_weight == bits
    # qkv (96 x 32): 2 groups of 16, so act order adds a 1-bit index per column, 32 / (96 * 32) per weight
    assert rep.layers[0].bits_per_weight == 3 + 32 / 16 + (1 / 96 if act_order else 0)
    given = tiny_gpt()
    wk.quant.quantize_model(given, method="gptq", bits=3, group_size=16, hessians=H, act_order=act_order,
                            progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(given).values(), weights(model).values()))


def test_sequential_gptq_is_block_by_block_by_hand():
    model = tiny_gpt()
    rep = wk.quant.quantize_model(model, method="gptq", bits=4, group_size=16, calibration=TOKENS, calibration_ctx=32,
                                  sequential=True, progress=False)
    ref = tiny_gpt()
    layers = wk.eval.linear_layers(ref)
    with torch.no_grad():
        for names, H in sequential_hessians(ref, TOKENS, layers, ctx=32):
            for n in names:
                layers[n].weight.copy_(gptq_int(layers[n].weight, H[n], 4, 16)[0])
    assert [r.name for r in rep.layers] == list(layers)
    assert all(torch.equal(a, b) for a, b in zip(weights(model).values(), weights(ref).values()))
    one_pass = tiny_gpt()
    wk.quant.quantize_model(one_pass, method="gptq", bits=4, group_size=16, calibration=TOKENS, calibration_ctx=32,
                            progress=False)
    assert not torch.equal(weights(one_pass)["blocks.1.fc"], weights(model)["blocks.1.fc"])  # block 1 saw block 0 quantized


def test_bad_gptq_options_are_refused_before_any_weight_changes():
    model = tiny_gpt()
    before = weights(model)
    fn = "weightkit.quant.quantize_model"
    q = lambda **kw: wk.quant.quantize_model(model, method="gptq", progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=rf"{fn}: method='gptq' needs bits an int in \[2, 8\], got 2.5"):
        q(calibration=TOKENS)
    with pytest.raises(ValueError, match=rf"{fn}: method='gptq' needs calibration tokens or hessians \(one of them\)"):
        q(bits=4)
    with pytest.raises(ValueError, match=rf"{fn}: method='gptq' needs calibration tokens or hessians"):
        q(bits=4, calibration=TOKENS, hessians={})
    with pytest.raises(ValueError, match=rf"{fn}: sequential=True needs calibration tokens"):
        q(bits=4, hessians={}, sequential=True)
    with pytest.raises(ValueError, match=rf"{fn}: hessians lacks layers \['blocks.0.attn.qkv'.*nothing was quantized"):
        q(bits=4, hessians={"blocks.1.fc": torch.eye(32)})
    with pytest.raises(TypeError, match=rf"{fn}: \['L'\] are not options of method='gptq'"):
        q(bits=4, calibration=TOKENS, L=12)
    with pytest.raises(ValueError, match=r"need at least ctx=512 tokens, got 256"):
        q(bits=4, calibration=TOKENS)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), weights(model).values()))
