"""The demo's outputs: ``report.md`` (tables and plots per stage), ``results.json`` (the same
numbers, machine-readable) and the terminal summary. All three are rendered from the same
:class:`StageResult` objects, so they cannot disagree."""

from __future__ import annotations

import json
import os
from pathlib import Path

from weightkit.demo.stage import StageResult, Table


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table_markdown(t: Table) -> str:
    lines = [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"_{t.note}_"]
    return "\n".join(lines)


def table_text(t: Table) -> str:
    cells = [t.columns] + [[_cell(c) for c in row] for row in t.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(t.columns))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([t.title, fmt(t.columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]])


def write(out: Path, header: dict, stages: list[StageResult]) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/results.json``; returns their paths."""
    results = {**header, "stages": {s.name: s.to_json() for s in stages}}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    md = [
        "# weightkit demo report",
        "",
        f"Device: {header['device']} · torch {header['torch']} · weightkit {header['weightkit']} · "
        f"{header['date']} · total {header['wall_s']:.0f} s" + (" · **--quick**" if header["quick"] else ""),
        "",
    ]
    for s in stages:
        md += [f"## {s.name.capitalize()} ({s.status}, {s.seconds:.0f} s)", ""]
        if s.status != "ok":
            md += ["```", s.error.strip(), "```", ""]
        for t in s.tables:
            md += [table_markdown(t), ""]
        for p in s.plots:
            md += [f"![{Path(p).stem}]({os.path.relpath(p, out)})", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    return md_path, json_path


def summary_text(stages: list[StageResult]) -> str:
    parts = []
    for s in stages:
        parts.append(f"== {s.name}: {s.status} ({s.seconds:.0f} s)")
        if s.status != "ok":
            parts.append("   " + s.error.strip().splitlines()[0])
        parts += [table_text(t) for t in s.tables]
    return "\n\n".join(parts)
