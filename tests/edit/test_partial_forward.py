"""UpperForward and logits_at give exactly the full model's logits (with the same edit of one
block's output applied by a hook), for a Llama- and a GPT-2-style model, right-padded batches."""

from __future__ import annotations

import pytest
import torch

import weightkit  # noqa: F401
from weightkit.edit.partial_forward import UpperForward, block_output, logits_at, with_block_output
from weightkit.edit.requests import pad_batch

transformers = pytest.importorskip("transformers")


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
        model = transformers.LlamaForCausalLM(cfg)
        return model.eval(), model.model.layers
    cfg = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=4, n_head=2, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg)
    return model.eval(), model.transformer.h


def batch():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 3, 11)]
    ids, mask = pad_batch(rows, "cpu")
    r = torch.tensor([0, 0, 1, 2, 2])
    p = torch.tensor([2, 6, 2, 0, 10])
    return ids, mask, r, p


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_logits_at_equals_full_logits(kind):
    model, _ = tiny(kind)
    ids, mask, r, p = batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[r, p]
        torch.testing.assert_close(logits_at(model, ids, mask, r, p), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("index", [0, 2, 3])
def test_upper_forward_equals_hooked_full_model(kind, index):
    model, layers = tiny(kind)
    ids, mask, r, p = batch()
    delta = torch.randn(3, 32, requires_grad=True)
    at = torch.tensor([4, 1, 9])

    def edit(hidden):
        add = torch.zeros_like(hidden)
        add[torch.arange(3), at] = delta
        return hidden + add

    handle = layers[index].register_forward_hook(lambda m, a, out: with_block_output(out, edit(block_output(out))))
    try:
        want = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[r, p]
    finally:
        handle.remove()
    (want_grad,) = torch.autograd.grad(want.square().sum(), delta)
    fwd = UpperForward(model, layers[index], ids, mask)
    got = fwd(edit, r, p)
    (got_grad,) = torch.autograd.grad(got.square().sum(), delta)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)
    # The model's own layer list is back in place after each call.
    assert (model.model.layers if kind == "llama" else model.transformer.h) is layers


def test_block_outside_a_module_list_is_refused():
    model, _ = tiny("llama")
    with pytest.raises(ValueError, match="weightkit.edit: .*not in an nn.ModuleList"):
        UpperForward(model, model.model.norm, *batch()[:2])
