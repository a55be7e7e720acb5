"""Model conversion edge cases found by a review: layers that cannot be swapped, dtype casts after
quantizing, bad layers found before anything changes, one-row trellis layers, failed loads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightkit as wk
from weightkit.nn import PaletteLinear, SparseLowRankLinear, TritPlaneLinear
from weightkit.quant import load_quantized, quantize_model, save_quantized


def kinds(model):
    return {name: type(m).__name__ for name, m in model.named_modules() if name}


@pytest.mark.parametrize("how", ["ptqtp", "palette", "sltrain"])
def test_linears_torch_reads_as_weights_are_left_dense(how):
    # nn.MultiheadAttention reads out_proj.weight instead of calling out_proj, and the eval-mode
    # fast path of nn.TransformerEncoderLayer its linear1/linear2 weights: replacing them made the
    # converted model fail in forward. Linears of one's own blocks around them still convert.
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True),
                          nn.Linear(64, 64), nn.MultiheadAttention(64, 4, batch_first=True)).eval()
    x = torch.randn(2, 5, 64)
    left_dense = ["0.self_attn.out_proj", "0.linear1", "0.linear2", "2.out_proj"]
    if how == "sltrain":
        wk.nn.to_sparse_lowrank(model, rank_ratio=0.5, verbose=False)
    else:
        assert quantize_model(model, how, progress=False, quantizer="sq", bits=4).skipped == left_dense
    assert [name for name, m in model.named_modules() if isinstance(m, nn.Linear)] == left_dense
    h = model[1](model[0](x))
    assert torch.isfinite(model[2](h, h, h)[0]).all()


@pytest.mark.parametrize("cast", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_casts_keep_the_quantized_formats(cast):
    torch.manual_seed(0)
    x = torch.randn(3, 64)
    for layer in (TritPlaneLinear.from_linear(nn.Linear(64, 32), group_size=32),
                  PaletteLinear.from_linear(nn.Linear(64, 32), "sq", 4)):
        y = layer(x)
        fixed = {n: b.dtype for n, b in layer.named_buffers() if n in ("scales", "signs", "codebook")}
        layer.to(cast)
        assert {n: b.dtype for n, b in layer.named_buffers() if n in fixed} == fixed
        x_dtype = torch.float32 if cast == torch.float64 else cast  # the kernels take fp32/bf16/fp16 activations
        got = layer(x.to(x_dtype))
        assert got.dtype == x_dtype
        assert (got.float() - y).abs().max() < 0.05 * y.abs().max()  # only the activations were rounded


def test_root_linear_is_refused():
    with pytest.raises(ValueError, match=r"weightkit.quant.quantize_model: the model itself is an nn.Linear"):
        quantize_model(nn.Linear(64, 32), "ptqtp", progress=False)
    with pytest.raises(ValueError, match=r"to_sparse_lowrank: the model itself is an nn.Linear"):
        wk.nn.to_sparse_lowrank(nn.Linear(64, 32), rank=4, verbose=False)


def small_model(width=64):
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 16))


@pytest.mark.parametrize("method, options", [("palette", {"quantizer": "sq", "bits": 4}), ("ptqtp", {}), ("int4", {})])
def test_a_bad_layer_is_found_before_any_layer_changes(method, options):
    model = small_model(width=100)  # 100 = 2^2 * 25: no Hadamard order
    if method != "palette":
        with torch.no_grad():
            model[4].weight[0, 0] = float("inf")
    before = kinds(model)
    problem = r"in_features=100 is not 2\^k" if method == "palette" else "has NaN or Inf weights"
    with pytest.raises(ValueError, match=rf"weightkit.quant.quantize_model: layer '4' .*{problem}.*nothing was quantized"):
        quantize_model(model, method, progress=False, **options)
    assert kinds(model) == before


def test_one_skip_pattern_as_a_string():
    model = small_model()
    report = quantize_model(model, "int4", skip="2", progress=False)
    assert report.skipped == ["2"] and [r.name for r in report.layers] == ["0", "4"]


def test_palette_plan_and_options_are_checked():
    with pytest.raises(ValueError, match=r"the plan names layers that are not quantized here: \['decoder.9'\]"):
        quantize_model(small_model(), "palette", quantizer="mixed", plan={"decoder.9": ("sq", 4)}, progress=False)
    with pytest.raises(TypeError, match=r"plan must map layer names to .* got a list"):
        quantize_model(small_model(), "palette", quantizer="mixed", plan=[("sq", 4)] * 3, progress=False)
    Option = wk.quant.allocation.Option
    plan = {"0": Option("sq", 4, 0.01), "2": ("vq", 3), "4": Option("sq", 2, 0.1)}
    model = small_model()
    quantize_model(model, "palette", quantizer="mixed", plan=plan, progress=False)
    assert [(model[i].kind, model[i].bits) for i in (0, 2, 4)] == [("sq", 4.0), ("vq", 3.0), ("sq", 2.0)]
    with pytest.raises(TypeError, match=r"unknown palette options \['l'\]"):
        quantize_model(small_model(), "palette", quantizer="tcq", bits=2, l=8, progress=False)


@pytest.mark.parametrize("bits", [2.25, 2])
def test_trellis_layer_with_one_row(bits):
    # A half rate splits the rows in two halves; one row leaves the first half empty.
    layer = PaletteLinear.from_linear(nn.Linear(64, 1), "tcq", bits, L=8)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias, rtol=1e-4, atol=1e-4)


def test_sparse_lowrank_alpha_and_weight_are_checked():
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"SparseLowRankLinear: alpha must be a finite number > 0"):
            SparseLowRankLinear(16, 16, 4, alpha=alpha)
    with pytest.raises(ValueError, match=r"SparseLowRankLinear: rank must be an int, got 2.0"):
        SparseLowRankLinear(16, 16, 2.0)
    with pytest.raises(ValueError, match=r"SparseLowRankLinear.from_weight: weight must be a 2-D float tensor"):
        SparseLowRankLinear.from_weight(torch.randn(16), None, 2)


def test_failed_load_puts_the_original_layers_back(tmp_path):
    src = small_model()
    quantize_model(src, "ptqtp", group_size=32, progress=False)
    path = tmp_path / "q.pt"
    save_quantized(src, path)
    dst = small_model()
    dst.add_module("extra", nn.Linear(4, 4))  # a key the file lacks: the strict load fails at the end
    before = {name: m for name, m in dst.named_modules()}
    with pytest.raises(RuntimeError, match="Missing key"):
        load_quantized(dst, path)
    assert all(dst.get_submodule(name) is m for name, m in before.items() if name)


def test_hugging_face_conv1d_is_reported_as_skipped():
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(Conv1D(64, 64), nn.Linear(64, 64))
    report = quantize_model(model, "int4", progress=False)
    assert report.skipped == ["0"] and [r.name for r in report.layers] == ["1"]

