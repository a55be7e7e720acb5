"""PTQTP in a palette plan: ("ptqtp", 4) layers become TritPlaneLinear beside PaletteLinear ones,
their stored bits are counted as the layer stores them, and the allocation measures and picks
them like any other option."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightkit as wk
from weightkit.nn import PaletteLinear, TritPlaneLinear
from weightkit.quant.allocation import Option, allocate, measured_options, stored_options
from weightkit.quant.palette import PTQTP_BITS, build_layer, rate_of, stored_bits

from .test_allocation import TinyLM


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))


@pytest.mark.parametrize("shape, group_size", [((64, 128), 128), ((96, 64), 32), ((33, 100), 48), ((1, 7), 128)])
def test_stored_bits_of_ptqtp_is_what_the_layer_stores(shape, group_size):
    layer = build_layer(nn.Linear(shape[1], shape[0]), "ptqtp", PTQTP_BITS, group_size=group_size)
    assert isinstance(layer, TritPlaneLinear) and layer.group_size == group_size
    assert stored_bits(*shape, "ptqtp", PTQTP_BITS, group_size=group_size) == pytest.approx(rate_of(layer), rel=1e-12)


def test_plan_mixes_ptqtp_and_palette_layers():
    model = small_model()
    x = torch.randn(5, 128)
    reference = {i: model[i] for i in (0, 2, 4)}
    plan = {"0": ("ptqtp", 4), "2": Option("vq", 2.5, 0.0), "4": ("sq", 3)}
    hessians = {name: torch.eye(model[int(name)].in_features) for name in plan}
    rep = wk.quant.quantize_model(model, method="palette", quantizer="mixed", plan=plan, hessians=hessians,
                                  group_size=32, progress=False)
    assert isinstance(model[0], TritPlaneLinear) and model[0].group_size == 32
    assert (model[2].kind, model[2].bits, model[4].kind, model[4].bits) == ("vq", 2.5, "sq", 3.0)
    # Each layer is exactly the one build_layer makes alone (PTQTP ignores the Hadamard seed).
    with torch.no_grad():
        alone = build_layer(reference[0], "ptqtp", 4, group_size=32)
        assert torch.equal(model[0](x), alone(x))
        h = torch.relu(model[0](x))
        assert torch.equal(model[2](h), build_layer(reference[2], "vq", 2.5, seed=1, hessian=hessians["2"])(h))
    stored = [model[0].bits_per_weight(), rate_of(model[2]), rate_of(model[4])]
    assert [r.bits_per_weight for r in rep.layers] == pytest.approx(stored)
    assert model[0].bits_per_weight() == pytest.approx(4 + 2 * 16 / 32)


def test_ptqtp_choices_are_checked_before_anything_is_quantized():
    model = small_model()
    fn = "weightkit.quant.quantize_model"
    with pytest.raises(ValueError, match=rf"{fn}: layer '2' \(96x64\): bits=3 is not a rate of 'ptqtp': "
                                         r"it stores two trit planes, bits=4; nothing was quantized"):
        wk.quant.quantize_model(model, method="palette", quantizer="mixed", plan={"0": ("ptqtp", 4), "2": ("ptqtp", 3)},
                                progress=False)
    with pytest.raises(ValueError, match=r"quantizer must be one of \['sq', 'tcq', 'vq', 'ptqtp'\], got 'int4'"):
        wk.quant.quantize_model(model, method="palette", quantizer="mixed", plan={"0": ("int4", 4)}, progress=False)
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))
    with pytest.raises(ValueError, match=r"not a rate of 'ptqtp'"):
        stored_bits(64, 128, "ptqtp", 2)
    with pytest.raises(TypeError, match=r"measured_options: unknown layer options \['groupsize'\]"):
        measured_options(model, [Option("ptqtp", 4, 0.0)], groupsize=64)


def test_allocation_measures_ptqtp_and_picks_it_where_it_is_better():
    torch.manual_seed(0)
    model = TinyLM(d=256)
    options = [Option("sq", 2, 0.0), Option("sq", 3, 0.0), Option("ptqtp", 4, 0.0)]
    measured = measured_options(model, options, group_size=64)
    for name, lin in [("blocks.0", model.blocks[0]), ("head", model.head)]:
        opt = measured[name][2]
        layer = TritPlaneLinear.from_linear(lin, group_size=64)
        W = lin.weight.detach()
        assert opt.error == pytest.approx(((W - layer.dequantize()).pow(2).sum() / W.pow(2).sum()).item(), rel=1e-6)
        assert (opt.quantizer, opt.bits, opt.cost) == ("ptqtp", PTQTP_BITS, pytest.approx(layer.bits_per_weight()))
    # At 256 columns sq-3 pads to 4.13 stored bits; PTQTP (4.5 at group 64) has less than half its
    # error. A budget that fits PTQTP on one layer and sq-2 elsewhere puts it on the sensitive one.
    names = list(measured)
    sizes = [model.get_submodule(n).weight.numel() for n in names]
    cost = {n: {(o.quantizer, o.bits): o.cost for o in measured[n]} for n in names}
    error = {(o.quantizer, o.bits): o.error for o in measured["blocks.1"]}
    assert error[("sq", 3)] > 2 * error[("ptqtp", 4)]
    fit = sum(n * cost[name][("ptqtp", 4) if name == "blocks.1" else ("sq", 2)] for n, name in zip(sizes, names))
    plan = allocate(sizes, [1.0, 50.0, 1.0, 1.0], [measured[n] for n in names], budget_bits=fit / sum(sizes) + 0.01)
    assert [(o.quantizer, o.bits) for o in plan] == [("sq", 2), ("ptqtp", 4), ("sq", 2), ("sq", 2)]
    assert stored_options([(256, 256)], [Option("ptqtp", 4, 0.1)], group_size=64)[0][0].cost == \
        pytest.approx(cost["blocks.0"][("ptqtp", 4)])


def test_plan_mixed_with_ptqtp_among_the_quantizers():
    from weightkit.quant.allocation import plan_mixed

    torch.manual_seed(0)
    model = TinyLM(d=256)
    tokens = torch.randint(0, 50, (512,))
    plan, hessians = plan_mixed(model, tokens, budget_bits=4.5, quantizers=("sq", "ptqtp"), bits=(2, 3), ldlq=True,
                                n_sensitivity=128, group_size=64)
    assert set(plan) == {"blocks.0", "blocks.1", "blocks.2", "head"}
    assert set(plan.values()) <= {("sq", 2.0), ("sq", 3.0), ("ptqtp", 4.0)}
    rep = wk.quant.quantize_model(model, method="palette", quantizer="mixed", plan=plan, hessians=hessians,
                                  group_size=64, progress=False)
    assert rep.bits_per_weight <= 4.5
    for name, (quantizer, _) in plan.items():
        assert isinstance(model.get_submodule(name), TritPlaneLinear if quantizer == "ptqtp" else PaletteLinear)
