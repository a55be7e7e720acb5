"""Newton–Schulz orthogonalization (Muon's update) and AuON's linear-time alternative.

All functions take G of shape (m, n) or (b, m, n) in float32 / bfloat16 / float16 on CPU or
CUDA and return a tensor of G's shape and dtype. A 3-D input is a batch of independent matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "JORDAN",
    "POLAR_EXPRESS",
    "PRESETS",
    "auon",
    "hybrid_auon",
    "newton_schulz",
    "newton_schulz_grouped",
    "resolve_coefficients",
]

#: Keller Jordan's quintic coefficients (a, b, c), the same every step.
JORDAN = (3.4445, -4.7750, 2.0315)

#: The Polar Express per-step schedule (from modded-nanogpt); later steps reuse the last triple.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


@dataclass(frozen=True)
class Preset:
    """A named coefficient schedule with the normalization it was designed for."""

    schedule: tuple[tuple[float, float, float], ...]
    eps: float
    norm_scale: float


PRESETS = {
    "jordan": Preset(schedule=(JORDAN,), eps=1e-7, norm_scale=1.0),
    "polar_express": Preset(schedule=POLAR_EXPRESS, eps=1e-6, norm_scale=1.02),
}


def resolve_coefficients(coefficients, steps: int) -> tuple[list[float], float, float]:
    """Turn a preset name or explicit coefficients into the op's flat ``coeffs`` list.

    ``coefficients`` is a preset name (``"jordan"``, ``"polar_express"``), one triple (a, b, c)
    used every step, a sequence of ``steps`` triples, or a flat list of 3·steps floats.
    Returns ``(coeffs, eps, norm_scale)``: the preset's normalization, or (1e-7, 1.0) for
    explicit coefficients.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"weightkit.newton_schulz: steps must be an int >= 1, got {steps!r}")
    if isinstance(coefficients, str):
        preset = PRESETS.get(coefficients)
        if preset is None:
            raise ValueError(
                f"weightkit.newton_schulz: unknown coefficients preset {coefficients!r}; "
                f"choose one of {sorted(PRESETS)} or pass (a, b, c) values"
            )
        sched = preset.schedule
        if len(sched) == 1:
            return list(sched[0]), preset.eps, preset.norm_scale
        per_step = [sched[min(i, len(sched) - 1)] for i in range(steps)]
        return [float(v) for t in per_step for v in t], preset.eps, preset.norm_scale
    if not isinstance(coefficients, Sequence):
        raise TypeError(
            "weightkit.newton_schulz: coefficients must be a preset name or a sequence of floats "
            f"or (a, b, c) triples, got {type(coefficients).__name__}"
        )
    flat: list[float] = []
    for item in coefficients:
        if isinstance(item, Sequence):
            if len(item) != 3:
                raise ValueError(
                    f"weightkit.newton_schulz: each coefficient triple must hold 3 values, got {item!r}"
                )
            flat.extend(float(v) for v in item)
        else:
            flat.append(float(item))
    return flat, 1e-7, 1.0


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients="jordan",
    *,
    eps: float | None = None,
    norm_scale: float | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximate the polar factor U·Vᵀ of G (Muon's orthogonalized update).

    Args:
        G: (m, n) or (b, m, n), float32 / bfloat16 / float16. Tall matrices are handled by
            transposing internally.
        steps: number of quintic iterations.
        coefficients: ``"jordan"`` (default), ``"polar_express"``, or explicit values.
        eps, norm_scale: X₀ = G / (‖G‖_F·norm_scale + eps); default to the preset's values.
        compute_dtype: precision of the products (fp32 accumulation); default G's dtype.
            Muon uses ``torch.bfloat16``.

    Returns:
        Tensor of G's shape and dtype.
    """
    coeffs, p_eps, p_scale = resolve_coefficients(coefficients, steps)
    return torch.ops.weightkit.newton_schulz(
        G,
        steps,
        coeffs,
        p_eps if eps is None else float(eps),
        p_scale if norm_scale is None else float(norm_scale),
        compute_dtype,
    )


def newton_schulz_grouped(
    Gs: Sequence[torch.Tensor],
    steps: int = 5,
    coefficients="jordan",
    *,
    eps: float | None = None,
    norm_scale: float | None = None,
    compute_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """``newton_schulz`` over many matrices at once (e.g. all of a model's hidden weights).

    Matrices of the same (oriented) shape and dtype are stacked and iterated as one batch, so a
    model's parameter set costs a handful of batched products instead of one loop per matrix.
    Each result equals ``newton_schulz`` of that matrix alone.
    """
    coeffs, p_eps, p_scale = resolve_coefficients(coefficients, steps)
    Gs = list(Gs)
    if not Gs:  # the op has no tensor to dispatch on; nothing to orthogonalize
        return []
    return torch.ops.weightkit.newton_schulz_grouped(
        Gs,
        steps,
        coeffs,
        p_eps if eps is None else float(eps),
        p_scale if norm_scale is None else float(norm_scale),
        compute_dtype,
    )


def auon(G: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """AuON's linear-time update: X = G/(‖G‖_F + eps), returns X / (RMS(cosh X) + 1e-8).

    G: (m, n) or (b, m, n) float32 / bfloat16 / float16 (each matrix scaled on its own); the
    result has G's shape and dtype, computed in fp32.
    """
    return torch.ops.weightkit.auon(G, float(eps))


def hybrid_auon(
    G: torch.Tensor,
    coefficients="jordan",
    *,
    eps: float = 1e-7,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Hybrid-AuON: one Newton–Schulz step (the preset's first triple), then AuON's scaling."""
    return auon(newton_schulz(G, 1, coefficients, compute_dtype=compute_dtype), eps)


def _check_fake_input(op: str, G: torch.Tensor, name: str = "G") -> None:
    if G.dim() not in (2, 3):
        raise RuntimeError(f"weightkit.{op}: {name} must have 2 to 3 dimensions, got shape {tuple(G.shape)}")
    if G.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError(f"weightkit.{op}: {name} must be float32, bfloat16 or float16, got {G.dtype}")


@torch.library.register_fake("weightkit::newton_schulz")
def _newton_schulz_fake(G, steps, coeffs, eps, norm_scale=1.0, compute_dtype=None):
    _check_fake_input("newton_schulz", G)
    return torch.empty_like(G, memory_format=torch.contiguous_format)


@torch.library.register_fake("weightkit::newton_schulz_grouped")
def _newton_schulz_grouped_fake(Gs, steps, coeffs, eps, norm_scale=1.0, compute_dtype=None):
    for i, G in enumerate(Gs):
        _check_fake_input("newton_schulz_grouped", G, f"Gs[{i}]")
        if G.device != Gs[0].device:
            raise RuntimeError(
                f"weightkit.newton_schulz_grouped: Gs[{i}] and Gs[0] must be on the same device, "
                f"got {G.device} and {Gs[0].device}"
            )
    return [torch.empty_like(G, memory_format=torch.contiguous_format) for G in Gs]


@torch.library.register_fake("weightkit::auon")
def _auon_fake(G, eps):
    _check_fake_input("auon", G)
    return torch.empty_like(G, memory_format=torch.contiguous_format)
