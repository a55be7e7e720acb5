"""The ``weightkit`` command: ``weightkit demo``, ``weightkit bench`` and ``weightkit info``.

``weightkit demo`` runs the whole lifecycle (train → quantize → edit) on real text and a real
model and writes a report (see :mod:`weightkit.demo`).
``weightkit info`` says what this build contains and what the machine offers.
``weightkit bench`` runs every benchmark family (or ``--only`` some), prints one table of ratios
against the baselines measured in the same run, writes ``bench/results/<device>/<family>.json``
under ``--out`` and, when matplotlib is installed, a bar chart of the speedups beside them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

#: Exit code for a request that cannot be served (unknown family, no GPU), as argparse uses.
EXIT_USAGE = 2


def _yes(flag) -> str:
    return "yes" if flag else "no"


def _info_lines(info: dict) -> list[str]:
    from weightkit.bench.common import device_name

    shown = set()

    def take(key, default=None):
        shown.add(key)
        return info.get(key, default)

    lines = [f"weightkit {take('version')}"]
    lines.append(f"  torch            runtime {take('torch_runtime')}, built against {take('torch_version')}")
    if take("cuda"):
        archs = take("cuda_archs") or "?"
        lines.append(f"  CUDA build       yes (CUDA {take('cuda_version')}; archs {archs})")
    else:
        take("cuda_version"), take("cuda_archs")
        lines.append("  CUDA build       no (CPU-only extension)")
    cuda_avail = take("cuda_available")
    gpu = f" ({torch.cuda.get_device_name()})" if cuda_avail else ""
    lines.append(f"  CUDA available   {_yes(cuda_avail)}{gpu}")
    lines.append(f"  CPU              {device_name('cpu')}")
    compiled = take("cpu_isa_compiled") or ()
    lines.append(
        f"  CPU ISA          compiled {', '.join(compiled) or '?'}; best here {take('cpu_isa_best')}; "
        f"selected {take('cpu_isa_selected')}"
        + (f" (WEIGHTKIT_CPU_ISA={os.environ['WEIGHTKIT_CPU_ISA']})" if os.environ.get("WEIGHTKIT_CPU_ISA") else "")
    )
    features = take("cpu_features") or {}
    if features:
        lines.append("  CPU features     " + ", ".join(f"{k} {_yes(v)}" for k, v in features.items()))
    lines.append(f"  fast bf16 (CPU)  {_yes(take('cpu_fast_bf16'))}")
    lines.append(f"  OpenMP           {_yes(take('openmp'))}")
    lines.append(f"  torch threads    {torch.get_num_threads()}")
    for key in sorted(set(info) - shown):
        lines.append(f"  {key:<16} {info[key]}")
    return lines


def cmd_info(args) -> int:
    import weightkit

    info = weightkit.build_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print("\n".join(_info_lines(info)))
    return 0


def _plot(rows: list[dict], device, path: Path) -> Path | None:
    """Horizontal bars of speedup per (case, baseline), log-scale x, a line at 1.0 (parity)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no summary plot (pip install matplotlib)", file=sys.stderr)
        return None
    from weightkit.bench.common import device_name

    labels = [f"{r['case']} vs {r['baseline']}" for r in rows]
    speedups = [r["baseline_ms"] / r["ours_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.barh(range(len(rows)), speedups, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(speedups) / 1.5), max(2.0, max(speedups) * 2.0))  # room for the labels
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.axvline(1.0, color="black", linewidth=1)
    for i, s in enumerate(speedups):
        ax.annotate(f"{s:.2f}x", (s, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("speedup = baseline time / weightkit time (log scale; > 1: weightkit faster)")
    ax.set_title(f"weightkit bench on {device_name(device)}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cmd_bench(args) -> int:
    from weightkit.bench import FAMILIES, common

    families = args.only or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(
            f"weightkit bench: unknown family {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(FAMILIES)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print(
            f"weightkit bench: --device cuda, but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu",
            file=sys.stderr,
        )
        return EXIT_USAGE
    out = Path(args.out)
    problem = _writable_dir(out)
    if problem is not None:  # found now, not after minutes of benchmarks
        print(f"weightkit bench: cannot write results to --out {out}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    rows: list[dict] = []
    skipped: list[dict] = []
    t0 = time.perf_counter()
    for family in families:
        module = importlib.import_module(FAMILIES[family])
        t_fam = time.perf_counter()
        res = module.run(device=device, quick=args.quick, progress=common.progress)
        wall = time.perf_counter() - t_fam
        path = common.write_results(
            family,
            device,
            res["cases"],
            common.results_path(family, device, root=out, quick=args.quick),
            skipped=res["skipped"],
            extra={**res["extra"], "wall_s": round(wall, 1)},
        )
        print(f"wrote {path} ({wall:.0f} s)", file=sys.stderr)
        rows += [dict(c, family=family) for c in res["cases"]]
        skipped += [dict(s, family=family) for s in res["skipped"]]
    print()
    common.print_table(None, device, rows, skipped=skipped)
    if rows:
        name = "summary-quick.png" if args.quick else "summary.png"
        plot = _plot(rows, device, out / "bench" / "results" / common.device_slug(device) / name)
        if plot is not None:
            print(f"plot: {plot}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def _writable_dir(path: Path) -> str | None:
    """None if ``path`` can be created and written, else the reason it cannot."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".weightkit-write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as e:
        return f"{e.strerror or e} ({path})"
    return None


def cmd_demo(args) -> int:
    from weightkit.demo import run_demo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print(f"weightkit demo: --device cuda, but this torch ({torch.__version__}) sees no CUDA GPU; "
              "use --device cpu", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    problem = _writable_dir(out)
    if problem is not None:
        print(f"weightkit demo: cannot write the report to --out {out}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    stages = run_demo(out, device=device, quick=args.quick, only=args.only)
    return 0 if all(s.status != "failed" for s in stages) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,info}")

    from weightkit.demo import STAGES

    p_demo = sub.add_parser("demo", help="train -> quantize -> edit on real text and a real model, with a report")
    p_demo.add_argument("--out", default="weightkit-demo", metavar="DIR", help="report folder (default: weightkit-demo)")
    p_demo.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p_demo.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run of every stage")
    p_demo.add_argument("--only", action="append", choices=STAGES, metavar="STAGE",
                        help=f"run only this stage (repeatable): {', '.join(STAGES)}")
    p_demo.set_defaults(func=cmd_demo)

    p_info = sub.add_parser("info", help="what this build contains (CUDA, SIMD paths, torch versions)")
    p_info.add_argument("--json", action="store_true", help="print build_info() as JSON")
    p_info.set_defaults(func=cmd_info)

    p_bench = sub.add_parser("bench", help="benchmark weightkit against its baselines on this machine")
    p_bench.add_argument("--quick", action="store_true", help="a few small cases per family (a smoke run)")
    p_bench.add_argument(
        "--only", action="append", metavar="FAMILY", help="run only this family (repeatable); default: all"
    )
    p_bench.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p_bench.add_argument(
        "--out", default=".", metavar="DIR", help="results go to DIR/bench/results/<device>/ (default: .)"
    )
    p_bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
