"""weightkit.bench.generate: the byte counts it reports, its argument checks and a short real run."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers: pip install transformers gguf accelerate")

import weightkit as wk  # noqa: E402
from weightkit.bench import generate  # noqa: E402

from tests.conftest import skip_without_smollm2  # noqa: E402


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


def test_model_bytes_counts_a_tied_head_once_and_shrinks_with_quantization():
    model = tiny_llama()
    whole, linears = generate.model_bytes(model)
    per_block = 2 * 128 * 128 + 2 * 64 * 128 + 3 * 128 * 256  # q, o; k, v (2 of 4 heads); the MLP
    assert linears == 4 * 2 * per_block
    buffers = sum(b.nbytes for b in model.buffers())  # the rotary embedding's frequencies
    assert whole == 4 * sum(p.numel() for p in model.parameters()) + buffers  # the tied weight listed once
    half, half_linears = generate.model_bytes(model.to(torch.bfloat16))
    assert half_linears == linears // 2 and half < whole / 1.9
    quantized = tiny_llama()
    wk.quant.quantize_model(quantized, method="palette", quantizer="vq", bits=2.5, progress=False)
    q_whole, q_linears = generate.model_bytes(quantized)
    assert q_linears < linears / 6 and q_whole - q_linears == whole - linears  # only the linears changed


@pytest.mark.parametrize("kwargs, match", [
    (dict(arms=("bf16",)), "must include fp32"),
    (dict(arms=("fp32", "int5")), "must include fp32"),
    (dict(arms=("fp32",), new_tokens=1), "new_tokens >= 2"),
    (dict(arms=("fp32",), repeats=0), "repeats >= 1"),
])
def test_run_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate.run(**kwargs)


def test_short_run_on_smollm2():
    skip_without_smollm2()
    res = generate.run(arms=("fp32", "bf16"), new_tokens=3, repeats=1, log=lambda *_: None)
    (case,) = res["cases"]
    assert case["case"] == "decode-smollm2-bf16-vs-fp32" and case["ours_ms"] > 0 and case["baseline_ms"] > 0
    arms = res["extra"]["arms"]
    assert arms["fp32"]["tokens_equal_to_fp32"] == 3 and 0 <= arms["bf16"]["tokens_equal_to_fp32"] <= 3
    assert arms["fp32"]["linear_mb"] == pytest.approx(2 * arms["bf16"]["linear_mb"], rel=1e-3)
    assert arms["fp32"]["linear_mb"] == pytest.approx(30 * 4 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536) / 2**20,
                                                      rel=1e-3)


def test_quantized_arm_cast_to_bf16_keeps_the_formats_and_decodes():
    base = tiny_llama()
    fp32, info = generate.build_arm(base, generate.ARMS["vq-2.5"])
    bf16, info16 = generate.build_arm(base, generate.ARMS["vq-2.5+bf16"])
    assert info["bits_per_weight"] == info16["bits_per_weight"] > 2.5
    layer = bf16.model.layers[0].mlp.down_proj
    assert isinstance(layer, wk.nn.PaletteLinear) and layer.codebook.dtype == torch.float32
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(layer.packed, fp32.model.layers[0].mlp.down_proj.packed)  # same seed, same codes
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = fp32(ids).logits, bf16(ids).logits
    assert b.dtype == torch.bfloat16 and ((b.float() - a).norm() / a.norm()).item() < 0.05
