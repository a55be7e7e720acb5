"""A small GPT on real text (pydoc topics, byte tokens): Muon against a tuned AdamW."""

from __future__ import annotations

import torch

import weightkit as wk
from weightkit.optim.train import steps_to_reach, train_lm

STEPS, BATCH, CTX = 200, 16, 64
LR_GRID = (1e-3, 3e-3, 1e-2)


def run(make_opt, seed=0):
    torch.manual_seed(seed)
    model = wk.nn.GPT(vocab=wk.data.VOCAB_SIZE, d=64, layers=2, heads=2, ctx=CTX)
    tokens = wk.data.encode(wk.data.load_text("pydoc"))
    train, val = wk.data.train_val_split(tokens, 4096)
    return train_lm(model, make_opt(model), train, val, steps=STEPS, batch=BATCH, ctx=CTX, eval_every=10)


def test_muon_reaches_tuned_adamw_loss_in_fewer_steps():
    # Same tuning budget for both: AdamW's lr over the grid; Muon (lr 0.02 on hidden matrices,
    # its default) with its AdamW part's lr over the same grid. Best of each compared.
    adamw = min(
        (run(lambda m, lr=lr: torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0))
         for lr in LR_GRID),
        key=lambda r: r.final_loss,
    )
    muon = min((run(lambda m, lr=lr: wk.optim.Muon(m, lr=0.02, adamw_lr=lr)) for lr in LR_GRID),
               key=lambda r: r.final_loss)
    reached = steps_to_reach(muon, adamw.final_loss)
    assert reached is not None, (muon.final_loss, adamw.final_loss)
    assert reached[0] < STEPS, (reached, adamw.final_loss, muon.curve)


def test_val_loss_keeps_the_mode_and_builds_no_graph():
    from weightkit.optim.train import val_loss

    torch.manual_seed(0)
    model = wk.nn.GPT(vocab=wk.data.VOCAB_SIZE, d=32, layers=1, heads=2, ctx=16)
    val = wk.data.encode(wk.data.load_text("pydoc"))[:16 * 5 + 1]
    with torch.no_grad():
        expected = model.eval().loss(torch.stack([val[i * 16 : i * 16 + 17] for i in range(5)])).item()
    grads = []
    model.lm_head.register_forward_hook(lambda module, args, out: grads.append(out.requires_grad))
    for training in (True, False):
        model.train(training)
        assert abs(val_loss(model, val, 16) - expected) < 1e-5
        assert model.training == training
    assert grads == [False, False]
