"""Palette benchmark: decode-in-register GEMV at batch 1 against torch fp32 / bf16 (CPU, 4096²)
or cuBLAS fp16 / bf16 (CUDA, 8192², TCQ GEMV included), the Hadamard transform against a dense
matmul by H, and quantizer MSE on unit-Gaussian samples against PAPERS.md. SmolLM2-135M perplexity
against bits is weightkit.bench.palette_ppl (its sweeps) and palette_ppl_plot (their plot).

Memory-bound timing (DESIGN.md): every weight format is timed on rotating copies totalling more
than 2× the last-level cache (96 MiB on the CPU, 256 MiB on a GPU), ours and the baselines alike,
and reports achieved GB/s (bytes of the weight format read per call / time) beside a plain
streaming read (``sum`` of an fp32 tensor) of 128 MiB. ``OtherLoad`` records how many cores other
processes kept busy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch.nn import functional as F

import weightkit  # noqa: F401
from weightkit.bench import common
from weightkit.ops import palette as P
from weightkit.quant import codebooks
from weightkit.quant.tcq import tcq_params

FAMILY = "palette"
SHORT_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
ROTATE_BYTES = 96 << 20  # > 2 x 32 MiB LLC

MSE_TABLE = {  # PAPERS.md, Q-Palette table
    "tcq": {1.5: 0.1403, 2: 0.0710, 3: 0.0189, 4: 0.0059},
    "vq": {1.5: 0.2012, 2: 0.1086, 3: 0.0297, 4: 0.0078},
    "sq": {2: 0.1175, 3: 0.0345, 4: 0.0095},
}


def _rotate_bytes(dev) -> int:
    """Bytes of rotating copies: > 2x the last-level cache (CPU 32 MiB here; H100/H200 L2 50-60 MB)."""
    return (256 << 20) if dev.type == "cuda" else ROTATE_BYTES


def _copies(nbytes: int, dev) -> int:
    return max(2, math.ceil(_rotate_bytes(dev) / max(nbytes, 1)))


def _rotating(fn_of_copy, copies):
    state = {"i": 0}

    def call():
        fn_of_copy(state["i"] % copies)
        state["i"] += 1

    return call


def _time(fn, dev, settings, copies):
    # Each timed call walks all copies once, so every weight byte comes from memory.
    def all_copies():
        for _ in range(copies):
            fn()

    return common.measure(all_copies, device=dev, **settings).median_ms / copies


def streaming_gbs(dev, settings) -> float:
    """GB/s of a plain streaming read (``sum`` of a 128 MiB fp32 tensor)."""
    stream = torch.randn(32 << 20, device=dev)
    t = common.measure(lambda: stream.sum(), device=dev, **settings).median_ms
    return stream.numel() * 4 / t / 1e6


def palette_format(dev, n: int, x, c: int, d: int):
    """(call of copy i, bytes of one copy, copies) for palette_matmul with random c-bit codes."""
    cb = torch.randn(1 << c, d, device=dev)
    sc = torch.rand(n, device=dev) + 0.5
    nbytes = n * P.packed_words(n // d, c) * 4
    k = _copies(nbytes, dev)
    packs = [P.palette_pack(torch.randint(0, 1 << c, (n, n // d), dtype=torch.int32, device=dev), c) for _ in range(k)]
    return (lambda i: P.palette_matmul(x, packs[i], cb, sc, n)), nbytes, k


def tcq_format(dev, n: int, x, bits: float, L: int = 16):
    """The same for tcq_matmul. Every bit stream is a path of the bitshift trellis, so random words
    are valid codes (Viterbi-encoding 8192² weights at L = 16 would take far longer than the timing)."""
    p = tcq_params(bits, L)
    L, kb, V = p["L"], p["bits_per_step"], p["values_per_step"]
    words = P.tcq_words(n // V, L, kb)
    sc = torch.rand(n, device=dev) + 0.5
    nbytes = n * words * 4
    k = _copies(nbytes, dev)
    packs = [torch.randint(-2**31, 2**31 - 1, (n, words), dtype=torch.int32, device=dev) for _ in range(k)]
    return (lambda i: P.tcq_matmul(x, packs[i], sc, n, L, kb, V)), nbytes, k


def gemv_cases(dev, n: int, settings, formats, stream_gbs: float, baselines=(torch.float32, torch.bfloat16),
               rounds: int = 3, x_dtype=torch.float32) -> list:
    """Batch-1 GEMV of each format (label, kind "palette" | "tcq", args) against torch F.linear at
    each baseline dtype, timed alternately in ``rounds`` rounds; each keeps its best round (the
    machine is shared: the minimum over rounds is the least disturbed). Our ops get x in
    ``x_dtype`` (a bf16 model's activations on a GPU: the casts are part of the call)."""
    x = torch.randn(1, n, device=dev)
    base_fns = {}
    for dtype in baselines:
        nbytes = n * n * torch.finfo(dtype).bits // 8
        k = _copies(nbytes, dev)
        Ws = [torch.randn(n, n, device=dev).to(dtype) for _ in range(k)]
        xd = x.to(dtype)
        base_fns[dtype] = (_rotating(lambda i, Ws=Ws, xd=xd: F.linear(xd, Ws[i]), k), k, nbytes)
    baseline_name = "cuBLAS" if dev.type == "cuda" else "torch"
    cases = []
    for label, kind, args in formats:
        fn_of_copy, nbytes, k = (palette_format if kind == "palette" else tcq_format)(dev, n, x.to(x_dtype), *args)
        ours_fn = _rotating(fn_of_copy, k)
        best = {"ours": float("inf"), **{dtype: float("inf") for dtype in baselines}}
        with common.OtherLoad() as load:
            for _ in range(rounds):
                best["ours"] = min(best["ours"], _time(ours_fn, dev, settings, k))
                for dtype, (fn, kb, _) in base_fns.items():
                    best[dtype] = min(best[dtype], _time(fn, dev, settings, kb))
        del fn_of_copy, ours_fn
        ours = best["ours"]
        for dtype in baselines:
            t_base, b_bytes = best[dtype], base_fns[dtype][2]
            short = SHORT_DTYPE[dtype]
            cases.append({
                "case": f"gemv-{label}-{n}x{n}-b1-vs-{short}",
                "baseline": f"{baseline_name} {short} F.linear", "ours_ms": ours, "baseline_ms": t_base,
                "notes": f"ours {nbytes / ours / 1e6:.1f} GB/s ({nbytes / 2**20:.1f} MiB codes, {k} copies); "
                         f"baseline {b_bytes / t_base / 1e6:.1f} GB/s; streaming read {stream_gbs:.1f} GB/s; "
                         f"best of {rounds} alternating rounds; other load "
                         f"{load.cores if load.cores is None else round(load.cores, 2)} cores",
                "ours_gbs": nbytes / ours / 1e6, "baseline_gbs": b_bytes / t_base / 1e6, "stream_gbs": stream_gbs,
            })
    return cases


#: Activation widths of real models whose Hadamard size is 2^k·m with m > 1 (the small factor
#: costs m multiply-adds per element): SmolLM2's hidden 576 (m = 36) and MLP 1536 (m = 12),
#: Llama-2-7B's MLP 11008 (m = 172), Llama-3-8B's MLP 14336 (m = 28).
LLM_WIDTHS = (576, 1536, 11008, 14336)


def hadamard_cases(dev, rows: int, n: int, settings, stream_gbs: float, dtype=torch.float32) -> list:
    """hadamard_transform of a (rows, n) batch against a dense product by H_n in the same dtype;
    the bytes moved (read + write) per second against a plain streaming read."""
    x = torch.randn(rows, n, device=dev).to(dtype)
    s = P.hadamard_signs(n, 0).to(dev)
    m = P.hadamard_order(n)
    H = P.hadamard_transform(torch.eye(n, device=dev), None, 1.0).T.contiguous().to(dtype)  # H_n
    s_d = s.to(dtype)
    ours = common.measure(lambda: P.hadamard_transform(x, s), device=dev, **settings).median_ms
    scale = 1 / math.sqrt(n)
    base = common.measure(lambda: (x * s_d) @ H.T * scale, device=dev, **settings).median_ms
    nbytes = 2 * x.numel() * x.element_size()
    gbs = nbytes / ours / 1e6
    library = "cuBLAS" if dev.type == "cuda" else "MKL"
    return [{"case": f"hadamard-{rows}x{n}-m{m}-{SHORT_DTYPE[dtype]}",
             "baseline": f"torch (x*signs) @ H^T (dense, {library})", "ours_ms": ours, "baseline_ms": base,
             "notes": f"ours {gbs:.1f} GB/s (read + write) = {gbs / stream_gbs:.0%} of a streaming read "
                      f"({stream_gbs:.1f} GB/s)",
             "ours_gbs": gbs, "stream_gbs": stream_gbs, "stream_fraction": gbs / stream_gbs}]


def mse_results(samples_log2: int, tcq_L: int) -> list:
    out = []
    g = torch.Generator().manual_seed(11)
    n = 1 << samples_log2
    X = torch.randn(16, n // 16, generator=g)
    for q, table in MSE_TABLE.items():
        for bits, ref in table.items():
            t0 = time.perf_counter()
            if q == "sq":
                cb = codebooks.lloyd_max(int(bits))
            elif q == "vq":
                cb = codebooks.vq2d(int(2 * bits))
            if q in ("sq", "vq"):
                idx = P.palette_encode(X, cb).long()
                Y = cb[idx].reshape(X.shape)
            else:
                p = tcq_params(bits, tcq_L)
                packed = P.tcq_encode(X, p["L"], p["bits_per_step"], p["values_per_step"])
                Y = P.tcq_dequantize(packed, torch.ones(16), X.shape[1], p["L"], p["bits_per_step"],
                                     p["values_per_step"])
            mse = (X - Y).pow(2).mean().item()
            out.append({"quantizer": q, "bits": bits, "mse": mse, "paper": ref, "ratio": mse / ref,
                        "within_5pct": mse <= 1.05 * ref, "samples": n, "L": tcq_L if q == "tcq" else None,
                        "seconds": time.perf_counter() - t0})
    return out


def run(*, device="cpu", quick: bool = False, progress=None, mse: bool = True) -> dict:
    dev = common.resolve_device(device)
    settings = dict(warmup=2, repeats=7, min_time_s=0.3, max_time_s=3.0 if quick else 8.0, long_call_s=1.0)
    formats = [(label, "palette", (c, d)) for label, c, d in (
        ("sq2", 2, 1), ("sq3", 3, 1), ("sq4", 4, 1), ("vq2", 4, 2), ("vq2.5", 5, 2), ("vq3", 6, 2), ("vq3.5", 7, 2),
        ("vq4", 8, 2))]
    skipped = []
    stream_gbs = streaming_gbs(dev, settings)  # the yardstick of both parts, measured once
    formats += [(f"tcq{b:g}", "tcq", (b,)) for b in (2, 2.5, 3, 4)]
    if dev.type == "cuda":
        # The bars' setting: 8192² against cuBLAS fp16 (and bf16); the activation batch in bf16.
        n = 2048 if quick else 8192
        cases = gemv_cases(dev, n, settings, formats, stream_gbs, baselines=(torch.float16, torch.bfloat16),
                           x_dtype=torch.bfloat16)
        # The bar's case only: the prepared GPU run (tools/gpu_session.sh) gives this bench 60 s.
        cases += hadamard_cases(dev, 256 if quick else 4096, 4096, settings, stream_gbs, dtype=torch.bfloat16)
    else:
        n = 2048 if quick else 4096
        cases = gemv_cases(dev, n, settings, formats, stream_gbs)
        cases += hadamard_cases(dev, 256 if quick else 4096, n, settings, stream_gbs)
        # The dense baseline costs rows·n² multiply-adds: fewer rows for the widest layers.
        for width in LLM_WIDTHS[:1] if quick else LLM_WIDTHS:
            cases += hadamard_cases(dev, 256 if quick or width > 4096 else 2048, width, settings, stream_gbs)
    extra = {"quick": quick, "mse": mse_results(16 if quick else 18, 16) if mse else []}
    return {"cases": cases, "skipped": skipped, "extra": extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_palette", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048² GEMVs, 2^16-sample MSE (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="where to write results (default bench/results/<device>/palette.json)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-mse", action="store_true", help="skip the quantizer MSE part (CPU Viterbi at L = 16: "
                        "minutes on few cores; the GPU run times kernels only)")
    parser.add_argument("--mse-only", action="store_true", help="only the quantizer MSE part, with each encoding's "
                        "time, to palette-mse.json beside the default palette.json")
    args = parser.parse_args(argv)
    common.check_device(parser, args.device)
    t0 = time.perf_counter()
    if args.mse_only:
        res = {"cases": [], "skipped": [], "extra": {"quick": args.quick, "mse": mse_results(16 if args.quick else 18, 16)}}
    else:
        res = run(device=args.device, quick=args.quick, progress=common.progress, mse=not args.no_mse)
    wall = time.perf_counter() - t0
    if res["cases"]:
        common.print_table(FAMILY, args.device, res["cases"], skipped=res["skipped"])
    for r in res["extra"]["mse"]:
        print(f"mse {r['quantizer']}-{r['bits']}: {r['mse']:.4f} (paper {r['paper']:.4f}, ratio {r['ratio']:.3f}), "
              f"{r['seconds']:.2f} s")
    path = args.json or common.results_path(FAMILY, args.device, quick=args.quick)
    if args.mse_only and not args.json:
        path = path.with_name("palette-mse.json")
    path = common.write_results(FAMILY, args.device, res["cases"], path, skipped=res["skipped"],
                                extra={**res["extra"], "wall_s": round(wall, 1)})
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
