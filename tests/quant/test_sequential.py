"""sequential_hessians: block-by-block Hessians equal collect_hessians on the model as the caller
left it below each block; quantize_model(sequential=True) is LDLQ done block by block."""

from __future__ import annotations

import pytest
import torch

import weightkit as wk
from weightkit.quant import collect_hessians, sequential_hessians


def tiny_gpt():
    torch.manual_seed(0)
    return wk.nn.GPT(vocab=256, d=32, layers=3, heads=4, ctx=32)


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


MODELS = {"gpt": tiny_gpt, "llama": tiny_llama}
TOKENS = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(1))  # 6 windows of 32


def block_layers(model):
    return wk.eval.linear_layers(model, exclude=("lm_head", "embed"))


@pytest.mark.parametrize("kind", MODELS)
def test_unchanged_model_gives_collect_hessians_block_by_block(kind):
    model = MODELS[kind]()
    layers = block_layers(model)
    want = collect_hessians(model, TOKENS, layers, ctx=32, batch_size=4)
    seen = []
    for names, H in sequential_hessians(model, TOKENS, layers, ctx=32, batch_size=4):
        seen.append(names)
        for name in names:
            torch.testing.assert_close(H[name], want[name], rtol=1e-5, atol=1e-7)
    assert [n for names in seen for n in names] == list(layers)  # every layer once, in module order
    assert len(seen) == 3  # one yield per block
    assert all(not lin._forward_pre_hooks for lin in layers.values())  # hooks removed


@pytest.mark.parametrize("kind", MODELS)
def test_each_block_sees_the_blocks_below_as_the_caller_left_them(kind):
    model = MODELS[kind]()
    layers = block_layers(model)
    before = collect_hessians(model, TOKENS, layers, ctx=32)
    got = {}
    for names, H in sequential_hessians(model, TOKENS, layers, ctx=32):
        got.update(H)
        with torch.no_grad():
            for name in names:  # "quantize" the block: any change of its weights
                layers[name].weight.mul_(0.5).add_(0.01)
    # Measured afresh on the changed model, the last block's input (the first layer's: q/k/v read
    # it normalized) is what sequential saw; the layers after it read outputs of layers that were
    # changed only after the measurement. The first block's inputs depend on no block.
    after = collect_hessians(model, TOKENS, layers, ctx=32)
    entry = [n for n in layers if ".2." in n][0]
    torch.testing.assert_close(got[entry], after[entry], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got[entry], before[entry], rtol=1e-3)
    for name in [n for n in layers if ".0." in n]:
        torch.testing.assert_close(got[name], before[name], rtol=1e-5, atol=1e-7)


def test_quantize_model_sequential_is_ldlq_block_by_block():
    model = tiny_gpt()
    state = model.state_dict()
    got = wk.quant.quantize_model(model, method="palette", quantizer="vq", bits=2.5, calibration=TOKENS,
                                  calibration_ctx=32, sequential=True, progress=False)
    # By hand: each block with Hessians measured on the model whose lower blocks are quantized.
    ref = tiny_gpt()
    ref.load_state_dict(state)
    for i in range(3):
        others = [f"blocks.{j}.*" for j in range(3) if j != i]
        H = collect_hessians(ref, TOKENS, wk.eval.linear_layers(ref, include=f"blocks.{i}."), ctx=32)
        wk.quant.quantize_model(ref, method="palette", quantizer="vq", bits=2.5, hessians=H, seed=4 * i,
                                skip=["*lm_head*", *others], progress=False)
    assert [r.name for r in got.layers] == list(block_layers(tiny_gpt()))  # module order
    x = TOKENS[:64].view(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    plain = tiny_gpt()
    plain.load_state_dict(state)
    wk.quant.quantize_model(plain, method="palette", quantizer="vq", bits=2.5, calibration=TOKENS, calibration_ctx=32,
                            progress=False)
    with torch.no_grad():
        assert not torch.allclose(plain(x), model(x))  # the order changed something


def test_bad_input_is_refused():
    model = tiny_gpt()
    fn = "weightkit.quant.sequential_hessians"
    with pytest.raises(ValueError, match=rf"{fn}: these layers are not inside the model's 3 blocks: \['lm_head'\]"):
        next(sequential_hessians(model, TOKENS, wk.eval.linear_layers(model, exclude=()), ctx=32))
    with pytest.raises(ValueError, match=rf"{fn}: need at least ctx=32 tokens, got 10"):
        next(sequential_hessians(model, TOKENS[:10], block_layers(model), ctx=32))
    flat = torch.nn.Sequential(torch.nn.Embedding(256, 8), torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match=rf"{fn}: found no list of blocks in the model"):
        next(sequential_hessians(flat, TOKENS, {"1": flat[1]}, ctx=32))
    with pytest.raises(ValueError, match=r"quantize_model: sequential=True needs calibration tokens"):
        wk.quant.quantize_model(model, method="palette", quantizer="vq", bits=2.5, sequential=True, progress=False)
