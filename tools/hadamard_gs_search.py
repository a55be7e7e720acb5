"""Finds the Goethals–Seidel quadruples behind Hadamard orders 156 = 4·39 and 172 = 4·43
(csrc/palette/hadamard_matrix.h). Not part of the package; rerun to reproduce its constants:

    python tools/hadamard_gs_search.py 43     # prints g and the four orbit sign masks

Four ±1 sequences of length n whose periodic autocorrelations (PAF) sum to 0 at every nonzero
shift make a Hadamard matrix of order 4n through the Goethals–Seidel array. We only try
sequences that are constant on the orbits of x -> g·x (g a unit mod n): then each PAF is constant
on those orbits too, so there are few sequences (2^orbits) and few conditions (one per nonzero
orbit). Meet in the middle: for row sums (a, b, c, d) with a² + b² + c² + d² = 4n, match the PAF
sums of pairs (A, B) against the negated PAF sums of pairs (C, D). Small orbit counts first.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np


def orbits(n: int, g: int) -> list[list[int]]:
    """Orbits of x -> g·x mod n, numbered by their least element."""
    seen, out = set(), []
    for x in range(n):
        if x not in seen:
            orb, y = [], x
            while y not in orb:
                orb.append(y)
                y = (y * g) % n
            seen.update(orb)
            out.append(sorted(orb))
    return out


def search(n: int, g: int, max_pairs: float = 3e7):
    """(minus masks of the four sequences) or None."""
    orbs = orbits(n, g)
    k = len(orbs)
    masks = np.arange(2**k)
    X = np.ones((2**k, n), np.int64)
    for j, orb in enumerate(orbs):
        X[:, orb] = np.where((masks[:, None] >> j) & 1, -1, 1)
    reps = [o[0] for o in orbs if o[0] != 0]
    paf = np.stack([(X * np.roll(X, -s, axis=1)).sum(1) for s in reps], 1)
    rowsum = X.sum(1)
    # Negating a sequence keeps its PAF, so positive row sums suffice.
    by_sum = {int(r): np.flatnonzero(rowsum == r) for r in np.unique(rowsum) if r > 0}

    def key(rows):
        return np.ascontiguousarray(rows.astype(np.int32)).view(np.dtype((np.void, rows.shape[1] * 4))).ravel()

    for quad in itertools.combinations_with_replacement(sorted(by_sum), 4):
        if sum(q * q for q in quad) != 4 * n:
            continue
        a, b, c, d = (by_sum[q] for q in quad)
        if len(a) * len(b) > max_pairs or len(c) * len(d) > max_pairs:
            continue
        ia, ib = (v.ravel() for v in np.meshgrid(a, b, indexing="ij"))
        ic, id_ = (v.ravel() for v in np.meshgrid(c, d, indexing="ij"))
        _, i1, i2 = np.intersect1d(key(paf[ia] + paf[ib]), key(-(paf[ic] + paf[id_])), return_indices=True)
        if len(i1):
            return [int(ia[i1[0]]), int(ib[i1[0]]), int(ic[i2[0]]), int(id_[i2[0]])]
    return None


def main(n: int) -> None:
    units = [u for u in range(2, n) if math.gcd(u, n) == 1]
    for g in sorted(units, key=lambda u: len(orbits(n, u))):
        if len(orbits(n, g)) > 16:
            break
        found = search(n, g)
        if found:
            print(f"n={n}: g={g}, minus masks={found} ({len(orbits(n, g))} orbits)")
            return
    print(f"n={n}: nothing found with up to 16 orbits")


if __name__ == "__main__":
    main(int(sys.argv[1]))
