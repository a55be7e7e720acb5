"""Trellis-coded quantization ops: Viterbi optimality, decode against the reference, PAPERS.md MSE."""

from __future__ import annotations

import pytest
import torch

import weightkit  # noqa: F401
from tests.reference.palette import tcq_best_error_bruteforce, tcq_decode_ref
from weightkit.ops.palette import tcq_dequantize, tcq_encode, tcq_words
from weightkit.quant.tcq import tcq_params

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


def test_every_isa_gives_the_same_stream(monkeypatch):
    w = torch.randn(4, 256)
    streams = []
    for isa in ("scalar", "avx2", "avx512"):
        if isa == "avx512" and weightkit.build_info()["cpu_isa_best"] != "avx512":
            continue
        monkeypatch.setenv("WEIGHTKIT_CPU_ISA", isa)
        streams.append(tcq_encode(w, 10, 2, 1))
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


def test_opcheck():
    w = torch.randn(3, 32)
    packed = tcq_encode(w, 8, 2, 1)
    torch.library.opcheck(torch.ops.weightkit.tcq_encode.default, (w, 8, 2, 1))
    torch.library.opcheck(torch.ops.weightkit.tcq_decode.default, (packed, torch.ones(3), 32, 8, 2, 1))


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
