"""Drop-Muon: randomized progressive training.

Each step samples a start block s and updates only blocks s..L-1 (plus the embeddings and head,
which are never dropped). Blocks before s get no gradient at all: ``Muon.drop_step`` turns their
``requires_grad`` off before the forward pass, so autograd never records them and backward
really stops early — the source of Drop-Muon's wall-clock win.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DropSchedule", "find_blocks"]

_BLOCK_LIST_NAMES = ("layers", "h", "blocks", "block", "layer")


class DropSchedule:
    """Distribution of the start block s ∈ {0, …, L−1} and its random stream.

    Args:
        kind: ``"uniform"`` (every s equally likely) or ``"tilted"`` (P(s) ∝ exp(−tilt·s/L):
            small s, i.e. updating more blocks, is more likely).
        tilt: strength of the tilt (ignored for ``"uniform"``).
        p_full: probability of a full step (s = 0) mixed into either distribution.
        seed: seed of the schedule's own generator. All ranks of a distributed job built with
            the same seed sample the same s; ``drop_step`` also broadcasts rank 0's choice.
        blocks: the ordered blocks, if :func:`find_blocks` should not guess them.
    """

    def __init__(self, kind: str = "uniform", tilt: float = 2.0, p_full: float = 0.0, seed: int = 0, blocks=None):
        if kind not in ("uniform", "tilted"):
            raise ValueError(f"weightkit.optim.DropSchedule: kind must be 'uniform' or 'tilted', got {kind!r}")
        if not (isinstance(tilt, (int, float)) and math.isfinite(tilt) and tilt >= 0):
            raise ValueError(f"weightkit.optim.DropSchedule: tilt must be a finite number >= 0, got {tilt!r}")
        if not (isinstance(p_full, (int, float)) and 0.0 <= p_full <= 1.0):
            raise ValueError(f"weightkit.optim.DropSchedule: p_full must be a number in [0, 1], got {p_full!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"weightkit.optim.DropSchedule: seed must be an int, got {seed!r}")
        self.kind, self.tilt, self.p_full, self.seed = kind, float(tilt), float(p_full), seed
        self.blocks = list(blocks) if blocks is not None else None
        self.generator = torch.Generator().manual_seed(self.seed)

    def probabilities(self, num_blocks: int) -> torch.Tensor:
        """P(s) for s = 0..num_blocks-1, float64."""
        s = torch.arange(num_blocks, dtype=torch.float64)
        w = torch.ones_like(s) if self.kind == "uniform" else torch.exp(-self.tilt * s / num_blocks)
        p = w / w.sum() * (1.0 - self.p_full)
        p[0] += self.p_full
        return p

    def sample(self, num_blocks: int) -> int:
        """Draws the start block from the schedule's generator."""
        if num_blocks < 1:
            raise ValueError(f"weightkit.optim.DropSchedule: there must be at least one block, got {num_blocks}")
        return int(torch.multinomial(self.probabilities(num_blocks), 1, generator=self.generator).item())

    def state_dict(self) -> dict:
        return {"kind": self.kind, "tilt": self.tilt, "p_full": self.p_full, "seed": self.seed,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.kind, self.tilt, self.p_full, self.seed = state["kind"], state["tilt"], state["p_full"], state["seed"]
        self.generator.set_state(state["generator"])


def find_blocks(model: nn.Module, where: str = "weightkit.optim.Muon.drop_step",
                hint: str = "pass them: DropSchedule(blocks=[...]) or drop_step(model, blocks=[...])") -> list[nn.Module]:
    """The model's ordered transformer blocks: the outermost ``nn.ModuleList`` of same-type
    modules (``model.layers``, ``transformer.h``, ``blocks``… in Llama, GPT-2 and most GPT-style
    code); among several, the longest, then one with a usual name. Lists inside another list's
    modules (a mixture-of-experts layer's ``experts``) are never the blocks, however long.
    ``where`` and ``hint`` make the error when there is none.
    """
    best: list[nn.Module] = []
    best_named = False
    inside: set[int] = set()  # ids of the modules under a candidate list
    for name, module in model.named_modules():  # parents come before their children
        if id(module) in inside or not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        inside.update(id(m) for m in module.modules())
        named = name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES
        if len(module) > len(best) or (len(module) == len(best) and named and not best_named):
            best, best_named = list(module), named
    if not best:
        raise ValueError(f"{where}: found no list of blocks in the model (an nn.ModuleList of same-type modules); "
                         f"{hint}")
    return best


def renew_parameter_dicts(blocks: list[nn.Module]) -> None:
    """Give every module under ``blocks`` a fresh copy of its parameter dict (same names, same
    parameters, same order), after their ``requires_grad`` flags changed.

    Why: torch.compile (2.11 at least; fixed by 2.13) skips a parameter's guards, ``requires_grad``
    included, while the attribute dicts of its module are unchanged. A graph compiled with blocks
    0..s-1 frozen was then reused after they were unfrozen, and those blocks silently got no
    gradient again. A new dict object changes the module's dict tag, so the guards run again and
    each distinct start block gets (and reuses) its own graph.
    """
    for block in blocks:
        for module in block.modules():
            module._parameters = dict(module._parameters)
