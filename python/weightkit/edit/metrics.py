"""CounterFact-style metrics of an edited model, batched.

- efficacy: share of requests with P(target_new | prompt) > P(ground_truth | prompt);
- generalization: the same over paraphrases;
- specificity: share of neighbourhood prompts that keep P(ground_truth) > P(target_new);
- fluency: mean bigram/trigram entropy of greedy continuations (ROME's n-gram entropy proxy).
Probabilities of multi-token targets are products over tokens (teacher-forced).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from weightkit.edit.partial_forward import logits_at
from weightkit.edit.requests import check_requests, pad_batch, token_ids

__all__ = ["evaluate_requests", "target_logprobs"]


@torch.no_grad()
def target_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 64) -> torch.Tensor:
    """log P(target | prompt) (float64, one per pair) summed over the target's tokens."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(pairs), batch_size):
        chunk = pairs[b : b + batch_size]
        rows, spans = [], []
        for prompt, target in chunk:
            p, t = token_ids(tokenizer, prompt), token_ids(tokenizer, target)
            rows.append(p + t)
            spans.append((len(p), len(t)))
        ids, mask = pad_batch(rows, device)
        # Logits only where a target token is predicted: position t predicts token t + 1.
        row = torch.tensor([i for i, (_, n) in enumerate(spans) for _ in range(n)], device=device)
        pos = torch.tensor([s - 1 + j for s, n in spans for j in range(n)], device=device)
        logp = torch.log_softmax(logits_at(model, ids, mask, row, pos).float(), -1)
        tok_lp = logp.gather(1, ids[row, pos + 1][:, None])[:, 0].double()
        out.append(torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, row, tok_lp))
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.float64)


def _ngram_entropy(tokens: list[int]) -> float:
    """ROME's fluency measure: 2/3 · H(bigrams) + 4/3 · H(trigrams) ... normalized as there (bits)."""
    ent = []
    for n, w in ((2, 2 / 3), (3, 4 / 3)):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        ent.append(w * -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(ent) / 2


@torch.no_grad()
def _fluency(model, tokenizer, prompts: list[str], new_tokens: int) -> float:
    device = next(model.parameters()).device
    scores = []
    for prompt in prompts:
        ids = torch.tensor([token_ids(tokenizer, prompt)], device=device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0)
        scores.append(_ngram_entropy(gen[0, ids.shape[1] :].tolist()))
    return sum(scores) / max(1, len(scores))


def evaluate_requests(model, tokenizer, requests, fluency_prompts: int = 8, fluency_tokens: int = 32) -> dict:
    """Metrics in [0, 1] (fluency in bits) with the counts they are over; requests without
    ``ground_truth`` are skipped by every probability metric."""
    requests = [r for r in check_requests(requests) if r.get("ground_truth")]
    pairs, kinds = [], []
    for n, r in enumerate(requests):
        new, old = r["target_new"], r["ground_truth"]
        for kind, prompts, want_new in (
            ("efficacy", [r["prompt"]], True),
            ("generalization", r.get("paraphrases") or [], True),
            ("specificity", r.get("neighborhood") or [], False),
        ):
            for prompt in prompts:
                pairs += [(prompt, new), (prompt, old)]
                kinds.append((kind, n, want_new))
    lp = target_logprobs(model, tokenizer, pairs)
    hits = {"efficacy": [], "generalization": [], "specificity": []}
    per_request = [None] * len(requests)
    for j, (kind, n, want_new) in enumerate(kinds):
        new_wins = bool(lp[2 * j] > lp[2 * j + 1])
        hits[kind].append(new_wins if want_new else not new_wins)
        if kind == "efficacy":
            per_request[n] = new_wins
    out = {}
    for kind, h in hits.items():
        out[kind] = sum(h) / len(h) if h else float("nan")
        out[f"{kind}_n"] = len(h)
    out["efficacy_per_request"] = per_request
    if fluency_prompts:
        out["fluency"] = _fluency(model, tokenizer, [r["prompt"] for r in requests[:fluency_prompts]], fluency_tokens)
    return out
