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

from weightkit.ops.newton_schulz import auon, newton_schulz_grouped, resolve_coefficients
from weightkit.optim.drop import DropSchedule, find_blocks, renew_parameter_dicts

__all__ = ["Muon", "split_muon_params"]

_MODES = ("ns", "auon", "hybrid")
_ADJUST = ("original", "match_rms_adamw")
_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Keller Jordan's AdamW groups name their hyperparameters as torch.optim.AdamW does.
_ADAMW_ALIASES = (("lr", "adamw_lr"), ("betas", "adamw_betas"), ("eps", "adamw_eps"), ("weight_decay", "adamw_wd"))
_MAX_NS_STEPS = 10000  # the op's bound


def split_muon_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's trainable parameters the way Muon practitioners do.

    Returns ``(muon, adamw)``: hidden matrices (2-D weights, and conv kernels, which Muon sees
    flattened to (out, in·k·k)) go to Muon; embeddings, the output head (an ``nn.Linear`` whose
    weight is tied to an embedding, or whose name ends in ``lm_head``/``head``/``output``/
    ``classifier``, or the model's last ``nn.Linear`` when it maps to an embedding's size), norms,
    biases and every other 1-D parameter go to AdamW. Each parameter appears once (tied weights are
    deduplicated). Only the last Linear is judged by its size: a hidden matrix whose width happens
    to equal the vocabulary or the context length (a position table's size) stays with Muon.
    """
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    vocab_sizes = {m.num_embeddings for m in embeddings}
    adamw_ids = {id(m.weight) for m in embeddings}
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for i, (name, module) in enumerate(linears):
        leaf = name.rsplit(".", 1)[-1]
        last_to_vocab = i + 1 == len(linears) and module.out_features in vocab_sizes
        if leaf in ("lm_head", "head", "output", "classifier") or last_to_vocab:
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
            AdamW groups may set ``adamw_lr``, ``adamw_betas``, ``adamw_eps``, ``adamw_wd`` (or
            his names ``lr``, ``betas``, ``eps``, ``weight_decay``). An AdamW group's learning
            rate is then its ``group["lr"]``, so LR schedulers scale both kinds of group.
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

    Muon matrices in float64 are orthogonalized in float32 (the op's widest type); matrices with
    no elements are skipped. A parameter of more than 2 dimensions is one matrix
    (shape[0], prod(shape[1:])), right for conv kernels; experts stacked in one (E, out, in)
    tensor would be orthogonalized together, so keep them as separate parameters.
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
        self._in_drop_step = False
        self.last_drop_start: int | None = None

    # torch.optim.Optimizer pickles (and deep-copies) only defaults, state and param_groups.
    _EXTRA_STATE = {"drop": None, "_frozen": set, "_in_drop_step": False, "last_drop_start": None}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update({k: getattr(self, k) for k in self._EXTRA_STATE})
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for k, default in self._EXTRA_STATE.items():
            if not hasattr(self, k):
                setattr(self, k, default() if callable(default) else default)

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
        if self._in_drop_step:
            raise RuntimeError("weightkit.optim.Muon.drop_step: already inside a drop_step; one per step() is allowed")
        if blocks is None:
            blocks = self.drop.blocks if self.drop.blocks is not None else find_blocks(model)
        blocks = list(blocks)
        if not blocks:
            raise ValueError("weightkit.optim.Muon.drop_step: blocks is empty; pass the model's ordered blocks")
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
        self._in_drop_step = True
        try:
            yield start
        except BaseException:
            self._frozen = set()  # the step was abandoned: the next one updates every block
            raise
        finally:
            self._in_drop_step = False
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
        saved_groups = [dict(g) for g in state_dict["param_groups"]]
        for g in saved_groups:
            # Checkpoints written before session 14 kept an AdamW group's rate in "adamw_lr".
            if not g.get("use_muon", True) and "adamw_lr" in g:
                g["lr"] = g.pop("adamw_lr")
        # Checked before anything is loaded: a bad checkpoint leaves the optimizer as it was.
        for saved, group in zip(saved_groups, self.param_groups):
            self._check_group({**saved, "params": group["params"]})
        super().load_state_dict({**state_dict, "param_groups": saved_groups})
        if drop_state is not None and self.drop is not None:
            self.drop.load_state_dict(drop_state)

    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        if not group.get("use_muon", self.defaults["use_muon"]):
            for theirs, ours in _ADAMW_ALIASES:
                if theirs in group:
                    if ours in group and group[ours] != group[theirs]:
                        raise ValueError(f"weightkit.optim.Muon: an AdamW group sets both {theirs}={group[theirs]!r} "
                                         f"and {ours}={group[ours]!r}")
                    group[ours] = group.pop(theirs)
            group["lr"] = group.pop("adamw_lr", self.defaults["adamw_lr"])
        super().add_param_group(group)
        added = self.param_groups[-1]
        if not added["use_muon"]:
            added.pop("adamw_lr", None)  # filled in from the defaults; group["lr"] is the one used
        try:
            self._check_group(added)
        except ValueError:
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_group(group: dict) -> None:
        def number(name, value, low=0.0, high=math.inf, high_open=False):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < low or value > high or (high_open and value == high):
                bound = f"in [{low:g}, {high:g})" if math.isfinite(high) else f">= {low:g}"
                raise ValueError(f"weightkit.optim.Muon: {name} must be a finite number {bound}, got {value!r}")

        params = group["params"]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("weightkit.optim.Muon: a parameter group lists a parameter twice")
        number("lr", group["lr"])
        if not group["use_muon"]:
            number("adamw_eps", group["adamw_eps"])
            number("adamw_wd", group["adamw_wd"])
            betas = group["adamw_betas"]
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
                raise ValueError(f"weightkit.optim.Muon: adamw_betas must be a pair (beta1, beta2), got {betas!r}")
            for b in betas:
                number("each of adamw_betas", b, high=1.0, high_open=True)
            return
        number("weight_decay", group["weight_decay"])
        number("momentum", group["momentum"], high=1.0, high_open=True)
        if group["mode"] not in _MODES:
            raise ValueError(f"weightkit.optim.Muon: mode must be one of {_MODES}, got {group['mode']!r}")
        if group["adjust_lr"] not in _ADJUST:
            raise ValueError(f"weightkit.optim.Muon: adjust_lr must be one of {_ADJUST}, got {group['adjust_lr']!r}")
        steps = group["ns_steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= _MAX_NS_STEPS:
            raise ValueError(f"weightkit.optim.Muon: ns_steps must be an int in [1, {_MAX_NS_STEPS}], got {steps!r}")
        try:
            coeffs = resolve_coefficients(group["coefficients"], steps)[0]
            if len(coeffs) not in (3, 3 * steps):
                raise ValueError(f"{len(coeffs)} values, not 3 (every step) or 3 * ns_steps = {3 * steps}")
        except (ValueError, TypeError) as e:
            raise ValueError(f"weightkit.optim.Muon: coefficients {group['coefficients']!r} are not usable: {e}") from None
        if group["compute_dtype"] not in _COMPUTE_DTYPES:
            raise ValueError(f"weightkit.optim.Muon: compute_dtype must be one of {_COMPUTE_DTYPES}, "
                             f"got {group['compute_dtype']!r}")
        number("auon_eps", group["auon_eps"])
        for p in params:
            if p.ndim < 2:
                raise ValueError(
                    "weightkit.optim.Muon: a use_muon=True group holds a parameter of shape "
                    f"{tuple(p.shape)}; Muon needs matrices (>= 2-D), put it in a use_muon=False group"
                )
            if not p.is_floating_point():
                raise ValueError(f"weightkit.optim.Muon: Muon matrices must be real floating point, got {p.dtype}")

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
            # float64 matrices go through the op in float32, its widest type.
            mats = [f.reshape(f.shape[0], -1).to(torch.float32 if f.dtype == torch.float64 else f.dtype) for f in fulls]
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
            if g is None or p.numel() == 0:  # nothing to orthogonalize in an empty matrix
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
        lr, eps, wd = group["lr"], group["adamw_eps"], group["adamw_wd"]
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
