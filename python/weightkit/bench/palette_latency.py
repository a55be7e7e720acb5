"""The whole palette under a bit budget and a time budget, on SmolLM2-135M (part of the palette
benchmark): which plan is best when the trellis (TCQ, the lowest error per bit) decodes ~1.5-2x slower
than 2-D VQ on the CPU.

Every plan stores at most the bits of uniform VQ 2.5 (2.72 per weight, codebooks and scales
counted) and rounds with LDLQ (Hessians from 8,192 pydoc tokens after the evaluation slice, as in
palette_ppl). Plans:
  - uniform VQ 2.5 and uniform TCQ 2.5 (2.64 bits);
  - "mixed": the DP over TCQ 1.5-4, VQ 2-4 and SQ 2-4 under the bits alone;
  - "mixed, time ≤ f × VQ 2.5": the same with the time of one forward through the 210 layers
    bounded by f times that of uniform VQ 2.5 (allocation.allocate's budget_seconds), f = 1, 1.25,
    1.5.
Each plan reports its perplexity (the first 4096 pydoc tokens, ctx 512), stored bits, predicted
KL, its layers' summed kernel seconds (weightkit.quant.latency, batch 1, bf16 activations,
measured in this run) and the decoding speed of the model through Hugging Face ``generate``
(batch 1, greedy, the rest of the model in bf16; weightkit.bench.generate.decode_ms, the plans
interleaved).

The per-layer errors and the sensitivities are those of palette-ppl-ldlq-mixed.json (VQ, SQ) and
palette-ppl-ldlq-mixed-tcq.json (TCQ) when both are in the results folder (same model, tokens,
Hessians and seeds: ~40 minutes of measuring saved), else measured here.

Usage: ``python -m weightkit.bench.palette_latency [out.json] [--threads 2] [--factors 1,1.25,1.5]``.
"""

from __future__ import annotations

import argparse
import copy
from collections import Counter
import json
import time
from pathlib import Path

import torch

import weightkit as wk
from weightkit.bench import generate
from weightkit.bench.palette_ppl import _header, _setup, _write
from weightkit.quant import allocation, latency

OPTIONS = ([("tcq", b) for b in (1.5, 2, 2.5, 3, 3.5, 4)] + [("vq", b) for b in (2, 2.5, 3, 3.5, 4)]
           + [("sq", b) for b in (2, 3, 4)])
TCQ_L = 12
#: The stored files the measured options and sensitivities may come from (see the module docstring).
MEASURED_FROM = ("palette-ppl-ldlq-mixed.json", "palette-ppl-ldlq-mixed-tcq.json")


def measured_inputs(folder: Path, model, calib_ids, hessians, log=print) -> tuple[dict, dict, str]:
    """(sensitivity name → a_l, measured options name → [Option], where they came from)."""
    files = [folder / f for f in MEASURED_FROM]
    if all(f.exists() for f in files):
        stored = [json.loads(f.read_text()) for f in files]
        measured = {n: [allocation.Option(q, float(b), e, c) for s in stored for q, b, e, c in s["measured"][n]
                        if (q, b) in OPTIONS]
                    for n in stored[0]["measured"]}
        return stored[0]["sensitivity"], measured, " + ".join(str(f.name) for f in files)
    layers = wk.eval.linear_layers(model)
    log("measuring sensitivities and options (no stored ones found)")
    sens = allocation.noise_sensitivity(model, calib_ids[:512], layers, rel_mse=0.05, ctx=512, progress=True)
    measured = allocation.measured_options(model, [allocation.Option(q, float(b), 0.0) for q, b in OPTIONS],
                                           hessians=hessians, progress=True, L=TCQ_L)
    return sens, measured, "measured in this run"


def run(out_path, factors=(1.0, 1.25, 1.5), n_eval: int = 4096, n_hessian: int = 8192, new_tokens: int = 64,
        repeats: int = 5, log=print) -> dict:
    """Runs the plans of the module docstring, rewriting ``out_path`` after each."""
    out_path = Path(out_path)
    model, eval_ids, calib_ids = _setup(n_eval, n_hessian)
    base = copy.deepcopy(model)
    layers = wk.eval.linear_layers(model)
    results = _header(n_eval, n_hessian_tokens=n_hessian, tcq_L=TCQ_L, options=[list(o) for o in OPTIONS],
                      batch=1, activations="bf16", factors=list(factors))
    t0 = time.perf_counter()
    hessians = wk.quant.collect_hessians(model, calib_ids, layers, progress=True)
    results["hessian_s"] = time.perf_counter() - t0
    sens, measured, source = measured_inputs(out_path.parent, model, calib_ids, hessians, log)
    results["measured_from"] = source
    t0 = time.perf_counter()
    timed = latency.timed_options(measured, {n: (m.out_features, m.in_features) for n, m in layers.items()},
                                  dtype=torch.bfloat16, L=TCQ_L, progress=True)
    results["timing_s"] = time.perf_counter() - t0
    results["kernel_us"] = {f"{layers[n].out_features}x{layers[n].in_features}": {f"{o.quantizer}-{o.bits:g}":
                                                                                   round(1e6 * o.seconds, 2)
                                                                                   for o in opts}
                            for n, opts in timed.items()}
    names = list(timed)
    sizes = [layers[n].weight.numel() for n in names]
    a = [sens[n] for n in names]
    per_layer = [timed[n] for n in names]

    def uniform(q, b):
        return [allocation.find_option(opts, q, b) for opts in per_layer]

    vq = uniform("vq", 2.5)
    budget_bits = sum(n * o.cost for n, o in zip(sizes, vq)) / sum(sizes)
    vq_seconds = sum(o.seconds for o in vq)
    results.update(budget_stored_bits=budget_bits, vq25_layer_seconds=vq_seconds)
    plans = {"vq-2.5": vq, "tcq-2.5": uniform("tcq", 2.5),
             "mixed": allocation.allocate(sizes, a, per_layer, budget_bits)}
    for f in factors:
        plans[f"mixed, time <= {f:g} x vq-2.5"] = allocation.allocate(sizes, a, per_layer, budget_bits,
                                                                      budget_seconds=f * vq_seconds)
    models = {}
    for label, chosen in plans.items():
        plan = {n: (o.quantizer, o.bits) for n, o in zip(names, chosen)}
        m = copy.deepcopy(base)
        rep = wk.quant.quantize_model(m, method="palette", quantizer="mixed", plan=plan, hessians=hessians, L=TCQ_L)
        rec = {"label": label, "ppl": wk.eval.perplexity(m, eval_ids, ctx=512), "stored_bits": rep.bits_per_weight,
               "quantize_s": rep.seconds, "predicted_kl": allocation.predicted_loss(a, chosen),
               "layer_ms": 1e3 * sum(o.seconds for o in chosen),
               "tcq_weight_share": sum(n for n, o in zip(sizes, chosen) if o.quantizer == "tcq") / sum(sizes),
               "plan_hist": dict(Counter(f"{q}-{b:g}" for q, b in plan.values()))}
        results["runs"].append(rec)
        _write(out_path, results)
        log(f"{label}: ppl {rec['ppl']:.3f}, stored {rec['stored_bits']:.3f} bits, layers {rec['layer_ms']:.2f} ms, "
            f"TCQ share {rec['tcq_weight_share']:.2f}, quantize {rec['quantize_s']:.0f} s")
        models[label] = m.to(torch.bfloat16)
    models["bf16"] = base.to(torch.bfloat16)
    tok = wk.data.load_smollm2_tokenizer()
    ids = tok(generate.PROMPT, return_tensors="pt").input_ids
    ms, _ = generate.decode_ms(models, ids, new_tokens, repeats, log)
    for rec in results["runs"]:
        rec["decode_ms_per_token"] = round(ms[rec["label"]], 2)
    results["bf16_decode_ms_per_token"] = round(ms["bf16"], 2)
    results["decode"] = f"HF generate, batch 1, greedy, {new_tokens} tokens, rest in bf16, median of {repeats} rounds"
    _write(out_path, results)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="palette_latency", description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="default: bench/results/<device>/palette-latency.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--factors", default="1,1.25,1.5", help="time budgets, as multiples of uniform VQ 2.5's")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out is None:
        from weightkit.bench.common import results_path

        args.out = str(results_path("palette-latency", "cpu"))
    run(args.out, factors=tuple(float(f) for f in args.factors.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
