"""SLTrain layers under torch.distributed (gloo, 2 CPU processes): DDP replicas and FSDP2 shards
of a converted model must end where the single-process run ends."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import weightkit as wk
from tests.conftest import FSDP2
from tests.optim.tiny_gpt import TinyGPT, lm_loss

WORLD = 2
STEPS = 3


def make_model():
    torch.manual_seed(0)
    model = wk.nn.to_sparse_lowrank(TinyGPT(layers=2), rank_ratio=0.25, density=0.05, verbose=False)
    with torch.no_grad():  # B starts at 0; make the low-rank gradients non-trivial from step one
        for m in model.modules():
            if isinstance(m, wk.nn.SparseLowRankLinear):
                m.B.normal_(std=0.02)
    return model


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (4, 12), generator=g) for _ in range(STEPS)]


def make_opt(model):
    return wk.optim.Muon(model, lr=0.02, compute_dtype=torch.float32, adamw_lr=1e-3)


def train(model, wrapped, rank=0, world=1):
    opt = make_opt(model)
    for idx in batches():
        opt.zero_grad()
        lm_loss(wrapped, idx.chunk(world)[rank]).backward()
        opt.step()


def worker(rank, kind, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = make_model()
    if kind == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        wrapped = fully_shard(model)
    train(model, wrapped, rank, WORLD)
    params = {}
    for n, p in model.named_parameters():
        full = p.full_tensor() if isinstance(p, torch.distributed.tensor.DTensor) else p
        params[n] = full.detach().clone()
    torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # As in the Muon distributed test: skip interpreter teardown (gloo + FSDP2 exit-time abort).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("kind", ["ddp", FSDP2])
def test_distributed_matches_single_process(kind, tmp_path):
    mp.spawn(worker, args=(kind, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    model = make_model()
    train(model, model)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[name], p.detach(), rtol=1e-4, atol=1e-5, msg=f"{kind} rank {rank} {name}")
