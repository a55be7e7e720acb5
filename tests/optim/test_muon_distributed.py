"""Muon under torch.distributed (gloo, 2 CPU processes): DDP replicas and FSDP2 shards must
end where the single-process run ends, with the Newton–Schulz work split between the ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import weightkit as wk
from tests.optim.tiny_gpt import TinyGPT, lm_loss

WORLD = 2
STEPS = 3


def make_model():
    torch.manual_seed(0)
    return TinyGPT(layers=2)


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (4, 12), generator=g) for _ in range(STEPS)]


def make_opt(model):
    # fp32 Newton–Schulz: the comparison is then limited by gradient reduction order, not bf16.
    return wk.optim.Muon(model, lr=0.02, weight_decay=0.01, compute_dtype=torch.float32, adamw_lr=1e-3)


def single_process_result():
    model = make_model()
    opt = make_opt(model)
    for idx in batches():
        opt.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


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
    if kind == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        wrapped = fully_shard(model)
    opt = make_opt(model)
    counter: list[int] = []
    count_calls(counter)
    for idx in batches():
        opt.zero_grad()
        shard = idx.chunk(WORLD)[rank]  # each rank sees half the batch; the mean grad is the same
        lm_loss(wrapped, shard).backward()
        opt.step()
    params = {}
    for n, p in model.named_parameters():
        full = p.full_tensor() if isinstance(p, torch.distributed.tensor.DTensor) else p
        params[n] = full.detach().clone()
    torch.save({"params": params, "ns_matrices": counter}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_distributed_matches_single_process(kind, tmp_path):
    mp.spawn(worker, args=(kind, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    expected = single_process_result()
    n_muon = len(wk.optim.split_muon_params(make_model())[0])
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, p in expected.items():
            torch.testing.assert_close(got["params"][name], p, rtol=1e-4, atol=1e-5, msg=f"{kind} rank {rank} {name}")
        # Every step each rank orthogonalized only its round-robin share of the matrices.
        assert got["ns_matrices"] == [n_muon // WORLD] * STEPS
