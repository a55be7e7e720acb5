"""Palette quantizers (Q-Palette style): rotate each weight row by a random Hadamard transform so
it looks Gaussian, normalize it by its RMS, and code it with one quantizer of the palette:

* ``"sq"``: Lloyd-Max scalar codebook, 2–8 bits;
* ``"vq"``: 2-D k-means codebook, 1.5–4 bits in 0.5 steps (c = 2·bits bits per pair);
* ``"tcq"``: QTIP's bitshift trellis with a computed Gaussian code, Viterbi-encoded; 1.5–4 bits in
  0.5 steps, plus the "half" variants 1.75–3.75 (the first half of the rows at b − ¼, the rest at
  b + ¼), which give the allocation 0.25-bit steps.

``quantize_model_palette`` swaps every nn.Linear of a model for a PaletteLinear, with one rate for
all layers or a per-layer plan from weightkit.quant.allocation. A plan may also give a layer PTQTP's
trit planes, ``("ptqtp", 4)`` (weightkit.nn.TritPlaneLinear), for PTQTP-versus-palette mixes.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from weightkit.ops import palette as P
from weightkit.quant import codebooks
from weightkit.quant.quantize import _set_module, check_finite_weights, skip_patterns, target_linears

__all__ = ["PTQTP_BITS", "QUANTIZER_RATES", "build_layer", "quantize_weight", "quantize_model_palette", "rate_of",
           "stored_bits"]

#: Supported bits per weight of each quantizer.
QUANTIZER_RATES = {
    "sq": (2, 3, 4, 5, 6, 7, 8),
    "vq": (1.5, 2, 2.5, 3, 3.5, 4),
    "tcq": (1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75, 4),
}

#: The one rate of ("ptqtp", bits) in a plan: two trit planes at 2 bits per trit. Its fp16 group
#: scales come on top (4.25 stored bits at group_size 128; :func:`stored_bits`).
PTQTP_BITS = 4

DEFAULT_SKIP = ("*lm_head*", "*embed*")


def _check_rate(kind: str, bits: float) -> None:
    if kind not in QUANTIZER_RATES:
        raise ValueError(f"quantizer must be one of {sorted(QUANTIZER_RATES)}, got {kind!r}")
    if float(bits) not in [float(b) for b in QUANTIZER_RATES[kind]]:
        raise ValueError(f"bits={bits} is not a rate of the {kind!r} quantizer; supported: {QUANTIZER_RATES[kind]}")


def rate_of(layer) -> float:
    """Stored bits per weight of a PaletteLinear: codes + one fp32 scale per row + signs (1 bit); of
    a TritPlaneLinear (a plan's PTQTP layer): planes + group scales."""
    if hasattr(layer, "bits_per_weight"):
        return layer.bits_per_weight()
    return _bits_per_weight(layer.out_features, layer.in_features, layer.packed.numel(), layer.codebook.numel())


def _bits_per_weight(out_features: int, in_features: int, code_words: int, codebook_values: int) -> float:
    """int32 code words and fp32 codebook values, one fp32 scale per row, one sign bit per input."""
    return (32 * (code_words + codebook_values + out_features) + in_features) / (out_features * in_features)


def stored_bits(out_features: int, in_features: int, kind: str, bits: float, L: int | None = None,
                group_size: int = 128) -> float:
    """Bits per weight a PaletteLinear of this shape stores (what :func:`rate_of` reads off a built
    layer): codes with their block padding, the codebook, one fp32 scale per row, one sign bit per
    input. ``L``: the trellis's state bits (tcq only; default as in weightkit.quant.tcq). For
    ``kind="ptqtp"`` a TritPlaneLinear's packed planes and fp16 scales per ``group_size`` columns."""
    if kind == "ptqtp":
        from weightkit.ops import trit_plane as tp

        problem = _choice_problem(in_features, kind, bits)
        if problem:
            raise ValueError(problem)
        return tp.stored_bits(out_features, in_features, group_size)
    _check_rate(kind, bits)
    if kind == "tcq":
        from weightkit.quant import tcq as T

        def stream_words(rows, rate):
            p = T.tcq_params(rate, L)
            return rows * P.tcq_words(in_features // p["values_per_step"], p["L"], p["bits_per_step"])

        if (4 * float(bits)) % 2 == 1:  # half variant: the first out // 2 rows at b − ¼, the rest at b + ¼
            split = out_features // 2
            words = stream_words(split, bits - 0.25) + stream_words(out_features - split, bits + 0.25)
        else:
            words = stream_words(out_features, bits)
        codebook = 0
    else:
        d = 1 if kind == "sq" else 2
        c = int(bits) if kind == "sq" else int(round(2 * bits))
        words = out_features * P.packed_words(in_features // d, c)
        codebook = (1 << c) * d
    return _bits_per_weight(out_features, in_features, words, codebook)


def quantize_weight(W: torch.Tensor, kind: str, bits: float, seed: int = 0, hessian: torch.Tensor | None = None,
                    damp: float = 0.01, **tcq) -> dict:
    """Quantize W (out, in) float to the palette format.

    Returns a dict of CPU tensors: ``signs`` (in,), ``scales`` (out,), ``codebook`` (2^c, d) (empty
    (0, 1) for tcq), ``packed`` int32, ``tcq_params`` (tcq only). The Hadamard width (in) must be
    2^k·m with a supported m (weightkit.ops.palette.HADAMARD_ORDERS).

    ``hessian``: XᵀX/N (in, in) of the layer's inputs (weightkit.quant.collect_hessians); given, the
    codes are chosen for the output error on those inputs instead of the weights' squared error:
    sq and vq by LDLQ (weightkit.quant.ldlq), tcq by block LDLQ with a windowed Viterbi search
    (weightkit.quant.tcq.tcq_encode_ldlq); ``damp`` as there.

    ``tcq`` options: ``L`` (state bits), ``progress`` (a callback (done, total), of rows, or of
    columns with a hessian).
    """
    fn = "weightkit.quant.quantize_weight"
    if W.dim() != 2:
        raise ValueError(f"{fn}: W must be 2-D (out, in), got shape {tuple(W.shape)}")
    out_f, in_f = W.shape
    problem = _width_problem(in_f, kind, bits)
    if problem:
        raise ValueError(f"{fn}: {problem}")
    Wf = W.detach().float().cpu()
    if not torch.isfinite(Wf).all():
        raise ValueError(f"{fn}: W must be finite (it has NaN or Inf)")
    if hessian is not None and tuple(hessian.shape) != (in_f, in_f):
        raise ValueError(f"{fn}: hessian must be ({in_f}, {in_f}) for W of shape {tuple(W.shape)}, "
                         f"got {tuple(hessian.shape)}")
    signs = P.hadamard_signs(in_f, seed)
    Wr = P.hadamard_transform(Wf, signs)
    scales = Wr.pow(2).mean(1).sqrt().clamp_min(1e-12)
    Wn = Wr / scales[:, None]
    out = {"signs": signs, "scales": scales}
    Hr = None
    if hessian is not None:
        from weightkit.quant.ldlq import rotate_hessian

        Hr = rotate_hessian(hessian, signs)
    if kind == "tcq":
        from weightkit.quant import tcq as T

        def encode(rows: torch.Tensor, params: dict) -> torch.Tensor:
            if Hr is None:
                return T.tcq_encode(rows, **params, progress=tcq.get("progress"))
            return T.tcq_encode_ldlq(rows, Hr, **params, damp=damp, progress=tcq.get("progress"))

        out["codebook"] = torch.zeros(0, 1)
        if (4 * float(bits)) % 2 == 1:  # a half variant: two rates over the two halves of the rows
            split = out_f // 2
            lo, hi = T.tcq_params(bits - 0.25, tcq.get("L")), T.tcq_params(bits + 0.25, tcq.get("L"))
            parts = [encode(Wn[:split], lo), encode(Wn[split:], hi)]
            # Streams of the two halves differ in length: stored flat, one after the other.
            out["packed"] = torch.cat([p.reshape(-1) for p in parts]).reshape(1, -1)
            out["tcq_params"] = {"split": split, "lo": lo, "hi": hi, "lo_words": parts[0].numel()}
            return out
        params = T.tcq_params(bits, tcq.get("L"))
        out["packed"] = encode(Wn, params)
        out["tcq_params"] = params
        return out
    cb = codebooks.lloyd_max(int(bits)) if kind == "sq" else codebooks.vq2d(int(round(2 * bits)))
    c = (cb.shape[0] - 1).bit_length()
    out["codebook"] = cb
    if Hr is not None:
        from weightkit.quant.ldlq import ldlq_round, nearest_codewords

        # Ŵn holds exact codewords, so encoding it below gives back the codes LDLQ chose.
        Wn = ldlq_round(Wn, Hr, nearest_codewords(cb), d=cb.shape[1], damp=damp)
    out["packed"] = P.palette_pack(P.palette_encode(Wn, cb), c)
    return out


def _width_problem(in_f: int, kind: str, bits: float) -> str | None:
    """Why quantize_weight would refuse a weight of ``in_f`` columns at this rate, or None."""
    try:
        _check_rate(kind, bits)
    except ValueError as e:
        return str(e)
    if P.hadamard_order(in_f) is None:
        return f"in_features={in_f} is not 2^k·m with m in {P.HADAMARD_ORDERS}"
    if kind == "vq" and in_f % 2:
        return f"the 2-D VQ needs an even in_features, got {in_f}"
    return None


def _choice_problem(in_f: int, kind: str, bits: float) -> str | None:
    """Why :func:`build_layer` would refuse the plan choice (kind, bits) for a layer of ``in_f``
    columns, or None."""
    if kind == "ptqtp":
        return None if float(bits) == PTQTP_BITS else \
            f"bits={bits} is not a rate of 'ptqtp': it stores two trit planes, bits={PTQTP_BITS}"
    if kind not in QUANTIZER_RATES:
        return f"quantizer must be one of {sorted(QUANTIZER_RATES) + ['ptqtp']}, got {kind!r}"
    return _width_problem(in_f, kind, bits)


_TCQ_OPTIONS = ("L", "progress")
_PTQTP_OPTIONS = ("group_size", "max_iters", "tol", "activations")
#: What build_layer passes on: the trellis's options to tcq layers, PTQTP's to ptqtp layers.
LAYER_OPTIONS = _TCQ_OPTIONS + _PTQTP_OPTIONS


def build_layer(linear: nn.Linear, kind: str, bits: float, seed: int = 0, hessian: torch.Tensor | None = None,
                damp: float = 0.01, **options) -> nn.Module:
    """The quantized stand-in for ``linear`` under one plan choice (``kind``, ``bits``): a
    PaletteLinear (sq, vq, tcq; see :func:`quantize_weight` for ``seed``, ``hessian``, ``damp``) or,
    for ("ptqtp", 4), a TritPlaneLinear (PTQTP rounds without a rotation or a Hessian: ``seed``,
    ``hessian`` and ``damp`` do not apply). ``options`` (:data:`LAYER_OPTIONS`): the trellis's ``L``
    and ``progress`` go to tcq layers, ``group_size``, ``max_iters``, ``tol``, ``activations`` to
    PTQTP ones; the others ignore them."""
    if kind == "ptqtp":
        from weightkit.nn.trit_plane import TritPlaneLinear

        return TritPlaneLinear.from_linear(linear, **{k: v for k, v in options.items() if k in _PTQTP_OPTIONS})
    from weightkit.nn.palette import PaletteLinear

    trellis = {k: v for k, v in options.items() if k in _TCQ_OPTIONS and kind == "tcq"}
    return PaletteLinear.from_linear(linear, kind, bits, seed=seed, hessian=hessian, damp=damp, **trellis)


def _plan_choices(fn: str, plan) -> dict:
    """{layer name: (quantizer, bits)} from a plan whose values are such pairs or allocation Options."""
    if plan is None:
        return {}
    if not isinstance(plan, dict):
        raise TypeError(f"weightkit.quant.{fn}: plan must map layer names to (quantizer, bits) or allocation "
                        f"Options, got a {type(plan).__name__} (allocate returns one Option per layer in the order "
                        "of its sizes: plan = dict(zip(names, options)))")
    out = {}
    for name, choice in plan.items():
        if hasattr(choice, "quantizer") and hasattr(choice, "bits"):  # an allocation.Option
            choice = (choice.quantizer, choice.bits)
        if not (isinstance(choice, (tuple, list)) and len(choice) == 2):
            raise TypeError(f"weightkit.quant.{fn}: plan[{name!r}] must be (quantizer, bits) or an Option, got {choice!r}")
        out[name] = tuple(choice)
    return out


def quantize_model_palette(model: nn.Module, bits: float = 2.5, quantizer: str = "tcq", plan: dict | None = None,
                           skip=DEFAULT_SKIP, seed: int = 0, progress: bool = False, skipped: list | None = None,
                           calibration: torch.Tensor | None = None, calibration_ctx: int = 512,
                           sequential: bool = False, hessians: dict | None = None, damp: float = 0.01,
                           **options) -> list[dict]:
    """Replace the model's nn.Linear layers (names not matching ``skip`` globs) by PaletteLinear.

    ``plan`` maps a layer name to (quantizer, bits) and overrides ``quantizer``/``bits`` for it
    (weightkit.quant.allocation builds one; ``quantizer="mixed"`` requires it); ("ptqtp", 4) makes
    the layer a TritPlaneLinear. ``options``: :data:`LAYER_OPTIONS`, as :func:`build_layer` takes
    them. Every layer is checked (rate, Hadamard width, finite weights) before the first is replaced.
    Names left out are appended to ``skipped`` when given. Returns one report dict per layer: name,
    shape, quantizer, bits, stored_bits (with scales and signs), rel_error (‖W − Ŵ‖/‖W‖), norm,
    seconds, ldlq (whether the rounding was Hessian-aware).

    Hessian-aware rounding (LDLQ; the trellis by block LDLQ, see quantize_weight): ``calibration``
    (1-D int64 tokens, run through ``model(input_ids)`` in windows of ``calibration_ctx`` before any
    layer is replaced; a few thousand tokens) or ``hessians`` (name → (in, in) for every quantized
    layer, from weightkit.quant.collect_hessians: reusable across quantizers); ``damp`` as in
    weightkit.quant.ldlq_round. ``sequential=True`` (with ``calibration``) measures each block's
    Hessians on the model whose lower blocks are already quantized, and quantizes block by block
    (weightkit.quant.sequential_hessians; every quantized layer must be inside a transformer block).
    """
    fn = "quantize_model"
    unknown = sorted(set(options) - set(LAYER_OPTIONS))
    if unknown:
        raise TypeError(f"weightkit.quant.{fn}: unknown palette options {unknown}; the trellis takes {_TCQ_OPTIONS}, "
                        f"a plan's PTQTP layers {_PTQTP_OPTIONS}")
    if quantizer == "mixed" and plan is None:
        raise ValueError(f"weightkit.quant.{fn}: quantizer='mixed' needs a plan (see weightkit.quant.allocation.allocate)")
    layers, left_out = target_linears(fn, model, skip_patterns(fn, skip), replace=True)
    if skipped is not None:
        skipped.extend(left_out)
    plan = _plan_choices(fn, plan)
    stray = sorted(set(plan) - {name for name, _ in layers})
    if stray:
        raise ValueError(f"weightkit.quant.{fn}: the plan names layers that are not quantized here: {stray[:5]}")
    choices = []
    for name, lin in layers:
        kind, b = plan.get(name, (quantizer, bits))
        problem = _choice_problem(lin.in_features, kind, b)
        if problem:
            raise ValueError(f"weightkit.quant.{fn}: layer {name!r} ({lin.out_features}x{lin.in_features}): {problem}; "
                             "nothing was quantized")
        choices.append((kind, b))
    check_finite_weights(fn, layers)
    if calibration is not None and hessians is not None:
        raise ValueError(f"weightkit.quant.{fn}: give calibration tokens or hessians, not both")
    from weightkit.quant.sequential import layer_hessians

    index = {name: i for i, (name, _) in enumerate(layers)}
    steps = layer_hessians(f"weightkit.quant.{fn}", model, layers, calibration, calibration_ctx, hessians, sequential,
                           progress)
    report = []
    for name, hessian in steps:
        i = index[name]
        (_, lin), (kind, b) = layers[i], choices[i]
        t0 = time.perf_counter()
        layer = build_layer(lin, kind, b, seed=seed + i, damp=damp, hessian=hessian, **options)
        layer = layer.to(dtype=torch.float32)
        W = lin.weight.detach().float()
        err = (layer.dequantize().to(W.device) - W).norm().item()
        norm = W.norm().item()
        _set_module(model, name, layer)
        report.append({"name": name, "shape": tuple(W.shape), "quantizer": kind, "bits": float(b),
                       "stored_bits": rate_of(layer), "rel_error": err / max(norm, 1e-30), "norm": norm,
                       "seconds": time.perf_counter() - t0, "ldlq": hessian is not None and kind != "ptqtp"})
        if progress and not sequential:  # sequential_hessians has its own bar, by block
            print(f"\r[palette] {i + 1}/{len(layers)} {name} {kind}-{b}", end="", file=sys.stderr, flush=True)
    if progress and not sequential:
        print(file=sys.stderr)
    return sorted(report, key=lambda r: index[r["name"]])  # module order (sequential goes block by block)
