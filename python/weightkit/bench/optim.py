"""Optimizer benchmark: Muon's step time against torch.optim.Muon + torch.optim.AdamW, and loss
curves of Muon, AdamW, Drop-Muon and AuON on a small GPT trained on real text.

Step time: the same model, the same gradients, the parameters split the same way (hidden
matrices to Muon, the rest to AdamW); ours is one ``weightkit.optim.Muon.step()``, the baseline a
``torch.optim.Muon.step()`` plus a ``torch.optim.AdamW.step()``. Both orthogonalize in bf16.

Curves: validation loss on the fixed pydoc slice; AdamW's lr is the best of a small grid; the
"time to AdamW's final loss" cases compare wall-clock (training only) of Muon / Drop-Muon to it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import weightkit as wk
from weightkit.bench import common
from weightkit.optim.train import steps_to_reach, train_lm

FAMILY = "optim"
ADAMW_GRID = (1e-3, 3e-3, 1e-2)


def _gpt2_param_set(device) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """GPT-2 124M's parameters as leaves: (48 hidden matrices, embeddings + norm/bias vectors)."""
    shapes = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12
    hidden = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
    others = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in [(50257, 768), (1024, 768)]]
    others += [torch.nn.Parameter(torch.zeros(768, device=device)) for _ in range(12 * 4 + 2)]
    return hidden, others


def _small_model(device, d=256, layers=4):
    torch.manual_seed(0)
    model = wk.nn.GPT(vocab=wk.data.VOCAB_SIZE, d=d, layers=layers, heads=4, ctx=128).to(device)
    return wk.optim.split_muon_params(model)


def _step_case(name, hidden, others, device, settings, note):
    g = torch.Generator(device="cpu").manual_seed(0)
    for p in hidden + others:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-2).to(device)
    ours = wk.optim.Muon(
        [{"params": hidden, "use_muon": True}, {"params": others, "use_muon": False}],
        lr=0.02, weight_decay=0.01, adjust_lr="match_rms_adamw", adamw_lr=3e-4,
    )
    t_muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    t_adamw = torch.optim.AdamW(others, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0)

    def baseline():
        t_muon.step()
        t_adamw.step()

    with common.OtherLoad() as load:
        t_ours = common.measure(ours.step, device=device, **settings)
        t_base = common.measure(baseline, device=device, **settings)
    notes = [note, f"timed calls {t_ours.calls}/{t_base.calls}"]
    if load.cores is not None and load.cores > 0.5:
        notes.append(f"BUSY MACHINE: other processes used {load.cores:.1f} cores")
    return {
        "case": name,
        "baseline": "torch.optim.Muon + torch.optim.AdamW",
        "ours_ms": t_ours.median_ms,
        "baseline_ms": t_base.median_ms,
        "notes": "; ".join(notes),
    }


def _curves(device, quick, progress):
    """Trains the small GPT with each optimizer; returns (curves, cases, skipped)."""
    d, layers, steps = (64, 2, 120) if quick else (128, 4, 400)
    batch, ctx, eval_every = 16, 64, 10 if quick else 20
    tokens = wk.data.encode(wk.data.load_text("pydoc"))
    train, val = wk.data.train_val_split(tokens, 8192)
    train, val = train.to(device), val.to(device)

    def run(make_opt, drop=False):
        torch.manual_seed(0)
        model = wk.nn.GPT(vocab=wk.data.VOCAB_SIZE, d=d, layers=layers, heads=4 if d >= 128 else 2, ctx=ctx).to(device)
        return train_lm(model, make_opt(model), train, val, steps=steps, batch=batch, ctx=ctx,
                        eval_every=eval_every, drop=drop)

    runs = {f"adamw lr={lr:g}": (lambda m, lr=lr: torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95),
                                                                    weight_decay=0.0), False)
            for lr in ADAMW_GRID}
    runs["muon"] = (lambda m: wk.optim.Muon(m, lr=0.02, adamw_lr=3e-3), False)
    runs["drop-muon"] = (lambda m: wk.optim.Muon(m, lr=0.02, adamw_lr=3e-3,
                                                 drop=wk.optim.DropSchedule(kind="tilted", seed=0)), True)
    runs["auon"] = (lambda m: wk.optim.Muon(m, lr=0.02, mode="auon", adamw_lr=3e-3), False)
    runs["hybrid-auon"] = (lambda m: wk.optim.Muon(m, lr=0.02, mode="hybrid", adamw_lr=3e-3), False)
    items = list(runs.items()) if progress is None else progress(list(runs.items()), desc="optim curves",
                                                                  label=lambda kv: kv[0])
    results = {name: run(make, drop) for name, (make, drop) in items}
    best_name = min((n for n in results if n.startswith("adamw")), key=lambda n: results[n].final_loss)
    target = results[best_name].final_loss
    setup = f"GPT d={d} L={layers} ctx={ctx} batch={batch}, {steps} steps, pydoc bytes; target = {best_name} final val loss {target:.3f}"
    cases, skipped = [], []
    adamw_s = results[best_name].curve[-1][2]
    hits = {name: steps_to_reach(results[name], target) for name in ("muon", "drop-muon", "auon", "hybrid-auon")}
    for name, hit in hits.items():
        case = f"time-to-adamw-loss-{name}"
        if hit is None:
            skipped.append({"case": case, "reason": f"never reached {target:.3f} (final "
                            f"{results[name].final_loss:.3f}); {setup}"})
            continue
        step, seconds = hit
        cases.append({"case": case, "baseline": best_name, "ours_ms": max(seconds, 1e-6) * 1e3,
                      "baseline_ms": adamw_s * 1e3, "notes": f"reached at step {step}/{steps}; {setup}"})
    if hits["muon"] and hits["drop-muon"]:
        cases.append({"case": "time-to-adamw-loss-drop-vs-muon", "baseline": "muon",
                      "ours_ms": max(hits["drop-muon"][1], 1e-6) * 1e3, "baseline_ms": max(hits["muon"][1], 1e-6) * 1e3,
                      "notes": f"Drop-Muon (tilted) vs Muon wall-clock; {setup}"})
    curves = {name: {"curve": r.curve, "final_loss": r.final_loss} for name, r in results.items()}
    return curves, cases, skipped


def plot_curves(curves: dict, path) -> str | None:
    plt = common.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, data in curves.items():
        steps = [c[0] for c in data["curve"]]
        losses = [c[1] for c in data["curve"]]
        ax.plot(steps, losses, label=name, lw=1.2, ls="--" if name.startswith("adamw") else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    ax.set_title("Small GPT on pydoc text: optimizers")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def run(*, device="cpu", quick: bool = False, progress=None, root=".") -> dict:
    """Run the benchmark; returns ``{"cases", "skipped", "extra"}`` for ``write_results``."""
    dev = common.resolve_device(device)
    settings = dict(warmup=2, repeats=5, min_time_s=0.5, max_time_s=5.0 if quick else 15.0, long_call_s=1.0)
    cases, skipped = [], []
    hidden, others = _small_model(dev)
    cases.append(_step_case("step-small-4l-d256", hidden, others, dev, settings,
                            "GPT d=256 L=4 vocab 256: 16 Muon matrices + AdamW rest"))
    if dev.type == "cuda" or not quick:
        if dev.type == "cuda":
            hidden, others = _gpt2_param_set(dev)
            cases.append(_step_case("step-gpt2-124m", hidden, others, dev, settings, "GPT-2 124M parameter set"))
        else:
            skipped.append({"case": "step-gpt2-124m", "reason": "CPU: torch.optim.Muon's bf16 step on 48 GPT-2 "
                            "matrices takes minutes on a 2-core CPU; run on a GPU"})
    curves, curve_cases, curve_skips = _curves(dev, quick, progress)
    cases += curve_cases
    skipped += curve_skips
    plot_path = common.results_path(FAMILY, dev, root=root, quick=quick).with_suffix(".png")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_curves(curves, plot_path)
    return {"cases": cases, "skipped": skipped, "extra": {"quick": quick, "curves": curves, "plot": plot}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_optim", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and few steps (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="where to write results (default bench/results/<device>/optim.json)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    common.check_device(parser, args.device)
    t0 = time.perf_counter()
    res = run(device=args.device, quick=args.quick, progress=common.progress)
    wall = time.perf_counter() - t0
    common.print_table(FAMILY, args.device, res["cases"], skipped=res["skipped"])
    path = args.json or common.results_path(FAMILY, args.device, quick=args.quick)
    path = common.write_results(FAMILY, args.device, res["cases"], path, skipped=res["skipped"],
                                extra={**res["extra"], "wall_s": round(wall, 1)})
    print(f"wrote {path} ({wall:.0f} s)" + (f"; plot {res['extra']['plot']}" if res["extra"]["plot"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
