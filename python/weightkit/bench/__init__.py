"""Benchmarks: one module per op family, each timing weightkit against baselines in one run.

``weightkit bench`` (``weightkit.cli``) runs every family in :data:`FAMILIES`; each family's
module also has its own ``main(argv)`` (``python bench/bench_<family>.py``). Results are written
as ``bench/results/<device-slug>/<family>.json`` in the shape documented in DESIGN.md.
"""

from __future__ import annotations

#: family name -> module holding ``run(...)`` and ``main(argv)``; imported on use, so listing the
#: families costs nothing.
FAMILIES = {
    "newton_schulz": "weightkit.bench.newton_schulz",
    "optim": "weightkit.bench.optim",
    "palette": "weightkit.bench.palette",
    "rls": "weightkit.bench.rls",
    "sparse_lowrank": "weightkit.bench.sparse_lowrank",
    "trit_plane": "weightkit.bench.trit_plane",
}

__all__ = ["FAMILIES"]
