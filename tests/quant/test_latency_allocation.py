"""Allocation under a time budget: weightkit.quant.latency times the options, allocate(...,
budget_seconds=...) keeps a plan within both budgets and finds the best plan of the lower convex
hull (time, loss) that brute force finds; plan_mixed wires the timing in."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from weightkit.quant import latency
from weightkit.quant.allocation import Option, allocate, find_option, plan_seconds, predicted_loss

from .test_allocation import TinyLM


def random_instance(seed: int, layers: int = 5):
    """Sizes, sensitivities and per-layer options where the trellis ("t") has the lowest error per
    bit and the slowest kernel, as on the CPU, with per-layer noise so no two plans tie."""
    g = torch.Generator().manual_seed(seed)
    sizes = [int(s) * 64 for s in torch.randint(1, 9, (layers,), generator=g)]
    sens = (torch.rand(layers, generator=g) * 10).tolist()
    per_layer = []
    for n in sizes:
        r = torch.rand(6, generator=g).tolist()
        per_layer.append([Option("t", b, 2.0 ** (-2 * b) * (1.1 + 0.1 * r[i]), seconds=n * (3 + r[i + 3]) * 1e-6)
                          for i, b in enumerate((2, 3, 4))]
                         + [Option("v", b, 2.0 ** (-2 * b) * (1.6 + 0.1 * r[i]), seconds=n * (1 + 0.1 * r[i]) * 1e-6)
                            for i, b in enumerate((2, 3, 4))])
    return sizes, sens, per_layer


def hull_best(sizes, sens, per_layer, budget_bits, budget_seconds):
    """Brute force: of the plans within the bits, those on the lower convex hull of (seconds, loss)
    between the fastest and the least-loss one; the least loss among them within the time."""
    pts = []
    for plan in itertools.product(*per_layer):
        if sum(n * o.bits for n, o in zip(sizes, plan)) <= budget_bits * sum(sizes) + 1e-9:
            pts.append((sum(o.seconds for o in plan), predicted_loss(sens, plan)))
    pts.sort()
    hull = []  # monotone chain, lower hull left to right
    for p in pts:
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    # The hull's falling part (from the fastest plan down to the least loss): what some μ ≥ 0 picks.
    least = min(range(len(hull)), key=lambda i: hull[i][1])
    within = [p for p in hull[: least + 1] if p[0] <= budget_seconds]
    return min(p[1] for p in within), pts


@pytest.mark.parametrize("seed", range(8))
def test_time_budget_finds_the_best_hull_plan(seed):
    sizes, sens, per_layer = random_instance(seed)
    budget_bits = 2.5 + 0.2 * seed / 8
    free = allocate(sizes, sens, per_layer, budget_bits)
    fastest = min(sum(o.seconds for o in p) for p in itertools.product(*per_layer)
                  if sum(n * o.bits for n, o in zip(sizes, p)) <= budget_bits * sum(sizes))
    # A time budget between the fastest plan and the unconstrained optimum's time: it binds.
    budget_seconds = fastest + (sum(o.seconds for o in free) - fastest) * (0.3 + 0.05 * seed)
    plan = allocate(sizes, sens, per_layer, budget_bits, budget_seconds=budget_seconds)
    assert sum(n * o.bits for n, o in zip(sizes, plan)) <= budget_bits * sum(sizes) + 1e-9
    assert sum(o.seconds for o in plan) <= budget_seconds
    best, pts = hull_best(sizes, sens, per_layer, budget_bits, budget_seconds)
    assert predicted_loss(sens, plan) == pytest.approx(best, rel=1e-9)
    assert predicted_loss(sens, plan) > predicted_loss(sens, free)  # the time budget did bind
    # ... and no plan within both budgets is much better than the hull's (here: within 25%).
    exact = min(e for s, e in pts if s <= budget_seconds)
    assert predicted_loss(sens, plan) <= 1.25 * exact


def test_loose_time_budget_changes_nothing():
    sizes, sens, per_layer = random_instance(3)
    free = allocate(sizes, sens, per_layer, 3.0)
    timed = allocate(sizes, sens, per_layer, 3.0, budget_seconds=1.0)
    assert predicted_loss(sens, timed) == predicted_loss(sens, free)


def test_time_budget_refusals():
    sizes, sens, per_layer = random_instance(1)
    fn = "weightkit.quant.allocation.allocate"
    with pytest.raises(ValueError, match=rf"{fn}: no plan within 3.0 bits per weight takes <= 1e-09 s \(the fastest takes"):
        allocate(sizes, sens, per_layer, 3.0, budget_seconds=1e-9)
    with pytest.raises(ValueError, match=rf"{fn}: budget_seconds must be > 0, got -1"):
        allocate(sizes, sens, per_layer, 3.0, budget_seconds=-1.0)
    untimed = [[Option(o.quantizer, o.bits, o.error) for o in opts] for opts in per_layer]
    with pytest.raises(ValueError, match=rf"{fn}: budget_seconds needs every Option's seconds .*layer 0's t-2 has none"):
        allocate(sizes, sens, untimed, 3.0, budget_seconds=1.0)
    with pytest.raises(ValueError, match=rf"{fn}: budget 1.0 bits per weight is below the cheapest plan"):
        allocate(sizes, sens, per_layer, 1.0, budget_seconds=1.0)


@pytest.mark.parametrize("kind, bits, L", [("tcq", 2, 8), ("vq", 2.5, None), ("sq", 4, None)])
def test_layer_seconds_runs_the_layer(kind, bits, L):
    s = latency.layer_seconds(32, 64, kind, bits, batch=2, L=L, min_bytes=1 << 14, repeats=2)
    assert math.isfinite(s) and 0 < s < 1
    assert 0 < latency.linear_seconds(32, 64, dtype=torch.bfloat16, min_bytes=1 << 14, repeats=2) < 1


def test_copies_hold_own_codes_and_share_the_rest():
    from weightkit.nn.palette import PaletteLinear

    layer = PaletteLinear.from_linear(torch.nn.Linear(64, 16), "vq", 2)
    copies = latency._copies(layer, ("packed",), min_bytes=10 * layer.packed.numel() * 4)
    assert len(copies) == 10
    assert len({c.packed.data_ptr() for c in copies}) == 10 and len({c.signs.data_ptr() for c in copies}) == 1
    x = torch.randn(3, 64)
    assert all(torch.equal(c(x), layer(x)) for c in copies)


def test_latency_refusals():
    with pytest.raises(ValueError, match=r"weightkit.quant.latency.layer_seconds: batch must be an int >= 1, got 0"):
        latency.layer_seconds(8, 64, "vq", 2, batch=0)
    with pytest.raises(ValueError, match=r"weightkit.quant.latency.linear_seconds: repeats must be an int >= 1"):
        latency.linear_seconds(8, 64, repeats=0)
    with pytest.raises(ValueError, match=r"timed_options: no shape given for layers \['b'\]"):
        latency.timed_options({"b": [Option("vq", 2, 0.1)]}, {"a": (8, 64)})


def test_timed_options_times_each_shape_once(monkeypatch):
    calls = []

    def fake(out_f, in_f, q, b, **kw):
        calls.append((out_f, in_f, q, b))
        return out_f * in_f * (3 if q == "tcq" else 1) * 1e-9

    monkeypatch.setattr(latency, "layer_seconds", fake)
    opts = [Option("tcq", 2.0, 0.1), Option("vq", 2.0, 0.2)]
    timed = latency.timed_options({"a": opts, "b": opts, "c": opts}, {"a": (8, 64), "b": (8, 64), "c": (16, 64)})
    assert len(calls) == 4  # two shapes x two options
    assert [o.seconds for o in timed["a"]] == [o.seconds for o in timed["b"]] == [3 * 512e-9, 512e-9]
    assert plan_seconds(timed, {"a": ("tcq", 2), "c": ("vq", 2.0)}) == pytest.approx(3 * 512e-9 + 1024e-9)
    with pytest.raises(ValueError, match=r"plan_seconds: layer 'a' has no timed option sq-4"):
        plan_seconds(timed, {"a": ("sq", 4)})


def test_find_option_matches_quantizer_and_bits():
    opts = [Option("tcq", 2.0, 0.1), Option("vq", 2.0, 0.2), Option("vq", 2.5, 0.15)]
    assert find_option(opts, "vq", 2) is opts[1]
    assert find_option(opts, "vq", 2.5) is opts[2]
    with pytest.raises(ValueError, match=r"find_option: no option sq-3 among: tcq-2, vq-2, vq-2.5"):
        find_option(opts, "sq", 3)
    with pytest.raises(ValueError, match=r"no option vq-2 among: none"):
        find_option([], "vq", 2)


def test_plan_mixed_with_a_time_budget(monkeypatch):
    """The trellis costs 3x the time of VQ (a stand-in timing, so the plan does not depend on this
    machine's speed): "no slower than VQ 2.5 everywhere" allows no trellis layer, a budget in
    between fewer than the bits alone pick."""
    from weightkit.quant.allocation import plan_mixed

    monkeypatch.setattr(latency, "layer_seconds",
                        lambda o, i, q, b, **kw: o * i * (3.0 if q == "tcq" else 1.0) * 1e-9)
    torch.manual_seed(0)
    model = TinyLM(d=512)
    tokens = torch.randint(0, 50, (512,))
    common = dict(budget_bits=3.6, quantizers=("tcq", "vq"), bits=(2, 2.5, 3, 4), n_sensitivity=128, L=8)
    free, hessians = plan_mixed(model, tokens, **common)
    as_vq, _ = plan_mixed(model, tokens, hessians=hessians, budget_seconds=("vq", 2.5), **common)
    assert {q for q, _ in as_vq.values()} == {"vq"}
    n_tcq = sum(q == "tcq" for q, _ in free.values())
    assert n_tcq >= 2, free  # the trellis wins on bits alone ...
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if n in free}
    all_vq = sum(sizes.values()) * 1e-9
    # Room for one block (512 x 512) in the trellis, not two.
    between, _ = plan_mixed(model, tokens, hessians=hessians, budget_seconds=all_vq + 2.5 * 512 * 512 * 1e-9,
                            **common)
    assert 1 <= sum(q == "tcq" for q, _ in between.values()) < n_tcq  # ... and is rationed by the time


def test_palette_latency_bench_reads_the_stored_measurements(tmp_path):
    from weightkit.bench import palette_latency as PL

    vq = {"sensitivity": {"l0": 2.0}, "measured": {"l0": [["vq", 2.5, 0.01, 2.7], ["vq", 6, 0.0001, 6.2]]}}
    tcq = {"sensitivity": {"l0": 9.0}, "measured": {"l0": [["tcq", 2.0, 0.02, 2.1], ["tcq", 4, 0.001, 4.1]]}}
    for name, data in zip(PL.MEASURED_FROM, (vq, tcq)):
        (tmp_path / name).write_text(json.dumps(data))
    sens, measured, source = PL.measured_inputs(tmp_path, None, None, None)
    assert sens == {"l0": 2.0} and source == " + ".join(PL.MEASURED_FROM)
    # vq-6 is not one of the benchmark's options; the rest keep their errors and stored bits.
    assert measured == {"l0": [Option("vq", 2.5, 0.01, 2.7), Option("tcq", 2.0, 0.02, 2.1), Option("tcq", 4.0, 0.001, 4.1)]}
