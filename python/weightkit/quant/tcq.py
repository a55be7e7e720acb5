"""Trellis-coded quantization (QTIP's bitshift trellis) for the palette: rate → trellis shape,
the row-chunked encoder with a progress callback, and the Hessian-aware (LDLQ) encoder.

A rate b is coded with bits_per_step / values_per_step = b: integer rates one weight a step
(kb = b), half rates two weights a step (kb = 2b). L (state bits) trades quality for encoding time
(time ∝ 2^L per weight): L = 16 matches QTIP; L = 12 is 16× faster and ~8% worse in MSE at 2 bits.
"""

from __future__ import annotations

import torch

from weightkit.ops import palette as P

__all__ = ["tcq_params", "tcq_encode", "tcq_encode_ldlq", "tcq_pack_states", "tcq_state_values", "DEFAULT_L",
           "LDLQ_BLOCK", "ldlq_lookahead"]

#: State bits used when the caller does not choose: QTIP's 16 (a GPU makes it cheap; on 2 CPU
#: cores a whole 135M model takes ~45 min at 16, ~3 min at 12).
DEFAULT_L = 16


#: Columns the Hessian-aware encoder commits at a time (QTIP's 16-column blocks).
LDLQ_BLOCK = 16


def ldlq_lookahead(L: int) -> int:
    """Steps of look-ahead the Hessian-aware encoder's windowed Viterbi searches past each block by
    default: 8·(L − 8), at least 16 (32 at L = 12, 64 at L = 16). Paths of a longer trellis take
    longer to merge: with H = I and 32 steps the truncation costs +2.5% MSE against the whole-row
    search at L = 12 (2 bits) but +7.5% at L = 16, where 64 steps bring it to +2.7%
    (docs/design-notes.md)."""
    return max(16, 8 * (int(L) - 8))


def tcq_params(bits: float, L: int | None = None) -> dict:
    """{"L", "bits_per_step", "values_per_step"} for a rate in 1.5..4 (0.5 steps)."""
    b2 = round(2 * float(bits))
    if abs(2 * float(bits) - b2) > 1e-9 or not 3 <= b2 <= 8:
        raise ValueError(f"TCQ rate must be one of 1.5, 2, ..., 4, got {bits}")
    kb, V = (b2 // 2, 1) if b2 % 2 == 0 else (b2, 2)
    L = DEFAULT_L if L is None else int(L)
    if not kb < L <= 20:
        raise ValueError(f"L must be in [{kb + 1}, 20] for {bits} bits, got {L}")
    return {"L": L, "bits_per_step": kb, "values_per_step": V}


def tcq_encode(Wn: torch.Tensor, L: int, bits_per_step: int, values_per_step: int, chunk_rows: int = 64,
               progress=None) -> torch.Tensor:
    """Encode normalized rows Wn (rows, in) float32 in chunks (rows run in parallel inside a chunk);
    ``progress(done_rows, rows)`` is called after each chunk. Returns the int32 streams."""
    # Chunk 0 always runs, so no rows still gives the op's (0, words) result.
    out = []
    for r0 in range(0, max(Wn.shape[0], 1), chunk_rows):
        out.append(P.tcq_encode(Wn[r0:r0 + chunk_rows].contiguous(), L, bits_per_step, values_per_step))
        if progress is not None:
            progress(min(r0 + chunk_rows, Wn.shape[0]), Wn.shape[0])
    return torch.cat(out)


def tcq_state_values(states: torch.Tensor, L: int, bits_per_step: int, values_per_step: int) -> torch.Tensor:
    """The weights (rows, steps·V) float32, scale 1, that a path of states (rows, steps) decodes to:
    the path packed as a stream and decoded by tcq_dequantize (the code has one definition, in C++)."""
    rows, steps = states.shape
    return P.tcq_dequantize(tcq_pack_states(states, L, bits_per_step), torch.ones(rows, device=states.device),
                            steps * values_per_step, L, bits_per_step, values_per_step)


def tcq_pack_states(states: torch.Tensor, L: int, bits_per_step: int) -> torch.Tensor:
    """The (rows, tcq_words(steps)) int32 streams of state paths (rows, steps) (each state following
    the one before it): the first state's L bits, then each later state's lowest bits_per_step
    bits, most significant bit first, as csrc/palette/tcq.h lays them out."""
    rows, steps = states.shape
    words = P.tcq_words(steps, L, bits_per_step)
    s = states.long()
    shifts = torch.arange(max(L, 32) - 1, -1, -1, device=s.device)
    first = (s[:, :1] >> shifts[-L:]) & 1
    rest = (s[:, 1:, None] >> shifts[-bits_per_step:]) & 1
    bits = torch.cat([first, rest.reshape(rows, -1)], 1)
    bits = torch.nn.functional.pad(bits, (0, 32 * words - bits.shape[1]))
    w = (bits.view(rows, words, 32) << shifts[-32:]).sum(-1)
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def tcq_encode_ldlq(Wn: torch.Tensor, H: torch.Tensor, L: int, bits_per_step: int, values_per_step: int,
                    damp: float = 0.01, block: int = LDLQ_BLOCK, lookahead: int | None = None,
                    progress=None) -> torch.Tensor:
    """Hessian-aware trellis coding: the streams (rows, tcq_words) int32 of normalized rows Wn
    (rows, in) float for the proxy loss Σ_rows (w − ŵ)·H·(w − ŵ)ᵀ, H (in, in) the rotated Hessian.

    Block LDLQ (QuIP# / QTIP) in the row-stream format: the columns are committed ``block`` at a
    time (a multiple of values_per_step); each block's targets carry the feedback of the errors
    already made (weightkit.quant.ldlq's U, ``damp`` as there), and every row's trellis path goes on
    from its last committed state through a Viterbi search over the block plus ``lookahead`` steps
    of the next columns' current targets (default :func:`ldlq_lookahead` (L)), of which only the
    block is kept. With H = I it is the plain Viterbi encoding up to the look-ahead's truncation.
    Runs on Wn's device (the feedback factor is computed on the CPU in float64).
    ``progress(done_columns, in)`` is called after each block.
    """
    from weightkit.quant.ldlq import feedback_factor

    fn = "weightkit.quant.tcq_encode_ldlq"
    out_f, in_f = Wn.shape
    V, kb = int(values_per_step), int(bits_per_step)
    if tuple(H.shape) != (in_f, in_f):
        raise ValueError(f"{fn}: H must be ({in_f}, {in_f}) for Wn of shape {tuple(Wn.shape)}, got {tuple(H.shape)}")
    if not torch.isfinite(H).all():
        raise ValueError(f"{fn}: H has NaN or Inf")
    if not isinstance(block, int) or block < 1 or block % V:
        raise ValueError(f"{fn}: block must be a positive multiple of values_per_step={V}, got {block!r}")
    if lookahead is None:
        lookahead = ldlq_lookahead(L)
    if not isinstance(lookahead, int) or lookahead < 0:
        raise ValueError(f"{fn}: lookahead must be an int >= 0, got {lookahead!r}")
    if in_f % V:
        raise ValueError(f"{fn}: in_features={in_f} must be a multiple of values_per_step={V}")
    dev = Wn.device
    Ut = feedback_factor(fn, H, damp).t().float().contiguous().to(dev)  # lower: Ut[c, i] = U[i, c]
    Wt = Wn.detach().float().t().contiguous()  # (in, out): the targets, updated as errors are fed back
    states = torch.empty(out_f, in_f // V, dtype=torch.int32, device=dev)
    prev = torch.full((out_f,), -1, dtype=torch.int32, device=dev)
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        window = Wt[b0 : min(b1 + lookahead * V, in_f)].t().contiguous()
        path = P.tcq_encode_window(window, prev, L, kb, V, (b1 - b0) // V)
        states[:, b0 // V : b1 // V] = path
        prev = path[:, -1].contiguous()
        # The block's error through U_bb⁻ᵀ, then onto every later column (block LDLQ's feedback).
        err = Wt[b0:b1] - tcq_state_values(path, L, kb, V).t()
        e = torch.linalg.solve_triangular(Ut[b0:b1, b0:b1], err, upper=False)
        Wt[b1:].addmm_(Ut[b1:, b0:b1], e, alpha=-1)
        if progress is not None:
            progress(b1, in_f)
    return tcq_pack_states(states, L, kb)
