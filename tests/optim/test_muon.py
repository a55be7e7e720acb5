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
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: lr must be a finite number >= 0, got -1"):
        wk.optim.Muon(p, lr=-1)
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: mode must be one of .*got 'svd'"):
        wk.optim.Muon(p, mode="svd")
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: adjust_lr must be one of"):
        wk.optim.Muon(p, adjust_lr="sqrt")
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: coefficients 'keller' are not usable: .*unknown coefficients preset"):
        wk.optim.Muon(p, coefficients="keller")
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: momentum must be a finite number in \[0, 1\)"):
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


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=float("inf")), r"lr must be a finite number >= 0"),
    (dict(lr=True), r"lr must be a finite number >= 0, got True"),
    (dict(weight_decay=float("inf")), r"weight_decay must be a finite number"),
    (dict(momentum="0.9"), r"momentum must be a finite number in \[0, 1\), got '0.9'"),
    (dict(coefficients=(1.0, 2.0)), r"coefficients \(1.0, 2.0\) are not usable"),
    (dict(coefficients=None), r"coefficients None are not usable"),
    (dict(compute_dtype="bf16"), r"compute_dtype must be one of"),
    (dict(compute_dtype=torch.float64), r"compute_dtype must be one of"),
    (dict(ns_steps=True), r"ns_steps must be an int in \[1, 10000\], got True"),
    (dict(ns_steps=100000), r"ns_steps must be an int in \[1, 10000\], got 100000"),
    (dict(auon_eps=-1.0), r"auon_eps must be a finite number >= 0"),
])
def test_bad_options_are_refused_at_construction(kwargs, message):
    # Each used to pass the constructor and fail inside step(), after AdamW had already moved.
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: " + message):
        wk.optim.Muon([nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_bad_groups_are_refused():
    w = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: adamw_betas must be a pair"):
        wk.optim.Muon([{"params": [w], "use_muon": False}], adamw_betas=(0.9,))
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: a parameter group lists a parameter twice"):
        wk.optim.Muon([w, w])
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: Muon matrices must be real floating point"):
        wk.optim.Muon([nn.Parameter(torch.randn(4, 4, dtype=torch.complex64))])
    # A group refused by add_param_group is not left behind in param_groups.
    opt = wk.optim.Muon([w])
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(4, 4))], "lr": -5.0})
    with pytest.raises(ValueError, match=r"a use_muon=True group holds a parameter of shape \(4,\)"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(4))]})
    assert len(opt.param_groups) == 1


def test_split_judges_only_the_last_linear_by_size():
    # Hidden matrices whose width equals the vocabulary or the context length (a position
    # table's size) used to be taken for heads and trained with AdamW.
    from weightkit.nn import GPT

    model = GPT(vocab=256, d=64, layers=2, heads=2, ctx=64)  # fc: 64 -> 256 = vocab; proj 64 = ctx
    muon, adamw = wk.optim.split_muon_params(model)
    muon_ids = {id(p) for p in muon}
    for name, p in model.named_parameters():
        hidden = name.startswith("blocks.") and p.ndim == 2
        assert (id(p) in muon_ids) == hidden, name
    seq = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 10))
    muon, adamw = wk.optim.split_muon_params(seq)
    assert [id(p) for p in muon] == [id(seq[1].weight)]  # the last Linear (to the vocabulary) is the head


def test_lr_schedulers_reach_the_adamw_groups():
    model = TinyLM()
    opt = wk.optim.Muon(model, lr=0.02, adamw_lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)
    before = copy.deepcopy(model.state_dict())
    train_steps(model, opt, steps=2)
    sched.step()
    assert sched.get_last_lr() == [0.0, 0.0]
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), name  # an lr of 0 moves nothing, embeddings and head included


def test_keller_jordan_adamw_group_keys():
    w, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))
    opt = wk.optim.Muon([{"params": [w]}, {"params": [b], "use_muon": False, "lr": 0.1, "betas": (0.8, 0.9),
                                           "eps": 1e-6, "weight_decay": 0.5}])
    g = opt.param_groups[1]
    assert (g["lr"], g["adamw_betas"], g["adamw_eps"], g["adamw_wd"]) == (0.1, (0.8, 0.9), 1e-6, 0.5)
    assert "adamw_lr" not in g and "betas" not in g
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: an AdamW group sets both lr=0.1 and adamw_lr=0.2"):
        wk.optim.Muon([{"params": [b], "use_muon": False, "lr": 0.1, "adamw_lr": 0.2}])
    # Checkpoints whose AdamW groups kept the rate in "adamw_lr" load with it as the group's lr.
    state = opt.state_dict()
    state["param_groups"][1] = {**state["param_groups"][1], "lr": 0.02, "adamw_lr": 0.3}
    opt.load_state_dict(state)
    assert opt.param_groups[1]["lr"] == 0.3 and "adamw_lr" not in opt.param_groups[1]


def test_bad_checkpoint_leaves_the_optimizer_unchanged():
    model = TinyLM()
    opt = wk.optim.Muon(model)
    train_steps(model, opt, steps=1)
    state = opt.state_dict()
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    bad = {**state, "param_groups": [{**state["param_groups"][0], "mode": "svd"}] + state["param_groups"][1:]}
    with pytest.raises(ValueError, match=r"weightkit.optim.Muon: mode must be one of .*got 'svd'"):
        opt.load_state_dict(bad)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before


def test_deepcopy_and_pickle_keep_a_working_optimizer():
    model = TinyLM()
    opt = wk.optim.Muon(model, drop=wk.optim.DropSchedule(seed=3))
    train_steps(model, opt, steps=1)
    twin_model = copy.deepcopy(model)
    twin = copy.deepcopy(opt)
    assert twin.drop is not None and twin.drop.seed == 3
    twin.state_dict()  # used to fail: the copy had no .drop
    buf = io.BytesIO()
    torch.save(opt, buf)  # pickled whole
    buf.seek(0)
    assert torch.load(buf, weights_only=False).drop.seed == 3
    del twin_model


def test_float64_and_empty_matrices():
    w64 = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    empty = nn.Parameter(torch.randn(0, 5))
    opt = wk.optim.Muon([w64, empty], lr=0.1, compute_dtype=torch.float32)
    start = w64.detach().clone()
    w64.grad, empty.grad = torch.randn_like(w64), torch.randn_like(empty)
    opt.step()
    ref, _ = muon_step_ref(start, torch.zeros_like(start), w64.grad, lr=0.1)
    assert w64.dtype == torch.float64
    assert (w64.detach() - ref).abs().max() < 1e-5  # the orthogonalization ran in fp32
    assert empty.shape == (0, 5)
