"""Palette codebooks on unit-Gaussian samples against the MSE table of PAPERS.md (within 5%)."""

from __future__ import annotations

import pytest
import torch

from weightkit.quant.codebooks import gaussian_mse, lloyd_max, vq2d

# PAPERS.md, Q-Palette: per-coordinate MSE on N(0, 1).
SQ_TABLE = {2: 0.1175, 3: 0.0345, 4: 0.0095}
VQ_TABLE = {1.5: 0.2012, 2: 0.1086, 3: 0.0297, 4: 0.0078}


@pytest.mark.parametrize("bits", sorted(SQ_TABLE))
def test_lloyd_max_mse(bits):
    mse = gaussian_mse(lloyd_max(bits), 1 << 16)
    assert mse <= 1.05 * SQ_TABLE[bits]
    assert bits != 2 or mse <= 0.12


def test_lloyd_max_is_symmetric_and_sorted():
    for b in range(1, 9):
        c = lloyd_max(b).squeeze(1)
        assert torch.all(c[1:] > c[:-1])
        assert torch.allclose(c, -c.flip(0), atol=1e-6)


@pytest.mark.parametrize("bits", sorted(VQ_TABLE))
def test_vq2d_mse(bits):
    cb = vq2d(int(2 * bits))
    assert cb.shape == (1 << int(2 * bits), 2)
    assert gaussian_mse(cb, 1 << 16, seed=7) <= 1.05 * VQ_TABLE[bits]


def test_vq_half_rates_between_neighbours():
    for bits in (2.5, 3.5):
        mse = gaussian_mse(vq2d(int(2 * bits)), 1 << 16, seed=7)
        lo, hi = gaussian_mse(vq2d(int(2 * bits) + 1), 1 << 16, seed=7), gaussian_mse(vq2d(int(2 * bits) - 1), 1 << 16, seed=7)
        assert lo < mse < hi


def test_bad_rates():
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        lloyd_max(9)
    with pytest.raises(ValueError, match="code_bits must be in 2..8"):
        vq2d(1)
