"""Mutation fuzz of every ``torch.ops.weightkit`` op: a valid call per op, then each argument in turn
replaced by a bad or odd value (a dimension 0, ±1 or added, non-contiguous or strided views, every
other dtype, the meta device, another device, NaN / Inf / huge values, out-of-range integers and
counts up to 2^62, empty / short / long lists). Each call must either return or raise an error
that names the op (``weightkit.<op>: ...``): never crash, hang or leak ``std::bad_alloc``.

When first run it found three such inputs: ptqtp_quantize with group_size 2^31 was killed for
memory, newton_schulz with steps 2^31 and sl_support with 2^31 rows raised std::bad_alloc. (A
look at the calls that returned found a fourth: palette_encode skipped NaN codewords.) A crash
takes pytest down with it, which fails CI too. Whether returned values are right is for the
per-op tests; here only how calls end.
"""

from __future__ import annotations

import pytest
import torch

import weightkit  # noqa: F401  (registers the ops)
from tests.conftest import DEVICES

ops = torch.ops.weightkit

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
OTHER_DTYPES = FLOAT_DTYPES + (torch.int32, torch.int64, torch.int16, torch.uint8, torch.bool)
INTS = (0, -1, 1, 2, 3, 7, 8, 9, 17, 31, 32, 33, 64, 2**31, 2**40, 2**62, -2**31, -2**63)
FLOATS = (0.0, -1.0, float("nan"), float("inf"), 1e30, 1e-45, 2.0)


def valid_calls(device: str) -> list[tuple[str, list]]:
    """(op name, arguments) of one valid call per op (two for palette_matmul: 1-D and 2-D codes)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    calls = []
    G = randn(16, 24)
    coeffs = [3.4445, -4.775, 2.0315]
    calls += [("newton_schulz", [G, 5, coeffs, 1e-7, 1.0, None]),
              ("newton_schulz_grouped", [[G, randn(8, 8)], 5, coeffs, 1e-7, 1.0, None]),
              ("auon", [G, 1e-7]),
              ("hadamard_transform", [randn(4, 64), torch.ones(64, device=device), 0.125])]

    W = randn(32, 64)
    scales = randn(32).abs() + 0.5
    for d, c in ((2, 6), (1, 4)):
        codebook = randn(1 << c, d)
        idx = ops.palette_encode(W, codebook)
        packed = ops.palette_pack(idx, c)
        calls += [("palette_encode", [W, codebook]), ("palette_pack", [idx, c]),
                  ("palette_dequantize", [packed, codebook, scales, 64]),
                  ("palette_matmul", [randn(3, 64), packed, codebook, scales, 64])]

    streams = ops.tcq_encode(W, 12, 2, 1)
    prev = torch.arange(-1, 31, dtype=torch.int32, device=device)
    calls += [("tcq_encode", [W, 12, 2, 1]), ("tcq_encode_window", [W, prev, 12, 2, 1, 20]), ("tcq_decode", [streams, scales, 64, 12, 2, 1]),
              ("tcq_matmul", [randn(2, 64), streams, scales, 64, 12, 2, 1])]

    Wt = randn(16, 96)
    packed, s = ops.ptqtp_quantize(Wt, 64, 10, 1e-4)
    trits = ops.trit_plane_trits(packed, 16, 96, 64)
    calls += [("ptqtp_quantize", [Wt, 64, 10, 1e-4]),
              ("trit_plane_matmul", [randn(2, 96), packed, s, 96, 64]),
              ("trit_plane_matmul_a8", [randn(2, 96), packed, s, 96, 64]),
              ("trit_plane_unpack", [packed, s, 96, 64]),
              ("trit_plane_trits", [packed, 16, 96, 64]),
              ("trit_plane_pack", [trits, 64])]

    row_ptr, col_idx = (t.to(device) for t in ops.sl_support(20, 30, 0.1, 3, "row_balanced"))
    A, B, values = randn(4, 30), randn(20, 4), randn(col_idx.numel())
    calls += [("sl_support", [20, 30, 0.1, 3, "row_balanced"]),
              ("sl_linear", [randn(5, 30), A, B, values, row_ptr, col_idx, randn(20), 0.5]),
              ("sl_linear_backward", [randn(5, 20), randn(5, 30), A, B, values, row_ptr, col_idx, 0.5, [True] * 4]),
              ("sddmm", [randn(20, 7), randn(30, 7), row_ptr, col_idx])]

    K0 = randn(12, 12)
    gram = K0 @ K0.T
    C = ops.rls_init(gram, 1.0, 1.0)
    calls += [("rls_init", [gram, 1.0, 1.0]),
              ("rls_update_", [randn(6, 12), C, randn(2, 12), randn(2, 6)])]
    return calls


def tensor_mutations(t: torch.Tensor, device: str):
    for d in range(t.dim()):
        for label, size in (("0", 0), ("+1", t.shape[d] + 1), ("-1", t.shape[d] - 1)):
            if size < 0 or (label == "-1" and size == 0):
                continue
            shape = list(t.shape)
            shape[d] = size
            new = torch.randn(shape, device=device).to(t.dtype) if t.is_floating_point() else \
                torch.zeros(shape, dtype=t.dtype, device=device)
            yield f"dim{d}={label}", new
    yield "0-d", t.reshape(-1)[:1].reshape(()).clone() if t.numel() else torch.zeros((), dtype=t.dtype, device=device)
    yield "extra dim", t.unsqueeze(0)
    if t.dim() >= 2:
        yield "column-major", t.transpose(0, 1).contiguous().transpose(0, 1)
        yield "flattened", t.reshape(-1)
    if t.dim() >= 1 and t.shape[-1] > 1:
        yield "stride 2", torch.cat([t, t], -1)[..., ::2]
    for dtype in OTHER_DTYPES:
        if dtype != t.dtype:
            yield f"{dtype}", t.to(dtype)
    yield "meta", t.to("meta")
    if device != "cpu":
        yield "cpu", t.cpu()
    if t.numel() == 0:
        return
    if t.is_floating_point():
        values = FLOATS
    else:
        info = torch.iinfo(t.dtype)
        values = [v for v in (-1, 2**15 - 1, 2**31 - 1, 255, 3, 2) if info.min <= v <= info.max]
    for v in values:
        for where in (0, -1):
            u = t.clone()
            u.view(-1)[where] = v
            yield f"[{where}]={v}", u


def other_mutations(v):
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        yield from ((f"int {m}", m) for m in INTS if m != v)
    elif isinstance(v, float):
        yield from ((f"float {m}", m) for m in FLOATS)
    elif isinstance(v, str):
        yield from ((f"'{m}'", m) for m in ("", "bogus", "uniform", "row_balanced") if m != v)
    elif v is None:  # compute_dtype
        yield "int32", torch.int32
        yield "float64", torch.float64
    elif isinstance(v, list) and isinstance(v[0], bool):
        yield "mask all False", [False] * len(v)
    elif isinstance(v, list) and isinstance(v[0], float):
        for label, m in (("1 value", v[:1]), ("4 values", v + [1.0]), ("NaN", [float("nan")] * 3),
                         ("15 values", v * 5), ("16 values", v * 5 + [1.0])):
            yield label, m
    elif isinstance(v, list):  # a tensor list; the empty list is the dispatcher's to refuse
        yield "mixed dtypes", [v[0], v[1].double()]
        yield "a 1-d tensor", [v[0], torch.randn(5, device=v[0].device)]
        yield "an empty tensor", [v[0], v[0].new_empty(0, 4)]
        yield "a 3-d tensor", [v[0], torch.randn(2, 3, 3, device=v[0].device)]
        yield "a meta tensor", [v[0], v[1].to("meta")]


def mutated_calls(device: str, op: str):
    for name, args in valid_calls(device):
        if name != op:
            continue
        yield "valid", args
        for i, a in enumerate(args):
            muts = tensor_mutations(a, device) if isinstance(a, torch.Tensor) else other_mutations(a)
            for label, m in muts:
                if op == "sl_support" and i < 2 and m == 2**31:
                    continue  # a legal 2^31-row support: 16 GB of row pointers, slow and not a bad input
                new = list(args)
                new[i] = m
                yield f"argument {i} {label}", new


OPS = sorted({name for name, _ in valid_calls("cpu")})


def ends_cleanly(op: str, args: list) -> str | None:
    """None when the call returns or raises an error naming the op; else what went wrong."""
    try:
        getattr(ops, op)(*[a.clone() if isinstance(a, torch.Tensor) and op == "rls_update_" else a for a in args])
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        msg = str(e).split("\n")[0]
        return None if f"weightkit.{op}" in msg else f"{type(e).__name__} without the op's name: {msg[:200]}"
    except Exception as e:  # noqa: BLE001  (MemoryError, NotImplementedError, ...: all are findings)
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_every_mutation_ends_cleanly(op, device):
    failures = []
    n = 0
    for label, args in mutated_calls(device, op):
        n += 1
        problem = ends_cleanly(op, args)
        if problem:
            failures.append(f"{label}: {problem}")
    assert n > 20, f"only {n} calls generated for {op}"
    assert not failures, f"{len(failures)} of {n} calls of weightkit.{op} ended badly:\n" + "\n".join(failures[:20])
