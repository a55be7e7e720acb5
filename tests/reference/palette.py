"""float64 references of the palette family: small Hadamard matrices built independently of the
C++ (same Paley / Sylvester / Goethals–Seidel conventions), the full transform as a dense matrix,
decoding, and the int8 rounding of the CPU int8 VQ GEMV (5- to 8-bit codes)."""

from __future__ import annotations

import torch


def _chi_prime(a: int, q: int) -> int:
    a %= q
    if a == 0:
        return 0
    return 1 if pow(a, (q - 1) // 2, q) == 1 else -1


def _gf25():
    """GF(25) = GF(5)[x]/(x^2 - 2): elements a0 + 5 a1; returns (sub, chi)."""

    def mul(a, b):
        a0, a1, b0, b1 = a % 5, a // 5, b % 5, b // 5
        return (a0 * b0 + 2 * a1 * b1) % 5 + 5 * ((a0 * b1 + a1 * b0) % 5)

    def chi(a):
        if a == 0:
            return 0
        r, base, e = 1, a, 12
        while e:
            if e & 1:
                r = mul(r, base)
            base, e = mul(base, base), e >> 1
        return 1 if r == 1 else -1

    def sub(a, b):
        return (a % 5 - b % 5) % 5 + 5 * ((a // 5 - b // 5) % 5)

    return sub, chi


def _jacobsthal(q: int) -> torch.Tensor:
    if q == 25:
        sub, chi = _gf25()
        return torch.tensor([[chi(sub(j, i)) for j in range(q)] for i in range(q)], dtype=torch.float64)
    return torch.tensor([[_chi_prime(j - i, q) for j in range(q)] for i in range(q)], dtype=torch.float64)


def paley1(q: int) -> torch.Tensor:
    Q = _jacobsthal(q)
    S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return S + torch.eye(q + 1, dtype=torch.float64)


def paley2(q: int) -> torch.Tensor:
    C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    A = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(C, A) + torch.kron(torch.eye(q + 1, dtype=torch.float64), B)


def goethals_seidel(n: int, g: int, minus: tuple[int, int, int, int]) -> torch.Tensor:
    """Order 4n from four length-n ±1 sequences that are constant on the orbits of x -> g·x mod n
    (bit j of minus[k]: sequence k is -1 on the orbit with the j-th smallest least element)."""
    reps = sorted({min((x * g**e) % n for e in range(n)) for x in range(n)})
    orbit_of = {}
    for j, r in enumerate(reps):
        y = r
        while y not in orbit_of:
            orbit_of[y] = j
            y = (y * g) % n
    seqs = [torch.tensor([-1.0 if (mk >> orbit_of[x]) & 1 else 1.0 for x in range(n)], dtype=torch.float64)
            for mk in minus]
    idx = torch.arange(n)
    A, B, C, D = (s[(idx[None, :] - idx[:, None]) % n] for s in seqs)  # circulants X[i, j] = x[j - i]
    R = torch.eye(n, dtype=torch.float64).flip(1)
    return torch.cat([
        torch.cat([A, B @ R, C @ R, D @ R], 1),
        torch.cat([-B @ R, A, D.T @ R, -C.T @ R], 1),
        torch.cat([-C @ R, -D.T @ R, A, B.T @ R], 1),
        torch.cat([-D @ R, C.T @ R, -B.T @ R, A], 1),
    ], 0)


def small_hadamard(m: int) -> torch.Tensor:
    """H_m (m, m) float64 of ±1."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m == 40:
        return torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), paley1(19))
    return {12: lambda: paley1(11), 20: lambda: paley1(19), 28: lambda: paley2(13), 36: lambda: paley2(17),
            52: lambda: paley2(25), 60: lambda: paley1(59), 108: lambda: paley1(107),
            140: lambda: paley1(139), 156: lambda: goethals_seidel(39, 29, (167, 333, 488, 360)),
            172: lambda: goethals_seidel(43, 4, (38, 52, 26, 25))}[m]()


def hadamard_matrix(n: int, m: int) -> torch.Tensor:
    """H_n = H_m ⊗ H_{n/m} (Sylvester), float64."""
    P = n // m
    Hp = torch.ones(1, 1, dtype=torch.float64)
    while Hp.shape[0] < P:
        Hp = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), Hp)
    return torch.kron(small_hadamard(m), Hp)


def hadamard_transform_ref(x: torch.Tensor, signs, scale: float, m: int) -> torch.Tensor:
    """scale·(x ⊙ signs)·H_nᵀ in float64."""
    xd = x.double()
    if signs is not None:
        xd = xd * signs.double()
    return xd @ hadamard_matrix(x.shape[-1], m).T * scale


def unpack_ref(packed: torch.Tensor, units: int, code_bits: int) -> torch.Tensor:
    """Codes (rows, units) int64 from the packed layout (csrc/palette/cpu.h)."""
    P = 32 // code_bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    u = torch.arange(units)
    blk, rem = u // (16 * P), u % (16 * P)
    word = words[:, blk * 16 + rem % 16]
    return (word >> (code_bits * (rem // 16))) & ((1 << code_bits) - 1)


def dequantize_ref(packed, codebook, scales, in_features: int) -> torch.Tensor:
    d = codebook.shape[1]
    c = (codebook.shape[0] - 1).bit_length()
    codes = unpack_ref(packed, in_features // d, c)
    return codebook.double()[codes].reshape(packed.shape[0], in_features) * scales.double()[:, None]


def int8_round(v: torch.Tensor, dim=None) -> torch.Tensor:
    """v rounded to int8 steps of max|v| / 127 (over ``dim``, or all of v), as the kernel rounds:
    float32 arithmetic, ties to even; returned dequantized, in float64."""
    amax = v.abs().amax() if dim is None else v.abs().amax(dim=dim, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    return (torch.round(v * inv).clamp(-127, 127) * (amax / 127)).double()


def int8_vq_operands(x: torch.Tensor, codebook: torch.Tensor, c: int):
    """x (..., in_f) per token and block of 16·(32 // c) pairs (a block of packed codes), and the
    codebook on one scale, rounded as the int8 VQ GEMV rounds them (float64)."""
    in_f, block = x.shape[-1], 2 * 16 * (32 // c)
    pad = (-in_f) % block
    xb = torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, block)
    xr = int8_round(xb, dim=-1).reshape(*x.shape[:-1], in_f + pad)[..., :in_f]
    return xr, int8_round(codebook)


def tcq_code_ref(state: int, v: int) -> float:
    """QTIP 1MAD code value of a trellis state (csrc/palette/tcq.h)."""
    mul, add = (34038481, 76625530) if v == 0 else (2654435761, 2246822519)
    x = (state * mul + add) & 0xFFFFFFFF
    s = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
    return (s - 510.0) / 147.8


def tcq_stream_bits(packed_row: torch.Tensor) -> list:
    """The row's stream as a list of bits (MSB of word 0 first)."""
    bits = []
    for w in packed_row.tolist():
        w &= 0xFFFFFFFF
        bits += [(w >> (31 - i)) & 1 for i in range(32)]
    return bits


def tcq_decode_ref(packed: torch.Tensor, scales, in_features: int, L: int, kb: int, V: int) -> torch.Tensor:
    steps = in_features // V
    out = torch.zeros(packed.shape[0], in_features, dtype=torch.float64)
    for r in range(packed.shape[0]):
        bits = tcq_stream_bits(packed[r])
        for t in range(steps):
            state = int("".join(map(str, bits[t * kb:t * kb + L])), 2)
            for v in range(V):
                out[r, t * V + v] = float(scales[r]) * tcq_code_ref(state, v)
    return out


def tcq_best_error_bruteforce(w: torch.Tensor, L: int, kb: int, V: int) -> float:
    """Minimum squared error over every stream (2^(L + kb (T-1)) of them): the Viterbi oracle."""
    steps = w.numel() // V
    nbits = L + kb * (steps - 1)
    mask = (1 << L) - 1
    best = float("inf")
    for stream in range(1 << nbits):
        err = 0.0
        for t in range(steps):
            state = (stream >> (nbits - L - t * kb)) & mask
            for v in range(V):
                err += (float(w[t * V + v]) - tcq_code_ref(state, v)) ** 2
        best = min(best, err)
    return best


def tcq_viterbi_ref(w: torch.Tensor, L: int, kb: int, V: int, prev: int = -1) -> tuple[float, list]:
    """(minimum squared error, its path of states) over the steps of w (steps·V,), in float64 by
    plain dynamic programming over states; ``prev`` >= 0: the first state must follow it (its upper
    L − kb bits are prev's lower ones). Ties go to the lowest predecessor and the lowest final
    state, as the ops."""
    S, mask = 1 << L, (1 << L) - 1
    steps = w.numel() // V
    dist = [[sum((float(w[t * V + v]) - tcq_code_ref(s, v)) ** 2 for v in range(V)) for s in range(S)]
            for t in range(steps)]
    cost = [dist[0][s] if prev < 0 or (s >> kb) == (prev & (mask >> kb)) else float("inf") for s in range(S)]
    back = []
    for t in range(1, steps):
        # s's predecessors p have (p << kb) & mask == s >> kb << kb: p = (s >> kb) | h << (L − kb).
        pred = [min(((s >> kb) | (h << (L - kb)) for h in range(1 << kb)), key=lambda p: (cost[p], p))
                for s in range(S)]
        cost = [cost[pred[s]] + dist[t][s] for s in range(S)]
        back.append(pred)
    s = min(range(S), key=lambda s: (cost[s], s))
    best, path = cost[s], [s]
    for pred in reversed(back):
        s = pred[s]
        path.append(s)
    return best, path[::-1]
