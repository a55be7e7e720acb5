"""weightkit.optim.Muon against torch.optim.Muon and the float64 reference."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import weightkit as wk
from tests.reference.muon import muon_step_ref


def random_matrices(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g).to(device)) for s in [(32, 64), (64, 32), (48, 48)]]


def random_grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g).to(p.device) for p in params]


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon to compare with")
def test_matches_torch_optim_muon_over_20_steps(device):
    ours_p = random_matrices(device)
    start = [p.detach().clone() for p in ours_p]
    ref_p = [nn.Parameter(p.detach().clone()) for p in ours_p]
    ours = wk.optim.Muon(
        [{"params": ours_p, "use_muon": True}], lr=0.02, weight_decay=0.1, mode="ns",
        coefficients="jordan", adjust_lr="match_rms_adamw",
    )
    ref = torch.optim.Muon(ref_p, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(20):
        for ps in (ours_p, ref_p):
            for p, g in zip(ps, random_grads(ps, step)):
                p.grad = g
        ours.step()
        ref.step()
    for a, b, w0 in zip(ours_p, ref_p, start):
        # Both run Newton–Schulz in bf16 but round at different points, so the distance they
        # travelled agrees to a few bf16 ulps (2^-8 = 0.4%; measured 0.4-0.5%).
        assert ((a - b).norm() / (b - w0).norm()).item() < 1.5e-2


@pytest.mark.parametrize("mode", ["ns", "auon", "hybrid"])
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_matches_float64_reference(device, mode, adjust):
    params = random_matrices(device, seed=1)
    opt = wk.optim.Muon(
        [{"params": params}], lr=0.05, weight_decay=0.01, mode=mode, adjust_lr=adjust,
        compute_dtype=torch.float32,
    )
    ref_W = [p.detach().double().cpu() for p in params]
    ref_buf = [torch.zeros_like(w) for w in ref_W]
    for step in range(5):
        grads = random_grads(params, step)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for i, g in enumerate(grads):
            ref_W[i], ref_buf[i] = muon_step_ref(
                ref_W[i], ref_buf[i], g.cpu(), lr=0.05, wd=0.01, mode=mode, adjust=adjust
            )
    for p, w in zip(params, ref_W):
        torch.testing.assert_close(p.detach().double().cpu(), w, rtol=1e-4, atol=1e-5)


class TinyLM(nn.Module):
    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.block = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        h = h + self.block(h)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.lm_head(self.norm(h))


def test_model_split():
    model = TinyLM()
    muon, adamw = wk.optim.split_muon_params(model)
    assert {id(p) for p in muon} == {id(model.block[0].weight), id(model.block[2].weight), id(model.conv.weight)}
    assert id(model.embed.weight) in {id(p) for p in adamw}
    assert id(model.lm_head.weight) in {id(p) for p in adamw}
    assert len(muon) + len(adamw) == len(list(model.parameters()))


def train_steps(model, opt, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 50, (2, 8), generator=g)
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_model_training_updates_every_parameter():
    model = TinyLM()
    before = copy.deepcopy(model.state_dict())
    opt = wk.optim.Muon(model, lr=0.02, weight_decay=0.01)
    train_steps(model, opt)
    for name, p in model.state_dict().items():
        assert not torch.equal(p, before[name]), name


def test_state_dict_round_trip_is_bit_exact():
    torch.manual_seed(0)
    model = TinyLM()
    opt = wk.optim.Muon(model, lr=0.02)
    train_steps(model, opt, steps=2)
    saved_model = copy.deepcopy(model.state_dict())
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    train_steps(model, opt, steps=2, seed=7)
    continued = copy.deepcopy(model.state_dict())

    resumed_model = TinyLM()
    resumed_model.load_state_dict(saved_model)
    resumed = wk.optim.Muon(resumed_model, lr=0.02)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf))
    train_steps(resumed_model, resumed, steps=2, seed=7)
    for name, p in resumed_model.state_dict().items():
        assert torch.equal(p, continued[name]), name


def test_bad_options():
    p = [nn.Parameter(torch.randn(4, 4))]
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: lr must be a number >= 0, got -1"):
        wk.optim.Muon(p, lr=-1)
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: mode must be one of .*got 'svd'"):
        wk.optim.Muon(p, mode="svd")
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: adjust_lr must be one of"):
        wk.optim.Muon(p, adjust_lr="sqrt")
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: unknown coefficients preset"):
        wk.optim.Muon(p, coefficients="keller")
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: momentum must be in \[0, 1\)"):
        wk.optim.Muon(p, momentum=1.0)
    with pytest.raises(ValueError, match=r"more than one parameter group"):
        wk.optim.Muon([{"params": p}, {"params": p, "use_muon": False}])
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: a use_muon=True group holds a parameter of shape \(4,\)"):
        wk.optim.Muon([nn.Parameter(torch.randn(4))])
    emb = nn.Embedding(10, 4, sparse=True)
    opt = wk.optim.Muon([{"params": emb.parameters(), "use_muon": False}])
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"weightkit.optim.Muon: sparse gradients are not supported"):
        opt.step()
