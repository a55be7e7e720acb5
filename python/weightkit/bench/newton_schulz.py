"""Newton–Schulz benchmark: weightkit against torch.optim.Muon's iteration and a plain PyTorch loop.

Both sides run Muon's setting: 5 steps of Keller Jordan's quintic (3.4445, −4.7750, 2.0315),
products in bfloat16, inputs float32. Ours is one ``newton_schulz`` call (a 3-D batch for the
batched case) or one ``newton_schulz_grouped`` call (a model's parameter set); each baseline is
applied matrix by matrix, as torch.optim.Muon does. Every case also compares ours with each
baseline on its first matrix (relative Frobenius difference, in "notes").

Usage: ``python bench/bench_newton_schulz.py [--quick] [--json PATH] [--device cpu|cuda]
[--threads N]``, or ``weightkit bench --only newton_schulz``.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

import weightkit
from weightkit.bench import common
from weightkit.ops.newton_schulz import JORDAN

FAMILY = "newton_schulz"
STEPS = 5
EPS = 1e-7
COMPUTE_DTYPE = torch.bfloat16
TORCH_MUON = "torch.optim.Muon"
PLAIN = "plain PyTorch"
#: CPU only: the same loop in fp32, the fastest plain alternative on a CPU without bf16 units
#: (different arithmetic from bf16 compute: context for the bf16 ratios, not a like-for-like one).
PLAIN_FP32 = "plain PyTorch fp32"
_SHORT = {TORCH_MUON: "torch", PLAIN: "plain", PLAIN_FP32: "plain fp32"}

#: Largest square case run on a CPU: torch's bf16 matmul takes minutes beyond it without
#: AVX-512 BF16 / AMX.
CPU_MAX_SQUARE = 2048
#: On a CPU a case is skipped when one baseline call is estimated to take longer than this.
DEFAULT_MAX_BASELINE_S = 60.0
#: Other processes' average CPU use (cores) above which a case's notes flag its timings.
BUSY_CORES = 0.15


@dataclass(frozen=True)
class Case:
    """One benchmark case. ``kind``: "single" (one 2-D matrix), "batched" (one 3-D tensor), or
    "set" (a list of 2-D matrices of mixed shapes). ``shapes``: the 2-D shapes, one per matrix."""

    name: str
    kind: str
    shapes: tuple[tuple[int, int], ...]
    note: str = ""

    @property
    def flops(self) -> float:
        """Multiply-adds ×2 of a 5-step quintic over every matrix (4m²n + 2m³ per step, m ≤ n)."""
        total = 0.0
        for a, b in self.shapes:
            m, n = min(a, b), max(a, b)
            total += STEPS * (4.0 * m * m * n + 2.0 * m**3)
        return total


def _square(n: int) -> Case:
    return Case(f"square-{n}-bf16", "single", ((n, n),))


def _wide(m: int, n: int, note: str = "") -> Case:
    return Case(f"wide-{m}x{n}-bf16", "single", ((m, n),), note)


def _batched(b: int, n: int, note: str = "") -> Case:
    return Case(f"batched-{b}x{n}x{n}-bf16", "batched", ((n, n),) * b, note)


def _param_set(name: str, layers: int, d: int, label: str) -> Case:
    # nn.Linear (out, in) weights of one transformer block: qkv, attention out, MLP up, MLP down.
    block = ((3 * d, d), (d, d), (4 * d, d), (d, 4 * d))
    return Case(name, "set", block * layers, f"{label}: {layers} layers x 4 matrices")


def _gpt2_124m() -> Case:
    return _param_set("params-gpt2-124m-bf16", 12, 768, "GPT-2 124M 2-D params")


def _small_model() -> Case:
    return _param_set("params-small-4l-d256-bf16", 4, 256, "4-layer d=256 2-D params")


def all_cases() -> list[Case]:
    """Every case of the issue, on a device where all of them run (CUDA)."""
    return [
        _small_model(),
        *(_square(n) for n in (512, 1024, 2048, 4096, 8192)),
        _wide(1024, 4096),
        _wide(4096, 11008),
        _batched(64, 256),
        _gpt2_124m(),
    ]


def plan(device: torch.device, quick: bool) -> tuple[list[Case], list[dict]]:
    """The cases to run on ``device`` (cheapest first) and the ones skipped up front, with why."""
    skipped: list[dict] = []
    if quick and device.type == "cuda":
        cases = [_small_model(), _square(1024), _square(4096), _batched(64, 256), _gpt2_124m()]
    elif quick:
        # torch's bf16 matmul runs at ~2 GFLOP/s on an AVX2-only CPU: keep the smoke run to ~1 min.
        cases = [
            _small_model(),
            _square(512),
            _batched(16, 256, "16 of the issue's 64 matrices (CPU --quick)"),
        ]
    elif device.type == "cpu":
        cases = []
        for case in all_cases():
            m, n = case.shapes[0]
            if case.kind == "single" and m == n > CPU_MAX_SQUARE:
                skipped.append({"case": case.name, "reason": f"CPU run caps squares at {CPU_MAX_SQUARE}"})
            else:
                cases.append(case)
        # The wide cases are usually over the time limit on a CPU; this keeps the
        # aspect-4 (Gram-form) path measured there.
        cases.append(_wide(512, 2048, "CPU stand-in for wide-1024x4096 (aspect 4)"))
    else:
        cases = all_cases()
    return sorted(cases, key=lambda c: c.flops), skipped


def plain_newton_schulz(
    G: torch.Tensor, steps: int = STEPS, coeffs=JORDAN, eps: float = EPS, dtype=torch.bfloat16
) -> torch.Tensor:
    """Baseline 2: the quintic written out in PyTorch at ``dtype``. G: (m, n) -> (m, n)."""
    a, b, c = coeffs
    X = G.to(dtype)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X


def _torch_muon_fn() -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from torch.optim._muon import _zeropower_via_newtonschulz
    except ImportError:
        return None

    def fn(G: torch.Tensor) -> torch.Tensor:
        return _zeropower_via_newtonschulz(G, JORDAN, STEPS, EPS)

    return fn


def _inputs(case: Case, device: torch.device, seed: int):
    # Seeded by the case's name, so a case's inputs do not depend on which other cases ran.
    gen = torch.Generator().manual_seed(seed + zlib.crc32(case.name.encode()))
    if case.kind == "batched":
        b = len(case.shapes)
        m, n = case.shapes[0]
        G = torch.randn(b, m, n, generator=gen).to(device)
        return G, list(G.unbind(0))
    if case.kind == "single":
        G = torch.randn(*case.shapes[0], generator=gen).to(device)
        return G, [G]
    mats = [torch.randn(*s, generator=gen).to(device) for s in case.shapes]
    return mats, mats


def _ours_fn(case: Case, inp, keep: dict) -> Callable[[], None]:
    if case.kind == "set":

        def fn():
            out = weightkit.newton_schulz_grouped(inp, STEPS, "jordan", compute_dtype=COMPUTE_DTYPE)
            keep["ours"] = out[0]
    else:

        def fn():
            out = weightkit.newton_schulz(inp, STEPS, "jordan", compute_dtype=COMPUTE_DTYPE)
            keep["ours"] = out[0] if case.kind == "batched" else out

    return fn


def _loop_fn(base: Callable[[torch.Tensor], torch.Tensor], mats, keep: dict, key: str) -> Callable[[], None]:
    def fn():
        first = None
        for i, M in enumerate(mats):
            out = base(M)
            if i == 0:
                first = out
        keep[key] = first

    return fn


def _rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return (torch.linalg.matrix_norm(ours.float() - ref) / torch.linalg.matrix_norm(ref)).item()


def timing_settings(device: torch.device, quick: bool) -> dict:
    """Arguments for :func:`weightkit.bench.common.measure` (see ``time_ms`` for the rule)."""
    if device.type == "cuda":
        return dict(warmup=3, repeats=10, min_time_s=0.2, max_time_s=10.0, long_call_s=1.0)
    return dict(warmup=2, repeats=5, min_time_s=0.5, max_time_s=3.0 if quick else 10.0, long_call_s=1.0)


def run(
    *,
    device="cpu",
    quick: bool = False,
    max_baseline_s: float = DEFAULT_MAX_BASELINE_S,
    progress=None,
    seed: int = 0,
) -> dict:
    """Run the benchmark; returns ``{"cases", "skipped", "extra"}`` for ``write_results``.

    On a CPU a case whose baseline call is estimated (from the slowest GFLOP/s a baseline reached
    on the smaller cases already run) to exceed ``max_baseline_s`` is skipped and listed.
    """
    dev = common.resolve_device(device)
    cases, skipped = plan(dev, quick)
    baselines: dict[str, Callable] = {PLAIN: plain_newton_schulz}
    torch_fn = _torch_muon_fn()
    if torch_fn is None:
        reason = f"{TORCH_MUON} baseline: torch {torch.__version__} has no torch.optim._muon"
        skipped.append({"case": "*", "reason": reason})
    else:
        baselines = {TORCH_MUON: torch_fn, PLAIN: plain_newton_schulz}
    if dev.type == "cpu":
        baselines[PLAIN_FP32] = lambda G: plain_newton_schulz(G, dtype=torch.float32)
    settings = timing_settings(dev, quick)
    results: list[dict] = []
    slowest_rate = None  # flop/s: the slowest any baseline reached so far
    iterator = cases if progress is None else progress(cases, desc=FAMILY, label=lambda c: c.name)
    for case in iterator:
        if dev.type == "cpu" and slowest_rate is not None:
            est = case.flops / slowest_rate
            if est > max_baseline_s:
                skipped.append({
                    "case": case.name,
                    "reason": (
                        f"CPU: a baseline call would take ~{est:.0f} s (> {max_baseline_s:.0f} s), "
                        f"estimated from {slowest_rate / 1e9:.2f} GFLOP/s on the smaller cases"
                    ),
                })
                continue
        inp, mats = _inputs(case, dev, seed)
        keep: dict = {}
        with common.OtherLoad() as load:
            ours = common.measure(_ours_fn(case, inp, keep), device=dev, **settings)
            timings = {
                name: common.measure(_loop_fn(base, mats, keep, name), device=dev, **settings)
                for name, base in baselines.items()
            }
        for name, t in timings.items():
            rate = case.flops / (t.median_ms / 1e3)
            if name != PLAIN_FP32:
                slowest_rate = rate if slowest_rate is None else min(slowest_rate, rate)
            notes = [f"rel diff vs {_SHORT[name]} {_rel_diff(keep['ours'], keep[name]):.1e}"]
            if case.note:
                notes.append(case.note)
            notes.append(f"timed calls {ours.calls}/{t.calls}")
            if load.cores is not None and load.cores > BUSY_CORES:
                notes.append(f"BUSY MACHINE: other processes used {load.cores:.1f} cores")
            results.append({
                "case": case.name,
                "baseline": name,
                "ours_ms": ours.median_ms,
                "baseline_ms": t.median_ms,
                "notes": "; ".join(notes),
                "matrices": len(case.shapes),
                "gflop": round(case.flops / 1e9, 3),
                "other_cores": None if load.cores is None else round(load.cores, 2),
            })
        del inp, mats, keep
    extra = {
        "quick": quick,
        "setup": {
            "steps": STEPS,
            "coefficients": list(JORDAN),
            "eps": EPS,
            "input_dtype": "float32",
            "compute_dtype": "bfloat16",
            "ours": (
                "weightkit.newton_schulz (a 3-D batch in one call) / newton_schulz_grouped "
                "(parameter sets), fp32 output"
            ),
            "baselines": {
                TORCH_MUON: "torch.optim._muon._zeropower_via_newtonschulz per matrix, bf16 output",
                PLAIN: "plain bf16 addmm loop per matrix (bench's plain_newton_schulz), bf16 output",
                PLAIN_FP32: "CPU only: the same loop in fp32 (context, not bf16 arithmetic)",
            },
            "timing": settings,
            "cpu_max_baseline_s": max_baseline_s,
        },
    }
    return {"cases": results, "skipped": skipped, "extra": extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_newton_schulz",
        description=(
            "Time weightkit's Newton-Schulz (5 Jordan steps, bf16) against torch.optim.Muon's "
            "and a plain PyTorch loop."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a few small cases (a smoke run)")
    parser.add_argument(
        "--json", metavar="PATH", help="where to write results (default bench/results/<device>/newton_schulz.json)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: leave torch's setting)")
    parser.add_argument(
        "--max-baseline-s", type=float, default=DEFAULT_MAX_BASELINE_S,
        help="CPU: skip a case whose baseline call is estimated to take longer (default %(default)s)",
    )
    args = parser.parse_args(argv)
    common.check_device(parser, args.device)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run(device=args.device, quick=args.quick, max_baseline_s=args.max_baseline_s, progress=common.progress)
    wall = time.perf_counter() - t0
    common.print_table(FAMILY, args.device, res["cases"], skipped=res["skipped"])
    path = args.json or common.results_path(FAMILY, args.device, quick=args.quick)
    extra = {**res["extra"], "wall_s": round(wall, 1)}
    path = common.write_results(FAMILY, args.device, res["cases"], path, skipped=res["skipped"], extra=extra)
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
