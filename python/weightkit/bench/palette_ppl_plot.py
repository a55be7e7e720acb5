"""SmolLM2-135M perplexity against stored bits per weight: every palette quantizer with nearest and
Hessian-aware (LDLQ) rounding, the mixed allocations, PTQTP and round-to-nearest integers, drawn
from the JSON files weightkit.bench.palette_ppl writes into one results folder.

The x axis counts what a layer stores (codes with padding, codebook, scales, signs), so methods with
different overheads compare fairly. All runs score the same first 4096 pydoc tokens (ctx 512);
files missing from the folder are left out of the plot.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Perplexities above this are drawn at the top edge, with their value written beside them.
Y_MAX = 400.0


def _load(folder: Path, name: str) -> dict | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def collect_series(folder) -> tuple[dict[str, list[tuple[float, float]]], float | None]:
    """(series, fp_ppl): label → sorted [(stored bits, perplexity)] from the folder's sweep files,
    and the unquantized model's perplexity (None when no file has it)."""
    folder = Path(folder)
    series: dict[str, list[tuple[float, float]]] = {}
    fp = None

    def add(label, bits, ppl):
        series.setdefault(label, []).append((float(bits), float(ppl)))

    for name in ("palette-ppl.json", "palette-ppl-mixed.json"):  # nearest rounding, one rate or TCQ mixed
        for r in (_load(folder, name) or {}).get("runs", []):
            if r["quantizer"] == "none":
                fp = r["ppl"]
            elif r["quantizer"] == "mixed":
                add("TCQ mixed (DP allocation)", r["stored_bits"], r["ppl"])
            else:
                add(f"{r['quantizer'].upper()} nearest", r["stored_bits"], r["ppl"])
    for name in ("palette-ppl-ldlq.json", "palette-ppl-ldlq-tcq.json"):
        ldlq = _load(folder, name) or {}
        fp = ldlq.get("fp_ppl", fp)
        for r in ldlq.get("runs", []):
            add(f"{r['quantizer'].upper()} LDLQ", r["stored_bits"], r["ldlq"]["ppl"])
    for r in (_load(folder, "palette-ppl-ldlq-tcq-L16.json") or {}).get("runs", []):  # the others are L = 12
        add("TCQ LDLQ, L = 16", r["stored_bits"], r["ldlq"]["ppl"])
    for name, label in (("palette-ppl-ldlq-mixed.json", "VQ/SQ mixed + LDLQ (DP allocation)"),
                        ("palette-ppl-ldlq-mixed-tcq.json", "TCQ mixed + LDLQ (DP allocation)")):
        for r in (_load(folder, name) or {}).get("runs", []):
            if r["label"].startswith("mixed"):
                add(label, r["stored_bits"], r["ppl"])
    for r in (_load(folder, "palette-ppl-baselines.json") or {}).get("runs", []):
        add(_baseline_label(r["quantizer"]), r["stored_bits"], r["ppl"])
    # Nearest-rounding sweeps were run in parts: one point per rate.
    return {k: sorted(set(v)) for k, v in series.items()}, fp


def _baseline_label(method: str) -> str:
    """The series of a palette-ppl-baselines run: its int3 and int4 points share one line."""
    if method == "ptqtp":
        return "PTQTP (2 trit-planes)"
    if method in ("int3", "int4"):
        return "int RTN g128"
    if method.startswith("gptq-int"):
        return "GPTQ act-order g128" if method.endswith("-act") else "GPTQ g128"
    return method


#: (colour, marker, line style) per series; nearest dashed, LDLQ solid, single points unjoined.
STYLE = {
    "SQ nearest": ("tab:blue", "o", "--"), "SQ LDLQ": ("tab:blue", "o", "-"),
    "VQ nearest": ("tab:orange", "s", "--"), "VQ LDLQ": ("tab:orange", "s", "-"),
    "TCQ nearest": ("tab:green", "^", "--"), "TCQ LDLQ": ("tab:green", "^", "-"),
    "TCQ LDLQ, L = 16": ("darkgreen", "v", ":"),
    "TCQ mixed (DP allocation)": ("tab:green", "*", "none"),
    "VQ/SQ mixed + LDLQ (DP allocation)": ("tab:red", "*", "none"),
    "TCQ mixed + LDLQ (DP allocation)": ("tab:pink", "*", "none"),
    "PTQTP (2 trit-planes)": ("tab:purple", "D", "none"), "int RTN g128": ("tab:brown", "P", ":"),
    "GPTQ g128": ("tab:olive", "p", ":"), "GPTQ act-order g128": ("tab:cyan", "h", ":"),
}


def plot_perplexity(folder, path=None) -> str | None:
    """Draws the folder's sweeps into ``path`` (default folder/palette-ppl.png); returns the path,
    or None when matplotlib is missing or the folder holds no sweep."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series, fp = collect_series(folder)
    if not series:
        return None
    path = Path(folder) / "palette-ppl.png" if path is None else Path(path)
    fig, ax = plt.subplots(figsize=(10.5, 5.5))
    placed: list[float] = []  # x of the off-scale labels written so far: stack those that are close
    for label, pts in series.items():
        colour, marker, line = STYLE.get(label, (None, "o", "-"))
        xs = [b for b, _ in pts]
        ys = [min(p, Y_MAX) for _, p in pts]
        ax.plot(xs, ys, color=colour, marker=marker, linestyle=line, label=label,
                markersize=13 if marker == "*" else 6)
        for b, p in pts:
            if p > Y_MAX:
                k = 1 + sum(abs(x - b) < 0.1 for x in placed)
                placed.append(b)
                ax.annotate(f"{p:,.0f}", (b, Y_MAX), textcoords="offset points", xytext=(4, -11 * k), fontsize=7,
                            color=colour)
    if fp is not None:
        ax.axhline(fp, color="black", linestyle=":", label=f"unquantized (Q4_1 dequantized), {fp:.1f}")
    ax.set_yscale("log")
    ax.set_ylim(top=Y_MAX * 1.15)
    ax.set_xlabel("stored bits per weight (codes, codebooks, scales, signs)")
    ax.set_ylabel("perplexity, pydoc 4096 tokens (off-scale values written)")
    ax.set_title("SmolLM2-135M, all 210 linear layers quantized")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: points fill the box
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
