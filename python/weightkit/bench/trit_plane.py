"""Trit-plane (PTQTP) matmul benchmark: weightkit's packed product against dense F.linear.

Variants of ours per case: ``trit_plane_matmul`` (activations as given, fp32), with "-a8"
appended to the case name ``trit_plane_matmul_a8`` (activations rounded to int8 per row and group),
and where the CPU has bf16 units (on CUDA: above the direct kernel's 16 rows), with "-bf16",
``trit_plane_matmul`` on bf16 activations.

A decode-time linear layer is memory-bound, so each side is timed on rotating copies of its
weights that together exceed twice the last-level cache (CPU L3 ~32 MB, H100 L2 50 MB): every
call streams its weights from DRAM/HBM, as in a model whose layers do not fit in cache. Ours reads
the packed planes and scales (4.25 bits per weight at group 128); the baselines read fp32/bf16 (CPU)
or fp16 (CUDA, cuBLAS) weights. Each case also times a plain streaming read (``amax``) of our bytes,
the ceiling for any kernel over this format, and reports GB/s for all three.

Usage: ``python bench/bench_trit_plane.py [--quick] [--json PATH] [--device cpu|cuda]
[--threads N]``, or ``weightkit bench --only trit_plane``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import weightkit as wk
from weightkit.bench import common
from weightkit.ops import trit_plane as tp

FAMILY = "trit_plane"
GROUP = 128
#: Bytes the rotating copies must exceed: 2x the last-level cache.
LLC_BYTES = {"cpu": 32 << 20, "cuda": 50 << 20}
#: Other processes' average CPU use (cores) above which a case's notes flag its timings.
BUSY_CORES = 0.15


@dataclass(frozen=True)
class Case:
    out: int
    inf: int
    batch: int

    @property
    def name(self) -> str:
        return f"{'gemv' if self.batch == 1 else 'gemm'}-{self.out}x{self.inf}-b{self.batch}"


def plan(device: torch.device, quick: bool) -> list[Case]:
    if device.type == "cuda":
        shapes = [(8192, 8192), (14336, 4096), (4096, 14336)]
        batches = (1, 16) if quick else (1, 4, 16, 64)
    else:
        shapes = [(4096, 4096)] if quick else [(4096, 4096), (14336, 4096)]
        batches = (1, 16) if quick else (1, 4, 16, 64)
    return [Case(o, i, b) for o, i in shapes for b in batches]


def _copies(bytes_per_copy: int, device: torch.device) -> int:
    return max(2, math.ceil(2 * LLC_BYTES[device.type] / max(bytes_per_copy, 1)) + 1)


def _rotating(fn, items):
    state = {"i": 0}

    def call():
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn(item)

    return call


def _other_cores(dt: float = 1.0) -> float | None:
    with common.OtherLoad() as load:
        time.sleep(dt)
    return load.cores


def wait_quiet(max_wait_s: float, threshold: float = BUSY_CORES) -> float | None:
    """On a shared machine: wait up to ``max_wait_s`` for other processes to leave the cores idle
    (below ``threshold`` cores over a 1 s sample); returns the last sample."""
    t0 = time.perf_counter()
    cores = _other_cores()
    while cores is not None and cores > threshold and time.perf_counter() - t0 < max_wait_s:
        cores = _other_cores()
    return cores


def timing_settings(device: torch.device, quick: bool) -> dict:
    if device.type == "cuda":
        return dict(warmup=5, repeats=50, min_time_s=0.2, max_time_s=5.0, long_call_s=1.0)
    return dict(warmup=3, repeats=20 if quick else 50, min_time_s=0.3 if quick else 1.0, max_time_s=5.0,
                long_call_s=1.0)


def run(*, device="cpu", quick: bool = False, progress=None, seed: int = 0, wait_quiet_s: float = 0.0,
        attempts: int = 1) -> dict:
    """Run the benchmark; returns ``{"cases", "skipped", "extra"}`` for ``write_results``.

    For shared machines: ``wait_quiet_s`` (CPU) waits up to this long before each attempt for
    other processes to leave the cores idle; a case whose attempt saw other load is measured again,
    up to ``attempts`` times, and the attempt with the least other load is kept (and still flagged
    in the notes when that load was high)."""
    dev = common.resolve_device(device)
    settings = timing_settings(dev, quick)
    gen = torch.Generator().manual_seed(seed)
    results: list[dict] = []
    quant_s: dict[str, float] = {}
    cases = plan(dev, quick)
    iterator = cases if progress is None else progress(cases, desc=FAMILY, label=lambda c: c.name)
    packed_cache: dict = {}
    for case in iterator:
        key = (case.out, case.inf)
        if key not in packed_cache:
            packed_cache.clear()
            W = torch.randn(case.out, case.inf, generator=gen) * 0.02
            t0 = time.perf_counter()
            packed, scales = tp.ptqtp_quantize(W.to(dev), GROUP)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            quant_s[f"{case.out}x{case.inf}"] = round(time.perf_counter() - t0, 3)
            packed_cache[key] = (W, packed, scales)
        W, packed, scales = packed_cache[key]
        our_bytes = packed.numel() * 4 + scales.numel() * 2
        ours_items = [(packed.clone(), scales.clone()) for _ in range(_copies(our_bytes, dev))]
        x = torch.randn(case.batch, case.inf, generator=gen).to(dev)
        base_dtypes = [torch.float16] if dev.type == "cuda" else [torch.float32, torch.bfloat16]
        xo = x.half() if dev.type == "cuda" else x
        # Ours with activations as given, and on the CPU with int8 ones (case name + "-a8"); CUDA's
        # a8 op is the fp32 kernel after a rounding kernel, so timing it there adds nothing. Where
        # the CPU has bf16 units, also with bf16 activations ("-bf16"), whose large batches take a
        # bf16 dense product; on CUDA only the large batches, where that product differs from fp16's.
        variants = {"": (tp.trit_plane_matmul, xo)}
        if dev.type == "cpu":
            variants["-a8"] = (tp.trit_plane_matmul_a8, xo)
        if dev.type == "cuda":
            bf16_variant = case.batch > _direct_max(dev, False, True)
        else:
            bf16_variant = wk.build_info()["cpu_fast_bf16"]
        if bf16_variant:
            variants["-bf16"] = (tp.trit_plane_matmul, x.bfloat16())
        best = None
        for _ in range(attempts):
            if dev.type == "cpu" and wait_quiet_s > 0:
                wait_quiet(wait_quiet_s)
            with common.OtherLoad() as load:
                ours = {suffix: common.measure(
                    _rotating(lambda it, f=f, xi=xi: f(xi, it[0], it[1], case.inf, GROUP), ours_items),
                    device=dev, **settings) for suffix, (f, xi) in variants.items()}
                stream = common.measure(_rotating(lambda it: it[0].amax(), ours_items), device=dev, **settings)
                base = {}
                for dt in base_dtypes:
                    Wd = W.to(dev, dt)
                    items = [Wd.clone() for _ in range(_copies(Wd.numel() * Wd.element_size(), dev))]
                    xd = x.to(dt)
                    base[dt] = (
                        common.measure(_rotating(lambda w, xd=xd: F.linear(xd, w), items), device=dev, **settings),
                        Wd.numel() * Wd.element_size(), len(items))
                    del items, Wd
            cores = load.cores if load.cores is not None else 0.0
            if best is None or cores < best[0]:
                best = (cores, load, ours, stream, base)
            if cores <= BUSY_CORES:
                break
        _, load, ours, stream, base = best
        dequant_t = tp.trit_plane_unpack(packed, scales, case.inf, GROUP).T
        for suffix, (f, xi) in variants.items():
            a8, bf16 = suffix == "-a8", suffix == "-bf16"
            path = "direct" if case.batch <= _direct_max(dev, a8, bf16) else "dequantize + dense"
            y = f(xi, packed, scales, case.inf, GROUP).float()
            ref = xi.float() @ dequant_t
            err = ((y - ref).norm() / ref.norm()).item()
            for dt, (t, nbytes, ncopies) in base.items():
                name = "cuBLAS fp16 F.linear" if dev.type == "cuda" else f"torch {str(dt).replace('torch.', '')} F.linear"
                notes = [f"ours: {path} path, x {str(xi.dtype).replace('torch.', '')}"
                         + (", rounded to int8 per row and group (trit_plane_matmul_a8)" if a8 else ""),
                         f"rel diff vs x·dequant(W)ᵀ {err:.1e}",
                         f"copies {len(ours_items)}/{ncopies}", f"timed calls {ours[suffix].calls}/{t.calls}"]
                if load.cores is not None and load.cores > BUSY_CORES:
                    notes.append(f"BUSY MACHINE: other processes used {load.cores:.1f} cores")
                results.append({
                    "case": case.name + suffix,
                    "baseline": name,
                    "ours_ms": ours[suffix].median_ms,
                    "baseline_ms": t.median_ms,
                    "notes": "; ".join(notes),
                    "ours_gbs": round(our_bytes / ours[suffix].median_ms / 1e6, 2),
                    "baseline_gbs": round(nbytes / t.median_ms / 1e6, 2),
                    "stream_read_ms": round(stream.median_ms, 4),
                    "stream_read_gbs": round(our_bytes / stream.median_ms / 1e6, 2),
                    "ours_bytes": our_bytes,
                    "baseline_bytes": nbytes,
                    "bits_per_weight": round(our_bytes * 8 / (case.out * case.inf), 3),
                    "other_cores": None if load.cores is None else round(load.cores, 2),
                })
        del ours_items
    extra = {
        "quick": quick,
        "setup": {
            "group_size": GROUP,
            "pack_version": tp.PACK_VERSION,
            "weights": "N(0, 0.02^2), PTQTP-quantized (max_iters 50, tol 1e-4)",
            "rotating_copies": f"> 2 x {LLC_BYTES[dev.type] >> 20} MB of weights per side",
            "stream_read": "amax over the packed int32 planes (rotating copies): a plain read of our bytes",
            "direct_max_batch": _direct_max(dev, False),
            "direct_max_batch_a8": _direct_max(dev, True),
            "direct_max_batch_bf16": _direct_max(dev, False, True),
            "wait_quiet_s": wait_quiet_s,
            "attempts": attempts,
            "timing": settings,
        },
        "quantize_s": quant_s,
    }
    return {"cases": results, "skipped": [], "extra": extra}


def _direct_max(dev: torch.device, a8: bool, bf16: bool = False) -> int:
    """Mirror of the ops' path choice (csrc/trit_plane), for the notes. ``bf16``: bf16 activations
    (on the CPU: one with bf16 units; on CUDA the limit is the same for every dtype)."""
    import os

    env = os.environ.get("WEIGHTKIT_TRIT_PLANE_DIRECT_MAX_BATCH")
    if env:
        return int(env)
    if dev.type == "cuda":
        return 16
    if a8:
        return CPU_A8_DIRECT_MAX_BATCH
    return CPU_BF16_DIRECT_MAX_BATCH if bf16 else CPU_DIRECT_MAX_BATCH


#: Keep equal to kCpuDirectMaxBatch, kCpuA8DirectMaxBatch and kCpuBf16DirectMaxBatch in
#: csrc/trit_plane/ops.cpp.
CPU_DIRECT_MAX_BATCH = 32
CPU_A8_DIRECT_MAX_BATCH = 256
CPU_BF16_DIRECT_MAX_BATCH = 16


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_trit_plane",
        description="Time weightkit's trit-plane matmul against dense F.linear (fp32/bf16 on CPU, cuBLAS fp16).",
    )
    parser.add_argument("--quick", action="store_true", help="a few cases (a smoke run)")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write results (default bench/results/<device>/trit_plane.json)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: leave torch's setting)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="CPU: before each case wait up to S seconds for other processes to go idle")
    parser.add_argument("--attempts", type=int, default=1, metavar="N",
                        help="measure a case whose timing saw other load again, up to N times; keep the quietest")
    args = parser.parse_args(argv)
    common.check_device(parser, args.device)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run(device=args.device, quick=args.quick, progress=common.progress, wait_quiet_s=args.wait_quiet,
              attempts=max(1, args.attempts))
    wall = time.perf_counter() - t0
    common.print_table(FAMILY, args.device, res["cases"], skipped=res["skipped"])
    path = args.json or common.results_path(FAMILY, args.device, quick=args.quick)
    extra = {**res["extra"], "wall_s": round(wall, 1)}
    path = common.write_results(FAMILY, args.device, res["cases"], path, skipped=res["skipped"], extra=extra)
    print(f"wrote {path} ({wall:.0f} s)")
    return 0
