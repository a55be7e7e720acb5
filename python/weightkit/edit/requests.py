"""Edit requests (EasyEdit / CounterFact style) and their tokenization.

A request is a dict with ``prompt`` (text that contains ``subject``, or a template with ``{}``
for it), ``subject``, ``target_new`` (the new continuation, usually with a leading space) and
optionally ``ground_truth``, ``paraphrases`` (prompts of the same fact) and ``neighborhood``
(prompts about other subjects whose answer is ``ground_truth``).
"""

from __future__ import annotations

import torch

__all__ = ["check_requests", "pad_batch", "prompt_text", "subject_end_index", "token_ids"]


def prompt_text(prompt: str, subject: str) -> str:
    # replace, not format: other braces in the prompt are text
    return prompt.replace("{}", subject) if "{}" in prompt else prompt


def check_requests(requests, need_target: bool = True) -> list[dict]:
    """The requests as a list of dicts with a formatted ``prompt``; ValueError names what is missing.
    ``need_target`` False: ``target_new`` is not required (prompts whose subject keys are kept)."""
    if isinstance(requests, dict):
        requests = [requests]
    if isinstance(requests, str) or not isinstance(requests, (list, tuple)):
        raise ValueError(f"weightkit.edit: requests must be a dict or a list of dicts, got {type(requests).__name__}")
    out = []
    for n, r in enumerate(requests):
        if not isinstance(r, dict):
            raise ValueError(f"weightkit.edit: request {n} must be a dict, got {type(r).__name__}")
        for key in ("prompt", "subject", "target_new")[: 3 if need_target else 2]:
            if not isinstance(r.get(key), str) or not r[key]:
                raise ValueError(f"weightkit.edit: request {n} needs a non-empty string {key!r}, got {r.get(key)!r}")
        for key in ("paraphrases", "neighborhood"):  # one string would be read as its characters
            v = r.get(key)
            if v is not None and (isinstance(v, str) or not all(isinstance(p, str) and p for p in v)):
                raise ValueError(f"weightkit.edit: request {n}: {key!r} must be a list of non-empty strings, got {v!r}")
        if r["prompt"].count("{}") > 1:
            raise ValueError(f"weightkit.edit: request {n}: prompt {r['prompt']!r} has more than one '{{}}' for the subject")
        text = prompt_text(r["prompt"], r["subject"])
        if r["subject"] not in text:
            raise ValueError(f"weightkit.edit: request {n}: subject {r['subject']!r} does not occur in prompt {text!r}")
        # Where the subject is: the template's '{}' when there is one ("Rome" in "Romeo's town {}
        # is in" is the second match), else its first occurrence.
        at = r["prompt"].index("{}") if "{}" in r["prompt"] else text.index(r["subject"])
        out.append({**r, "prompt": text, "subject_at": at})
    return out


def token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def subject_end_index(tokenizer, text: str, subject: str, start: int = 0) -> int:
    """Token index of the subject's last token in ``text`` (its first occurrence from character
    ``start`` on)."""
    end = text.index(subject, start) + len(subject)
    return len(token_ids(tokenizer, text[:end])) - 1


def pad_batch(rows: list[list[int]], device, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask), both (len(rows), max length) int64: right padding
    keeps every real token at the position it would have alone."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)
