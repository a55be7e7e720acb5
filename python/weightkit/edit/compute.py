"""MEMIT-style keys and target values for a batch of edit requests.

Key of a request at layer l: the input of the layer's down-projection at the subject's last
token, averaged over the prompt behind a few short prefixes (d_k floats). Target: a residual δ
added to the last edited layer's output at the subject's last token, optimized with Adam so the
model predicts ``target_new`` (NLL over the prefixed prompts), plus a KL term that keeps the
model's next-token distribution after "{subject} is a" and a weight decay on δ; ‖δ‖ is clamped to
``clamp`` · ‖h‖ after every step. All requests of a batch are optimized together (one δ each);
the layers below the edited block run once per batch and the head only at the scored positions
(weightkit.edit.partial_forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from weightkit.edit.model_access import LayerAccess
from weightkit.edit.partial_forward import StopForward, UpperForward, block_output, forward_until_stop, hooks
from weightkit.edit.requests import pad_batch, subject_end_index, token_ids

__all__ = ["ValueConfig", "PREFIXES", "layer_keys_and_outputs", "subject_keys", "target_values"]

#: Short neutral prefixes that keys and values are averaged over ("" is the plain prompt, first).
PREFIXES = ("", "Here is a fact. ")


@dataclass
class ValueConfig:
    steps: int = 20
    lr: float = 0.5
    clamp: float = 0.75  # ‖δ‖ ≤ clamp · ‖h‖ (MEMIT's clamp_norm_factor)
    kl_weight: float = 0.0625
    weight_decay: float = 0.5  # on ‖δ‖² / ‖h‖²
    # Stop when every request's mean target NLL (nats per token) is below this. MEMIT uses 0.05;
    # on SmolLM2, 0.5 gave the same efficacy / specificity in half the steps.
    stop_nll: float = 0.5


def _prefixed_rows(tokenizer, requests, prefixes):
    """ids and subject positions of every (request, prefix) prompt, request-major."""
    rows, pos = [], []
    for r in requests:
        for p in prefixes:
            text = p + r["prompt"]
            rows.append(token_ids(tokenizer, text))
            pos.append(subject_end_index(tokenizer, text, r["subject"], len(p) + r.get("subject_at", 0)))
    return rows, pos


@torch.no_grad()
def layer_keys_and_outputs(model, tokenizer, requests, access: LayerAccess, out_block: nn.Module, prefixes=PREFIXES):
    """(K, Z): K (u, d_k) float32 the keys at ``access``'s down-projection, mean over ``prefixes``;
    Z (u, d_model) float32 the output of ``out_block`` at the subject's last token of the plain
    prompt (prefixes[0] must be ""). Layers above ``out_block`` are not run."""
    device = next(model.parameters()).device
    rows, pos = _prefixed_rows(tokenizer, requests, prefixes)
    ids, mask = pad_batch(rows, device)
    idx = torch.arange(len(rows), device=device)
    at = torch.tensor(pos, device=device)
    got = {}

    def key_hook(module, args):
        got["k"] = args[0][idx, at].float()

    def out_hook(module, args, out):
        got["z"] = block_output(out)[idx, at].float()
        raise StopForward

    with hooks([access.proj.register_forward_pre_hook(key_hook), out_block.register_forward_hook(out_hook)]):
        forward_until_stop(model, ids, mask)
    u, p = len(requests), len(prefixes)
    K = got["k"].reshape(u, p, -1).mean(1)
    Z = got["z"].reshape(u, p, -1)[:, 0]
    return K, Z


@torch.no_grad()
def subject_keys(model, tokenizer, items, accesses: list[LayerAccess], prefixes=PREFIXES, batch_size: int = 64,
                 progress: bool = False) -> dict[int, torch.Tensor]:
    """Keys of ``items`` (dicts with ``prompt`` and ``subject``, e.g. facts to keep) at every
    layer of ``accesses``, computed exactly as an edit's keys are: layer index -> (len(items),
    d_k) float32, the down-projection input at the subject's last token, mean over ``prefixes``.
    Layers above the last access never run."""
    device = next(model.parameters()).device
    p, last = len(prefixes), accesses[-1].index
    out = {a.index: [] for a in accesses}
    current = {}

    def hook_for(i):
        def hook(module, args):
            k = args[0][current["idx"], current["at"]].float()
            out[i].append(k.reshape(-1, p, k.shape[-1]).mean(1))
            if i == last:
                raise StopForward

        return hook

    batches = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="preserved keys", unit="batch")
    with hooks([a.proj.register_forward_pre_hook(hook_for(a.index)) for a in accesses]):
        for b in batches:
            rows, pos = _prefixed_rows(tokenizer, items[b : b + batch_size], prefixes)
            ids, mask = pad_batch(rows, device)
            current["idx"] = torch.arange(len(rows), device=device)
            current["at"] = torch.tensor(pos, device=device)
            forward_until_stop(model, ids, mask)
    return {i: torch.cat(ks) for i, ks in out.items()}


def target_values(model, tokenizer, requests, out_block: nn.Module, cfg: ValueConfig, prefixes=PREFIXES):
    """Z* (u, d_model) float32: the wanted output of ``out_block`` at each request's subject token,
    h + δ with δ optimized as described in the module docstring. Model weights get no gradients."""
    device = next(model.parameters()).device
    u, p = len(requests), len(prefixes)
    rows, pos, tgt_spans = [], [], []
    for r in requests:
        target = token_ids(tokenizer, r["target_new"])
        for pre in prefixes:
            text = pre + r["prompt"]
            ids = token_ids(tokenizer, text)
            tgt_spans.append((len(ids), len(target)))
            rows.append(ids + target)
            pos.append(subject_end_index(tokenizer, text, r["subject"], len(pre) + r.get("subject_at", 0)))
    n_nll = len(rows)
    for r in requests:  # KL rows: "{subject} is a", next-token distribution at the last token
        text = f"{r['subject']} is a"
        ids = token_ids(tokenizer, text)
        rows.append(ids)
        pos.append(subject_end_index(tokenizer, text, r["subject"]))
    ids, mask = pad_batch(rows, device)
    n = len(rows)
    owner = torch.cat([torch.arange(u).repeat_interleave(p), torch.arange(u)]).to(device)
    at = torch.tensor(pos, device=device)
    kl_last = torch.tensor([len(r) - 1 for r in rows[n_nll:]], device=device)
    # Target-token positions: logits at t predict token t + 1.
    lab_row, lab_pos, lab_tok = [], [], []
    for i, (start, length) in enumerate(tgt_spans):
        for j in range(length):
            lab_row.append(i)
            lab_pos.append(start + j - 1)
            lab_tok.append(rows[i][start + j])
    lab_row = torch.tensor(lab_row, device=device)
    lab_pos = torch.tensor(lab_pos, device=device)
    lab_tok = torch.tensor(lab_tok, device=device)

    every = torch.arange(n, device=device)
    # Logits needed: the target tokens of the NLL rows, then the last token of each KL row.
    need_row = torch.cat([lab_row, n_nll + torch.arange(u, device=device)])
    need_pos = torch.cat([lab_pos, kl_last])
    n_lab = lab_row.numel()

    params = [q for q in model.parameters() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)
    was_training = model.training
    model.eval()
    try:
        fwd = UpperForward(model, out_block, ids, mask)
        h = fwd.hidden[every, at].float()
        with torch.no_grad():
            kl_ref = torch.log_softmax(fwd(lambda hidden: hidden, need_row, need_pos)[n_lab:].float(), -1)
        d_model = h.shape[1]
        h_plain = h[:n_nll].reshape(u, p, d_model)[:, 0]
        h_norm = h_plain.norm(dim=1, keepdim=True)
        delta = torch.zeros(u, d_model, device=device, requires_grad=True)

        def add_delta(hidden):
            add = torch.zeros_like(hidden)
            add[every, at] = delta[owner].to(hidden.dtype)
            return hidden + add

        opt = torch.optim.Adam([delta], lr=cfg.lr)
        for _ in range(cfg.steps):
            opt.zero_grad()
            with torch.enable_grad():  # callers may hold no_grad; only δ gets a gradient
                logits = fwd(add_delta, need_row, need_pos).float()
                logp = torch.log_softmax(logits[:n_lab], -1)
                tok_nll = -logp.gather(1, lab_tok[:, None])[:, 0]
                # Mean NLL per request: average over its prefixes' target tokens.
                per_req = torch.zeros(u, device=device).index_add_(0, owner[lab_row], tok_nll)
                per_req = per_req / torch.bincount(owner[lab_row], minlength=u).clamp_min(1)
                kl_logp = torch.log_softmax(logits[n_lab:], -1)
                kl = torch.nn.functional.kl_div(kl_logp, kl_ref, log_target=True, reduction="none").sum(-1)
                decay = (delta.norm(dim=1) / h_norm[:, 0]) ** 2
                loss = (per_req + cfg.kl_weight * kl + cfg.weight_decay * decay).sum()
                if per_req.max().item() < cfg.stop_nll:
                    break
                loss.backward()
            opt.step()
            with torch.no_grad():
                limit = cfg.clamp * h_norm
                norm = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta.mul_(torch.clamp(limit / norm, max=1.0))
    finally:
        for q in params:
            q.requires_grad_(True)
        model.train(was_training)
    return (h_plain + delta.detach()).float()
