"""Palette and trellis ops on CUDA, checked against the float64 references and the CPU ops.

Every test here needs a GPU (marked ``cuda``; skipped and reported as skipped without one).
"""

from __future__ import annotations

import math

import pytest
import torch

import weightkit  # noqa: F401  (loads the ops)
from tests.ops.test_palette import CASES, WIDTHS, random_codes, rel_err
from tests.reference.palette import dequantize_ref, hadamard_transform_ref, tcq_decode_ref
from weightkit.ops.palette import (
    hadamard_order,
    hadamard_signs,
    hadamard_transform,
    palette_dequantize,
    palette_encode,
    palette_matmul,
    palette_pack,
    tcq_dequantize,
    tcq_encode,
    tcq_encode_window,
)
from weightkit.quant.tcq import tcq_encode_ldlq, tcq_params, tcq_state_values

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("n", WIDTHS + [14336, 28672])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hadamard(n, dtype):
    x = torch.randn(9, n)
    s = hadamard_signs(n, 1)
    y = hadamard_transform(x.to(dtype).cuda(), s.cuda())
    assert y.dtype == dtype and y.device.type == "cuda"
    ref = hadamard_transform_ref(x.to(dtype).double(), s, 1 / math.sqrt(n), hadamard_order(n))
    assert rel_err(y, ref) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_hadamard_aten_path_agrees_with_kernel(monkeypatch):
    x = torch.randn(4, 11008, device="cuda")
    s = hadamard_signs(11008, 2).cuda()
    y_kernel = hadamard_transform(x, s)
    monkeypatch.setenv("WEIGHTKIT_HADAMARD_PATH", "aten")
    assert torch.allclose(hadamard_transform(x, s), y_kernel, atol=1e-5)


def test_hadamard_batched_shape_and_cpu_agreement():
    x = torch.randn(2, 3, 4, 1536)
    y = hadamard_transform(x.cuda(), None)
    assert y.shape == x.shape
    assert torch.allclose(y.cpu(), hadamard_transform(x, None), atol=1e-5)


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("c", [2, 4, 8])
def test_encode_is_nearest(c, d):
    codebook, _, _ = random_codes(1, 2, c, d, seed=c)
    W = torch.randn(33, 128)
    idx = palette_encode(W.cuda(), codebook.cuda()).cpu().long()
    dist = torch.cdist(W.reshape(-1, d).double(), codebook.double())
    chosen = dist.gather(1, idx.reshape(-1, 1)).squeeze(1)
    # Exact fp32 differences (cdist's compute_mode 2, not its matmul form): ties to ~1e-6.
    assert torch.allclose(chosen, dist.min(1).values, atol=2e-6)


@pytest.mark.parametrize("c,d", CASES)
def test_pack_and_dequantize_match_cpu(c, d):
    codebook, idx, scales = random_codes(11, 2 * 333, c, d, seed=c)
    packed = palette_pack(idx.cuda(), c)
    assert torch.equal(packed.cpu(), palette_pack(idx, c))
    W = palette_dequantize(packed, codebook.cuda(), scales.cuda(), 2 * 333)
    assert torch.allclose(W.cpu().double(), dequantize_ref(packed.cpu(), codebook, scales, 2 * 333), atol=1e-6)


@pytest.mark.parametrize("c,d", CASES)
@pytest.mark.parametrize("tokens", [1, 3, 8, 16])
def test_matmul_gemv(c, d, tokens, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", "gemv")
    rows, in_f = 77, 2 * 1000
    codebook, idx, scales = random_codes(rows, in_f, c, d, seed=c)
    packed = palette_pack(idx, c)
    x = torch.randn(tokens, in_f)
    y = palette_matmul(x.cuda(), packed.cuda(), codebook.cuda(), scales.cuda(), in_f)
    ref = x.double() @ dequantize_ref(packed, codebook, scales, in_f).T
    assert y.shape == (tokens, rows) and rel_err(y, ref) < 2e-6


@pytest.mark.parametrize("path", ["gemv", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_paths_and_dtypes(path, dtype, monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_PALETTE_PATH", path)
    codebook, idx, scales = random_codes(64, 512, 4, 2)
    packed = palette_pack(idx, 4)
    x = torch.randn(5, 7, 512).to(dtype)
    y = palette_matmul(x.cuda(), packed.cuda(), codebook.cuda(), scales.cuda(), 512)
    assert y.dtype == dtype and y.shape == (5, 7, 64)
    ref = x.double() @ dequantize_ref(packed, codebook, scales, 512).T
    assert rel_err(y, ref) < (2e-6 if dtype == torch.float32 else 1e-2)


def test_matmul_device_mismatch():
    codebook, idx, scales = random_codes(8, 64, 3, 1)
    packed = palette_pack(idx, 3)
    with pytest.raises(RuntimeError, match="weightkit.palette_matmul: x and packed must be on the same device"):
        palette_matmul(torch.randn(1, 64), packed.cuda(), codebook.cuda(), scales.cuda(), 64)


@pytest.mark.parametrize("bits", [2, 2.5])
def test_tcq_window_and_ldlq_match_cpu(bits):
    """The windowed search on the GPU (free and chained starts, a committed prefix) and the
    Hessian-aware encoder running on it: the CPU's errors (paths may differ on float ties)."""
    p = tcq_params(bits, L=12)
    L, kb, V = p["L"], p["bits_per_step"], p["values_per_step"]
    W = torch.randn(6, 256, generator=torch.Generator().manual_seed(6))
    prev = torch.tensor([-1, 0, 5, 4095, 77, -1], dtype=torch.int32)
    steps = 256 // V
    cpu = tcq_encode_window(W, prev, L, kb, V, steps)
    gpu = tcq_encode_window(W.cuda(), prev.cuda(), L, kb, V, steps).cpu()
    mask = (1 << (L - kb)) - 1
    assert torch.equal(gpu[1:5, 0] >> kb, prev[1:5] & mask)
    err = {k: (tcq_state_values(s, L, kb, V) - W).pow(2).sum(1) for k, s in (("cpu", cpu), ("gpu", gpu))}
    assert torch.allclose(err["gpu"], err["cpu"], rtol=1e-4)
    assert torch.equal(tcq_encode_window(W.cuda(), prev.cuda(), L, kb, V, 9).cpu(), gpu[:, :9])
    g = torch.Generator().manual_seed(7)
    X = torch.randn(1024, 256, generator=g) @ (torch.eye(256) + 0.1 * torch.randn(256, 256, generator=g))
    H = (X.T @ X / 1024).double()
    ones = torch.ones(6)
    loss = {}
    for dev in ("cpu", "cuda"):
        packed = tcq_encode_ldlq(W.to(dev), H, L, kb, V).cpu()
        E = (tcq_dequantize(packed, ones, 256, L, kb, V) - W).double()
        loss[dev] = ((E @ H) * E).sum().item()
    assert loss["cuda"] == pytest.approx(loss["cpu"], rel=0.02)  # float ties may steer the feedback apart


@pytest.mark.parametrize("bits", [2, 2.5, 3, 4])
def test_tcq_matches_cpu(bits):
    """The GPU Viterbi is exact too: the same error as the CPU encoder (streams may differ on ties)."""
    p = tcq_params(bits, L=12)
    L, kb, V = p["L"], p["bits_per_step"], p["values_per_step"]
    W = torch.randn(6, 512, generator=torch.Generator().manual_seed(5))
    ones = torch.ones(6)
    packed = tcq_encode(W.cuda(), L, kb, V)
    err_gpu = (tcq_dequantize(packed.cpu(), ones, 512, L, kb, V) - W).pow(2).sum(1)
    err_cpu = (tcq_dequantize(tcq_encode(W, L, kb, V), ones, 512, L, kb, V) - W).pow(2).sum(1)
    assert torch.allclose(err_gpu, err_cpu, rtol=1e-4)
    scales = torch.rand(6) + 0.5
    got = tcq_dequantize(packed, scales.cuda(), 512, L, kb, V)
    assert torch.allclose(got.cpu().double(), tcq_decode_ref(packed.cpu(), scales, 512, L, kb, V), atol=1e-5)
