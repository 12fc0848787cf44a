"""The quantization stages in order; each stage is a function of the previous stage's output."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Dict, Optional, Set, Tuple

import numpy as np
import onnx

from .algorithms import activations as act_alg
from .algorithms.weights import quantize_weight
from .calibrate import Stats, collect_histograms, collect_minmax
from .ir import GraphInfo, normalize
from .plan import Plan, build_plan
from .qdq import (ActQuant, WeightQuant, build_qdq, set_channel_offsets, set_channel_orders, set_channel_scales,
                  to_float16)
from .schemes import Scheme, TensorFormat, get_scheme, qparams

if TYPE_CHECKING:
    from . import QuantOptions, QuantResult

log = logging.getLogger("openrknn.quant")

# Activations with a fixed output range: calibration clipping (KL/MSE) would only cut real values (e.g. scores).
BOUNDED = {"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "Clip"}


def run(model: onnx.ModelProto, data, options: "QuantOptions", progress: bool) -> "QuantResult":
    from . import QuantResult

    scheme = get_scheme(options.dtype)
    report: Dict = {"dtype": options.dtype, "algorithm": options.algorithm, "method": options.resolved_method,
                    "warnings": [], "stages": {}}
    _check_target(options, report)
    t = time.perf_counter()
    m = normalize(model)
    if scheme.float16:
        out = to_float16(m)
        report["stages"]["float16"] = round(time.perf_counter() - t, 3)
        return QuantResult(out, _float16_tensors(out), report)

    info = GraphInfo(m)
    plan = build_plan(info, options.keep_mixed_concat_float)
    per_channel = options.resolved_method == "channel"
    if options.equalization is True or (options.equalization == "auto" and not per_channel):
        from .algorithms.equalize import equalize

        m, eq_report = equalize(m, info, plan)
        report["equalization"] = eq_report
        info = GraphInfo(m)
        plan = build_plan(info, options.keep_mixed_concat_float)
    report["stages"]["plan"] = round(time.perf_counter() - t, 3)
    if plan.split_concats:
        log.info("keeping one scale per input of output concat(s) %s (mixed ranges, e.g. boxes and scores)",
                 ", ".join(plan.split_concats))

    _expand_overrides(options.overrides, plan)  # bad names fail before the slow pass
    stats = Stats()
    means = _mean_axes(info, plan) if options.bias_correction == "analytical" else {}
    split_cands, remap_cands = [], []
    if options.range_split:
        from .algorithms.split import split_candidates

        # per-channel ranges of each candidate and of its remappable depthwise outputs (and samples of those)
        found = split_candidates(m)
        remap_cands = [o for t, outs in found.items() if t in plan.sources for o in outs if o in plan.sources] \
            if options.range_remap else []
        split_cands = [t for t in found if t in plan.sources] + remap_cands
    streams = []
    if options.residual_equalization:
        from .algorithms.residual_equalize import find_streams

        streams = find_streams(info)
    stream_tensors = [t for st in streams for t in st.tensors if t not in split_cands]
    collect_minmax(m, plan.sources, data, means, stats, progress, options.threads, known_minimum(info, plan),
                   split_cands + stream_tensors, remap_cands if scheme.act.bits == 8 else ())
    if streams:
        m, info, plan = _apply_residual_equalization(m, info, streams, stats, options, report)
    if split_cands:
        m, info, plan = _apply_range_split(m, stats, split_cands, options, report, (1 << scheme.act.bits) - 1, data)
    if options.pow2_fit and scheme.act.pow2 and scheme.act.bits == 8:
        m, info, plan = _apply_pow2_fit(m, info, plan, stats, scheme, per_channel, options, report)
    overrides = _expand_overrides(options.overrides, plan)
    report["plan"] = {"quantization_points": len(plan.points), "scale_groups": len(plan.groups),
                      "weighted_ops": len(plan.weighted), "fused_activations": len(plan.fused),
                      "float_concats": plan.split_concats}
    if options.algorithm != "normal":
        per_image = options.histogram_samples or int(np.clip((1 << 20) // max(len(data), 1), 1 << 14, 1 << 18))
        collect_histograms(m, plan.sources, data, stats, options.histogram_bins, per_image, progress,
                           options.threads)
    report["calibration_samples"] = stats.samples
    report["stages"].update({k: round(v, 3) for k, v in stats.seconds.items()})

    t = time.perf_counter()
    fixed = _expand_overrides(options.fixed, plan)  # hybrid step2: scale/zero point as given
    acts = activation_params(info, plan, stats, scheme, options.algorithm, overrides, fixed)
    report["stages"]["activation_ranges"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    weight_alg = options.weight_algorithm if options.weight_algorithm != "auto" else (
        "mmse" if options.algorithm == "mmse" else "minmax")
    weights = weight_params(info, plan, scheme, per_channel, weight_alg, overrides, fixed)
    rounding = options.resolved_rounding
    probe = None
    if rounding != "nearest" and scheme.weight is not None and scheme.weight.bits <= 8:  # 16-bit: nothing to gain
        from .algorithms.rounding import round_weights

        if options.bias_correction in (True, "empirical"):  # its means ride the rounding statistics pass
            from .algorithms.bias_correction import MeanShiftProbe

            probe = MeanShiftProbe(info, plan, acts, weights, options.bias_correction_samples)
            probe = probe if probe.targets else None
        t_round = time.perf_counter()
        report["weight_rounding"] = round_weights(m, info, plan, weights, data, options, rounding, progress, probe)
        report["stages"]["weight_rounding"] = round(time.perf_counter() - t_round, 3)
    _bias_correction(m, info, plan, acts, weights, stats, data, options, report, progress, probe)
    report["stages"]["weights"] = round(time.perf_counter() - t, 3)

    if options.range_search:
        from .algorithms.range_search import search_ranges

        t = time.perf_counter()
        trial, _ = build_qdq(m, plan, acts, weights)
        keep = _clip_exempt(info, plan) | {plan.group_of[t] for t in fixed if t in plan.group_of}  # step2 edits
        report["range_search"] = search_ranges(trial, m, plan, acts, data, keep,
                                               options.range_search_groups, options.range_search_samples,
                                               options.threads, progress)
        if report["range_search"]["changed"]:  # the corrections were fitted to the old input scales
            for wq in weights.values():
                wq.bias = None
            _bias_correction(m, info, plan, acts, weights, stats, data, options, report, progress)
        report["stages"]["range_search"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    qmodel, tensors = build_qdq(m, plan, acts, weights)
    affine = report.get("range_split", {}).pop("channel_affine", {})
    scales = _merged_scales(report.get("equalization", {}).pop("channel_scales", {}),
                            report.get("residual_equalization", {}).pop("channel_scales", {}),
                            report.get("pow2_fit", {}).pop("channel_scales", {}),
                            {t: f for t, (f, _) in affine.items()})
    if scales:
        set_channel_scales(qmodel, scales)
    if affine:
        set_channel_offsets(qmodel, {t: o for t, (_, o) in affine.items()})
    orders = report.get("range_split", {}).pop("channel_orders", None)
    if orders:
        set_channel_orders(qmodel, orders)
    report["stages"]["qdq"] = round(time.perf_counter() - t, 3)
    return QuantResult(qmodel, tensors, report)


def _bias_correction(m: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict[str, ActQuant],
                     weights: Dict[int, WeightQuant], stats: Stats, data, options: "QuantOptions", report: Dict,
                     progress: bool, probe=None) -> None:
    """Fold each layer's measured (or, 'analytical', expected) output shift into its bias: sets WeightQuant.bias.
    ``probe``: the means, already measured in the weight-rounding pass."""
    if options.bias_correction == "analytical":
        from .algorithms.bias_correction import correct_biases

        report["bias_correction"] = correct_biases(info, plan, weights, stats.channel_mean)
    elif options.bias_correction in (True, "empirical"):
        from .algorithms.bias_correction import empirical_bias_correction

        report["bias_correction"] = empirical_bias_correction(m, info, plan, acts, weights, data,
                                                              options.bias_correction_samples, progress,
                                                              options.threads, probe)


def _apply_residual_equalization(m: onnx.ModelProto, info: GraphInfo, streams, stats: Stats,
                                 options: "QuantOptions", report: Dict):
    """Rescale the residual streams' channels; their tensors' statistics from pass 1 are divided by the same
    per-channel factors, so no extra pass is needed (the histograms of pass 2 run on the rewritten model)."""
    from .algorithms.residual_equalize import residual_equalize

    t = time.perf_counter()
    m, rep = residual_equalize(m, info, streams, stats.channel_minmax)
    for name, s in rep["channel_scales"].items():
        lo, hi = stats.channel_minmax[name]
        stats.channel_minmax[name] = (lo / s, hi / s)
        if name in stats.minmax:
            stats.minmax[name] = (float(np.min(lo / s)), float(np.max(hi / s)))
        if name in stats.channel_mean:
            stats.channel_mean[name] = (stats.channel_mean[name] / s).astype(np.float32)
    report["residual_equalization"] = rep
    info = GraphInfo(m)
    plan = build_plan(info, options.keep_mixed_concat_float)
    report["stages"]["residual_equalization"] = round(time.perf_counter() - t, 3)
    return m, info, plan


def _apply_pow2_fit(m: onnx.ModelProto, info: GraphInfo, plan: Plan, stats: Stats, scheme: Scheme,
                    per_channel: bool, options: "QuantOptions", report: Dict):
    """Dynamic fixed point: rescale the tensors that can be rescaled exactly so their ranges fill their power-of-two
    grids; their pass-1 statistics are multiplied by the same factors (no extra pass)."""
    from .algorithms.pow2_fit import choose_factors, find_fits, pow2_fit

    t = time.perf_counter()
    fits = find_fits(info, plan)
    amax = {name: max(abs(stats.minmax[name][0]), abs(stats.minmax[name][1]))
            for f in fits for name in f.tensors if name in stats.minmax}
    factors = choose_factors(info, fits, amax, scheme.act, scheme.weight, per_channel)
    if not factors:
        return m, info, plan
    m, report["pow2_fit"] = pow2_fit(m, info, fits, factors)
    for name, f in ((t, f) for k, f in factors.items() for t in fits[k].tensors):
        lo, hi = stats.minmax[name]
        stats.minmax[name] = (lo * f, hi * f)
        if name in stats.channel_minmax:
            clo, chi = stats.channel_minmax[name]
            stats.channel_minmax[name] = (clo * f, chi * f)
        if name in stats.channel_mean:
            stats.channel_mean[name] = (stats.channel_mean[name] * f).astype(np.float32)
    info = GraphInfo(m)
    plan = build_plan(info, options.keep_mixed_concat_float)
    report["stages"]["pow2_fit"] = round(time.perf_counter() - t, 3)
    return m, info, plan


def _merged_scales(*parts: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One factor per rescaled tensor (a tensor rescaled by two rewrites carries the product)."""
    out: Dict[str, np.ndarray] = {}
    for part in parts:
        for name, s in part.items():
            out[name] = out[name] * s if name in out else s
    return out


def _apply_range_split(m: onnx.ModelProto, stats: Stats, cands, options: "QuantOptions", report: Dict,
                       levels: int, data):
    """Cut the candidates whose channel ranges (from pass 1) are too uneven, remapping depthwise outputs' parts
    where that pays (the output check runs the float model on two calibration samples); the new parts' ranges come
    from the per-channel statistics, so no extra calibration pass is needed."""
    from .algorithms.split import range_split, remap_check

    t = time.perf_counter()
    ranges = {c: stats.channel_minmax[c] for c in cands}
    m, report["range_split"], parts = range_split(m, ranges, options.range_split_ratio,
                                                  samples=stats.channel_samples, levels=levels,
                                                  confirm=lambda proposed: remap_check(m, proposed, ranges, data,
                                                                                       options.threads))
    stats.pooled = report["range_split"].pop("pooled")
    for part, (orig, idx, remapped) in parts.items():
        if remapped is not None:
            stats.minmax[part] = remapped
        elif idx is None:
            stats.minmax[part] = stats.minmax[orig]
        else:
            lo, hi = stats.channel_minmax[orig]
            stats.minmax[part] = (float(np.min(lo[idx])), float(np.max(hi[idx])))
    info = GraphInfo(m)
    plan = build_plan(info, options.keep_mixed_concat_float)
    report["stages"]["range_split"] = round(time.perf_counter() - t, 3)
    return m, info, plan


def _check_target(options: "QuantOptions", report: Dict) -> None:
    """A dtype the target NPU does not run is still simulated, with a warning (the checker/config may refuse it)."""
    from ..targets import NPU_GENERATION, QUANTIZED_DTYPES

    gen = NPU_GENERATION.get(str(options.target).lower())
    if gen and options.dtype not in QUANTIZED_DTYPES[gen]:
        msg = (f"quantized_dtype {options.dtype!r} is not a {gen.upper()} dtype (target {options.target}: "
               f"{', '.join(QUANTIZED_DTYPES[gen])}); simulated anyway")
        log.warning(msg)
        report["warnings"].append(msg)


# Closed-form minimum of activations, so calibration needs no ReduceMin for them (x * sigmoid(x) >= -0.27846,
# x * hardsigmoid(x) >= -0.375).
ACT_MIN = {"Relu": 0.0, "Sigmoid": 0.0, "HardSigmoid": 0.0, "Softmax": 0.0, "SiLU": -0.2784645427610738,
           "HardSwish": -0.375}


def known_minimum(info: GraphInfo, plan: Plan) -> Dict[str, float]:
    out = {}
    for t in plan.sources:
        act = plan.fused.get(t)
        if act is None:
            p = info.producer.get(t)
            act = info.nodes[p].op_type if p is not None else None
        if act in ACT_MIN:
            out[t] = ACT_MIN[act]
        elif act == "Clip":
            node = info.nodes[info.producer[t]]
            lo = info.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if lo is not None and np.size(lo) == 1:
                out[t] = float(lo)
    return out


def _expand_overrides(overrides: Dict[str, str], plan: Plan) -> Dict[str, str]:
    """Check override names; a tensor that range split cut into parts applies to every part."""
    from ..errors import ConfigError

    points = set(plan.points)
    weights = {w.w for w in plan.weighted}
    out = {}
    for name, value in overrides.items():
        parts = [p for p in plan.points if p.startswith(name + "__split")]
        # a split depthwise weight, or the permuted weight of a conv reading a split output
        parts += [w for w in weights if w.startswith((name + "__split", name + "__perm_"))]
        if name in points or name in weights:
            out[name] = value
        elif parts:
            out.update({p: value for p in parts})
        else:
            raise ConfigError("overrides", name, hint="not a quantized tensor or weight of this model; use names "
                              f"from QuantResult.tensors (e.g. {', '.join(plan.points[:3])})")
    return out


def _mean_axes(info: GraphInfo, plan: Plan) -> Dict[str, Tuple[int, ...]]:
    """Per-channel mean axes of each weighted op's input (all but axis 1 for NCHW, all but the last otherwise)."""
    out = {}
    for w in plan.weighted:
        r = info.rank(w.x)
        op = info.nodes[w.node].op_type
        if r is None or w.x not in plan.points:
            continue
        if op in ("Conv", "ConvTranspose"):
            out[w.x] = tuple(a for a in range(r) if a != 1)
        else:
            out[w.x] = tuple(range(r - 1))
    return out


def _fmt_for(scheme: Scheme) -> TensorFormat:
    assert scheme.act is not None
    return scheme.act


def _clip_exempt(info: GraphInfo, plan: Plan) -> Set[int]:
    """Groups whose range must not be clipped: bounded activations, graph outputs and what feeds a float concat."""
    exempt = set()
    for t in plan.points:
        p = info.producer.get(t)
        op = info.nodes[p].op_type if p is not None else ""
        feeds_tail = any(o in plan.float_tail for c in info.consumers.get(t, []) for o in info.nodes[c].output)
        if op in BOUNDED or plan.fused.get(t) in BOUNDED or t in info.output_set or feeds_tail:
            exempt.add(plan.group_of[t])
    return exempt


OVERRIDE_FORMATS = {"int8": TensorFormat(8, True, False), "uint8": TensorFormat(8, False, False),
                    "int16": TensorFormat(16, True, False)}


def _override_format(kind: str, value: str, default: TensorFormat) -> Optional[TensorFormat]:
    """Hybrid quantization: 'float' -> None (left unquantized), 'int8'/'uint8'/'int16' -> that format (weights stay
    symmetric when the scheme's are)."""
    if value == "float":
        return None
    fmt = OVERRIDE_FORMATS[value]
    if kind == "weight" and default.symmetric:
        return TensorFormat(fmt.bits, True, True, default.pow2)
    return TensorFormat(fmt.bits, fmt.signed, fmt.symmetric, default.pow2) if default.pow2 else fmt


def activation_params(info: GraphInfo, plan: Plan, stats: Stats, scheme: Scheme, algorithm: str,
                      overrides: Optional[Dict[str, str]] = None,
                      fixed: Optional[Dict[str, tuple]] = None) -> Dict[str, ActQuant]:
    """fixed: {point: (scale, zero_point)} used as given for the point's whole scale group (hybrid step2 edits)."""
    fmt = _fmt_for(scheme)
    overrides = overrides or {}
    exempt = _clip_exempt(info, plan) if algorithm != "normal" else set()
    chosen: Dict[str, Tuple[float, float]] = {}
    pick = act_alg.kl_range if algorithm == "kl_divergence" else act_alg.mmse_range
    for pool in stats.pooled if algorithm != "normal" else ():
        # remapped parts of one tensor, stretched onto one range: their histograms are the concat's distribution
        have = [t for t in pool if t in stats.hist and plan.group_of.get(t) not in exempt]
        if have:
            lo, hi = pick(np.sum([stats.hist[t] for t in have], 0), *stats.minmax[have[0]], fmt)
            chosen.update({t: (lo, hi) for t in have})
    for t in plan.points:
        if t not in stats.minmax or t in chosen:
            continue  # derived (plan.derived): inside the range of its group's other members
        lo, hi = stats.minmax[t]
        if algorithm != "normal" and plan.group_of[t] not in exempt and t in stats.hist:
            lo, hi = pick(stats.hist[t], lo, hi, fmt)
        chosen[t] = (lo, hi)
    acts: Dict[str, ActQuant] = {}
    for members in plan.groups.values():
        have = [chosen[t] for t in members if t in chosen]
        if not have:
            raise RuntimeError(f"internal error: no calibration statistics for scale group {members[:3]}")
        lo = min(r[0] for r in have)
        hi = max(r[1] for r in have)
        gfmt: Optional[TensorFormat] = fmt
        asked = [overrides[t] for t in members if t in overrides]
        if asked:  # a scale group is one NPU tensor format: the widest request wins ('float' over 16 over 8 bits)
            gfmt = _override_format("activation", max(asked, key=("uint8", "int8", "int16", "float").index), fmt)
        if gfmt is None:
            continue
        scale, zp = qparams(np.float64(lo), np.float64(hi), gfmt)
        given = [fixed[t] for t in members if fixed and t in fixed]
        if given:
            scale, zp = float(np.ravel(given[0][0])[0]), int(np.ravel(given[0][1])[0])
        for t in members:
            acts[t] = ActQuant(float(scale), int(zp), gfmt)
    return acts


def weight_params(info: GraphInfo, plan: Plan, scheme: Scheme, per_channel: bool, algorithm: str,
                  overrides: Optional[Dict[str, str]] = None,
                  fixed: Optional[Dict[str, tuple]] = None) -> Dict[int, WeightQuant]:
    """Quantized weights of every weighted op; ``algorithm`` 'minmax' or 'mmse' (MSE-optimal clipping).
    fixed: {weight: (scales, zero_points)} (one value, or one per output channel) used as given."""
    assert scheme.weight is not None
    overrides = overrides or {}
    out: Dict[int, WeightQuant] = {}
    for w in plan.weighted:
        fmt = scheme.weight
        if w.w in overrides:
            fmt = _override_format("weight", overrides[w.w], scheme.weight)
            if fmt is None:
                continue
        arr = info.const(w.w).astype(np.float32)
        axis = w.axis if per_channel else None
        q, scale, zp = quantize_weight(arr, axis, fmt, algorithm)
        if fixed and w.w in fixed:
            scale, zp = _fixed_weight_params(fixed[w.w], np.shape(scale))
            q = _requantize(arr, scale, zp, axis, fmt)
        out[w.node] = WeightQuant(q, scale, zp, axis, fmt)
    return out


def _fixed_weight_params(given: tuple, shape: tuple) -> Tuple[np.ndarray, np.ndarray]:
    from ..errors import ConfigError

    s, z = (np.asarray(v, np.float64).ravel() for v in given)
    n = int(np.prod(shape)) if shape else 1
    if s.size not in (1, n) or z.size not in (1, n) or np.any(s <= 0):
        raise ConfigError("fixed weight scale", given, hint=f"give {n} positive scale(s) and zero point(s)")
    return np.broadcast_to(s, (n,)).reshape(shape).copy(), np.broadcast_to(z, (n,)).reshape(shape).astype(np.int64)


def _requantize(arr: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: Optional[int],
                fmt: TensorFormat) -> np.ndarray:
    shape = [1] * arr.ndim
    if axis is not None and np.ndim(scale) == 1:
        shape[axis] = -1
    s, z = np.reshape(scale, shape) if np.ndim(scale) else scale, np.reshape(zp, shape) if np.ndim(zp) else zp
    return np.clip(np.round(arr / s) + z, fmt.qmin, fmt.qmax).astype(np.int64)


def _float16_tensors(model: onnx.ModelProto) -> Dict[str, dict]:
    info = GraphInfo(model)
    return {name: {"dtype": "float16", "scale": [], "zero_point": [], "axis": None, "kind": "weight"}
            for name, t in info.inits.items() if t.data_type == onnx.TensorProto.FLOAT16}
