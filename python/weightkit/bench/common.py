"""Helpers shared by every benchmark: device naming, timing, result files, tables, progress.

A benchmark case is a dict ``{"case", "baseline", "ours_ms", "baseline_ms", "notes"}`` (plus any
extra keys); :func:`write_results` adds ``speedup = baseline_ms / ours_ms`` (> 1: we are faster)
and writes the JSON shape that DESIGN.md documents and tools read.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

__all__ = [
    "OtherLoad",
    "Timing",
    "device_name",
    "device_slug",
    "git_commit",
    "git_dirty",
    "measure",
    "print_table",
    "progress",
    "pyplot",
    "resolve_device",
    "results_path",
    "run_cpu_model_bench",
    "time_ms",
    "write_results",
]

#: Words that name a CPU line, looked for (in this order) in /proc/cpuinfo's "model name".
_CPU_WORDS = (
    "epyc", "threadripper", "ryzen", "opteron", "xeon", "core", "pentium", "celeron", "atom",
    "graviton", "neoverse", "ampere", "apple",
)
#: Vendor and brand words dropped from a GPU name before its model is taken.
_GPU_NOISE = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct", "intel"}


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device`` -> ``torch.device`` (cuda gets an index)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def check_device(parser, device: str) -> None:
    """Stop a benchmark script with a usage error (exit 2) when ``--device cuda`` is asked of a
    torch that sees no GPU, before any work or traceback."""
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available to this torch")


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_word(model: str) -> str:
    tokens = re.findall(r"[a-z0-9]+", model.lower())
    for word in _CPU_WORDS:
        if word in tokens:
            return word
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "") or "x86" in machine:
        return "x86"
    return re.sub(r"[^a-z0-9]+", "", machine) or "cpu"


def _gpu_word(name: str) -> str:
    tokens = [t for t in re.findall(r"[a-z0-9]+", name.lower()) if t not in _GPU_NOISE]
    if not tokens:
        return "gpu"
    # "GeForce RTX 4090", "RTX A6000": the series word alone says too little.
    if tokens[0] in ("rtx", "gtx") and len(tokens) > 1:
        return tokens[0] + tokens[1]
    return tokens[0]


def _cpu_isa() -> str:
    """The best SIMD path weightkit's CPU kernels take here (``avx512``, ``avx2`` or ``scalar``)."""
    import weightkit

    return weightkit.build_info()["cpu_isa_best"]


def device_slug(device) -> str:
    """Folder name for results: ``cpu-epyc-avx2-2t`` (model word, the SIMD path our kernels take,
    torch's thread count) or ``h100``. The ISA is in the name because one model word covers CPUs
    with and without AVX-512 (this project's "AMD EPYC" machines have been both)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return _gpu_word(torch.cuda.get_device_name(dev))
    return f"cpu-{_cpu_word(_cpu_model_name())}-{_cpu_isa()}-{torch.get_num_threads()}t"


def device_name(device) -> str:
    """Human-readable device: ``AMD EPYC 9B14 (2 threads)`` or ``NVIDIA H100 80GB HBM3``."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    threads = torch.get_num_threads()
    return f"{_cpu_model_name()} ({threads} thread{'s' if threads != 1 else ''})"


@dataclass(frozen=True)
class Timing:
    """Result of :func:`measure`: the median of ``calls`` timed calls, ``warmup`` untimed ones."""

    median_ms: float
    calls: int
    warmup: int
    total_s: float


def measure(
    fn: Callable[[], object],
    *,
    device,
    warmup: int = 3,
    repeats: int = 10,
    min_time_s: float = 0.5,
    max_time_s: float = 10.0,
    long_call_s: float = 1.0,
) -> Timing:
    """Time ``fn()`` adaptively; see :func:`time_ms` for the rule."""
    if repeats < 1:
        raise ValueError(f"measure: repeats must be >= 1, got {repeats}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

        def once() -> float:
            with torch.cuda.device(dev):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1e3
    else:

        def once() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    warm = 0
    for _ in range(warmup):
        warm += 1
        if once() >= long_call_s:
            break
    samples: list[float] = []
    total = 0.0
    while True:
        t = once()
        samples.append(t)
        total += t
        if total >= max_time_s:
            break
        if len(samples) >= repeats and total >= min_time_s:
            break
    return Timing(statistics.median(samples) * 1e3, len(samples), warm, total)


def time_ms(
    fn: Callable[[], object],
    *,
    device,
    warmup: int = 3,
    repeats: int = 10,
    min_time_s: float = 0.5,
    max_time_s: float = 10.0,
    long_call_s: float = 1.0,
) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    CUDA: each call sits between two ``torch.cuda.Event`` records on the current stream and is
    synchronized, so launch gaps count (a Python loop of small launches is charged for them).
    CPU: ``time.perf_counter`` around each call.

    The rule, chosen so a 30 s baseline runs twice rather than a dozen times:

    1. Warm-up: up to ``warmup`` untimed calls, stopping after the first that takes
       ``long_call_s`` or more (one-time costs are negligible beside such a call).
    2. Timed calls continue until there are ``repeats`` of them *and* they add up to
       ``min_time_s`` — but stop as soon as they add up to ``max_time_s``, after at least one.

    So a 30 s call runs twice (one warm-up, one timed), a 2 s call 1 + 5 times with the
    defaults, and a millisecond call ``repeats`` times or for ``min_time_s``, whichever is longer.
    """
    return measure(
        fn,
        device=device,
        warmup=warmup,
        repeats=repeats,
        min_time_s=min_time_s,
        max_time_s=max_time_s,
        long_call_s=long_call_s,
    ).median_ms


class OtherLoad:
    """Context manager: how many cores *other* processes kept busy while the block ran.

    A 2-core machine shared with a test run gives timings that mean nothing; this makes that
    visible. ``cores`` is (all CPU time the kernel counted busy − this process's CPU time) / wall
    time, from /proc/stat and ``os.times()``; None where /proc/stat is missing (not Linux).
    """

    cores: float | None = None

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait, steal included
        t = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.perf_counter()

    def __enter__(self) -> OtherLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        self.cores = max(0.0, (busy - own) / wall)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit() -> str:
    """Short hash of HEAD in the current directory's repository, or ``"unknown"``."""
    return _git("rev-parse", "--short", "HEAD") or "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from HEAD (results then come from uncommitted code)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out)


def _sig(x: float, digits: int) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def _case_record(case: dict) -> dict:
    for key in ("case", "baseline", "ours_ms", "baseline_ms"):
        if key not in case:
            raise ValueError(f"write_results: every case needs {key!r}, got keys {sorted(case)}")
    ours, base = float(case["ours_ms"]), float(case["baseline_ms"])
    if not (ours > 0 and base > 0):
        raise ValueError(f"write_results: times must be positive, got {case!r}")
    record = {
        "case": str(case["case"]),
        "baseline": str(case["baseline"]),
        "ours_ms": _sig(ours, 4),
        "baseline_ms": _sig(base, 4),
        "speedup": _sig(base / ours, 3),
        "notes": str(case.get("notes", "")),
    }
    record.update({k: v for k, v in case.items() if k not in record and k != "family"})
    return record


def results_path(family: str, device, *, root=".", quick: bool = False) -> Path:
    """``<root>/bench/results/<device-slug>/<family>.json`` (``<family>-quick.json`` for --quick,
    so a smoke run never overwrites the full results)."""
    name = f"{family}-quick.json" if quick else f"{family}.json"
    return Path(root) / "bench" / "results" / device_slug(device) / name


def write_results(
    family: str,
    device,
    cases: Sequence[dict],
    json_path=None,
    *,
    skipped: Sequence[dict] = (),
    extra: dict | None = None,
) -> Path:
    """Write one family's results as JSON and return the path.

    Shape (DESIGN.md): ``{"family", "device", "torch", "commit", "cases": [{"case", "baseline",
    "ours_ms", "baseline_ms", "speedup", "notes"}]}`` plus ``device_slug``, ``threads``, ``date``
    (UTC, ISO 8601), ``dirty``, ``skipped`` (``[{"case", "reason"}]``: cases not run, and why) and
    whatever ``extra`` holds. ``json_path`` defaults to :func:`results_path` under the current
    directory; missing folders are created.
    """
    dev = resolve_device(device)
    payload = {
        "family": family,
        "device": device_name(dev),
        "torch": torch.__version__.split("+")[0],
        "commit": git_commit(),
        "cases": [_case_record(c) for c in cases],
        "device_slug": device_slug(dev),
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dirty": git_dirty(),
        "torch_build": torch.__version__,
        "skipped": [dict(s) for s in skipped],
    }
    if dev.type == "cuda":
        payload["cuda_runtime"] = torch.version.cuda
    else:
        import weightkit

        info = weightkit.build_info()
        payload["cpu_isa"] = info["cpu_isa_best"]
        payload["cpu_fast_bf16"] = info["cpu_fast_bf16"]
    if extra:
        payload.update(extra)
    path = Path(json_path) if json_path is not None else results_path(family, dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fmt_ms(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def run_cpu_model_bench(family: str, run: Callable[[], dict], json_path=None) -> int:
    """``main`` of a benchmark on the real model (CPU only): times ``run()`` (which returns ``{"cases",
    "extra"}``), prints the table and writes the JSON with ``wall_s``; returns the exit status 0."""
    t0 = time.perf_counter()
    res = run()
    wall = time.perf_counter() - t0
    print_table(family, "cpu", res["cases"])
    path = write_results(family, "cpu", res["cases"], json_path or results_path(family, "cpu"),
                         extra={**res["extra"], "wall_s": round(wall, 1)})
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


def print_table(family, device, cases: Sequence[dict], *, skipped: Sequence[dict] = (), file=None) -> None:
    """Aligned text table of ``cases`` (speedup = baseline_ms / ours_ms), titled with the device.

    ``family`` may be None for a table across families, whose cases then carry a ``"family"`` key
    (shown as a column).
    """
    out = sys.stdout if file is None else file
    with_family = family is None
    header = (["family"] if with_family else []) + ["case", "baseline", "ours ms", "base ms", "speedup", "notes"]
    rows = []
    for c in cases:
        ours, base = float(c["ours_ms"]), float(c["baseline_ms"])
        row = [str(c.get("family", ""))] if with_family else []
        row += [str(c["case"]), str(c["baseline"]), _fmt_ms(ours), _fmt_ms(base)]
        row += [f"{base / ours:.2f}x", str(c.get("notes", ""))]
        rows.append(row)
    numeric = {len(header) - 4, len(header) - 3, len(header) - 2}
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells):
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    title = f"{family or 'weightkit bench'} on {device_name(device)} (torch {torch.__version__}, commit {git_commit()})"
    print(title, file=out)
    print(line(header), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for r in rows:
        print(line(r), file=out)
    if not rows:
        print("(no cases ran)", file=out)
    for s in skipped:
        prefix = f"{s['family']}: " if with_family and "family" in s else ""
        print(f"skipped {prefix}{s['case']}: {s['reason']}", file=out)
    out.flush()


def progress(items: Iterable, *, desc: str, label: Callable[[object], str] = str) -> Iterator:
    """Iterate ``items`` with a tqdm bar on stderr when tqdm is installed, else one line per item."""
    items = list(items)
    try:
        from tqdm import tqdm
    except ImportError:
        for i, item in enumerate(items, 1):
            print(f"[{desc} {i}/{len(items)}] {label(item)}", file=sys.stderr, flush=True)
            yield item
        return
    bar = tqdm(items, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True)
    for item in bar:
        bar.set_postfix_str(label(item))
        yield item


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed
    (plots are extras: every caller then skips its figure)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
