"""weightkit trit-plane ops (PTQTP) against the float64 reference in tests/reference/trit_plane.py."""

from __future__ import annotations

import pytest
import torch

from tests.reference.trit_plane import dequantize_ref, matmul_a8_ref, ptqtp_ref, round_activations_ref
import weightkit as wk
from weightkit.ops import trit_plane as tp

# (out, in, group_size): ragged last group, odd out, group not a multiple of 2, tiny rows.
SHAPES = [(37, 300, 128), (16, 256, 64), (24, 576, 128), (9, 100, 7), (8, 5, 128)]


def gaussian(out, inf, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inf, generator=g) * scale


def dense_bound(x, D):
    """|x|·|D|ᵀ in float64: the scale of fp32 rounding in each output."""
    return x.double().abs().cpu() @ D.double().abs().cpu().T


# ---------------------------------------------------------------- quantizer


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_quantizer_matches_reference(device, shape):
    out, inf, gs = shape
    W = gaussian(out, inf, seed=1)
    trits_ref, scales_ref = ptqtp_ref(W, gs)
    packed, scales = tp.ptqtp_quantize(W.to(device), gs)
    assert packed.device.type == device and scales.device.type == device
    packed, scales = packed.cpu(), scales.cpu()
    trits = tp.trit_plane_trits(packed, out, inf, gs)
    assert packed.dtype == torch.int32 and packed.shape == tp.packed_shape(out, inf, gs)
    assert scales.dtype == torch.float16 and scales.shape == (out, tp.n_groups(inf, gs), 2)
    # Same algorithm, same tie-breaks; only float rounding at exact midpoints (and, on CUDA, the
    # order of the fp64 sums) may differ.
    assert (trits == trits_ref).float().mean().item() >= (0.999 if device == "cpu" else 0.99)
    D, D_ref = tp.trit_plane_unpack(packed, scales, inf, gs), dequantize_ref(trits_ref, scales_ref, gs)
    mse, mse_ref = ((D.double() - W.double()) ** 2).mean(), ((D_ref - W.double()) ** 2).mean()
    assert abs(mse - mse_ref) <= 1e-3 * mse_ref
    assert torch.equal(D.double(), dequantize_ref(trits, scales, gs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantizer_half_inputs(dtype):
    W = gaussian(16, 256, seed=2).to(dtype)
    p, s = tp.ptqtp_quantize(W, 128)
    p32, s32 = tp.ptqtp_quantize(W.float(), 128)
    assert torch.equal(p, p32) and torch.equal(s, s32)


def test_gaussian_mse_two_planes(device):
    """PAPERS.md: two free planes reach MSE ≈ 0.029σ² on i.i.d. Gaussian weights."""
    sigma = 0.02
    W = gaussian(128, 1024, seed=3, scale=sigma).to(device)
    p, s = tp.ptqtp_quantize(W, 128)
    mse = ((tp.trit_plane_unpack(p, s, 1024, 128) - W) ** 2).mean().item() / sigma**2
    assert 0.02 < mse < 0.035
    # Both planes carry weight: the larger scale ≈ 1.4σ, the smaller ≈ 0.9σ (PAPERS.md).
    hi, lo = s.float().abs().amax(-1).median().item(), s.float().abs().amin(-1).median().item()
    assert 1.1 * sigma < hi < 1.8 * sigma and 0.5 * sigma < lo < 1.2 * sigma


def test_relative_tolerance_is_scale_invariant():
    W = gaussian(16, 256, seed=4)
    p1, s1 = tp.ptqtp_quantize(W, 128)
    p2, s2 = tp.ptqtp_quantize(W * 4.0, 128)  # a power of two: exact in fp16 too
    assert torch.equal(p1, p2)
    assert torch.equal(s1.float() * 4.0, s2.float())


def test_zero_and_constant_groups():
    W = torch.zeros(8, 256)
    W[1] = 0.5
    W[2, :128] = -1.0
    p, s = tp.ptqtp_quantize(W, 128)
    D = tp.trit_plane_unpack(p, s, 256, 128)
    assert torch.allclose(D, W, atol=1e-3)


def test_max_iters_one_and_tol():
    W = gaussian(8, 128, seed=5)
    p, s = tp.ptqtp_quantize(W, 128, max_iters=1, tol=0.0)
    t_ref, s_ref = ptqtp_ref(W, 128, max_iters=1, tol=0.0)
    assert (tp.trit_plane_trits(p, 8, 128, 128) == t_ref).float().mean() >= 0.999


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_round_trip(device, shape):
    out, inf, gs = shape
    g = torch.Generator().manual_seed(6)
    trits = torch.randint(-1, 2, (2, out, inf), generator=g, dtype=torch.int8)
    packed = tp.trit_plane_pack(trits.to(device), gs)
    assert packed.shape == tp.packed_shape(out, inf, gs) and packed.device.type == device
    assert torch.equal(tp.trit_plane_trits(packed, out, inf, gs).cpu(), trits)
    scales = torch.rand(out, tp.n_groups(inf, gs), 2, generator=g).half()
    D = tp.trit_plane_unpack(packed, scales.to(device), inf, gs).cpu().double()
    assert torch.equal(D, dequantize_ref(trits, scales, gs))


def test_quantize_then_pack_is_identity():
    W = gaussian(20, 200, seed=7)
    p, s = tp.ptqtp_quantize(W, 64)
    assert torch.equal(tp.trit_plane_pack(tp.trit_plane_trits(p, 20, 200, 64), 64), p)


def test_packed_size_is_four_bits_per_weight():
    p, _ = tp.ptqtp_quantize(gaussian(64, 1024), 128)
    assert p.numel() * 32 == 64 * 1024 * 4


# ---------------------------------------------------------------- matmul


def random_packed(out, inf, gs, seed=8):
    g = torch.Generator().manual_seed(seed)
    trits = torch.randint(-1, 2, (2, out, inf), generator=g, dtype=torch.int8)
    scales = (torch.rand(out, tp.n_groups(inf, gs), 2, generator=g) + 0.1).half()
    return tp.trit_plane_pack(trits, gs), scales, dequantize_ref(trits, scales, gs)


@pytest.mark.parametrize("path", ["auto", "direct", "dense"])
@pytest.mark.parametrize("batch", [1, 7, 16, 128])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_fp32(cpu_isa, shape, batch, path, monkeypatch):
    if path != "auto":
        monkeypatch.setenv("WEIGHTKIT_TRIT_PLANE_DIRECT_MAX_BATCH", "1000000" if path == "direct" else "0")
    out, inf, gs = shape
    packed, scales, D = random_packed(out, inf, gs)
    x = torch.randn(batch, inf, generator=torch.Generator().manual_seed(9))
    y = tp.trit_plane_matmul(x, packed, scales, inf, gs)
    assert y.shape == (batch, out) and y.dtype == torch.float32
    ref = x.double() @ D.T
    assert ((y.double() - ref).abs() <= 2e-6 * dense_bound(x, D) + 1e-30).all()


def bf16_dense_path(dtype, batch) -> bool:
    """bf16 activations above 16 rows on a CPU with bf16 units: the dense path rounds each
    dequantized weight tile to bf16 and multiplies in bf16, as a bf16 nn.Linear does."""
    return dtype == torch.bfloat16 and batch > 16 and wk.build_info()["cpu_fast_bf16"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 16, 17, 128])
def test_matmul_half(cpu_isa, dtype, batch):
    out, inf, gs = 37, 300, 128
    packed, scales, D = random_packed(out, inf, gs)
    x = torch.randn(batch, inf).to(dtype)
    y = tp.trit_plane_matmul(x, packed, scales, inf, gs)
    assert y.dtype == dtype and y.shape == (batch, out)
    if bf16_dense_path(dtype, batch):
        D = D.bfloat16().to(D.dtype)
    ref = x.double() @ D.T  # fp32 accumulation, one rounding to the output dtype
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-11
    assert ((y.double() - ref).abs() <= eps * ref.abs() + 2e-6 * dense_bound(x, D)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_dense_path_over_several_weight_tiles(dtype):
    # The dense path dequantizes ~2M weights at a time: 300 inputs give tiles of 6,976 rows, so
    # 7,000 rows are a full tile and a partial one.
    out, inf, gs, batch = 7000, 300, 128, 40
    packed, scales, D = random_packed(out, inf, gs)
    x = torch.randn(batch, inf, generator=torch.Generator().manual_seed(3)).to(dtype)
    y = tp.trit_plane_matmul(x, packed, scales, inf, gs)
    if bf16_dense_path(dtype, batch):
        D = D.bfloat16().to(D.dtype)
    ref = x.double() @ D.T
    eps = 2**-8 if dtype == torch.bfloat16 else 0.0
    assert ((y.double() - ref).abs() <= eps * ref.abs() + 2e-6 * dense_bound(x, D)).all()


def test_matmul_batched_shapes_and_quantized_weight(device):
    W = gaussian(48, 320, seed=10).to(device)
    p, s = tp.ptqtp_quantize(W, 128)
    D = tp.trit_plane_unpack(p, s, 320, 128)
    x = torch.randn(2, 3, 320).to(device)
    y = tp.trit_plane_matmul(x, p, s, 320, 128)
    assert y.shape == (2, 3, 48) and y.device.type == device
    torch.testing.assert_close(y, x @ D.T, rtol=1e-4, atol=1e-4)
    assert tp.trit_plane_matmul(torch.randn(320).to(device), p, s, 320, 128).shape == (48,)
    assert tp.trit_plane_matmul(torch.randn(0, 320).to(device), p, s, 320, 128).shape == (0, 48)


@pytest.mark.parametrize("batch", [3, 40])  # the direct kernel and the dense path
def test_matmul_without_inputs_gives_zeros(device, batch):
    p, s = tp.ptqtp_quantize(torch.zeros(8, 0, device=device), 128)
    y = tp.trit_plane_matmul(torch.randn(2, batch, 0, device=device), p, s, 0, 128)
    assert y.shape == (2, batch, 8) and not y.any()


# ---------------------------------------------------------------- matmul with int8 activations

# Besides SHAPES: groups of 1 and 2 plane words (16, 32 columns), a group longer than the 16 words
# the int16 accumulators hold (512), a single group not a multiple of 16 columns, and odd groups
# that fill whole words (15, 31: the AVX2 kernel with a padding slot per group).
A8_SHAPES = SHAPES + [(8, 96, 16), (24, 160, 32), (16, 1100, 512), (8, 200, 200), (16, 95, 15), (8, 200, 31)]


def random_trits(out, inf, gs, seed=8):
    g = torch.Generator().manual_seed(seed)
    trits = torch.randint(-1, 2, (2, out, inf), generator=g, dtype=torch.int8)
    scales = (torch.rand(out, tp.n_groups(inf, gs), 2, generator=g) + 0.1).half()
    return trits, scales


@pytest.mark.parametrize("path", ["auto", "direct", "dense"])
@pytest.mark.parametrize("batch", [1, 2, 7, 16, 128])
@pytest.mark.parametrize("shape", A8_SHAPES)
def test_matmul_a8_matches_reference(cpu_isa, shape, batch, path, monkeypatch):
    if path != "auto":
        monkeypatch.setenv("WEIGHTKIT_TRIT_PLANE_DIRECT_MAX_BATCH", "1000000" if path == "direct" else "0")
    out, inf, gs = shape
    trits, scales = random_trits(out, inf, gs)
    x = torch.randn(batch, inf, generator=torch.Generator().manual_seed(9)) * 3
    y = tp.trit_plane_matmul_a8(x, tp.trit_plane_pack(trits, gs), scales, inf, gs)
    assert y.shape == (batch, out) and y.dtype == torch.float32
    ref, _ = matmul_a8_ref(x, trits, scales, gs)
    q, s = round_activations_ref(x, inf, gs)
    xq = q * s.repeat_interleave(gs, dim=1)[:, :inf]
    assert ((y.double() - ref).abs() <= 2e-6 * dense_bound(xq, dequantize_ref(trits, scales, gs)) + 1e-30).all()


@pytest.mark.parametrize("shape", A8_SHAPES)
def test_matmul_a8_error_bound(cpu_isa, shape):
    """Against the fp32-activation product the outputs move by at most the stated bound; on
    Gaussian activations the move is real (the op does round) and small."""
    out, inf, gs = shape
    trits, scales = random_trits(out, inf, gs, seed=3)
    D = dequantize_ref(trits, scales, gs)
    x = torch.randn(16, inf, generator=torch.Generator().manual_seed(4))
    y = tp.trit_plane_matmul_a8(x, tp.trit_plane_pack(trits, gs), scales, inf, gs).double()
    exact = x.double() @ D.T
    _, bound = matmul_a8_ref(x, trits, scales, gs)
    assert ((y - exact).abs() <= bound + 2e-6 * dense_bound(x, D)).all()
    if inf >= 64:
        rel = (y - exact).norm() / exact.norm()
        assert 1e-5 < rel < 2e-2, rel


def test_matmul_a8_largest_sums(cpu_isa):
    """All trits +1 and every activation at the int8 maximum: the int16 accumulators reach their
    largest values (32512 per lane over 16 words) and must not wrap."""
    for gs in (256, 512):
        out, inf = 16, 1024
        trits = torch.ones(2, out, inf, dtype=torch.int8)
        trits[1, 1::2] = -1
        scales = torch.ones(out, inf // gs, 2, dtype=torch.float16)
        y = tp.trit_plane_matmul_a8(torch.full((1, inf), 0.5), tp.trit_plane_pack(trits, gs), scales, inf, gs)
        want = torch.where(torch.arange(out) % 2 == 0, 1024.0, 0.0)
        torch.testing.assert_close(y[0], want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 16, 128])
def test_matmul_a8_half(cpu_isa, dtype, batch):
    out, inf, gs = 37, 300, 128
    trits, scales = random_trits(out, inf, gs)
    x = torch.randn(batch, inf).to(dtype)
    y = tp.trit_plane_matmul_a8(x, tp.trit_plane_pack(trits, gs), scales, inf, gs)
    assert y.dtype == dtype and y.shape == (batch, out)
    ref, _ = matmul_a8_ref(x.float(), trits, scales, gs)
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-11
    D = dequantize_ref(trits, scales, gs)
    assert ((y.double() - ref).abs() <= eps * ref.abs() + 2e-6 * dense_bound(x, D)).all()


@pytest.mark.parametrize("batch", [2, 300])  # the direct kernel and the dense path (above 256 rows)
def test_matmul_a8_zero_tiny_and_nonfinite_groups(cpu_isa, batch):
    out, inf, gs = 16, 256, 128
    trits, scales = random_trits(out, inf, gs)
    trits[:, 5, :128] = 0  # a row with no nonzero trit in the group holding the NaN below
    p = tp.trit_plane_pack(trits, gs)
    x = torch.randn(batch, inf)
    x[0, :128] = 0.0  # a zero group
    x[0, 128:] = 2e-37  # normal, but 127 / max|x| overflows: flushed to zero
    x[1, 5] = float("nan")
    y = tp.trit_plane_matmul_a8(x, p, scales, inf, gs)
    assert (y[0] == 0).all()
    _, bound = matmul_a8_ref(x[:1], trits, scales, gs)  # the flushed group's term of the bound
    exact = x[:1].double() @ dequantize_ref(trits, scales, gs).T
    assert ((y[:1].double() - exact).abs() <= bound).all() and (bound > 0).all()
    assert y[1].isnan().all()
    assert torch.isfinite(y[2:]).all()
    x[1, 5] = float("inf")
    assert tp.trit_plane_matmul_a8(x, p, scales, inf, gs)[1].isnan().all()


def test_matmul_a8_shapes_and_quantized_weight(device):
    W = gaussian(48, 320, seed=10).to(device)
    p, s = tp.ptqtp_quantize(W, 128)
    x = torch.randn(2, 3, 320).to(device)
    y = tp.trit_plane_matmul_a8(x, p, s, 320, 128)
    assert y.shape == (2, 3, 48) and y.device.type == device
    exact = tp.trit_plane_matmul(x, p, s, 320, 128)
    assert 1e-4 < ((y - exact).norm() / exact.norm()).item() < 2e-2  # ~0.65% for Gaussian x
    assert tp.trit_plane_matmul_a8(torch.randn(320).to(device), p, s, 320, 128).shape == (48,)
    assert tp.trit_plane_matmul_a8(torch.randn(0, 320).to(device), p, s, 320, 128).shape == (0, 48)
    p0, s0 = tp.ptqtp_quantize(torch.zeros(8, 0, device=device), 128)
    assert not tp.trit_plane_matmul_a8(torch.randn(3, 0, device=device), p0, s0, 0, 128).any()


def test_matmul_a8_rejects_bad_input():
    p, s = tp.ptqtp_quantize(gaussian(16, 256), 128)
    mm = tp.trit_plane_matmul_a8
    with pytest.raises(RuntimeError, match=r"weightkit\.trit_plane_matmul_a8: x's last dimension must equal in_features"):
        mm(torch.randn(2, 255), p, s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul_a8: packed must have shape \[2, 16, 2, 8\]"):
        mm(torch.randn(2, 256), p[:, :-1].contiguous(), s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul_a8: scales must be float16"):
        mm(torch.randn(2, 256), p, s.float(), 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul_a8: x must be float32, bfloat16 or float16"):
        mm(torch.randn(2, 256).double(), p, s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul_a8: x and packed must be on the same device, got meta"):
        mm(torch.randn(2, 256, device="meta"), p, s, 256, 128)


# ---------------------------------------------------------------- opcheck


def test_opcheck(device):
    W = gaussian(24, 200, seed=11).to(device)
    p, s = tp.ptqtp_quantize(W, 64)
    trits = tp.trit_plane_trits(p, 24, 200, 64)
    ops = torch.ops.weightkit
    x = torch.randn(3, 200).to(device)
    torch.library.opcheck(ops.ptqtp_quantize.default, (W, 64, 10, 1e-4))
    torch.library.opcheck(ops.trit_plane_matmul.default, (x, p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_matmul.default, (x[:1].bfloat16(), p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_matmul.default, (torch.randn(40, 200).to(device), p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_matmul_a8.default, (x, p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_matmul_a8.default, (x[:1].half(), p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_matmul_a8.default, (torch.randn(40, 200).to(device), p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_unpack.default, (p, s, 200, 64))
    torch.library.opcheck(ops.trit_plane_pack.default, (trits, 64))
    torch.library.opcheck(ops.trit_plane_trits.default, (p, 24, 200, 64))


def test_compile_fullgraph():
    W = gaussian(16, 128, seed=12)
    p, s = tp.ptqtp_quantize(W, 128)
    f = torch.compile(lambda x: tp.trit_plane_matmul(x, p, s, 128, 128) * 2, fullgraph=True, backend="eager")
    x = torch.randn(2, 128)
    torch.testing.assert_close(f(x), tp.trit_plane_matmul(x, p, s, 128, 128) * 2)


# ---------------------------------------------------------------- bad input


def test_quantize_rejects_bad_input(device):
    W = gaussian(8, 64).to(device)
    with pytest.raises(RuntimeError, match=r"weightkit\.ptqtp_quantize: group_size must be >= 1, got 0"):
        tp.ptqtp_quantize(W, 0)
    with pytest.raises(RuntimeError, match=r"weightkit\.ptqtp_quantize: max_iters must be >= 1"):
        tp.ptqtp_quantize(W, 64, max_iters=0)
    with pytest.raises(RuntimeError, match=r"weightkit\.ptqtp_quantize: tol must be finite and >= 0"):
        tp.ptqtp_quantize(W, 64, tol=-1.0)
    bad = W.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(RuntimeError, match=r"weightkit\.ptqtp_quantize: W must be finite"):
        tp.ptqtp_quantize(bad, 64)
    bad[3, 5] = float("inf")
    with pytest.raises(RuntimeError, match=r"W must be finite"):
        tp.ptqtp_quantize(bad, 64)
    with pytest.raises(RuntimeError, match=r"W must have 2 dimensions"):
        tp.ptqtp_quantize(W[0], 64)
    with pytest.raises(RuntimeError, match=r"W must be float32, bfloat16 or float16"):
        tp.ptqtp_quantize(W.double(), 64)
    with pytest.raises(RuntimeError, match=r"scales must fit in float16"):
        tp.ptqtp_quantize(W * 1e6, 64)


def test_group_wider_than_row(device):
    # A group_size beyond in_features means one group per row: the same codes as group_size =
    # in_features, and no buffer sized by the huge value (2^40 used to exhaust memory).
    W = gaussian(8, 96).to(device)
    p, s = tp.ptqtp_quantize(W, 96)
    p_wide, s_wide = tp.ptqtp_quantize(W, 2**40)
    assert torch.equal(p_wide, p) and torch.equal(s_wide, s)
    x = torch.randn(3, 96, device=device)
    torch.testing.assert_close(tp.trit_plane_matmul(x, p_wide, s_wide, 96, 2**40), tp.trit_plane_matmul(x, p, s, 96, 96))
    assert torch.equal(tp.trit_plane_unpack(p_wide, s_wide, 96, 2**40), tp.trit_plane_unpack(p, s, 96, 96))


def test_matmul_rejects_bad_input():
    W = gaussian(16, 256)
    p, s = tp.ptqtp_quantize(W, 128)
    x = torch.randn(2, 256)
    mm = tp.trit_plane_matmul
    with pytest.raises(RuntimeError, match=r"weightkit\.trit_plane_matmul: x's last dimension must equal in_features = 256"):
        mm(torch.randn(2, 255), p, s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: packed must have shape \[2, 16, 2, 8\]"):
        mm(x, p[:, :-1].contiguous(), s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: packed must be int32, got Long"):
        mm(x, p.long(), s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: scales must be float16, got Float"):
        mm(x, p, s.float(), 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: scales must have shape \(out, n_groups, 2\)"):
        mm(x, p, s[:, :1].contiguous(), 256, 128)
    # Scales for a different number of rows than the planes hold.
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: packed must have shape \[3, 16, 2, 8\] for out = 24"):
        mm(x, p, torch.zeros(24, 2, 2, dtype=torch.float16), 256, 128)
    # in_features inconsistent with the packed planes.
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: scales must have shape"):
        mm(torch.randn(2, 512), p, s, 512, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: group_size must be >= 1, got 0"):
        mm(x, p, s, 256, 0)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: x must be float32, bfloat16 or float16"):
        mm(x.double(), p, s, 256, 128)
    with pytest.raises(RuntimeError, match=r"trit_plane_matmul: x and packed must be on the same device, got meta"):
        mm(x.to("meta"), p, s, 256, 128)


def test_pack_rejects_bad_input():
    with pytest.raises(RuntimeError, match=r"weightkit\.trit_plane_pack: trits must hold values in \{-1, 0, \+1\}"):
        tp.trit_plane_pack(torch.full((2, 8, 16), 2, dtype=torch.int8), 8)
    with pytest.raises(RuntimeError, match=r"trit_plane_pack: trits must be int8"):
        tp.trit_plane_pack(torch.zeros(2, 8, 16), 8)
    with pytest.raises(RuntimeError, match=r"trit_plane_pack: trits must have shape \(2, out, in\)"):
        tp.trit_plane_pack(torch.zeros(3, 8, 16, dtype=torch.int8), 8)
    with pytest.raises(RuntimeError, match=r"trit_plane_trits: packed must have shape"):
        tp.trit_plane_trits(torch.zeros(1, 1, 2, 8, dtype=torch.int32), 9, 16, 8)


def test_unknown_isa_is_refused(monkeypatch):
    monkeypatch.setenv("WEIGHTKIT_CPU_ISA", "sse9")
    p, s = tp.ptqtp_quantize(gaussian(8, 64), 64)
    with pytest.raises(RuntimeError, match=r"weightkit\.trit_plane_matmul: WEIGHTKIT_CPU_ISA must be one of"):
        tp.trit_plane_matmul(torch.randn(1, 64), p, s, 64, 64)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 7, 16, 128])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matmul(shape, batch, dtype):
    out, inf, gs = shape
    packed, scales, D = random_packed(out, inf, gs)
    x = torch.randn(batch, inf).to(dtype)
    y = tp.trit_plane_matmul(x.cuda(), packed.cuda(), scales.cuda(), inf, gs)
    assert y.dtype == dtype and y.device.type == "cuda"
    # bf16 above 16 rows: a bf16 W and cuBLAS's bf16 product, whose split reductions may round
    # partial sums to bf16 (torch's default allows it) once: 2^-9 of the magnitude sum covers that.
    bf16_dense = dtype == torch.bfloat16 and batch > 16
    if bf16_dense:
        D = D.bfloat16().to(D.dtype)
    ref = x.double() @ D.T
    eps = {torch.float32: 0.0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    slack = 2**-9 + 4e-6 if bf16_dense else 4e-6
    assert ((y.cpu().double() - ref).abs() <= eps * ref.abs() + slack * dense_bound(x, D)).all()


@pytest.mark.cuda
def test_cuda_device_mismatch():
    p, s, D = random_packed(37, 300, 128)
    with pytest.raises(RuntimeError, match=r"x and packed must be on the same device"):
        tp.trit_plane_matmul(torch.randn(1, 300), p.cuda(), s.cuda(), 300, 128)
    with pytest.raises(RuntimeError, match=r"packed and scales must be on the same device"):
        tp.trit_plane_matmul(torch.randn(1, 300).cuda(), p.cuda(), s, 300, 128)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 7, 16, 128])
@pytest.mark.parametrize("shape", A8_SHAPES)
def test_cuda_matmul_a8(shape, batch, dtype):
    out, inf, gs = shape
    trits, scales = random_trits(out, inf, gs)
    x = (torch.randn(batch, inf) * 3).to(dtype)
    y = tp.trit_plane_matmul_a8(x.cuda(), tp.trit_plane_pack(trits, gs).cuda(), scales.cuda(), inf, gs)
    assert y.dtype == dtype and y.device.type == "cuda"
    ref, _ = matmul_a8_ref(x.float(), trits, scales, gs)
    eps = {torch.float32: 0.0, torch.bfloat16: 2**-8}[dtype]
    D = dequantize_ref(trits, scales, gs)
    assert ((y.cpu().double() - ref).abs() <= eps * ref.abs() + 4e-6 * dense_bound(x, D)).all()


@pytest.mark.cuda
def test_cuda_matmul_a8_nonfinite_group():
    trits, scales = random_trits(16, 256, 128)
    trits[:, 3, 128:] = 0  # a row with no nonzero trit in the group holding the NaN
    x = torch.randn(3, 256)
    x[1, 200] = float("nan")
    x[2, :128] = 0.0
    y = tp.trit_plane_matmul_a8(x.cuda(), tp.trit_plane_pack(trits, 128).cuda(), scales.cuda(), 256, 128).cpu()
    assert y[1].isnan().all() and torch.isfinite(y[[0, 2]]).all()
    ref, _ = matmul_a8_ref(x[[0, 2]], trits, scales, 128)
    assert torch.allclose(y[[0, 2]].double(), ref, rtol=1e-5, atol=1e-4)
