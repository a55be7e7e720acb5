"""``weightkit demo``: the whole lifecycle on real text and a real model, in one run.

Stages (each isolated: a failure is reported and the others still run):

1. ``train``: a small GPT on pydoc text, dense + AdamW vs Muon vs SLTrain + Muon.
2. ``quantize``: SmolLM2-135M-Instruct with PTQTP and palette quantizers: perplexity, bits per
   weight, size, GEMV speed of the quantized layers.
3. ``edit``: RLSEditor on the same model with counterfactual facts: efficacy, generalization,
   specificity, perplexity drift.

Outputs in ``out``: ``report.md``, ``results.json`` and PNG plots.
"""

from __future__ import annotations

import importlib
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from weightkit.demo import report
from weightkit.demo.stage import StageResult, run_stage

STAGES = ("train", "quantize", "edit")

__all__ = ["STAGES", "run_demo"]


def run_demo(out, *, device="cpu", quick: bool = False, only=None, progress=None) -> list[StageResult]:
    """Run the stages (all, or those in ``only``) and write the report into ``out``."""
    import weightkit
    from weightkit.bench.common import device_name, progress as bar

    progress = progress or bar
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    t0 = time.perf_counter()
    stages = []
    shared: dict = {}  # what a stage hands to later ones (the trained model, the loaded LM)
    for name in only or STAGES:
        module = importlib.import_module(f"weightkit.demo.{name}")
        print(f"weightkit demo: stage {name} ...", flush=True)
        stages.append(run_stage(name, lambda r, m=module: m.run(r, device=dev, quick=quick, out=out,
                                                                  progress=progress, shared=shared)))
    header = {
        "device": device_name(dev),
        "torch": torch.__version__,
        "weightkit": weightkit.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    md, js = report.write(out, header, stages)
    print()
    print(report.summary_text(stages))
    print(f"\nreport: {md}\nresults: {js}\ntotal {header['wall_s']:.0f} s")
    return stages
