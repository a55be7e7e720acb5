"""Muon: momentum, then an orthogonalized update for hidden matrices; AdamW for the rest.

One optimizer, one ``step()``, one ``state_dict()``. Every Muon matrix of a step is
orthogonalized through a single ``newton_schulz_grouped`` call (same-shape matrices batched).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from weightkit.ops.newton_schulz import PRESETS, auon, newton_schulz_grouped
from weightkit.optim.drop import DropSchedule, find_blocks, renew_parameter_dicts

__all__ = ["Muon", "split_muon_params"]

_MODES = ("ns", "auon", "hybrid")
_ADJUST = ("original", "match_rms_adamw")


def split_muon_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's trainable parameters the way Muon practitioners do.

    Returns ``(muon, adamw)``: hidden matrices (2-D weights, and conv kernels, which Muon sees
    flattened to (out, in·k·k)) go to Muon; embeddings, the output head (an ``nn.Linear`` whose
    weight is tied to an embedding, or whose name ends in ``lm_head``/``head``/``output``/
    ``classifier``, or that maps to an embedding's vocabulary size), norms, biases and every other
    1-D parameter go to AdamW. Each parameter appears once (tied weights are deduplicated).
    """
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    vocab_sizes = {m.num_embeddings for m in embeddings}
    adamw_ids = {id(m.weight) for m in embeddings}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("lm_head", "head", "output", "classifier") or module.out_features in vocab_sizes:
                adamw_ids.add(id(module.weight))
    muon, adamw, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (muon if p.ndim >= 2 and id(p) not in adamw_ids else adamw).append(p)
    return muon, adamw


class Muon(torch.optim.Optimizer):
    """Muon for hidden matrices plus AdamW for everything else, in one optimizer.

    Args:
        params: an ``nn.Module`` (split with :func:`split_muon_params`), or parameter groups in
            Keller Jordan's convention: dicts with ``use_muon=True|False`` (default True) whose
            AdamW groups may set ``adamw_lr``, ``adamw_betas``, ``adamw_eps``, ``adamw_wd``.
        lr: Muon learning rate (0.02, Keller Jordan's default).
        momentum: β of the momentum buffer ``buf ← β·buf + (1−β)·g`` (0.95).
        nesterov: orthogonalize ``lerp(g, buf, β)`` instead of ``buf`` (True).
        weight_decay: decoupled, ``W ← W·(1 − lr·wd)`` (0).
        mode: ``"ns"`` (Newton–Schulz), ``"auon"`` (AuON's cosh scaling) or ``"hybrid"``
            (one Newton–Schulz step, then AuON's scaling).
        ns_steps, coefficients: Newton–Schulz steps (5) and coefficients (``"jordan"``,
            ``"polar_express"`` or explicit values).
        adjust_lr: ``"original"`` scales the update by sqrt(max(1, m/n)); ``"match_rms_adamw"``
            by 0.2·sqrt(max(m, n)) so AdamW's lr and wd carry over (torch.optim.Muon's options).
        compute_dtype: precision of the Newton–Schulz products (bf16, as torch.optim.Muon).
        auon_eps: eps of AuON's Frobenius normalization (1e-7).
        adamw_lr, adamw_betas, adamw_eps, adamw_wd: defaults of the AdamW groups
            (3e-4, (0.9, 0.95), 1e-8, 0.0).
        drop: a :class:`DropSchedule` to train with Drop-Muon through :meth:`drop_step`.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        mode: str = "ns",
        ns_steps: int = 5,
        coefficients="jordan",
        adjust_lr: str = "original",
        compute_dtype: torch.dtype = torch.bfloat16,
        auon_eps: float = 1e-7,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_wd: float = 0.0,
        drop: DropSchedule | None = None,
    ):
        if isinstance(params, nn.Module):
            muon, adamw = split_muon_params(params)
            params = [{"params": muon, "use_muon": True}, {"params": adamw, "use_muon": False}]
            params = [g for g in params if g["params"]]
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            mode=mode,
            ns_steps=ns_steps,
            coefficients=coefficients,
            adjust_lr=adjust_lr,
            compute_dtype=compute_dtype,
            auon_eps=auon_eps,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_wd=adamw_wd,
            use_muon=True,
        )
        super().__init__(params, defaults)
        if drop is not None and not isinstance(drop, DropSchedule):
            raise TypeError(f"weightkit.optim.Muon: drop must be a DropSchedule, got {type(drop).__name__}")
        self.drop = drop
        self._frozen: set[int] = set()  # ids of the parameters the current step leaves alone
        self.last_drop_start: int | None = None

    @contextlib.contextmanager
    def drop_step(self, model: nn.Module, blocks: list[nn.Module] | None = None) -> Iterator[int]:
        """Drop-Muon around forward and backward: ``with opt.drop_step(model): loss.backward()``.

        On entry samples the start block s (yielded), and turns ``requires_grad`` off for every
        parameter of blocks 0..s-1 before the forward runs, so backward stops at block s. On exit
        restores the flags. The next :meth:`step` leaves those parameters, their momentum and
        their AdamW step counters untouched. Under ``torch.distributed`` rank 0's s is broadcast.
        Under ``torch.compile`` each distinct s is one recompilation (requires_grad is guarded).
        """
        if self.drop is None:
            raise RuntimeError("weightkit.optim.Muon.drop_step: construct Muon with drop=DropSchedule(...) first")
        blocks = blocks if blocks is not None else (self.drop.blocks or find_blocks(model))
        start = self.drop.sample(len(blocks))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([start], dtype=torch.int64)
            if torch.distributed.get_backend() == "nccl":
                t = t.cuda()
            torch.distributed.broadcast(t, src=0)
            start = int(t.item())
        frozen = [p for block in blocks[:start] for p in block.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        renew_parameter_dicts(blocks[:start])
        self._frozen = {id(p) for p in frozen}
        self.last_drop_start = start
        try:
            yield start
        finally:
            for p in frozen:
                p.requires_grad_(True)
            renew_parameter_dicts(blocks[:start])

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.drop is not None:
            state["drop"] = self.drop.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        drop_state = state_dict.pop("drop", None)
        super().load_state_dict(state_dict)
        if drop_state is not None and self.drop is not None:
            self.drop.load_state_dict(drop_state)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    @staticmethod
    def _check_group(group: dict) -> None:
        def non_negative(name, value):
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"weightkit.optim.Muon: {name} must be a number >= 0, got {value!r}")

        non_negative("lr", group["lr"])
        non_negative("weight_decay", group["weight_decay"])
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"weightkit.optim.Muon: momentum must be in [0, 1), got {group['momentum']!r}")
        if group["mode"] not in _MODES:
            raise ValueError(f"weightkit.optim.Muon: mode must be one of {_MODES}, got {group['mode']!r}")
        if group["adjust_lr"] not in _ADJUST:
            raise ValueError(f"weightkit.optim.Muon: adjust_lr must be one of {_ADJUST}, got {group['adjust_lr']!r}")
        if isinstance(group["coefficients"], str) and group["coefficients"] not in PRESETS:
            raise ValueError(
                f"weightkit.optim.Muon: unknown coefficients preset {group['coefficients']!r}; "
                f"choose one of {sorted(PRESETS)}"
            )
        if not isinstance(group["ns_steps"], int) or group["ns_steps"] < 1:
            raise ValueError(f"weightkit.optim.Muon: ns_steps must be an int >= 1, got {group['ns_steps']!r}")
        non_negative("adamw_lr", group["adamw_lr"])
        non_negative("adamw_eps", group["adamw_eps"])
        non_negative("adamw_wd", group["adamw_wd"])
        b1, b2 = group["adamw_betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"weightkit.optim.Muon: adamw_betas must be in [0, 1), got {group['adamw_betas']!r}")
        if group["use_muon"]:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        "weightkit.optim.Muon: a use_muon=True group holds a parameter of shape "
                        f"{tuple(p.shape)}; Muon needs matrices (>= 2-D), put it in a use_muon=False group"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every group; all Muon matrices are orthogonalized in one grouped call."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = {}  # (mode, steps, coeffs, dtype, eps) -> list of (param, group, update)
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_momentum(group, pending)
            else:
                self._adamw(group)
        self._frozen = set()
        for (mode, steps, coeffs, dtype, eps), items in pending.items():
            fulls = [_full(u) for _, _, u in items]
            mats = [f.reshape(f.shape[0], -1) for f in fulls]
            fn = functools.partial(self._orthogonalize, mode, steps, coeffs, dtype, eps)
            updates = _orthogonalize_sharded(fn, mats) if _world_size() > 1 else fn(mats)
            for (p, group, _), full, U in zip(items, fulls, updates):
                rows, cols = p.shape[0], math.prod(p.shape[1:])
                if group["adjust_lr"] == "original":
                    scale = math.sqrt(max(1.0, rows / cols))
                else:
                    scale = 0.2 * math.sqrt(max(rows, cols))
                U = _like_param(U.view(full.shape).to(full.dtype), p)
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(U, alpha=-group["lr"] * scale)
        return loss

    def _muon_momentum(self, group: dict, pending: dict) -> None:
        beta = group["momentum"]
        coeffs = group["coefficients"]
        key_coeffs = coeffs if isinstance(coeffs, str) else tuple(map(float, _flatten(coeffs)))
        key = (group["mode"], group["ns_steps"], key_coeffs, group["compute_dtype"], group["auon_eps"])
        for p in group["params"]:
            g = self._grad(p)
            if g is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1.0 - beta)
            update = g.lerp(buf, beta) if group["nesterov"] else buf
            pending.setdefault(key, []).append((p, group, update))

    @staticmethod
    def _orthogonalize(mode, steps, coeffs, dtype, eps, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        if mode == "ns":
            return newton_schulz_grouped(mats, steps, coeffs, compute_dtype=dtype)
        if mode == "hybrid":
            mats = newton_schulz_grouped(mats, 1, coeffs, compute_dtype=dtype)
        return [auon(m, eps) for m in mats]

    def _adamw(self, group: dict) -> None:
        beta1, beta2 = group["adamw_betas"]
        lr, eps, wd = group["adamw_lr"], group["adamw_eps"], group["adamw_wd"]
        for p in group["params"]:
            g = self._grad(p)
            if g is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = state["step"].item()
            state["exp_avg"].lerp_(g, 1.0 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            bias1 = 1.0 - beta1**t
            bias2_sqrt = math.sqrt(1.0 - beta2**t)
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
            p.mul_(1.0 - lr * wd)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)

    def _grad(self, p: torch.Tensor) -> torch.Tensor | None:
        if p.grad is None or id(p) in self._frozen:
            return None
        if p.grad.is_sparse:
            raise RuntimeError("weightkit.optim.Muon: sparse gradients are not supported")
        return p.grad


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole matrix of a (possibly FSDP2-sharded) tensor; an all-gather for a DTensor."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _like_param(U: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """U laid out like p: for a DTensor parameter, this rank's shard of U (no communication,
    since every rank holds the whole U)."""
    if isinstance(p, DTensor):
        return distribute_tensor(U, p.device_mesh, p.placements, src_data_rank=None)
    return U


def _orthogonalize_sharded(fn, mats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each rank orthogonalizes every W-th matrix in order of decreasing size (round-robin, so
    the work is balanced), then one all_gather hands every rank every result.

    All ranks hold the same ``mats`` (replicas, or after ``full_tensor``), so the assignment and
    the packing are computed identically everywhere without talking.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    order = sorted(range(len(mats)), key=lambda i: (-mats[i].numel(), i))
    shares = [order[r::world] for r in range(world)]
    mine = fn([mats[i] for i in shares[rank]])
    dtype = torch.float32
    sizes = [sum(mats[i].numel() for i in share) for share in shares]
    width = max(max(sizes), 1)
    send = torch.zeros(width, dtype=dtype, device=mats[0].device)
    if mine:
        flat = torch.cat([u.reshape(-1).to(dtype) for u in mine])
        send[: flat.numel()] = flat
    recv = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(recv, send)
    out: list[torch.Tensor] = [torch.empty(0)] * len(mats)
    for r, share in enumerate(shares):
        offset = 0
        for i in share:
            n = mats[i].numel()
            out[i] = recv[r][offset : offset + n].view(mats[i].shape).to(mats[i].dtype)
            offset += n
    return out


def _flatten(coeffs: Iterable) -> list[float]:
    out: list[float] = []
    for c in coeffs:
        out.extend(_flatten(c) if isinstance(c, (list, tuple)) else [c])
    return out
