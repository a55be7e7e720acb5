"""Sequential editors of Hugging Face causal LMs: RLSEdit (recursive least squares, the state
carried across edits) and, as baselines, a MEMIT-style batch editor (the same closed form,
restarted from the anchor at every batch) and plain fine-tuning of the down-projections.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch import nn

from weightkit.edit.compute import PREFIXES, ValueConfig, layer_keys_and_outputs, subject_keys, target_values
from weightkit.edit.metrics import evaluate_requests, target_logprobs
from weightkit.edit.model_access import key_gram, layer_access
from weightkit.edit.requests import check_requests, pad_batch, token_ids
from weightkit.ops.rls import rls_init, rls_update_

__all__ = ["FineTuneEditor", "MEMITEditor", "RLSEditor"]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode inside, its own mode after: keys, values and metrics computed with
    dropout on would change from one call to the next."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _Editor:
    """What every editor shares: the edited layers, the tokenizer, evaluation."""

    def __init__(self, model: nn.Module, layers, tokenizer=None, templates=None, batch_size: int = 16):
        if not isinstance(model, nn.Module):
            raise TypeError(f"weightkit.edit: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"weightkit.edit: batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.accesses = layer_access(model, [layers] if isinstance(layers, int) else layers, templates)
        self.layers = [a.index for a in self.accesses]
        self.batch_size = batch_size
        self.n_edits = 0

    def _tok(self):
        if self.tokenizer is None:
            raise ValueError("weightkit.edit: this call needs the model's tokenizer; pass tokenizer=... to the editor")
        return self.tokenizer

    def edit(self, requests) -> None:
        """Applies ``requests`` (a dict or a list of dicts, see weightkit.edit.requests) in chunks
        of ``batch_size``, after every earlier edit, with the model in eval mode. A chunk updates
        its layers one after the other: an error inside one leaves the layers before it edited
        (``state_dict`` / ``load_state_dict`` checkpoint a stream)."""
        requests = check_requests(requests)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("weightkit.edit: edit() cannot run under torch.inference_mode() (its updates are "
                               "in-place writes to the model's weights); call it outside")
        with eval_mode(self.model):
            for b in range(0, len(requests), self.batch_size):
                chunk = requests[b : b + self.batch_size]
                self._apply(chunk)
                self.n_edits += len(chunk)

    def evaluate(self, requests, fluency_prompts: int = 8, fluency_tokens: int = 32) -> dict:
        """efficacy, generalization, specificity (fractions) and fluency (n-gram entropy, bits)."""
        with eval_mode(self.model):
            return evaluate_requests(self.model, self._tok(), requests, fluency_prompts, fluency_tokens)

    def _apply(self, chunk: list[dict]) -> None:
        raise NotImplementedError


class RLSEditor(_Editor):
    """RLSEdit: per edited layer, the weight solves the soft least-squares problem over every
    edit so far, an anchor on general text and a pull to the original weight (PAPERS.md):

        W_t = argmin Σ_i ‖K_i Wᵀ − V_i‖² + lam‖W − W0‖² + mu·N‖K0 Wᵀ − K0 W0ᵀ‖²

    where mu (default 1000, which measured best on SmolLM2 city/country edits between 1 and 1e5)
    multiplies the *mean* key second moment E[kkᵀ] = K0ᵀK0 / N of ``stats_tokens``
    tokens of ``stats_source`` text from token ``stats_offset`` on, in windows of ``stats_ctx`` (so
    mu does not depend on N; start past any slice you measure perplexity on).
    ``anchor_sentences`` (optional, e.g. statements of facts that must stay as they are) join the
    anchor: E[kkᵀ] becomes (1 − anchor_weight)·E_text + anchor_weight·E_sentences. General text
    such as Python docs says little about, say, cities, so without such sentences an edit of one
    city's country leaks onto other cities of that country (see docs/design-notes.md).
    ``preserve`` (optional, dicts with ``prompt`` and ``subject``, e.g. held-out facts from
    ``weightkit.edit.facts.fact_prompts``) aims straight at that leak: the subject keys of those
    prompts, computed as an edit's keys are, join the anchor with ``preserve_weight`` each (an
    edit's key weighs 1), i.e. C0 = (lam·I + mu·E[kkᵀ] + preserve_weight·K_pᵀK_p)⁻¹; their outputs
    then stay where the unedited model put them. ``preserve_nearest`` = k > 0 (off by default)
    aims closer still: at every update, the k preserved keys most similar (cosine) to each edit key
    join that update as rows held to their outputs when the editor's state was built (the unedited
    ones, unless resumed from load_state_dict), with ``preserve_weight`` each (a key chosen again
    later gains weight again). On SmolLM2 at 256 edits, k = 8 bought +0.4 specificity points for
    -5.5 efficacy points, about what a larger ``preserve_weight`` trades (docs/design-notes.md).
    ``retries`` > 0: after a batch, requests whose
    target still has a mean NLL per token above ``retry_nll`` on their prompt get another RLS step
    (fresh keys and values), at most ``retries`` times.
    Each batch of u requests is one float64 Woodbury step per layer
    (``weightkit.ops.rls.rls_update_``): constant cost per edit and memory d_k² float64 per layer,
    whatever the number of earlier edits.

    model: a HF causal LM (Llama / Qwen / Mistral / GPT-2 by ``config.model_type``, else pass
    ``templates=(down-proj name, layer name)`` with ``{}`` for the index); layers: the indices
    whose down-projection is edited (targets are optimized at the last one's output). Weights in
    bf16/fp16 get an fp32 master copy so small updates are not rounded away. ``gram``: a dict
    layer -> E[kkᵀ] to skip the statistics pass (cached on disk otherwise, see key_gram).
    """

    #: carry C across batches (RLSEdit); the MEMIT-style baseline restarts from C0.
    carry = True

    def __init__(
        self,
        model: nn.Module,
        layers,
        lam: float = 1.0,
        mu: float = 1000.0,
        *,
        tokenizer=None,
        templates=None,
        batch_size: int = 16,
        value_config: ValueConfig | None = None,
        prefixes=PREFIXES,
        gram: dict | None = None,
        stats_source: str = "pydoc",
        stats_tokens: int = 32768,
        stats_ctx: int = 512,
        stats_offset: int = 0,
        anchor_sentences=None,
        anchor_weight: float = 0.5,
        preserve=None,
        preserve_weight: float = 1.0,
        preserve_nearest: int = 0,
        retries: int = 0,
        retry_nll: float = 1.0,
        cache=True,
        progress: bool = True,
    ):
        super().__init__(model, layers, tokenizer, templates, batch_size)
        for name, v in (("lam", lam), ("mu", mu), ("preserve_weight", preserve_weight)):
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"weightkit.edit.RLSEditor: {name} must be a finite number >= 0, got {v!r}")
        if not isinstance(retry_nll, numbers.Real) or not math.isfinite(retry_nll):
            raise ValueError(f"weightkit.edit.RLSEditor: retry_nll must be a finite number, got {retry_nll!r}")
        if lam == 0 and mu == 0:
            raise ValueError("weightkit.edit.RLSEditor: lam and mu must not both be 0")
        if prefixes[0] != "":
            raise ValueError("weightkit.edit.RLSEditor: prefixes[0] must be '' (the plain prompt)")
        if not (isinstance(anchor_weight, numbers.Real) and 0 <= anchor_weight <= 1):
            raise ValueError(f"weightkit.edit.RLSEditor: anchor_weight must be in [0, 1], got {anchor_weight!r}")
        if isinstance(anchor_sentences, str):
            raise ValueError("weightkit.edit.RLSEditor: anchor_sentences must be a list of sentences, got one string")
        if not isinstance(stats_ctx, int) or not isinstance(stats_tokens, int) or not 2 <= stats_ctx <= stats_tokens:
            raise ValueError(f"weightkit.edit.RLSEditor: stats_tokens ({stats_tokens!r}) must be an int of at least "
                             f"one window of stats_ctx ({stats_ctx!r}) >= 2 tokens")
        self.lam, self.mu = float(lam), float(mu)
        self.anchor_sentences = list(anchor_sentences) if anchor_sentences else []
        self.anchor_weight = float(anchor_weight)
        self.preserve = check_requests(preserve, need_target=False) if preserve else []
        self.preserve_weight = float(preserve_weight)
        if not isinstance(preserve_nearest, int) or preserve_nearest < 0:
            raise ValueError(f"weightkit.edit.RLSEditor: preserve_nearest must be an int >= 0, got {preserve_nearest!r}")
        if preserve_nearest and not (self.preserve and self.preserve_weight > 0):
            raise ValueError("weightkit.edit.RLSEditor: preserve_nearest needs preserve=... (the pool it picks from) "
                             "and preserve_weight > 0")
        self.preserve_nearest = preserve_nearest
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"weightkit.edit.RLSEditor: retries must be an int >= 0, got {retries!r}")
        self.retries, self.retry_nll = retries, float(retry_nll)
        self.value_config = value_config or ValueConfig()
        self.prefixes = tuple(prefixes)
        self._gram = gram
        self._stats = dict(source=stats_source, n_tokens=stats_tokens, ctx=stats_ctx, offset=stats_offset, cache=cache,
                           progress=progress)
        self.C: dict[int, torch.Tensor] = {}
        self.C0: dict[int, torch.Tensor] = {}
        self.master: dict[int, torch.Tensor] = {}
        # preserve_nearest: the pool's keys and their unedited outputs, per layer.
        self._pool: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _ensure_state(self) -> None:
        if self.C0:
            return
        # Built in locals and assigned at the end: a failure leaves no half-built state behind.
        C0, C, master, pool = {}, dict(self.C), dict(self.master), {}
        if self._gram is None:
            self._gram = key_gram(self.model, self._tok(), self.accesses, **self._stats)
            if self.anchor_sentences:
                stats = {**self._stats, "source": self.anchor_sentences}
                extra = key_gram(self.model, self._tok(), self.accesses, **stats)
                w = self.anchor_weight
                self._gram = {i: (1 - w) * g + w * extra[i] for i, g in self._gram.items()}
        kept = {}
        if self.preserve and self.preserve_weight > 0:
            kept = subject_keys(self.model, self._tok(), self.preserve, self.accesses, self.prefixes,
                                progress=self._stats["progress"])
        for a in self.accesses:
            if a.index not in self._gram:
                raise ValueError(f"weightkit.edit.RLSEditor: gram has no entry for layer {a.index}")
            W = a.weight()
            G = self.mu * self._gram[a.index].to(W.device, torch.float64)
            if a.index in kept:
                K = kept[a.index].to(W.device, torch.float64)
                G.addmm_(K.T, K, alpha=self.preserve_weight)
            if G.shape != (W.shape[1], W.shape[1]):
                raise ValueError(f"weightkit.edit.RLSEditor: gram of layer {a.index} has shape {tuple(G.shape)}, "
                                 f"the layer's keys need ({W.shape[1]}, {W.shape[1]})")
            C0[a.index] = rls_init(G, self.lam, 1.0)
            if a.index not in C:
                C[a.index] = C0[a.index].clone()
            if a.index not in master:
                # fp32/fp64 weights are updated in place (a view of the live weight).
                master[a.index] = W if W.dtype in (torch.float32, torch.float64) else W.float().clone()
            if self.preserve_nearest and a.index in kept:
                P = kept[a.index].to(W.device, torch.float64)
                pool[a.index] = (P, P @ W.double().T)
        self.C0, self.C, self.master, self._pool = C0, C, master, pool

    def _synced_master(self, a) -> torch.Tensor:
        """The layer's master weight, first re-read from the model if the weight was changed
        outside the editor (an undo, another editor, fine-tuning): the update starts from the
        weight the model has, whatever its dtype."""
        live, master = a.weight(), self.master[a.index]
        if live.data_ptr() != master.data_ptr() and not torch.equal(live, master.to(live.dtype)):
            master.copy_(live)
        return master

    def _write_back(self, a) -> None:
        live, master = a.weight(), self.master[a.index]
        if live.data_ptr() != master.data_ptr():
            live.copy_(master)

    @torch.no_grad()
    def _apply(self, chunk):
        self._ensure_state()
        self._update(chunk)
        for _ in range(self.retries):
            chunk = self._unrealized(chunk)
            if not chunk:
                break
            self._update(chunk)

    def _unrealized(self, chunk: list[dict]) -> list[dict]:
        """The requests whose target's mean NLL per token on the prompt is still above retry_nll."""
        tok = self._tok()
        lp = target_logprobs(self.model, tok, [(r["prompt"], r["target_new"]) for r in chunk])
        n_tok = torch.tensor([len(token_ids(tok, r["target_new"])) for r in chunk], dtype=torch.float64)
        return [r for r, nll in zip(chunk, (-lp / n_tok).tolist()) if nll > self.retry_nll]

    def _update(self, chunk: list[dict]) -> None:
        """One RLS step per edited layer for the keys and target values of ``chunk``."""
        tok, out_block = self._tok(), self.accesses[-1].block
        Z = target_values(self.model, tok, chunk, out_block, self.value_config, self.prefixes)
        for i, a in enumerate(self.accesses):
            K, Z_now = layer_keys_and_outputs(self.model, tok, chunk, a, out_block, self.prefixes)
            # MEMIT's spread: each layer takes its share of what is still missing at the top.
            resid = (Z - Z_now).double() / (len(self.accesses) - i)
            W = self._synced_master(a)
            V = K.double() @ W.double().T + resid
            if a.index in self._pool:
                K, V = self._with_nearest(a.index, K.double(), V)
            C = self.C[a.index] if self.carry else self.C0[a.index].clone()
            rls_update_(W, C, K, V)
            self._write_back(a)

    def _with_nearest(self, layer: int, K: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V with the rows of the pool keys nearest to each edit key appended (preserve_nearest),
        scaled by sqrt(preserve_weight) so each weighs preserve_weight in the least squares."""
        P, P_out = self._pool[layer]
        unit = lambda M: M / M.norm(dim=1, keepdim=True).clamp_min(1e-30)  # noqa: E731
        k = min(self.preserve_nearest, P.shape[0])
        near = (unit(K) @ unit(P).T).topk(k, dim=1).indices.flatten().unique()
        w = self.preserve_weight**0.5
        return torch.cat([K, w * P[near]]), torch.cat([V, w * P_out[near]])

    def state_dict(self) -> dict:
        """Everything needed to resume the stream: C (float64) and the master weight per layer."""
        return {
            "format": 1,
            "kind": type(self).__name__,
            "layers": list(self.layers),
            "lam": self.lam,
            "mu": self.mu,
            "n_edits": self.n_edits,
            "C": {i: c.detach().clone().cpu() for i, c in self.C.items()},
            "W": {i: w.detach().clone().cpu() for i, w in self.master.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restores C and writes the saved weights into the model (and the master copies). Every
        layer is checked before anything is written. The state of an editor that had not edited
        yet (no C, no weights) restarts this editor's stream: the next edit builds C0 from the
        model's weights as they are then."""
        where = f"weightkit.edit.{type(self).__name__}.load_state_dict"
        if state.get("format") != 1 or list(state.get("layers", [])) != self.layers:
            raise ValueError(f"{where}: expected format 1 for layers {self.layers}, "
                             f"got format {state.get('format')!r} for layers {state.get('layers')!r}")
        if state.get("kind", type(self).__name__) != type(self).__name__:
            raise ValueError(f"{where}: the state is a {state['kind']}'s, this is a {type(self).__name__}")
        self.lam, self.mu = state["lam"], state["mu"]
        self.C0, self.C, self.master, self._pool = {}, {}, {}, {}
        self.n_edits = state["n_edits"]
        if not state["C"] and not state["W"]:
            return
        for a in self.accesses:
            live = a.weight()
            d_k = live.shape[1]
            W, C = state["W"].get(a.index), state["C"].get(a.index)
            if W is None or C is None:
                raise ValueError(f"{where}: the state has no C or W for layer {a.index}")
            if tuple(W.shape) != tuple(live.shape) or tuple(C.shape) != (d_k, d_k):
                raise ValueError(f"{where}: layer {a.index} has W {tuple(W.shape)} and C {tuple(C.shape)} in the "
                                 f"state; the model needs W {tuple(live.shape)} and C ({d_k}, {d_k})")
        for a in self.accesses:
            live = a.weight()
            w = state["W"][a.index].to(live.device)
            self.master[a.index] = live if live.dtype in (torch.float32, torch.float64) else w.float().clone()
            self.master[a.index].copy_(w)
            self._write_back(a)
            self.C[a.index] = state["C"][a.index].to(live.device, torch.float64).contiguous()


class MEMITEditor(RLSEditor):
    """MEMIT-style baseline: per batch the closed form W += R Kᵀ(λI + μ·E[kkᵀ] + KᵀK)⁻¹... i.e.
    one RLS step from C0 at every batch, nothing carried between batches (as MEMIT's public code
    does). Keys, values and the spread over layers are the same as RLSEditor's."""

    carry = False


class FineTuneEditor(_Editor):
    """Plain fine-tuning baseline: Adam on the edited down-projection weights, the target's NLL
    on the prompt, ``steps`` steps per batch; ``max_change`` clamps each weight's total change
    (FT-L's L∞ constraint; None: unconstrained)."""

    def __init__(self, model, layers, *, tokenizer=None, templates=None, batch_size: int = 16, steps: int = 25,
                 lr: float = 5e-4, max_change: float | None = None):
        super().__init__(model, layers, tokenizer, templates, batch_size)
        self.steps, self.lr, self.max_change = steps, lr, max_change
        self.W0 = {a.index: a.weight().detach().clone() for a in self.accesses}

    @torch.enable_grad()  # edit() may run under torch.no_grad(); this editor needs gradients
    def _apply(self, chunk):
        tok, model = self._tok(), self.model
        device = next(model.parameters()).device
        rows, labels = [], []
        for r in chunk:
            p, t = token_ids(tok, r["prompt"]), token_ids(tok, r["target_new"])
            rows.append(p + t)
            labels.append([-100] * len(p) + t)
        ids, mask = pad_batch(rows, device)
        lab, _ = pad_batch(labels, device, pad_id=-100)
        frozen = [q for q in model.parameters() if q.requires_grad]
        for q in frozen:
            q.requires_grad_(False)
        weights = [a.proj.weight for a in self.accesses]
        for w in weights:
            w.requires_grad_(True)
        opt = torch.optim.Adam(weights, lr=self.lr)
        try:
            for _ in range(self.steps):
                opt.zero_grad()
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1))
                loss.backward()
                opt.step()
                if self.max_change is not None:
                    with torch.no_grad():
                        for a in self.accesses:
                            W, W0 = a.weight(), self.W0[a.index]
                            W.copy_(W0 + (W - W0).clamp(-self.max_change, self.max_change))
        finally:
            for w in weights:
                w.requires_grad_(False)
                w.grad = None
            for q in frozen:
                q.requires_grad_(True)
