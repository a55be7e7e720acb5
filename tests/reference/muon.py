"""Float64 reference of Keller Jordan's Muon update (PAPERS.md), one parameter at a time."""

from __future__ import annotations

import math

from tests.reference.newton_schulz import auon_ref, newton_schulz_ref

JORDAN = [3.4445, -4.7750, 2.0315]


def muon_step_ref(W, buf, g, *, lr, beta=0.95, nesterov=True, wd=0.0, mode="ns", adjust="original", steps=5):
    """Returns the new (W, buf) in float64 for W (m, n), momentum buf and gradient g."""
    W, buf, g = W.double(), buf.double(), g.double()
    buf = beta * buf + (1 - beta) * g
    update = g + beta * (buf - g) if nesterov else buf
    if mode == "ns":
        U = newton_schulz_ref(update, steps, JORDAN, 1e-7)
    elif mode == "auon":
        U = auon_ref(update, 1e-7)
    else:
        U = auon_ref(newton_schulz_ref(update, 1, JORDAN, 1e-7), 1e-7)
    m, n = W.shape
    scale = math.sqrt(max(1.0, m / n)) if adjust == "original" else 0.2 * math.sqrt(max(m, n))
    W = W * (1 - lr * wd) - lr * scale * U
    return W, buf
