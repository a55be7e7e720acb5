"""Layer-wise bit allocation for the palette: how sensitive each layer is, and which quantizer
each layer gets under a bit budget (and, optionally, a time budget).

Model (Q-Palette): the loss increase of quantizing layer l with option q is a_l · e_l(q), where
e_l(q) is the relative weight MSE ‖W − Ŵ‖²/‖W‖² of the option and a_l the layer's sensitivity,
measured by injecting Gaussian noise of a known relative MSE and reading the KL divergence of the
model's next-token distribution (``noise_sensitivity``). Picking one option per layer to minimize
Σ a_l·e_l(q_l) subject to Σ n_l·bits(q_l) ≤ budget·Σ n_l is a multiple-choice knapsack; ``allocate``
solves it exactly by dynamic programming over the discretized budget, ``allocate_lagrangian`` by a
sweep of the multiplier (optimal for the points on the lower convex hull only).

With Hessian-aware (LDLQ) rounding the Gaussian table no longer describes the error that matters:
``measured_options`` quantizes every layer with every option and takes e_l(q) as the layer's
Hessian-weighted output error (weightkit.quant.ldlq.hessian_weighted_error, on the scale of a
relative weight MSE, so the noise sensitivities still apply), with the bits it really stores.
``plan_mixed`` does all of it for a Hugging Face causal LM in one call.

A budget on time too: the trellis has the lowest error per bit but the slowest batch-1 kernel on
the CPU (weightkit.quant.latency), so ``allocate(..., budget_seconds=...)`` also bounds the time of
one forward through the layers, each option timed on this machine, and spends the trellis where it
buys the most.

LayerwiseQuant's cheap importance scores are here too: how much a block changes its input
(1 − cos(input, output), ``block_importance``) and the count of outlier weights per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Option",
    "allocate",
    "allocate_lagrangian",
    "block_importance",
    "default_options",
    "find_option",
    "gaussian_error",
    "measured_options",
    "noise_sensitivity",
    "outlier_counts",
    "plan_mixed",
    "plan_seconds",
    "predicted_loss",
    "stored_options",
]


@dataclass(frozen=True)
class Option:
    """One quantizer choice: name ("tcq", "vq", "sq"), bits per weight of its codes, relative MSE,
    and optionally ``cost_bits``, what the budget counts per weight (:func:`stored_options` sets the
    bits a layer really stores, codebook and scales included; None counts ``bits``), and
    ``seconds``, the time of the layer's forward with this option (weightkit.quant.latency sets it;
    a latency budget needs it)."""

    quantizer: str
    bits: float
    error: float
    cost_bits: float | None = None
    seconds: float | None = None

    @property
    def cost(self) -> float:
        return self.bits if self.cost_bits is None else self.cost_bits


def find_option(options, quantizer: str, bits: float) -> Option:
    """The Option for (``quantizer``, ``bits``) among ``options`` (one layer's list); ValueError
    naming the ones there are when it is missing."""
    for o in options:
        if (o.quantizer, o.bits) == (quantizer, float(bits)):
            return o
    have = ", ".join(f"{o.quantizer}-{o.bits:g}" for o in options) or "none"
    raise ValueError(f"weightkit.quant.allocation.find_option: no option {quantizer}-{bits:g} among: {have}")


def stored_options(shapes, options, L: int | None = None, group_size: int = 128) -> list[list[Option]]:
    """Per-layer copies of ``options`` whose budget cost is the bits each layer stores
    (weightkit.quant.palette.stored_bits for its (out, in) shape): with them ``allocate`` keeps the
    real size within the budget. On small layers the codebooks weigh: a 256-entry 2-D codebook is
    0.15 bit per weight of a 192×576 projection. ``L``: the trellis's state bits; ``group_size``:
    PTQTP's, for ("ptqtp", 4) options."""
    from weightkit.quant.palette import stored_bits

    return [[Option(o.quantizer, o.bits, o.error, stored_bits(out_f, in_f, o.quantizer, o.bits, L, group_size))
             for o in options] for out_f, in_f in shapes]


#: Relative MSE of each quantizer on Gaussian data (rotated, normalized weights are close to it):
#: measured with weightkit's codebooks (sq, vq: 2^20 samples) and trellis at L = 12 (tcq; L = 16 is
#: ~8% lower). Used when a layer's own errors are not measured.
GAUSSIAN_ERROR = {
    ("sq", 2): 0.1175, ("sq", 3): 0.0345, ("sq", 4): 0.0095, ("sq", 5): 0.0025, ("sq", 6): 0.00065,
    ("vq", 1.5): 0.2019, ("vq", 2): 0.1085, ("vq", 2.5): 0.0579, ("vq", 3): 0.0301, ("vq", 3.5): 0.0157,
    ("vq", 4): 0.0081,
    ("tcq", 1.5): 0.1458, ("tcq", 2): 0.0745, ("tcq", 2.5): 0.0418, ("tcq", 3): 0.0197, ("tcq", 3.5): 0.0141,
    ("tcq", 4): 0.0055,
}


# Half variants: half the rows at b - 1/4, half at b + 1/4.
for _b in (1.75, 2.25, 2.75, 3.25, 3.75):
    GAUSSIAN_ERROR[("tcq", _b)] = 0.5 * (GAUSSIAN_ERROR[("tcq", _b - 0.25 if (_b - 0.25) % 1 else int(_b - 0.25))]
                                         + GAUSSIAN_ERROR[("tcq", _b + 0.25 if (_b + 0.25) % 1 else int(_b + 0.25))])


def gaussian_error(quantizer: str, bits: float) -> float:
    """Relative MSE of a palette quantizer on Gaussian data (GAUSSIAN_ERROR)."""
    key = (quantizer, float(bits) if bits % 1 else int(bits))
    if key not in GAUSSIAN_ERROR:
        raise ValueError(f"no Gaussian error known for {quantizer}-{bits}; known: {sorted(GAUSSIAN_ERROR)}")
    return GAUSSIAN_ERROR[key]


def default_options(quantizers=("tcq",), bits=(1.5, 2, 2.5, 3, 3.5, 4)) -> list[Option]:
    """The options of the given quantizers at the given rates that have a known Gaussian error."""
    out = []
    for q in quantizers:
        for b in bits:
            key = (q, float(b) if b % 1 else int(b))
            if key in GAUSSIAN_ERROR:
                out.append(Option(q, float(b), GAUSSIAN_ERROR[key]))
    return out


def predicted_loss(sensitivity, plan_options) -> float:
    """Σ a_l·e_l for per-layer sensitivities and chosen options."""
    return float(sum(a * o.error for a, o in zip(sensitivity, plan_options)))


#: Largest dynamic-programming table :func:`allocate` builds (one float64 per budget unit).
MAX_DP_CELLS = 1 << 20
#: Table size while a latency budget's multiplier is searched (every step solves a knapsack; with
#: costs rounded up to budget / 2^16 bits, 210 layers lose at most 0.3% of the bit budget).
LATENCY_DP_CELLS = 1 << 16


def _per_layer(fn: str, sizes, sensitivity, options) -> list:
    L = len(sizes)
    per_layer = options if options and isinstance(options[0], (list, tuple)) else [options] * L
    if len(sensitivity) != L or len(per_layer) != L:
        raise ValueError(f"{fn}: sizes, sensitivity and options must have one entry per layer ({L}), got "
                         f"{len(sensitivity)} and {len(per_layer)}")
    return per_layer


def _knapsack(values, icost, cap: int) -> list[int] | None:
    """Multiple-choice knapsack: for each layer l one index k minimizing Σ values[l][k] subject to
    Σ icost[l][k] ≤ cap (non-negative integers); None when no choice fits. Dynamic programming over
    the used capacity: best[c] is the least value of the layers so far at capacity c."""
    if sum(min(r) for r in icost) > cap:
        return None
    best = torch.full((cap + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    choice = []
    for vals, costs in zip(values, icost):
        cand = torch.full((len(vals), cap + 1), math.inf, dtype=torch.float64)
        for k, (v, c) in enumerate(zip(vals, costs)):
            if c <= cap:
                cand[k, c:] = best[: cap + 1 - c] + v
        best, arg = cand.min(dim=0)
        choice.append(arg.to(torch.uint8 if len(vals) < 256 else torch.int32))
    # Walk back from the cheapest-loss used capacity.
    b = int(torch.argmin(best).item())
    picks = [0] * len(values)
    for l in range(len(values) - 1, -1, -1):
        picks[l] = int(choice[l][b].item())
        b -= icost[l][picks[l]]
    return picks


def _bit_costs(sizes, per_layer, budget_bits: float, unit: float | None, max_cells: int):
    """(integer costs per layer and option, capacity) of a bit budget: costs n_l·cost in ``unit``
    bits, rounded up (see :func:`allocate`)."""
    costs = [[n * o.cost for o in opts] for n, opts in zip(sizes, per_layer)]
    total = budget_bits * sum(sizes)
    if unit is None:
        on_grid = all(abs(4 * c - round(4 * c)) < 1e-6 for row in costs for c in row)
        g = 0
        for row in costs:
            for c in row:
                g = math.gcd(g, int(round(4 * c)))
        # Bits are multiples of 1/2 (1/4 for half-row variants): quarter bits, unless some are not.
        unit = max(g, 1) / 4 if on_grid else total / max_cells
    unit = max(unit, total / max_cells)
    cap = int(math.floor(total / unit + 1e-9))
    return [[int(math.ceil(c / unit - 1e-9)) for c in row] for row in costs], cap


def allocate(sizes, sensitivity, options, budget_bits: float, unit: float | None = None,
             budget_seconds: float | None = None):
    """Exact multiple-choice knapsack by dynamic programming.

    sizes: weights per layer (n_l); sensitivity: a_l ≥ 0; options: one list of Option for all layers
    or a list per layer (per-layer measured errors, or :func:`stored_options` to budget stored bits);
    budget_bits: average bits per weight allowed. Costs n_l·cost (an Option's cost_bits, else its
    bits) are counted in ``unit`` bits (default: their greatest common divisor when every
    cost is a multiple of a quarter bit, which makes the DP exact; a coarser unit rounds costs up,
    so the budget is never exceeded). The table has at most ``MAX_DP_CELLS`` entries: a finer unit
    (or bits off the quarter-bit grid) is coarsened to total budget / MAX_DP_CELLS, still rounding
    costs up. Returns the chosen Option per layer; raises ValueError when even the cheapest choice
    exceeds the budget.

    ``budget_seconds``: also keep Σ_l seconds(q_l) — the time of one forward through the layers,
    from each Option's ``seconds`` (weightkit.quant.latency.timed_options) — within it. The two
    budgets together are solved by Lagrangian relaxation of the time: the knapsack over bits
    minimizes Σ a_l·e_l + μ·Σ seconds, and μ ≥ 0 is bisected to the smallest value whose plan
    meets the time budget (optimal when the time budget binds at a point of the plans' lower
    convex hull, within the hull gap otherwise; tables of LATENCY_DP_CELLS entries while μ is
    searched). ValueError when no plan within the bits meets the time.
    """
    fn = "weightkit.quant.allocation.allocate"
    per_layer = _per_layer(fn, sizes, sensitivity, options)
    if budget_seconds is None:
        icost, cap = _bit_costs(sizes, per_layer, budget_bits, unit, MAX_DP_CELLS)
        picks = _knapsack([[a * o.error for o in opts] for a, opts in zip(sensitivity, per_layer)], icost, cap)
        if picks is None:
            raise ValueError(f"{fn}: budget {budget_bits} bits per weight is below the cheapest plan")
        return [opts[k] for opts, k in zip(per_layer, picks)]
    return _allocate_timed(fn, sizes, sensitivity, per_layer, budget_bits, unit, budget_seconds)


def _allocate_timed(fn, sizes, sensitivity, per_layer, budget_bits, unit, budget_seconds):
    """:func:`allocate` with a time budget too (see there)."""
    untimed = [(l, o) for l, opts in enumerate(per_layer) for o in opts if o.seconds is None]
    if untimed:
        raise ValueError(f"{fn}: budget_seconds needs every Option's seconds (weightkit.quant.latency."
                         f"timed_options); layer {untimed[0][0]}'s {untimed[0][1].quantizer}-{untimed[0][1].bits} "
                         f"has none")
    if not budget_seconds > 0:
        raise ValueError(f"{fn}: budget_seconds must be > 0, got {budget_seconds!r}")
    icost, cap = _bit_costs(sizes, per_layer, budget_bits, unit, LATENCY_DP_CELLS)
    errors = [[a * o.error for o in opts] for a, opts in zip(sensitivity, per_layer)]

    def solve(mu):
        picks = _knapsack([[e + mu * o.seconds for e, o in zip(es, opts)] for es, opts in zip(errors, per_layer)],
                          icost, cap)
        if picks is None:
            raise ValueError(f"{fn}: budget {budget_bits} bits per weight is below the cheapest plan")
        return [opts[k] for opts, k in zip(per_layer, picks)]

    def seconds(plan):
        return sum(o.seconds for o in plan)

    plan = solve(0.0)
    if seconds(plan) <= budget_seconds:
        return plan
    # μ in loss per second: start where a second weighs as much as the whole unconstrained loss.
    lo, hi = 0.0, max(predicted_loss(sensitivity, plan), 1e-12) / budget_seconds
    for _ in range(40):  # up to 8^40 times that: by then the error terms no longer count
        if seconds(fast := solve(hi)) <= budget_seconds:
            break
        lo, hi = hi, hi * 8
    else:
        raise ValueError(f"{fn}: no plan within {budget_bits} bits per weight takes <= {budget_seconds:.4g} s "
                         f"(the fastest takes {seconds(fast):.4g} s)")
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        candidate = solve(mid)
        if seconds(candidate) > budget_seconds:
            lo = mid
        else:
            hi, fast = mid, candidate
    return fast


def allocate_lagrangian(sizes, sensitivity, options, budget_bits: float, iters: int = 100):
    """Each layer takes argmin a_l·e + λ·n_l·bits; λ is bisected to the smallest value that meets
    the budget. Fast and within the hull gap of the exact optimum."""
    per_layer = _per_layer("weightkit.quant.allocation.allocate_lagrangian", sizes, sensitivity, options)
    total = budget_bits * sum(sizes)

    def pick(lam):
        return [min(opts, key=lambda o: (a * o.error + lam * n * o.cost, o.cost))
                for n, a, opts in zip(sizes, sensitivity, per_layer)]

    def cost(plan):
        return sum(n * o.cost for n, o in zip(sizes, plan))

    lo, hi = 0.0, 1.0
    while cost(pick(hi)) > total:
        hi *= 4
        if hi > 1e30:
            raise ValueError(f"budget {budget_bits} bits per weight is below the cheapest plan")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if cost(pick(mid)) > total:
            lo = mid
        else:
            hi = mid
    return pick(hi)


# ------------------------------------------------------------------------------ measuring


@torch.no_grad()
def _logprobs(model, tokens: torch.Tensor, ctx: int) -> torch.Tensor:
    n = (tokens.numel() // ctx) * ctx
    ids = tokens[:n].view(-1, ctx).to(next(model.parameters()).device)
    return F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


@torch.no_grad()
def noise_sensitivity(model: nn.Module, tokens: torch.Tensor, layers: dict, rel_mse: float = 0.05, ctx: int = 256,
                      seed: int = 0, progress: bool = False) -> dict:
    """a_l = KL(p_model ‖ p_noisy_l) / rel_mse per layer, KL averaged over the tokens' positions.

    For each named nn.Linear in ``layers`` (e.g. weightkit.eval.linear_layers(model)), its weight
    gets Gaussian noise of relative MSE ``rel_mse`` (σ = √rel_mse · RMS(W)), the model runs on
    ``tokens`` (1-D, cut into windows of ``ctx``), and the weight is restored. Returns name → a_l.
    """
    was_training = model.training
    model.eval()
    ref = _logprobs(model, tokens, ctx)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, lin) in enumerate(layers.items()):
        W = lin.weight.data
        saved = W.clone()
        rms = W.float().pow(2).mean().sqrt()
        noise = torch.randn(W.shape, generator=g).to(W) * (math.sqrt(rel_mse) * rms)
        W.add_(noise)
        lp = _logprobs(model, tokens, ctx)
        W.copy_(saved)
        kl = (ref.exp() * (ref - lp)).sum(-1).mean().item()
        out[name] = max(kl, 0.0) / rel_mse
        if progress:
            print(f"\r[sensitivity] {i + 1}/{len(layers)} {name}: {out[name]:.4g}", end="", flush=True)
    if progress:
        print()
    model.train(was_training)
    return out


@torch.no_grad()
def measured_options(model: nn.Module, options, hessians: dict | None = None, skip=None, seed: int = 0,
                     progress: bool = False, **layer_options) -> dict[str, list[Option]]:
    """Each layer's own error and stored bits under every option: name → [Option], for the layers
    quantize_model(model, method="palette", skip=skip, seed=seed) would quantize, in its order and
    with its Hadamard seeds (seed + index), so the errors are those the final model will have.

    ``options``: Options (their ``error`` is ignored; quantizer and bits are read). Each layer is
    quantized once per option: e = ‖W − Ŵ‖²/‖W‖², or with ``hessians`` (name → (in, in), from
    weightkit.quant.collect_hessians) LDLQ rounding and e = hessian_weighted_error(W, Ŵ, H). The
    Option's cost_bits is what the quantized layer stores (palette.rate_of). Options a layer's width
    refuses are left out of its list (none left: ValueError). The model is not changed.
    ``layer_options``: palette.LAYER_OPTIONS (the trellis's L; PTQTP's group_size, max_iters, tol).
    A ("ptqtp", 4) option is PTQTP's trit planes, measured the same way (rounded without the
    Hessian: PTQTP has no Hessian-aware rounding).
    """
    from weightkit.quant import palette
    from weightkit.quant.ldlq import check_hessians, hessian_weighted_error
    from weightkit.quant.quantize import skip_patterns, target_linears

    fn = "measured_options"
    unknown = sorted(set(layer_options) - set(palette.LAYER_OPTIONS))
    if unknown:
        raise TypeError(f"weightkit.quant.allocation.{fn}: unknown layer options {unknown}; "
                        f"known: {palette.LAYER_OPTIONS}")
    layers, _ = target_linears(fn, model, skip_patterns(fn, skip), replace=True)
    if hessians is not None:
        check_hessians(f"weightkit.quant.allocation.{fn}", layers, hessians)
    items = enumerate(layers)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(layers), desc="measuring options", unit="layer")
    out = {}
    for i, (name, lin) in items:
        W = lin.weight.detach().float().cpu()
        H = None if hessians is None else hessians[name]
        out[name] = []
        for o in options:
            if palette._choice_problem(lin.in_features, o.quantizer, o.bits):
                continue
            layer = palette.build_layer(lin, o.quantizer, o.bits, seed=seed + i, hessian=H, **layer_options)
            W_hat = layer.dequantize().cpu()
            err = ((W - W_hat).pow(2).sum() / W.pow(2).sum().clamp_min(1e-30)).item() if H is None \
                else hessian_weighted_error(W, W_hat, H)
            out[name].append(Option(o.quantizer, o.bits, err, palette.rate_of(layer)))
        if not out[name]:
            raise ValueError(f"weightkit.quant.allocation.{fn}: no option fits layer {name!r} "
                             f"({lin.out_features}x{lin.in_features}): "
                             f"{palette._choice_problem(lin.in_features, options[0].quantizer, options[0].bits)}")
    return out


def plan_mixed(model: nn.Module, tokens: torch.Tensor, budget_bits: float, quantizers=("vq",),
               bits=(2, 2.5, 3, 3.5, 4), ldlq: bool = True, hessians: dict | None = None, n_sensitivity: int = 512,
               skip=None, seed: int = 0, progress: bool = False, budget_seconds=None, batch: int = 1,
               dtype: torch.dtype = torch.float32, **layer_options) -> tuple[dict, dict | None]:
    """(plan, hessians): one palette option per layer minimizing the predicted KL under a budget of
    ``budget_bits`` stored bits per weight (codes, codebooks, scales, signs: a uniform VQ 2.5-bit
    SmolLM2 stores 2.72), for ``quantize_model(model, method="palette", quantizer="mixed",
    plan=plan, hessians=hessians, seed=seed)``.

    ``model``: a causal LM called as ``model(input_ids=...)`` with ``.logits`` (Hugging Face);
    ``tokens``: 1-D int64 calibration tokens (a few thousand; the first ``n_sensitivity`` measure
    the noise sensitivities, all of them the Hessians). ``ldlq``: layers are scored (and must then
    be quantized) with Hessian-aware rounding; ``hessians`` reuses ones already collected. Costs
    one forward pass of ``n_sensitivity`` tokens per layer plus each layer quantized once per
    option (SmolLM2-135M, 2 cores, 5 VQ rates: ~6 + ~3 minutes; the trellis, ``quantizers=("tcq",)``,
    takes ~2.5 minutes per rate at ``L=12``). ``quantizers`` may include "ptqtp" (PTQTP's trit planes,
    its one rate ("ptqtp", 4) whatever ``bits`` says) for a PTQTP-versus-palette plan.
    ``layer_options``: palette.LAYER_OPTIONS (the trellis's L; PTQTP's group_size, max_iters, tol),
    to be given to quantize_model too.

    ``budget_seconds``: also bound the time of one forward through the quantized layers at
    ``batch`` tokens of ``dtype`` on the model's device (each option timed by
    weightkit.quant.latency.timed_options, ~1-2 minutes for SmolLM2's four shapes), in seconds, or
    as a (quantizer, bits) pair: no slower than that option in every layer — e.g. ``("vq", 2.5)``
    lets the trellis in only where VQ's speed pays for it. See :func:`allocate`.
    """
    from weightkit.quant.ldlq import collect_hessians
    from weightkit.quant.quantize import skip_patterns, target_linears

    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype.is_floating_point:
        raise ValueError("weightkit.quant.allocation.plan_mixed: tokens must be a 1-D integer tensor, got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if not isinstance(n_sensitivity, int) or n_sensitivity < 2:
        raise ValueError(f"weightkit.quant.allocation.plan_mixed: n_sensitivity must be an int >= 2, got "
                         f"{n_sensitivity!r}")
    layers = dict(target_linears("plan_mixed", model, skip_patterns("plan_mixed", skip), replace=True)[0])
    sens = noise_sensitivity(model, tokens[:n_sensitivity], layers, ctx=min(n_sensitivity, tokens.numel()),
                             progress=progress)
    if ldlq and hessians is None:
        hessians = collect_hessians(model, tokens, layers, ctx=min(512, tokens.numel()), progress=progress)
    from weightkit.quant.palette import PTQTP_BITS

    options = [Option(q, float(b), 0.0) for q in quantizers for b in ((PTQTP_BITS,) if q == "ptqtp" else bits)]
    measured = measured_options(model, options, hessians=hessians if ldlq else None, skip=skip, seed=seed,
                                progress=progress, **layer_options)
    if budget_seconds is not None:
        from weightkit.quant.latency import timed_options

        measured = timed_options(measured, {n: (layers[n].out_features, layers[n].in_features) for n in measured},
                                 batch=batch, dtype=dtype, device=next(model.parameters()).device,
                                 progress=progress, **{k: layer_options[k] for k in ("L", "group_size", "activations")
                                                       if k in layer_options})
        if isinstance(budget_seconds, tuple):
            budget_seconds = plan_seconds(measured, {n: budget_seconds for n in measured})
    names = list(measured)
    chosen = allocate([layers[n].weight.numel() for n in names], [sens[n] for n in names],
                      [measured[n] for n in names], budget_bits, budget_seconds=budget_seconds)
    return {n: (o.quantizer, o.bits) for n, o in zip(names, chosen)}, (hessians if ldlq else None)


def plan_seconds(timed: dict, plan: dict) -> float:
    """Σ over layers of the seconds of the option ``plan`` (name → (quantizer, bits)) picks, from
    ``timed`` (name → [Option] with seconds, weightkit.quant.latency.timed_options)."""
    total = 0.0
    for name, (quantizer, bits) in plan.items():
        try:
            seconds = find_option(timed.get(name, ()), quantizer, bits).seconds
        except ValueError:
            seconds = None
        if seconds is None:
            raise ValueError(f"weightkit.quant.allocation.plan_seconds: layer {name!r} has no timed option "
                             f"{quantizer}-{bits}")
        total += seconds
    return total


@torch.no_grad()
def block_importance(model: nn.Module, tokens: torch.Tensor, ctx: int = 256) -> list[float]:
    """LayerwiseQuant's score per transformer block: mean over positions of 1 − cos(h_in, h_out),
    from the hidden states of a Hugging Face model (``output_hidden_states=True``)."""
    n = (tokens.numel() // ctx) * ctx
    ids = tokens[:n].view(-1, ctx).to(next(model.parameters()).device)
    hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    return [(1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean().item() for a, b in zip(hs[:-1], hs[1:])]


def outlier_counts(layers: dict, k: float = 3.0) -> dict:
    """Per layer, the fraction of weights with |w| > k·std(W) (LayerwiseQuant's outlier score)."""
    out = {}
    for name, lin in layers.items():
        W = lin.weight.detach().float()
        out[name] = (W.abs() > k * W.std()).float().mean().item()
    return out
