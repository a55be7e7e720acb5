"""Bit allocation: the DP equals brute force; the Lagrangian sweep meets the budget; sensitivity
and importance run on a tiny model."""

from __future__ import annotations

import itertools

import pytest
import torch

from weightkit.quant.allocation import (
    Option,
    allocate,
    allocate_lagrangian,
    block_importance,
    default_options,
    noise_sensitivity,
    outlier_counts,
    predicted_loss,
)


def brute_force(sizes, sens, options, budget):
    best, best_plan = float("inf"), None
    for plan in itertools.product(options, repeat=len(sizes)):
        if sum(n * o.bits for n, o in zip(sizes, plan)) <= budget * sum(sizes) + 1e-9:
            loss = predicted_loss(sens, plan)
            if loss < best:
                best, best_plan = loss, plan
    return best, best_plan


@pytest.mark.parametrize("seed", range(6))
def test_dp_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    L = 5
    sizes = [int(s) * 64 for s in torch.randint(1, 9, (L,), generator=g)]
    sens = (torch.rand(L, generator=g) * 10).tolist()
    options = default_options(("tcq", "sq"), (1.5, 2, 2.5, 3, 4))
    budget = 2.0 + float(torch.rand(1, generator=g)) * 1.5
    best, _ = brute_force(sizes, sens, options, budget)
    plan = allocate(sizes, sens, options, budget)
    assert sum(n * o.bits for n, o in zip(sizes, plan)) <= budget * sum(sizes) + 1e-9
    assert predicted_loss(sens, plan) == pytest.approx(best, rel=1e-12)


def test_dp_with_per_layer_options():
    sizes = [100, 300, 200]
    sens = [1.0, 5.0, 0.5]
    per_layer = [[Option("a", 2, 0.1 + 0.01 * i), Option("b", 4, 0.01)] for i in range(3)]
    plan = allocate(sizes, sens, per_layer, 3.0)
    cands = [p for p in itertools.product(*per_layer) if sum(n * o.bits for n, o in zip(sizes, p)) <= 3.0 * 600]
    assert predicted_loss(sens, plan) == pytest.approx(min(predicted_loss(sens, p) for p in cands))


def test_lagrangian_meets_budget_and_is_close():
    g = torch.Generator().manual_seed(9)
    sizes = [int(s) * 64 for s in torch.randint(1, 9, (6,), generator=g)]
    sens = (torch.rand(6, generator=g) * 10).tolist()
    options = default_options(("tcq",))
    plan = allocate_lagrangian(sizes, sens, options, 2.5)
    assert sum(n * o.bits for n, o in zip(sizes, plan)) <= 2.5 * sum(sizes)
    exact = allocate(sizes, sens, options, 2.5)
    assert predicted_loss(sens, plan) <= 1.5 * predicted_loss(sens, exact)


def test_more_sensitive_layers_get_more_bits():
    sizes = [1000] * 4
    plan = allocate(sizes, [1.0, 10.0, 100.0, 1000.0], default_options(("tcq",)), 2.5)
    bits = [o.bits for o in plan]
    assert bits == sorted(bits) and bits[0] < bits[-1]


def test_budget_too_small():
    with pytest.raises(ValueError, match="below the cheapest plan"):
        allocate([10, 10], [1, 1], default_options(("tcq",)), 1.0)


class TinyLM(torch.nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.emb = torch.nn.Embedding(50, d)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(d, d) for _ in range(3)])
        self.head = torch.nn.Linear(d, 50)

    def forward(self, input_ids, output_hidden_states=False):
        h = self.emb(input_ids)
        hs = [h]
        for b in self.blocks:
            h = h + torch.tanh(b(h))
            hs.append(h)
        out = type("Out", (), {})()
        out.logits = self.head(h)
        out.hidden_states = tuple(hs)
        return out


def test_sensitivity_and_importance_on_tiny_model():
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():
        model.blocks[1].weight.mul_(5)  # a layer that matters more
    tokens = torch.randint(0, 50, (256,))
    layers = {f"blocks.{i}": b for i, b in enumerate(model.blocks)}
    before = {k: v.weight.clone() for k, v in layers.items()}
    sens = noise_sensitivity(model, tokens, layers, ctx=64)
    assert all(torch.equal(before[k], layers[k].weight) for k in layers)  # weights restored
    assert all(v >= 0 for v in sens.values()) and sens["blocks.1"] > sens["blocks.0"]
    imp = block_importance(model, tokens, ctx=64)
    assert len(imp) == 3 and all(0 <= v <= 2 for v in imp)
    assert set(outlier_counts(layers)) == set(layers)


def test_half_variants_have_errors_between():
    opts = {o.bits: o.error for o in default_options(("tcq",), (2, 2.25, 2.5))}
    assert opts[2] > opts[2.25] > opts[2.5]


def test_bits_off_the_quarter_grid_and_coprime_sizes():
    # Costs off the quarter-bit grid used to be rounded up to the next quarter-bit gcd (a feasible
    # budget was "below the cheapest plan"); coprime layer sizes made a table of ~10^9 cells.
    from weightkit.quant.allocation import Option, allocate

    assert allocate([37], [1.0], [Option("sq", 2.5479, 0.1)], budget_bits=2.9) == [Option("sq", 2.5479, 0.1)]
    sizes = [1_000_003, 999_983, 1_000_033]
    options = [Option("tcq", b, e) for b, e in ((2, 0.0745), (2.5, 0.0418), (3, 0.0197))]
    plan = allocate(sizes, [1.0, 2.0, 3.0], options, budget_bits=2.5)
    assert sum(n * o.bits for n, o in zip(sizes, plan)) <= 2.5 * sum(sizes)
    assert [o.bits for o in plan] != [2, 2, 2]  # the budget is used, not just met


@pytest.mark.parametrize("shape", [(37, 64), (192, 576), (8, 96)])
@pytest.mark.parametrize("kind, bits, L", [("sq", 3, None), ("vq", 2.5, None), ("vq", 4, None), ("tcq", 2, 8),
                                            ("tcq", 2.25, 8), ("tcq", 3.5, 10)])
def test_stored_bits_is_what_a_layer_stores(shape, kind, bits, L):
    from torch import nn

    from weightkit.nn import PaletteLinear
    from weightkit.quant.palette import rate_of, stored_bits

    layer = PaletteLinear.from_linear(nn.Linear(shape[1], shape[0]), kind, bits, **({"L": L} if L else {}))
    assert stored_bits(*shape, kind, bits, L=L) == pytest.approx(rate_of(layer), rel=1e-12)


def test_stored_options_keep_the_real_size_in_budget():
    from weightkit.quant.allocation import stored_options

    # Small layers pay for a 256-entry 2-D codebook: by nominal bits the plan fits 2.5, by stored
    # bits it does not; budgeting stored bits keeps it inside.
    shapes = [(192, 576), (576, 576), (1536, 576), (576, 1536)]
    sizes = [o * i for o, i in shapes]
    sens = [1.0, 0.5, 0.3, 2.0]
    options = default_options(("vq",))
    nominal = allocate(sizes, sens, options, 3.0)
    stored = stored_options(shapes, options)
    real = allocate(sizes, sens, stored, 3.0)

    def stored_cost(plan):
        return sum(n * next(s.cost for s in row if (s.quantizer, s.bits) == (o.quantizer, o.bits))
                   for n, o, row in zip(sizes, plan, stored)) / sum(sizes)

    assert stored_cost(nominal) > 3.0 >= stored_cost(real)
    assert all(o.cost_bits > o.bits for row in stored for o in row)
    assert [(o.quantizer, o.bits) for o in allocate_lagrangian(sizes, sens, stored, 3.0)]  # runs on costs too
    assert stored_cost(allocate_lagrangian(sizes, sens, stored, 3.0)) <= 3.0


@pytest.mark.parametrize("ldlq, quantizer", [(True, "vq"), (False, "vq"), (True, "tcq")])
def test_plan_mixed_keeps_the_stored_budget_and_favours_sensitive_layers(ldlq, quantizer):
    import weightkit as wk
    from weightkit.quant.allocation import plan_mixed

    torch.manual_seed(0)
    model = TinyLM(d=512)  # wide enough that codes, not codebooks and padding, make the stored bits
    with torch.no_grad():
        model.blocks[1].weight.mul_(5)  # a layer that matters more
    tokens = torch.randint(0, 50, (512,))
    trellis = {"L": 8} if quantizer == "tcq" else {}  # the trellis's block LDLQ, small for speed
    plan, hessians = plan_mixed(model, tokens, budget_bits=3.6, quantizers=(quantizer,), bits=(2, 2.5, 3, 4), ldlq=ldlq,
                                n_sensitivity=128, **trellis)
    assert set(plan) == {"blocks.0", "blocks.1", "blocks.2", "head"} and (hessians is not None) == ldlq
    assert {q for q, _ in plan.values()} == {quantizer}
    assert plan["blocks.1"][1] == max(b for _, b in plan.values())
    assert len({b for _, b in plan.values()}) > 1  # mixed, not one rate
    rep = wk.quant.quantize_model(model, method="palette", quantizer="mixed", plan=plan, hessians=hessians,
                                  progress=False, **trellis)
    assert rep.bits_per_weight <= 3.6


def test_plan_mixed_refuses_bad_tokens_and_budgets():
    from weightkit.quant.allocation import plan_mixed

    model = TinyLM(d=256)
    fn = "weightkit.quant.allocation.plan_mixed"
    with pytest.raises(ValueError, match=rf"{fn}: tokens must be a 1-D integer tensor, got \(2, 64\)"):
        plan_mixed(model, torch.zeros(2, 64, dtype=torch.long), 3.0)
    with pytest.raises(ValueError, match=rf"{fn}: tokens must be a 1-D integer tensor"):
        plan_mixed(model, torch.rand(256), 3.0)
    with pytest.raises(ValueError, match=rf"{fn}: n_sensitivity must be an int >= 2, got 0"):
        plan_mixed(model, torch.randint(0, 50, (256,)), 3.0, n_sensitivity=0)
    with pytest.raises(ValueError, match=r"allocate: budget 1.0 bits per weight is below the cheapest plan"):
        plan_mixed(model, torch.randint(0, 50, (256,)), 1.0, bits=(2, 4), n_sensitivity=64)
