"""Muon under torch.distributed (gloo, 2 CPU processes): DDP replicas and FSDP2 shards must
end where the single-process run ends, with the Newton–Schulz work split between the ranks."""

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
    return TinyGPT(layers=2)


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (4, 12), generator=g) for _ in range(STEPS)]


def make_opt(model, drop_seed=None):
    # fp32 Newton–Schulz: the comparison is then limited by gradient reduction order, not bf16.
    drop = wk.optim.DropSchedule(seed=drop_seed) if drop_seed is not None else None
    return wk.optim.Muon(model, lr=0.02, weight_decay=0.01, compute_dtype=torch.float32, adamw_lr=1e-3, drop=drop)


def train_step(opt, model, wrapped, idx, use_drop):
    opt.zero_grad()
    if use_drop:
        with opt.drop_step(model):
            lm_loss(wrapped, idx).backward()
    else:
        lm_loss(wrapped, idx).backward()
    opt.step()


def single_process_result(use_drop):
    model = make_model()
    opt = make_opt(model, drop_seed=0 if use_drop else None)
    starts = []
    for idx in batches():
        train_step(opt, model, model, idx, use_drop)
        starts.append(opt.last_drop_start)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, starts


def count_calls(counter):
    real = wk.optim.muon.newton_schulz_grouped

    def counted(mats, *args, **kwargs):
        counter.append(len(mats))
        return real(mats, *args, **kwargs)

    wk.optim.muon.newton_schulz_grouped = counted


def worker(rank, kind, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = make_model()
    use_drop = kind == "ddp_drop"
    if kind == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    elif kind == "ddp_drop":
        # Dropped blocks get no gradient, which DDP must be told to expect.
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        wrapped = fully_shard(model)
    # Ranks seed their schedules differently on purpose: drop_step must broadcast rank 0's s.
    opt = make_opt(model, drop_seed=rank if use_drop else None)
    counter: list[int] = []
    count_calls(counter)
    starts = []
    for idx in batches():
        shard = idx.chunk(WORLD)[rank]  # each rank sees half the batch; the mean grad is the same
        train_step(opt, model, wrapped, shard, use_drop)
        starts.append(opt.last_drop_start)
    params = {}
    for n, p in model.named_parameters():
        full = p.full_tensor() if isinstance(p, torch.distributed.tensor.DTensor) else p
        params[n] = full.detach().clone()
    torch.save({"params": params, "ns_matrices": counter, "starts": starts}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # every rank has written its results
    # Leave without interpreter teardown: with FSDP2 on gloo, tearing down the process group and
    # its threads at exit intermittently aborts the process (std::terminate on a joinable
    # thread) after all work is done. The results above are what the test checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("kind", ["ddp", FSDP2, "ddp_drop"])
def test_distributed_matches_single_process(kind, tmp_path):
    mp.spawn(worker, args=(kind, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    use_drop = kind == "ddp_drop"
    expected, expected_starts = single_process_result(use_drop)
    n_muon = len(wk.optim.split_muon_params(make_model())[0])
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, p in expected.items():
            torch.testing.assert_close(got["params"][name], p, rtol=1e-4, atol=1e-5, msg=f"{kind} rank {rank} {name}")
        assert got["starts"] == expected_starts  # every rank used rank 0's start blocks
        if not use_drop:
            # Every step each rank orthogonalized only its round-robin share of the matrices.
            assert got["ns_matrices"] == [n_muon // WORLD] * STEPS
