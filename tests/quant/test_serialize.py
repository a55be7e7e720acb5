"""save_quantized / load_quantized: a quantized model written to disk and loaded into a fresh,
unquantized model of the same architecture gives bit-identical outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weightkit as wk
from weightkit.nn import PaletteLinear, TritPlaneLinear
from weightkit.nn.gpt import GPT
from weightkit.quant import load_quantized, save_quantized
from weightkit.quant.palette import quantize_model_palette


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(vocab=64, d=64, layers=2, heads=2, ctx=32).eval()


TOKENS = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))


def round_trip(quantized: nn.Module, fresh: nn.Module, tmp_path, **load_kwargs) -> nn.Module:
    path = tmp_path / "model.pt"
    size = save_quantized(quantized, path)
    assert size == path.stat().st_size > 0
    return load_quantized(fresh, path, **load_kwargs)


@pytest.mark.parametrize("method", ["ptqtp", "palette sq", "palette vq", "palette tcq", "palette tcq half"])
def test_round_trip_gives_identical_outputs(tmp_path, method):
    model = tiny_gpt(seed=0)
    if method == "ptqtp":
        wk.quant.quantize_model(model, method="ptqtp", group_size=32, progress=False)
    else:
        quantizer = method.split()[1]
        bits = {"sq": 3, "vq": 2, "tcq": 2}[quantizer] + (0.25 if method.endswith("half") else 0)
        quantize_model_palette(model, bits=bits, quantizer=quantizer, L=8, skip=("*lm_head*", "*embed*"))
    with torch.no_grad():
        expected = model(TOKENS)
    loaded = round_trip(model, tiny_gpt(seed=1), tmp_path)  # other random weights everywhere
    kind = TritPlaneLinear if method == "ptqtp" else PaletteLinear
    quantized = [n for n, m in model.named_modules() if isinstance(m, kind)]
    assert len(quantized) == 8 and [n for n, m in loaded.named_modules() if isinstance(m, kind)] == quantized
    assert loaded.blocks[0].attn.qkv.extra_repr() == model.blocks[0].attn.qkv.extra_repr()
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS), expected)


def test_layer_with_bias_and_mixed_kinds(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 40), nn.ReLU(), nn.Linear(40, 24, bias=False), nn.ReLU(), nn.Linear(24, 8))
    model[0] = TritPlaneLinear.from_linear(model[0], group_size=32)
    model[0].bias.normal_()
    model[2] = PaletteLinear.from_linear(model[2], kind="sq", bits=4)
    x = torch.randn(3, 96)
    expected = model(x)
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(96, 40), nn.ReLU(), nn.Linear(40, 24, bias=False), nn.ReLU(), nn.Linear(24, 8))
    loaded = round_trip(model, fresh, tmp_path)
    assert isinstance(loaded[0], TritPlaneLinear) and isinstance(loaded[2], PaletteLinear)
    assert isinstance(loaded[4], nn.Linear) and torch.equal(loaded[4].weight, model[4].weight)
    assert loaded[2].bias is None
    assert torch.equal(loaded(x), expected)


def test_loads_into_an_already_quantized_model(tmp_path):
    model = tiny_gpt(seed=0)
    wk.quant.quantize_model(model, method="ptqtp", group_size=32, progress=False)
    other = tiny_gpt(seed=1)
    wk.quant.quantize_model(other, method="ptqtp", group_size=64, progress=False)  # another geometry
    loaded = round_trip(model, other, tmp_path)
    assert loaded.blocks[1].fc.group_size == 32
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS), model(TOKENS))


def test_meta_skeleton_with_assign(tmp_path):
    model = tiny_gpt(seed=0)
    wk.quant.quantize_model(model, method="ptqtp", group_size=32, progress=False)
    with torch.device("meta"):
        skeleton = GPT(vocab=64, d=64, layers=2, heads=2, ctx=32)
    loaded = round_trip(model, skeleton, tmp_path, assign=True).eval()
    assert all(not t.is_meta for t in loaded.state_dict().values() if isinstance(t, torch.Tensor))
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS), model(TOKENS))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="save_quantized: the model has no quantized layer"):
        save_quantized(tiny_gpt(seed=0), tmp_path / "x.pt")

    not_ours = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, not_ours)
    with pytest.raises(ValueError, match="load_quantized.*not a weightkit quantized-model file"):
        load_quantized(tiny_gpt(seed=0), not_ours)

    model = tiny_gpt(seed=0)
    wk.quant.quantize_model(model, method="ptqtp", group_size=32, progress=False)
    path = tmp_path / "q.pt"
    save_quantized(model, path)

    blob = torch.load(path, weights_only=True)
    blob["version"] = 99
    future = tmp_path / "future.pt"
    torch.save(blob, future)
    with pytest.raises(ValueError, match="file format version 99"):
        load_quantized(tiny_gpt(seed=0), future)

    with pytest.raises(ValueError, match="no module 'blocks.1.attn.qkv'.*another architecture"):
        load_quantized(GPT(vocab=64, d=64, layers=1, heads=2, ctx=32), path)
    with pytest.raises(ValueError, match="'blocks.0.attn.qkv' is 128 -> 384 features, the file's layer 64 -> 192"):
        load_quantized(GPT(vocab=64, d=128, layers=2, heads=2, ctx=32), path)
    wrong_kind = tiny_gpt(seed=0)
    wrong_kind.blocks[0].attn.qkv = nn.Identity()
    with pytest.raises(ValueError, match="'blocks.0.attn.qkv' is a Identity; a TritPlaneLinear replaces an nn.Linear"):
        load_quantized(wrong_kind, path)
    with pytest.raises(FileNotFoundError):
        load_quantized(tiny_gpt(seed=0), tmp_path / "missing.pt")



def test_hugging_face_model(tmp_path):
    """The README's recipe on a tiny Llama with tied embeddings: the tie survives; a meta skeleton
    is refused by name, since its rotary table is no part of the state dict."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    wk.quant.quantize_model(model, method="ptqtp", group_size=32, progress=False)
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    loaded = round_trip(model, transformers.LlamaForCausalLM(config), tmp_path).eval()
    assert isinstance(loaded.model.layers[1].mlp.down_proj, TritPlaneLinear)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match=r"tensors are still on the meta device.*rotary_emb\.inv_freq"):
        load_quantized(skeleton, tmp_path / "model.pt", assign=True)
