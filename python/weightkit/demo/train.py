"""Demo stage 1, training: a small GPT on real text (pydoc topics) with dense + AdamW, dense +
Muon, SLTrain + Muon (and Drop-Muon / AuON in the full run): validation loss, parameter and
training-state memory, wall-clock."""

from __future__ import annotations

from pathlib import Path

import torch

import weightkit as wk
from weightkit.bench.common import pyplot
from weightkit.demo.stage import StageResult, Table
from weightkit.optim.train import train_lm


def _train_state_mib(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """Parameters + gradients + the optimizer's actual state tensors + buffers, in MiB."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    states = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    return (2 * params + states + buffers) / 2**20


def run(result: StageResult, *, device: torch.device, quick: bool, out: Path, progress, shared: dict) -> None:
    d, layers, steps, ctx, batch = (64, 2, 60, 64, 16) if quick else (128, 4, 200, 64, 16)
    tokens = wk.data.encode(wk.data.load_text("pydoc"))
    train, val = wk.data.train_val_split(tokens, 8192 if quick else 16384)
    train, val = train.to(device), val.to(device)
    heads = 4 if d >= 128 else 2

    def gpt(sparse: bool):
        torch.manual_seed(0)
        model = wk.nn.GPT(vocab=wk.data.VOCAB_SIZE, d=d, layers=layers, heads=heads, ctx=ctx)
        if sparse:
            wk.nn.to_sparse_lowrank(model, rank_ratio=0.25, density=0.03, verbose=False)
        return model.to(device)

    # (name, sparse model?, optimizer factory, Drop-Muon?)
    runs = [
        ("dense + AdamW", False, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95)), False),
        ("dense + Muon", False, lambda m: wk.optim.Muon(m, lr=0.02, adamw_lr=3e-3), False),
        ("SLTrain + Muon", True, lambda m: wk.optim.Muon(m, lr=0.02, adamw_lr=3e-3), False),
    ]
    if not quick:
        runs += [
            ("dense + Drop-Muon", False, lambda m: wk.optim.Muon(
                m, lr=0.02, adamw_lr=3e-3, drop=wk.optim.DropSchedule(kind="tilted", seed=0)), True),
            ("dense + AuON", False, lambda m: wk.optim.Muon(m, lr=0.02, mode="auon", adamw_lr=3e-3), False),
        ]
    rows, curves = [], {}
    for name, sparse, make_opt, drop in progress(runs, desc="train", label=lambda r: r[0]):
        model = gpt(sparse)
        opt = make_opt(model)
        res = train_lm(model, opt, train, val, steps=steps, batch=batch, ctx=ctx,
                       eval_every=max(10, steps // 15), drop=drop)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append([name, n_params, round(_train_state_mib(model, opt), 2), round(res.final_loss, 4),
                     round(res.curve[-1][2], 1)])
        curves[name] = res.curve
        if name == "dense + Muon":
            shared["trained_model"] = model  # the quantize stage's fallback when SmolLM2 is absent
    result.tables.append(Table(
        title=f"Training: GPT d={d}, {layers} layers, ctx {ctx}, batch {batch}, {steps} steps on pydoc bytes",
        columns=["method", "parameters", "train state MiB", "val loss (nats/byte)", "train s"],
        rows=rows,
        note="SLTrain: rank d/4, density 0.03 on every attention and MLP linear (embeddings and head dense); "
             "train state = parameters + gradients + the optimizer's state tensors + index buffers.",
    ))
    result.numbers = {"curves": curves, "rows": rows}
    plot = _plot(curves, out / "train_loss.png")
    if plot:
        result.plots.append(plot)


def _plot(curves: dict, path: Path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, curve in curves.items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], label=name, lw=1.3)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    ax.set_title("Training a small GPT on pydoc text")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
