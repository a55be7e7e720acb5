"""Trellis-coded quantization ops: Viterbi optimality, decode against the reference, PAPERS.md MSE."""

from __future__ import annotations

import pytest
import torch

import weightkit  # noqa: F401
from tests.reference.palette import tcq_best_error_bruteforce, tcq_code_ref, tcq_decode_ref, tcq_viterbi_ref
from tests.ops.test_palette import rel_err
from weightkit.ops.palette import tcq_dequantize, tcq_encode, tcq_encode_window, tcq_matmul, tcq_words
from weightkit.quant.tcq import tcq_pack_states, tcq_params, tcq_state_values

# PAPERS.md (Q-Palette table, TCQ column); our L = 16 trellis must be within 5%.
TCQ_TABLE = {1.5: 0.1403, 2: 0.0710, 3: 0.0189, 4: 0.0059}


@pytest.mark.parametrize("L,kb,V,n", [(4, 1, 1, 6), (5, 2, 1, 4), (4, 3, 2, 6), (6, 2, 2, 6)])
def test_viterbi_is_optimal(L, kb, V, n, cpu_isa):
    w = torch.randn(1, n, generator=torch.Generator().manual_seed(L * 10 + kb))
    packed = tcq_encode(w, L, kb, V)
    assert packed.shape == (1, tcq_words(n // V, L, kb))
    got = (tcq_dequantize(packed, torch.ones(1), n, L, kb, V) - w).pow(2).sum().item()
    assert got == pytest.approx(tcq_best_error_bruteforce(w[0], L, kb, V), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("L,kb,V", [(12, 2, 1), (10, 5, 2), (16, 4, 1)])
def test_decode_matches_reference(L, kb, V):
    w = torch.randn(3, 40)
    scales = torch.rand(3) + 0.5
    packed = tcq_encode(w, L, kb, V)
    got = tcq_dequantize(packed, scales, 40, L, kb, V)
    assert torch.allclose(got.double(), tcq_decode_ref(packed, scales, 40, L, kb, V), atol=1e-5)


# On AVX-512 (AVX2), kb = 1..3 with 16 << kb (8 << kb) or more prefixes take two steps at a time (the
# last step alone when their count is odd), with 16+ (8+) prefixes the one-pass step; kb = 4, 5 the
# two-pass step. From 1024 prefixes on, the padded rows of the cost grid keep the predecessor streams
# apart.
@pytest.mark.parametrize("L,kb,V", [(10, 2, 1), (8, 2, 1), (7, 2, 1), (5, 1, 1), (10, 3, 1), (9, 3, 2), (12, 1, 1),
                                    (11, 4, 1), (12, 5, 2), (15, 3, 1), (16, 5, 2)])
@pytest.mark.parametrize("steps", [64, 65])
def test_every_isa_gives_the_same_stream(L, kb, V, steps, monkeypatch):
    w = torch.randn(4, steps * V, generator=torch.Generator().manual_seed(L + kb))
    streams = []
    for isa in ("scalar", "avx2", "avx512"):
        if isa == "avx512" and weightkit.build_info()["cpu_isa_best"] != "avx512":
            continue
        monkeypatch.setenv("WEIGHTKIT_CPU_ISA", isa)
        streams.append(tcq_encode(w, L, kb, V))
    assert all(torch.equal(s, streams[0]) for s in streams)


@pytest.mark.parametrize("bits", sorted(TCQ_TABLE))
def test_mse_table(bits):
    p = tcq_params(bits, L=16)
    X = torch.randn(16, 4096, generator=torch.Generator().manual_seed(3))  # 2^16 samples
    packed = tcq_encode(X, p["L"], p["bits_per_step"], p["values_per_step"])
    Y = tcq_dequantize(packed, torch.ones(16), 4096, p["L"], p["bits_per_step"], p["values_per_step"])
    mse = (X - Y).pow(2).mean().item()
    assert mse <= 1.05 * TCQ_TABLE[bits]
    assert bits != 2 or mse <= 0.075


def test_half_rates_sit_between():
    X = torch.randn(8, 1024, generator=torch.Generator().manual_seed(4))
    mse = {}
    for bits in (2, 2.5, 3):
        p = tcq_params(bits, L=12)
        Y = tcq_dequantize(tcq_encode(X, p["L"], p["bits_per_step"], p["values_per_step"]), torch.ones(8), 1024,
                           p["L"], p["bits_per_step"], p["values_per_step"])
        mse[bits] = (X - Y).pow(2).mean().item()
    assert mse[3] < mse[2.5] < mse[2]


def encoded(rows: int, in_f: int, bits: float, L: int = 10, seed: int = 0):
    """(packed, scales, L, kb, V) of a random Gaussian matrix."""
    p = tcq_params(bits, L)
    L, kb, V = p["L"], p["bits_per_step"], p["values_per_step"]
    g = torch.Generator().manual_seed(seed)
    packed = tcq_encode(torch.randn(rows, in_f, generator=g), L, kb, V)
    return packed, torch.rand(rows, generator=g) + 0.5, L, kb, V


# 1-16 tokens: the trellis GEMV decodes in registers (on the GPU one launch per 16 tokens when
# forced to); 40: decode + GEMM.
@pytest.mark.parametrize("path", [None, "gemv", "dense"])
@pytest.mark.parametrize("tokens", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("bits", [2, 2.5])
def test_matmul_equals_x_times_decoded_weight(device, bits, tokens, path, monkeypatch):
    if path:
        monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", path)
    packed, scales, L, kb, V = encoded(37, 320, bits)
    x = torch.randn(tokens, 320)
    y = tcq_matmul(x.to(device), packed.to(device), scales.to(device), 320, L, kb, V)
    assert y.shape == (tokens, 37) and y.dtype == torch.float32 and y.device.type == device
    ref = x.double() @ tcq_decode_ref(packed, scales, 320, L, kb, V).T
    assert rel_err(y, ref) < 2e-6


# The CPU trellis GEMV on every ISA: each rate's (kb, V), state sizes up to 20 bits, rows that
# leave a partial group of 8, token counts across its 8-token chunks. Random streams: every state.
@pytest.mark.parametrize("bits", [1.5, 2, 2.5, 3, 3.5, 4])
@pytest.mark.parametrize("L", [12, 20])
def test_cpu_gemv_every_isa(bits, L, cpu_isa, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", "gemv")
    p = tcq_params(bits, L)
    kb, V = p["bits_per_step"], p["values_per_step"]
    g = torch.Generator().manual_seed(int(bits * 10) + L)
    rows, in_f = 21, 96 * V
    packed = torch.randint(-2**31, 2**31 - 1, (rows, tcq_words(in_f // V, L, kb)), dtype=torch.int32, generator=g)
    scales = torch.rand(rows, generator=g) + 0.5
    W = tcq_decode_ref(packed, scales, in_f, L, kb, V)
    for tokens in (1, 2, 3, 8, 9, 19):
        x = torch.randn(tokens, in_f, generator=g)
        y = tcq_matmul(x, packed, scales, in_f, L, kb, V)
        assert rel_err(y, x.double() @ W.T) < 2e-6, (tokens, rel_err(y, x.double() @ W.T))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [3, 40])
def test_matmul_half_precision_and_batch_shapes(device, dtype, tokens):
    packed, scales, L, kb, V = encoded(24, 256, 2)
    x = torch.randn(2, tokens, 256).to(dtype)
    y = tcq_matmul(x.to(device), packed.to(device), scales.to(device), 256, L, kb, V)
    assert y.shape == (2, tokens, 24) and y.dtype == dtype
    ref = x.double() @ tcq_decode_ref(packed, scales, 256, L, kb, V).T
    assert rel_err(y, ref) < 1e-2


def test_matmul_shapes(device):
    packed, scales, L, kb, V = encoded(5, 64, 2)
    W = tcq_decode_ref(packed, scales, 64, L, kb, V)
    for x in (torch.randn(64), torch.randn(0, 64), torch.randn(2, 0, 64), torch.randn(2, 3, 64)):
        y = tcq_matmul(x.to(device), packed.to(device), scales.to(device), 64, L, kb, V)
        assert y.shape == (*x.shape[:-1], 5)
        assert rel_err(y, x.double() @ W.T) < 2e-6 or x.numel() == 0


def test_opcheck(device):
    w = torch.randn(3, 32)
    packed = tcq_encode(w, 8, 2, 1).to(device)
    ones = torch.ones(3, device=device)
    torch.library.opcheck(torch.ops.weightkit.tcq_encode.default, (w.to(device), 8, 2, 1))
    torch.library.opcheck(torch.ops.weightkit.tcq_decode.default, (packed, ones, 32, 8, 2, 1))
    prev = torch.tensor([-1, 5, 255], dtype=torch.int32, device=device)
    torch.library.opcheck(torch.ops.weightkit.tcq_encode_window.default, (w.to(device), prev, 8, 2, 1, 7))
    for tokens in (2, 20):
        x = torch.randn(tokens, 32, device=device)
        torch.library.opcheck(torch.ops.weightkit.tcq_matmul.default, (x, packed, ones, 32, 8, 2, 1))


def test_bad_input():
    w = torch.randn(3, 32)
    with pytest.raises(RuntimeError, match="weightkit.tcq_encode: L \\(trellis state bits\\) must be in"):
        tcq_encode(w, 2, 2, 1)
    with pytest.raises(RuntimeError, match="weightkit.tcq_encode: values_per_step must be 1 or 2"):
        tcq_encode(w, 8, 2, 3)
    with pytest.raises(RuntimeError, match="weightkit.tcq_encode: W must be finite"):
        tcq_encode(torch.full((2, 8), float("nan")), 8, 2, 1)
    packed = tcq_encode(w, 8, 2, 1)
    with pytest.raises(RuntimeError, match="weightkit.tcq_decode: packed must have"):
        tcq_dequantize(packed, torch.ones(3), 32, 8, 3, 1)
    with pytest.raises(ValueError, match="TCQ rate must be one of"):
        tcq_params(2.25)


def test_matmul_bad_input(device):
    packed, scales, L, kb, V = encoded(3, 32, 2)
    packed, scales = packed.to(device), scales.to(device)
    with pytest.raises(RuntimeError, match=r"weightkit.tcq_matmul: x must have shape \(\.\.\., 32\)"):
        tcq_matmul(torch.randn(2, 31, device=device), packed, scales, 32, L, kb, V)
    with pytest.raises(RuntimeError, match="weightkit.tcq_matmul: x must be float32, bfloat16 or float16, got Int"):
        tcq_matmul(torch.ones(2, 32, dtype=torch.int32, device=device), packed, scales, 32, L, kb, V)
    with pytest.raises(RuntimeError, match="weightkit.tcq_matmul: packed must have"):
        tcq_matmul(torch.randn(2, 32, device=device), packed, scales, 32, L, kb + 1, V)
    with pytest.raises(RuntimeError, match=r"weightkit.tcq_matmul: scales must be float32 of shape \(3\)"):
        tcq_matmul(torch.randn(2, 32, device=device), packed, scales[:2], 32, L, kb, V)


@pytest.mark.cuda
def test_matmul_device_mismatch():
    packed, scales, L, kb, V = encoded(3, 32, 2)
    with pytest.raises(RuntimeError, match="weightkit.tcq_matmul: x and packed must be on the same device"):
        tcq_matmul(torch.randn(2, 32), packed.cuda(), scales.cuda(), 32, L, kb, V)


# ----------------------------------------------------------------------------- windowed Viterbi

def free(rows: int) -> torch.Tensor:
    return torch.full((rows,), -1, dtype=torch.int32)


@pytest.mark.parametrize("L,kb,V", [(12, 2, 1), (10, 5, 2), (9, 3, 1), (16, 4, 1)])
def test_window_over_whole_rows_is_the_encoder(L, kb, V, cpu_isa):
    # A free start and every step committed: the same search as tcq_encode, so packing its states
    # gives tcq_encode's streams bit for bit, and the states' code values are tcq_dequantize's.
    W = torch.randn(5, 24 * V, generator=torch.Generator().manual_seed(L + kb))
    states = tcq_encode_window(W, free(5), L, kb, V, 24)
    assert states.shape == (5, 24) and states.dtype == torch.int32
    packed = tcq_encode(W, L, kb, V)
    assert torch.equal(tcq_pack_states(states, L, kb), packed)
    assert torch.equal(tcq_state_values(states, L, kb, V), tcq_dequantize(packed, torch.ones(5), 24 * V, L, kb, V))


@pytest.mark.parametrize("L,kb,V,steps", [(5, 1, 1, 7), (6, 2, 1, 5), (5, 3, 2, 4), (4, 2, 2, 1), (8, 2, 2, 5), (7, 3, 1, 4),
                                            (8, 2, 1, 6), (9, 1, 1, 6), (10, 3, 1, 5)])
def test_window_after_a_state_matches_the_float64_reference(L, kb, V, steps, cpu_isa):
    # Each row starts after a different state (or free): its path follows that state and is the
    # float64 dynamic program's (same path, same error to float rounding).
    rows = 6
    W = torch.randn(rows, steps * V, generator=torch.Generator().manual_seed(10 * L + kb))
    prev = torch.tensor([-1, 0, 1, (1 << L) - 1, 7 % (1 << L), 3], dtype=torch.int32)
    states = tcq_encode_window(W, prev, L, kb, V, steps)
    for r in range(rows):
        best, path = tcq_viterbi_ref(W[r], L, kb, V, int(prev[r]))
        assert states[r].tolist() == path
        if prev[r] >= 0:
            assert int(states[r, 0]) >> kb == int(prev[r]) & ((1 << (L - kb)) - 1)
        got = sum((float(W[r, t * V + v]) - tcq_code_ref(int(s), v)) ** 2 for t, s in enumerate(states[r].tolist())
                  for v in range(V))
        assert got == pytest.approx(best, rel=1e-5, abs=1e-6)


def test_window_commits_a_prefix_and_chains():
    # commit < steps keeps the first states of the whole window's path; consecutive states chain.
    L, kb, V = 10, 2, 1
    W = torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
    prev = torch.tensor([-1, 17, 1023, 500], dtype=torch.int32)
    full = tcq_encode_window(W, prev, L, kb, V, 40)
    assert torch.equal(tcq_encode_window(W, prev, L, kb, V, 9), full[:, :9])
    mask = (1 << (L - kb)) - 1
    assert torch.equal(full[:, 1:] >> kb, full[:, :-1] & mask)


def test_window_bad_input():
    W = torch.randn(3, 16)
    fn = "weightkit.tcq_encode_window"
    with pytest.raises(RuntimeError, match=rf"{fn}: prev must be int32 of shape \(3\), got Long"):
        tcq_encode_window(W, torch.zeros(3, dtype=torch.int64), 8, 2, 1, 4)
    with pytest.raises(RuntimeError, match=rf"{fn}: prev must be int32 of shape \(3\), got Int \[2\]"):
        tcq_encode_window(W, free(2), 8, 2, 1, 4)
    with pytest.raises(RuntimeError, match=rf"{fn}: prev must hold states in \[0, 2\^L\) or -1 .* \[-1, 256\]"):
        tcq_encode_window(W, torch.tensor([-1, 0, 256], dtype=torch.int32), 8, 2, 1, 4)
    with pytest.raises(RuntimeError, match=rf"{fn}: prev must hold states .* \[-2, 0\]"):
        tcq_encode_window(W, torch.tensor([-2, 0, 0], dtype=torch.int32), 8, 2, 1, 4)
    for commit in (0, 17):
        with pytest.raises(RuntimeError, match=rf"{fn}: commit must be in \[1, 16\] \(the window's steps\)"):
            tcq_encode_window(W, free(3), 8, 2, 1, commit)
    with pytest.raises(RuntimeError, match=rf"{fn}: W must be finite"):
        tcq_encode_window(W / 0, free(3), 8, 2, 1, 4)
    with pytest.raises(RuntimeError, match=rf"{fn}: W's columns must be a positive multiple of values_per_step 2"):
        tcq_encode_window(W[:, :15], free(3), 8, 2, 2, 4)


def test_pack_states_bit_layout():
    # L = 5, kb = 2: the first state's 5 bits, then 2 bits per later state, MSB first in word 0.
    states = torch.tensor([[0b10110, 0b11001, 0b00111]], dtype=torch.int32)  # 10110 -> 1100(1) -> 00111
    assert (int(tcq_pack_states(states, 5, 2)[0, 0]) & 0xFFFFFFFF) >> (32 - 9) == 0b10110_01_11
