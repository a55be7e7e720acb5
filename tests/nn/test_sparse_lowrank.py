"""weightkit.nn.SparseLowRankLinear and to_sparse_lowrank: the module contract, conversion,
initialization, state dicts, and the training features users need (compile, autocast,
gradient accumulation, Muon)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import weightkit as wk
from tests.optim.tiny_gpt import TinyGPT, lm_loss
from tests.reference.sparse_lowrank import sl_linear_ref
from weightkit.nn import SparseLowRankLinear, to_sparse_lowrank


def trained_layer(**kw) -> SparseLowRankLinear:
    """A layer with B != 0 (a fresh one has B = 0, which would hide low-rank bugs)."""
    torch.manual_seed(0)
    layer = SparseLowRankLinear(37, 29, rank=4, density=0.1, **kw)
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_forward_is_the_dense_weight(device):
    layer = trained_layer().to(device)
    x = torch.randn(3, 5, 37, device=device)
    ref = sl_linear_ref(x, layer.A, layer.B, layer.values, layer.row_ptr, layer.col_idx, layer.bias, layer.scale)
    torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.dense_weight(), layer.bias), rtol=1e-5, atol=1e-5)


def test_initialization_follows_the_paper():
    torch.manual_seed(0)
    layer = SparseLowRankLinear(400, 300, rank=32, density=0.03, alpha=16)
    assert layer.scale == 0.5
    assert torch.count_nonzero(layer.B) == 0
    bound = 1 / math.sqrt(400)
    assert float(layer.values.detach().abs().max()) <= bound and float(layer.values.detach().std()) > 0.5 * bound / math.sqrt(3)
    assert float(layer.A.detach().abs().max()) <= bound  # kaiming_uniform(a=sqrt(5)) on fan_in 400 gives 1/sqrt(400)
    assert layer.nnz == 300 * 12 and layer.col_idx.dtype == torch.int16 and layer.row_ptr.dtype == torch.int32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, r"rank must be in \[1, min\(in_features, out_features\)\] = \[1, 29\], got 0"),
        ({"rank": 30}, r"rank must be in \[1, min"),
        ({"rank": 4, "density": 0.0}, r"density must be in \(0, 1\], got 0.0"),
        ({"rank": 4, "density": 1.5}, r"density must be in \(0, 1\]"),
        ({"rank": 4, "support": "banded"}, "support must be one of"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match="SparseLowRankLinear: " + message):
        SparseLowRankLinear(37, 29, **kwargs)


def test_state_dict_round_trip_is_exact():
    layer = trained_layer(support="uniform", seed=5)
    state = layer.state_dict()
    other = SparseLowRankLinear(37, 29, rank=4, density=0.1, support="uniform", seed=5)
    other.load_state_dict(state)
    for name, t in layer.state_dict().items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(other.state_dict()[name], t), name
    x = torch.randn(6, 37)
    assert torch.equal(other(x), layer(x))


def test_missing_index_buffers_are_regenerated_from_the_seed():
    layer = trained_layer(seed=11)
    state = {k: v for k, v in layer.state_dict().items() if k not in ("row_ptr", "col_idx")}
    other = SparseLowRankLinear(37, 29, rank=4, density=0.1, seed=0)  # another seed: must be replaced
    other.load_state_dict(state)
    assert other.seed == 11
    assert torch.equal(other.col_idx, layer.col_idx) and torch.equal(other.row_ptr, layer.row_ptr)
    x = torch.randn(2, 37)
    assert torch.equal(other(x), layer(x))


def test_from_linear_beats_pure_low_rank_and_to_linear_round_trips():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    W = linear.weight.detach().double()
    fitted = SparseLowRankLinear.from_linear(linear, rank=8, density=0.1)
    U, s, Vh = torch.linalg.svd(W)
    low_rank_err = (W - (U[:, :8] * s[:8]) @ Vh[:8]).norm()
    one_step = SparseLowRankLinear.from_linear(linear, rank=8, density=0.1, iters=1)
    err = (fitted.dense_weight().double() - W).norm()
    assert err < (one_step.dense_weight().double() - W).norm() <= low_rank_err
    back = fitted.to_linear()
    x = torch.randn(5, 64)
    torch.testing.assert_close(back(x), fitted(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(back.bias, linear.bias)


def test_to_sparse_lowrank_converts_attention_and_mlp_only(capsys):
    model = TinyGPT(layers=2)
    before = sum(p.numel() for p in model.parameters())
    to_sparse_lowrank(model, rank_ratio=0.25, density=0.05)
    converted = [n for n, m in model.named_modules() if isinstance(m, SparseLowRankLinear)]
    assert converted == [f"blocks.{i}.{leaf}" for i in range(2) for leaf in ("attn.qkv", "attn.proj", "fc", "out")]
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.tok, nn.Embedding)
    assert model.blocks[0].fc.rank == 8  # round(0.25 * min(32, 128))
    after = sum(p.numel() for p in model.parameters())
    assert f"parameters {before:,} -> {after:,}" in capsys.readouterr().out
    # Layers get distinct supports, and the conversion repeats exactly.
    assert not torch.equal(model.blocks[0].fc.col_idx, model.blocks[1].fc.col_idx)
    again = to_sparse_lowrank(TinyGPT(layers=2), rank_ratio=0.25, density=0.05, verbose=False)
    assert torch.equal(again.blocks[1].out.col_idx, model.blocks[1].out.col_idx)


def test_to_sparse_lowrank_filters_and_errors():
    model = to_sparse_lowrank(TinyGPT(layers=2), rank=4, include=["*.fc"], verbose=False)
    assert isinstance(model.blocks[0].fc, SparseLowRankLinear) and isinstance(model.blocks[0].out, nn.Linear)
    with pytest.raises(ValueError, match="exactly one of rank and rank_ratio"):
        to_sparse_lowrank(TinyGPT(), rank=4, rank_ratio=0.5)
    with pytest.raises(ValueError, match="no linear layer matched"):
        to_sparse_lowrank(TinyGPT(), rank=4, include=["nothing"])
    with pytest.raises(ValueError, match=r"rank_ratio must be in \(0, 1\]"):
        to_sparse_lowrank(TinyGPT(), rank_ratio=2.0)


def test_fit_conversion_keeps_the_function_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    x = torch.randn(8, 32)
    y = model(x)
    fresh = to_sparse_lowrank(copy.deepcopy(model), rank_ratio=0.5, density=0.2, verbose=False)
    to_sparse_lowrank(model, rank_ratio=0.5, density=0.2, fit=True, verbose=False)
    rel = lambda m: ((m(x) - y).norm() / y.norm()).item()  # noqa: E731
    # Random weights have a flat spectrum (the hardest case for a rank-16 + 20% fit).
    assert rel(model) < 0.45 < 0.9 < rel(fresh)


def test_torch_compile_fullgraph_matches_eager():
    layer = trained_layer()
    x = torch.randn(4, 37, requires_grad=True)
    eager_y = layer(x)
    eager_y.square().sum().backward()
    eager = [t.grad.clone() for t in (x, layer.A, layer.B, layer.values, layer.bias)]
    for t in (x, layer.A, layer.B, layer.values, layer.bias):
        t.grad = None
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.square().sum().backward()
    torch.testing.assert_close(y, eager_y)
    for got, want in zip((x, layer.A, layer.B, layer.values, layer.bias), eager):
        torch.testing.assert_close(got.grad, want)


def test_autocast_bf16_keeps_fp32_masters():
    layer = trained_layer()
    x = torch.randn(8, 37)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert layer.A.grad.dtype == torch.float32 and layer.values.grad.dtype == torch.float32
    ref = layer(x).detach()
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2


def test_gradient_accumulation_equals_the_full_batch():
    layer = trained_layer()
    x = torch.randn(10, 37)
    layer(x).square().sum().backward()
    full = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    for chunk in x.chunk(2):
        layer(chunk).square().sum().backward()
    for p, want in zip(layer.parameters(), full):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-4)


def test_muon_trains_the_factors_and_adamw_the_values():
    torch.manual_seed(0)
    model = to_sparse_lowrank(TinyGPT(layers=2), rank_ratio=0.25, density=0.05, verbose=False)
    muon, adamw = wk.optim.split_muon_params(model)
    fc = model.blocks[0].fc
    assert any(p is fc.A for p in muon) and any(p is fc.B for p in muon)
    assert any(p is fc.values for p in adamw)
    opt = wk.optim.Muon(model, lr=0.02, adamw_lr=3e-3)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 64, (8, 17), generator=g)
    first = lm_loss(model, batch).item()
    for _ in range(15):
        opt.zero_grad()
        lm_loss(model, batch).backward()
        opt.step()
    assert lm_loss(model, batch).item() < 0.8 * first
    assert torch.count_nonzero(fc.B) > 0


def test_sparse_lowrank_from_the_meta_device():
    # The FSDP2 / large-model pattern: build on meta, to_empty(), reset_parameters().
    ref = SparseLowRankLinear(64, 32, rank=4, density=0.1, seed=3)
    with torch.device("meta"):
        layer = SparseLowRankLinear(64, 32, rank=4, density=0.1, seed=3)
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert torch.equal(layer.row_ptr, ref.row_ptr) and torch.equal(layer.col_idx, ref.col_idx)
    assert torch.isfinite(layer(torch.randn(2, 64))).all()
