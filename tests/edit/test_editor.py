"""RLSEditor / MEMITEditor / FineTuneEditor logic on tiny random HF models, and a few real edits
of SmolLM2-135M (skipped when the model or transformers is missing)."""

from __future__ import annotations

import copy

import pytest
import torch

import weightkit  # noqa: F401
from weightkit.edit import FineTuneEditor, MEMITEditor, RLSEditor, ValueConfig
from weightkit.edit.compute import layer_keys_and_outputs, subject_keys, target_values
from weightkit.edit.metrics import target_logprobs
from weightkit.edit.requests import check_requests

from tests.conftest import skip_without_smollm2

transformers = pytest.importorskip("transformers")


class ByteTokenizer:
    """UTF-8 bytes as token ids: all the editors need from a tokenizer."""

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": list(text.encode("utf-8"))}


REQUESTS = [
    {"prompt": "The capital of Zorbia is", "subject": "Zorbia", "target_new": " Q", "ground_truth": " P",
     "paraphrases": ["Zorbia has its capital in"], "neighborhood": ["The capital of Xandu is"]},
    {"prompt": "{} is a city in", "subject": "Blip", "target_new": " W", "ground_truth": " V"},
    {"prompt": "Mount Yarr stands in", "subject": "Mount Yarr", "target_new": " K", "ground_truth": " J"},
]
CFG = ValueConfig(steps=8, lr=0.5)


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                   initializer_range=0.2)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def editor(model, cls=RLSEditor, tmp_path=None, layers=None, **kw):
    # lam small against the tiny model's key norms, so an edit is mostly realized.
    kw.setdefault("lam", 1e-3)
    kw.setdefault("mu", 1.0)
    # Plain prompts only: a random byte-level model's keys change a lot behind a prefix.
    kw.setdefault("prefixes", ("",))
    return cls(model, layers or [1, 2], tokenizer=ByteTokenizer(), value_config=CFG, stats_tokens=2048, progress=False,
               cache=tmp_path if tmp_path is not None else False, **kw)


def gap(ed, reqs, Z):
    """‖Z − (the last edited layer's output at each subject token)‖ per request."""
    reqs = check_requests(reqs)
    _, Z_now = layer_keys_and_outputs(ed.model, ByteTokenizer(), reqs, ed.accesses[-1], ed.accesses[-1].block, ("",))
    return (Z - Z_now).norm(dim=1)


def margin(model, reqs):
    """log P(new) - log P(old) on each request's prompt."""
    pairs = [(p, t) for r in reqs for p, t in ((r["prompt"].format(r["subject"]), r["target_new"]),
                                                (r["prompt"].format(r["subject"]), r["ground_truth"]))]
    lp = target_logprobs(model, ByteTokenizer(), pairs)
    return lp[0::2] - lp[1::2]


def test_rls_edit_moves_targets_and_only_edited_layers(tmp_path):
    model = tiny_llama()
    before = {n: p.clone() for n, p in model.named_parameters()}
    ed = editor(model, tmp_path=tmp_path)
    ed._ensure_state()
    # The same target values the edit computes (deterministic): the edit must realize them.
    Z = target_values(model, ByteTokenizer(), check_requests(REQUESTS), ed.accesses[-1].block, CFG, ("",))
    before_gap = gap(ed, REQUESTS, Z)
    ed.edit(REQUESTS)
    assert ed.n_edits == 3
    assert (gap(ed, REQUESTS, Z) < 0.05 * before_gap).all()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}
    # The key statistics were cached on disk and are reused.
    assert len(list((tmp_path / "edit-stats").glob("*.pt"))) == 2
    metrics = ed.evaluate(REQUESTS, fluency_prompts=1, fluency_tokens=8)
    assert metrics["efficacy_n"] == 3 and metrics["generalization_n"] == 1 and metrics["specificity_n"] == 1
    assert 0.0 <= metrics["efficacy"] <= 1.0 and metrics["fluency"] >= 0.0


def test_state_dict_resumes_stream():
    model_a = tiny_llama()
    model_b = copy.deepcopy(model_a)
    gram = None
    a = editor(model_a)
    a.edit(REQUESTS[:1])
    state = a.state_dict()
    gram = a._gram
    b = RLSEditor(model_b, [1, 2], 1e-3, 1.0, tokenizer=ByteTokenizer(), value_config=CFG, gram=gram, prefixes=("",))
    b.load_state_dict(state)
    assert b.n_edits == 1
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    a.edit(REQUESTS[1:])
    b.edit(REQUESTS[1:])
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    for i in (1, 2):
        assert torch.allclose(a.C[i], b.C[i], rtol=1e-10, atol=1e-12)


def test_rls_carries_C_and_memit_restarts():
    rls, memit = editor(tiny_llama()), editor(tiny_llama(), cls=MEMITEditor)
    rls.edit(REQUESTS[:2])
    memit.edit(REQUESTS[:2])
    for i in (1, 2):
        assert not torch.equal(rls.C[i], rls.C0[i])
        assert torch.equal(memit.C[i], memit.C0[i])


def test_bf16_model_keeps_fp32_master():
    model = tiny_llama(torch.bfloat16)
    ed = editor(model)
    ed.edit(REQUESTS[:1])
    W = model.model.layers[1].mlp.down_proj.weight
    assert ed.master[1].dtype == torch.float32 and W.dtype == torch.bfloat16
    assert torch.equal(W, ed.master[1].to(torch.bfloat16))


def test_gpt2_conv1d_transposed():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=3, n_head=2, n_positions=128, initializer_range=0.2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ed = RLSEditor(model, [1], 1e-3, 1.0, tokenizer=ByteTokenizer(), value_config=CFG, stats_tokens=2048, stats_ctx=64,
                   progress=False, cache=False, prefixes=("",))
    assert ed.accesses[0].transposed and ed.accesses[0].weight().shape == (32, 128)
    ed._ensure_state()
    Z = target_values(model, ByteTokenizer(), check_requests(REQUESTS[:2]), ed.accesses[-1].block, CFG, ("",))
    before_gap = gap(ed, REQUESTS[:2], Z)
    ed.edit(REQUESTS[:2])
    assert (gap(ed, REQUESTS[:2], Z) < 0.05 * before_gap).all()


def test_sentence_gram_counts_real_tokens_only(tmp_path):
    """key_gram over a sentence list: padding is not counted, and it equals the Gram of each
    sentence run alone; anchor sentences mix into the editor's anchor with anchor_weight."""
    from weightkit.edit.model_access import key_gram, layer_access

    model = tiny_llama()
    acc = layer_access(model, [1, 2])
    sentences = ["Zorbia is a country.", "Blip is a city in Zorbia.", "Q."]
    got = key_gram(model, ByteTokenizer(), acc, source=sentences, cache=tmp_path, progress=False)
    keys = {1: [], 2: []}
    hooks = [a.proj.register_forward_pre_hook(lambda m, args, i=a.index: keys[i].append(args[0][0].double()))
             for a in acc]
    with torch.no_grad():
        for s in sentences:
            model(input_ids=torch.tensor([list(s.encode())]))
    for h in hooks:
        h.remove()
    for i in (1, 2):
        K = torch.cat(keys[i])
        # fp32 forward in a padded batch vs alone: rounding-level differences only.
        torch.testing.assert_close(got[i], K.T @ K / K.shape[0], rtol=1e-4, atol=1e-6)
    # Cached under a hash of the sentences: a second call reads the files.
    assert len(list((tmp_path / "edit-stats").glob("*sentences-*.pt"))) == 2
    assert torch.equal(key_gram(model, ByteTokenizer(), acc, source=sentences, cache=tmp_path, progress=False)[1], got[1])

    ed = editor(model, anchor_sentences=sentences, anchor_weight=0.25, tmp_path=tmp_path)
    ed._ensure_state()
    text = key_gram(model, ByteTokenizer(), acc, source="pydoc", n_tokens=2048, ctx=512, cache=tmp_path, progress=False)
    for i in (1, 2):
        torch.testing.assert_close(ed._gram[i], 0.75 * text[i] + 0.25 * got[i])
    with pytest.raises(ValueError, match="anchor_weight must be in"):
        editor(model, anchor_weight=1.5)
    with pytest.raises(ValueError, match="sentence list is empty"):
        key_gram(model, ByteTokenizer(), acc, source=[], cache=False, progress=False)


def test_text_gram_offset_reads_a_later_slice(tmp_path):
    """key_gram(offset=o) is the Gram of tokens [o, o + n_tokens), cached apart from offset 0."""
    from weightkit.data import eval_tokens
    from weightkit.edit.model_access import key_gram, layer_access

    model = tiny_llama()
    acc = layer_access(model, [1])
    tok = ByteTokenizer()
    kw = dict(source="pydoc", n_tokens=256, ctx=128, cache=tmp_path, progress=False)
    first, later = key_gram(model, tok, acc, **kw)[1], key_gram(model, tok, acc, offset=512, **kw)[1]
    ids = eval_tokens(tok, "pydoc", 256, 512)
    keys = []
    hook = acc[0].proj.register_forward_pre_hook(lambda m, args: keys.append(args[0][0].double()))
    with torch.no_grad():
        for s in (0, 128):
            model(input_ids=ids[s : s + 128][None])
    hook.remove()
    K = torch.cat(keys)
    torch.testing.assert_close(later, K.T @ K / K.shape[0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(first, later)
    assert len(list((tmp_path / "edit-stats").glob("*-o512-L1-*.pt"))) == 1


PRESERVE = [{"prompt": "The capital of Xandu is", "subject": "Xandu"},
            {"prompt": "{} is a city in", "subject": "Blop"},
            {"prompt": "Mount Yurr stands in", "subject": "Mount Yurr"}]


def test_preserved_keys_join_the_anchor_and_hold_still(tmp_path):
    """subject_keys computes keys exactly as an edit does; preserve adds weight·KᵀK to C0's
    inverse, and a heavy weight keeps the preserved keys' outputs where they were."""
    model = tiny_llama()
    ed = editor(model, preserve=PRESERVE, preserve_weight=1e4, tmp_path=tmp_path, prefixes=("", "A. "))
    keys = subject_keys(model, ByteTokenizer(), check_requests(PRESERVE, need_target=False), ed.accesses, ("", "A. "))
    for a in ed.accesses:
        K, _ = layer_keys_and_outputs(model, ByteTokenizer(), check_requests(PRESERVE, need_target=False), a,
                                      ed.accesses[-1].block, ("", "A. "))
        torch.testing.assert_close(keys[a.index], K)
    ed._ensure_state()
    for a in ed.accesses:
        K = keys[a.index].double()
        A = 1e-3 * torch.eye(a.d_k, dtype=torch.float64) + ed._gram[a.index] + 1e4 * K.T @ K
        torch.testing.assert_close(ed.C0[a.index] @ A, torch.eye(a.d_k, dtype=torch.float64), atol=1e-6, rtol=0)

    def moved(**kw):
        m = copy.deepcopy(model)
        e = editor(m, tmp_path=tmp_path, prefixes=("", "A. "), **kw)
        before = [a.weight().clone() for a in e.accesses]
        e.edit(REQUESTS)
        return max(((a.weight() - w0).double() @ keys[a.index].double().T).norm().item()
                   for a, w0 in zip(e.accesses, before))

    free, held = moved(), moved(preserve=PRESERVE, preserve_weight=1e4)
    assert held < 0.05 * free, (held, free)
    with pytest.raises(ValueError, match="preserve_weight must be a finite number >= 0"):
        editor(model, preserve=PRESERVE, preserve_weight=-1.0)
    with pytest.raises(ValueError, match="request 0 needs a non-empty string 'subject'"):
        editor(model, preserve=[{"prompt": "A is"}])


def test_preserve_nearest_appends_the_most_similar_pool_rows(tmp_path):
    """preserve_nearest=k: each update also fits, with weight preserve_weight, the k pool keys
    most like each edit key to their unedited outputs; held that way they move less."""
    model = tiny_llama()
    ed = editor(model, preserve=PRESERVE, preserve_weight=4.0, preserve_nearest=1, tmp_path=tmp_path)
    ed._ensure_state()  # no edit: the model stays as it is
    for a in ed.accesses:
        P, P_out = ed._pool[a.index]
        torch.testing.assert_close(P_out, P @ a.weight().double().T)
        # Edit keys equal to pool rows 2 and 0 (scaled: cosine ignores the norm) pick exactly those.
        K = torch.stack([3 * P[2], P[0]])
        V = torch.randn(2, P_out.shape[1], dtype=torch.float64)
        K2, V2 = ed._with_nearest(a.index, K, V)
        torch.testing.assert_close(K2, torch.cat([K, 2 * P[[0, 2]]]))
        torch.testing.assert_close(V2, torch.cat([V, 2 * P_out[[0, 2]]]))

    keys = subject_keys(model, ByteTokenizer(), check_requests(PRESERVE, need_target=False), ed.accesses, ("",))

    def moved(**kw):
        e = editor(copy.deepcopy(model), tmp_path=tmp_path, preserve=PRESERVE, preserve_weight=4.0, **kw)
        before = [a.weight().clone() for a in e.accesses]
        e.edit(REQUESTS)
        return max(((a.weight() - w0).double() @ keys[a.index].double().T).norm().item()
                   for a, w0 in zip(e.accesses, before))

    assert moved(preserve_nearest=2) < moved()
    with pytest.raises(ValueError, match="preserve_nearest needs preserve"):
        editor(model, preserve_nearest=2)
    with pytest.raises(ValueError, match="preserve_nearest must be an int >= 0"):
        editor(model, preserve=PRESERVE, preserve_nearest=-1)


def test_retries_update_only_unrealized_requests(monkeypatch):
    model = tiny_llama()
    calls = []
    update = RLSEditor._update
    monkeypatch.setattr(RLSEditor, "_update", lambda self, chunk: (calls.append(len(chunk)), update(self, chunk)))
    editor(copy.deepcopy(model), retries=2, retry_nll=1e9).edit(REQUESTS)
    assert calls == [3]  # every target already below a huge threshold: no retry
    calls.clear()
    ed = editor(model, retries=2, retry_nll=-1.0)
    ed.edit(REQUESTS)
    assert calls == [3, 3, 3]  # NLL is never below -1: every request retried, at most twice
    assert ed._unrealized(check_requests(REQUESTS)) == check_requests(REQUESTS)
    ed.retry_nll = 1e9
    assert ed._unrealized(check_requests(REQUESTS)) == []
    with pytest.raises(ValueError, match="retries must be an int >= 0"):
        editor(model, retries=-1)


def test_finetune_baseline_moves_targets():
    model = tiny_llama()
    m0 = margin(model, REQUESTS)
    FineTuneEditor(model, [1, 2], tokenizer=ByteTokenizer(), steps=10, lr=1e-2).edit(REQUESTS)
    assert (margin(model, REQUESTS) > m0).all()


def test_bad_requests_and_arguments():
    model = tiny_llama()
    ed = editor(model)
    with pytest.raises(ValueError, match="target_new"):
        ed.edit([{"prompt": "A is", "subject": "A"}])
    with pytest.raises(ValueError, match="does not occur in prompt"):
        ed.edit([{"prompt": "A is", "subject": "B", "target_new": " C"}])
    with pytest.raises(ValueError, match="lam and mu must not both be 0"):
        RLSEditor(model, [1], 0.0, 0.0)
    with pytest.raises(ValueError, match="no module"):
        RLSEditor(model, [9])
    with pytest.raises(ValueError, match="tokenizer"):
        RLSEditor(model, [1]).edit(REQUESTS[:1])


def test_smollm2_real_edits():
    """Two real counterfactual edits of SmolLM2-135M: the new objects win, a neighbour keeps its own."""
    from weightkit import data

    skip_without_smollm2()
    model, tok = data.load_smollm2()
    reqs = [
        {"prompt": "The capital of France is", "subject": "France", "target_new": " Rome", "ground_truth": " Paris",
         "paraphrases": ["The capital city of France is"]},
        {"prompt": "Tokyo is a city in the country of", "subject": "Tokyo", "target_new": " Brazil",
         "ground_truth": " Japan", "neighborhood": ["Osaka is a city in the country of"]},
    ]
    ed = RLSEditor(model, [4, 5, 6, 7], tokenizer=tok, value_config=ValueConfig(steps=12), progress=False)
    assert ed.evaluate(reqs, fluency_prompts=0)["efficacy"] == 0.0
    ed.edit(reqs)
    m = ed.evaluate(reqs, fluency_prompts=0)
    assert m["efficacy"] == 1.0 and m["specificity"] == 1.0


def test_low_precision_weights_changed_outside_the_editor_are_kept():
    # bf16 weights are updated through an fp32 master copy; a change made to the model between
    # edits (an undo, fine-tuning) used to be overwritten by that stale copy at the next edit.
    model = tiny_llama(torch.bfloat16)
    ed = editor(model)
    ed.edit(REQUESTS[:1])
    a = ed.accesses[0]
    with torch.no_grad():
        a.weight().add_(1.0)
    changed = a.weight().float().mean().item()
    ed.edit(REQUESTS[1:2])
    assert abs(a.weight().float().mean().item() - changed) < 0.05


def test_failures_leave_no_half_built_state():
    model = tiny_llama()
    ed = editor(model, gram={1: torch.eye(64, dtype=torch.float64)})  # no entry for layer 2
    with pytest.raises(ValueError, match="gram has no entry for layer 2"):
        ed.edit(REQUESTS[:1])
    assert ed.C0 == {} and ed.C == {}
    ed._gram = {1: torch.eye(64, dtype=torch.float64), 2: torch.eye(64, dtype=torch.float64)}
    ed.edit(REQUESTS[:1])  # used to fail with KeyError(2): C0 was half filled
    assert ed.n_edits == 1


def test_state_dict_checks_and_fresh_editors():
    model = tiny_llama()
    fresh = editor(model).state_dict()
    ed = editor(copy.deepcopy(model))
    ed.load_state_dict(fresh)  # before any edit: used to raise KeyError
    ed.edit(REQUESTS[:1])
    state = ed.state_dict()
    bad = {**state, "W": {**state["W"], 1: state["W"][1][:1]}}
    with pytest.raises(ValueError, match=r"layer 1 has W \(1, 64\) .* the model needs W \(32, 64\)"):
        editor(copy.deepcopy(model)).load_state_dict(bad)
    with pytest.raises(ValueError, match=r"the state is a RLSEditor's, this is a MEMITEditor"):
        editor(copy.deepcopy(model), cls=MEMITEditor).load_state_dict(state)


def test_edits_and_metrics_run_in_eval_mode():
    model = tiny_llama().train()
    ed = editor(model)
    seen = []
    update = ed._update
    ed._update = lambda chunk: (seen.append(model.training), update(chunk))
    ed.edit(REQUESTS[:1])
    assert seen == [False] and model.training  # eval inside, the model's own mode after


def test_request_lists_and_statistics_are_checked():
    with pytest.raises(ValueError, match=r"request 0: 'paraphrases' must be a list of non-empty strings"):
        check_requests([{**REQUESTS[0], "paraphrases": "Zorbia has its capital in"}])
    with pytest.raises(ValueError, match=r"requests must be a dict or a list of dicts, got str"):
        check_requests("The capital of Zorbia is")
    # Other braces in a template are text.
    assert check_requests([{**REQUESTS[1], "prompt": "{} is a city in {state}"}])[0]["prompt"] == "Blip is a city in {state}"
    with pytest.raises(ValueError, match=r"stats_tokens \(100\) must be an int of at least one window"):
        RLSEditor(tiny_llama(), [1], tokenizer=ByteTokenizer(), stats_tokens=100, stats_ctx=512)


def test_finetune_editor_under_no_grad():
    model = tiny_llama()
    m0 = margin(model, REQUESTS)
    with torch.no_grad():
        FineTuneEditor(model, [1, 2], tokenizer=ByteTokenizer(), steps=10, lr=1e-2).edit(REQUESTS)
    assert (margin(model, REQUESTS) > m0).all()


def test_perplexity_token_ids_are_checked():
    from weightkit.eval import perplexity

    with pytest.raises(ValueError, match=r"weightkit.eval.perplexity: token ids must be in \[0, 256\), got \[0, 300\]"):
        perplexity(tiny_llama(), torch.tensor([0, 5, 300, 7]), ctx=4)


def test_the_subject_is_where_the_template_puts_it():
    from weightkit.edit.requests import subject_end_index

    r = check_requests([{"prompt": "Romeo's home town {} is in", "subject": "Rome", "target_new": " X"}])[0]
    assert r["subject_at"] == 18
    # The key is read at the "e" of the second "Rome", not inside "Romeo" (byte tokens: index = char).
    assert subject_end_index(ByteTokenizer(), r["prompt"], "Rome", r["subject_at"]) == 21
    assert subject_end_index(ByteTokenizer(), "A. " + r["prompt"], "Rome", 3 + r["subject_at"]) == 24
