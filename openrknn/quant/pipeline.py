"""The quantizer: normalize, the graph rewrites (stages.Rewrite) around one shared calibration pass, then activation
ranges, weights (rounding, bias correction), the optional range search and the QDQ graph."""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx

from .algorithms import activations as act_alg
from .algorithms.concat_inputs import ConcatInputScales
from .algorithms.conv_tiles import ConvTiles
from .algorithms.equalize import CrossLayerEqualization
from .algorithms.pow2_fit import Pow2Fit
from .algorithms.residual_equalize import ResidualEqualization
from .algorithms.head_split import HeadSplit
from .algorithms.split import RangeSplit
from .algorithms.weights import quantize_weight
from .calibrate import Stats, collect_histograms, collect_minmax
from .ir import GraphInfo, normalize
from .pixel_ranges import grid_range
from .plan import Plan, build_plan
from .qdq import (ActQuant, WeightQuant, build_qdq, set_channel_offsets, set_channel_orders, set_channel_parts,
                  set_channel_scales, set_node_origins, to_float16)
from .schemes import Scheme, TensorFormat, get_scheme, qparams, whole_reciprocal_scale
from .stages import Needs, QuantState, StageResult

if TYPE_CHECKING:
    from . import QuantOptions, QuantResult

log = logging.getLogger("openrknn.quant")

# Activations with a fixed output range: calibration clipping (KL/MSE) would only cut real values (e.g. scores).
BOUNDED = {"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "Clip"}
# range choice's candidate that clips only the HardSwish outputs (KL), min/max elsewhere
KL_ON_HARDSWISH = "kl_divergence on HardSwish outputs"
# Ops that read only the extremes of their input: clipping its top ties the strongest classes (_clip_exempt).
DECIDED_BY_EXTREMES = ("ArgMax", "ArgMin", "TopK")


# The graph rewrites in the order they run (each in its algorithm's module; see stages.Rewrite). 'graph' stages run
# before calibration, 'statistics' stages after pass 1, from its statistics.
REWRITES = (CrossLayerEqualization, ConvTiles, HeadSplit, ResidualEqualization, RangeSplit, Pow2Fit, ConcatInputScales)
# The order in which the rewrites' channel factors are multiplied into one per tensor (float products: fixed order).
SCALE_ORDER = ("equalization", "residual_equalization", "pow2_fit", "range_split")


def run(model: onnx.ModelProto, data, options: "QuantOptions", progress: bool, stats_cache=None) -> "QuantResult":
    """stats_cache: a stats_cache.StatsCache whose statistics passes replace calibrate's (same results, reused)."""
    from . import QuantResult

    scheme = get_scheme(options.dtype)
    warnings = _target_warnings(options)
    seconds: Dict[str, float] = {}
    t = time.perf_counter()
    m = normalize(model)
    if scheme.float16:
        out = to_float16(m)
        seconds["float16"] = round(time.perf_counter() - t, 3)
        return QuantResult(out, _float16_tensors(out), _report(options, warnings, seconds, []))

    info = GraphInfo(m)
    plan = build_plan(info, options.keep_mixed_concat_float, options.requantized_pre_activations)
    results: List[StageResult] = []
    plan = _host_heads(m, info, plan, options, scheme, data, results)
    state = QuantState(m, info, plan, options, scheme, data, progress)
    stages = [cls() for cls in REWRITES]
    stages = [s for s in stages if s.enabled(state)]
    for stage in (s for s in stages if s.phase == "graph"):
        results.append(stage.run(state))
    seconds["plan"] = round(time.perf_counter() - t, 3)
    if state.plan.split_concats:
        log.info("keeping one scale per input of output concat(s) %s (mixed ranges, e.g. boxes and scores)",
                 ", ".join(state.plan.split_concats))
    _expand_overrides(options.overrides, state.plan)  # bad names fail before the slow pass

    # calibration pass 1: every point's min/max plus what the statistics stages and bias correction ask for
    needs = Needs(channel_means=_mean_axes(state.info, state.plan) if options.bias_correction == "analytical" else {})
    later = [s for s in stages if s.phase == "statistics"]
    for stage in later:
        needs = needs.merge(stage.needs(state))
    minmax_pass = stats_cache.collect_minmax if stats_cache is not None else collect_minmax
    minmax_pass(state.model, state.plan.sources, data, needs.channel_means, state.stats, progress, options.threads,
                known_minimum(state.info, state.plan), needs.channel_ranges, needs.channel_samples,
                softmax_axes=softmax_inputs(state.info, state.plan))
    _cover_pixels(state, data, options.pixel_inputs)
    for stage in later:
        results.append(stage.run(state))
    m, info, plan, stats = state.model, state.info, state.plan, state.stats
    overrides = {**_peak_overrides(info, plan, scheme, options), **_expand_overrides(options.overrides, plan)}
    choosing = _chooses_ranges(options, scheme)
    if choosing and decodes_step_by_step(info):
        log.info("activation ranges: as calibrated (a loop decodes step by step: its outputs cannot judge ranges)")
        choosing = False
    hist_feeds, judge_feeds = _choice_feeds(data, options) if choosing else ([], [])
    histogram_pass = stats_cache.collect_histograms if stats_cache is not None else collect_histograms
    if options.algorithm != "normal" or choosing:
        images = data if options.algorithm != "normal" else hist_feeds  # a few images give the histograms' shape
        per_image = options.histogram_samples or (int(np.clip((1 << 20) // max(len(images), 1), 1 << 14, 1 << 18))
                                                  if options.algorithm != "normal" else 1 << 15)
        histogram_pass(m, plan.sources, images, stats, options.histogram_bins, per_image, progress,
                       options.threads)
    elif plan.pre_activations:  # min/max alone: only the pre-activations, whose range their activation decides
        histogram_pass(m, [t for t in plan.pre_activations if t in stats.minmax], data, stats,
                       options.histogram_bins, 1 << 15, progress, options.threads)
    seconds.update({k: round(v, 3) for k, v in stats.seconds.items()})

    t = time.perf_counter()
    fixed = _expand_overrides(options.fixed, plan, scales=True)  # hybrid step2, a quantized source: as given
    searched: Dict[tuple, Tuple[float, float]] = {}  # pre-activation ranges, the same for every candidate set
    algorithms = [options.algorithm]
    if choosing:
        from .algorithms.range_choice import CANDIDATES

        algorithms += list(CANDIDATES)
    search_pre_activations(info, plan, stats, scheme, algorithms, searched, options.threads)
    acts = activation_params(info, plan, stats, scheme, options.algorithm, overrides, fixed, searched)
    variants: Dict[str, Dict[str, ActQuant]] = {}
    if choosing:  # the clipped candidates the outputs will judge against min/max (algorithms/range_choice.py)
        variants = {alg: activation_params(info, plan, stats, scheme, alg, overrides, fixed, searched)
                    for alg in CANDIDATES}
        # a backbone's HardSwish outputs (most values near zero, a few channels far out) want KL's clipping where
        # the rest of the model (score maps, decoder states) wants min/max: the layout detector, 0.928 -> 0.953
        mixed = _clipped_where(info, plan, acts, variants.get("kl_divergence", acts), ("HardSwish",))
        if mixed is not None:
            variants[KL_ON_HARDSWISH] = mixed
        variants = {k: v for k, v in variants.items() if _differs(v, acts)}
    seconds["activation_ranges"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    weight_alg = options.weight_algorithm if options.weight_algorithm != "auto" else (
        "mmse" if options.algorithm == "mmse" else "minmax")
    weights = weight_params(info, plan, scheme, state.per_channel, weight_alg, overrides, fixed)
    rewritten = _rewritten_float(info, plan, weights)
    rounding = options.resolved_rounding
    probe = None
    if options.bias_correction in (True, "empirical"):  # its means ride the rounding statistics pass
        from .algorithms.bias_correction import MeanShiftProbe

        probe = MeanShiftProbe(info, plan, acts, weights, options.bias_correction_samples, variants)
        probe = probe if probe.targets else None
    if rounding != "nearest" and scheme.weight is not None and scheme.weight.bits <= 8:  # 16-bit: nothing to gain
        from .algorithms.rounding import round_weights

        t_round = time.perf_counter()
        summary = round_weights(m, info, plan, weights, data, options, rounding, progress, probe)
        results.append(StageResult("weight_rounding", summary, round(time.perf_counter() - t_round, 3)))
    results.append(_bias_correction(m, info, plan, acts, weights, stats, data, options, progress, probe))
    seconds["weights"] = round(time.perf_counter() - t, 3)
    score_heads = {}
    if options.score_bias_correction and options.bias_correction and scheme.weight is not None:
        from .algorithms.score_bias import sigmoid_heads

        score_heads = sigmoid_heads(info, plan, weights)
    runs, seen, score_feeds = None, [], data
    if variants:
        t = time.perf_counter()
        from .algorithms.score_bias import head_tensors

        acts, summary, runs, seen = _choose_ranges(m, plan, acts, variants, weights, probe, info, judge_feeds,
                                                   options, head_tensors(score_heads))
        # the judged samples are measured already (unless single outputs took other ranges since); the others of
        # the first ones remain
        score_feeds = data if "per_output" in summary else hist_feeds
        results.append(StageResult("range_choice", summary, round(time.perf_counter() - t, 3)))

    if options.log_ranges and scheme.act is not None and not decodes_step_by_step(info):
        from .algorithms.log_ranges import search_log_ranges

        t = time.perf_counter()
        # a floor Clip before the Log is a bounded op too, but the cut is judged on the outputs
        keep = _clip_exempt(info, plan, bounded=False) | {plan.group_of[x] for x in fixed if x in plan.group_of}
        acts, summary = search_log_ranges(m, info, plan, acts, weights, data, options.log_range_samples, keep,
                                          options.threads)
        if summary.get("decades"):
            results.append(_refit_biases(m, info, plan, acts, weights, stats, data, options, progress))
            runs, seen, score_feeds = None, [], data  # the range choice's runs no longer hold these ranges
        if summary:
            log.info("ranges into a Log / square root: %s (output loss uncut %.5f; cut by n decades: %s)",
                     f"cut by {summary['decades']:g} decades" if summary["decades"] else "kept", summary["loss_before"],
                     ", ".join(f"{k}: {v:.5f}" for k, v in summary["losses"].items()))
            results.append(StageResult("log_ranges", summary, round(time.perf_counter() - t, 3)))

    if options.range_search:
        from .algorithms.range_search import search_ranges

        t = time.perf_counter()
        trial, _ = build_qdq(m, plan, acts, weights)
        keep = _clip_exempt(info, plan) | {plan.group_of[t] for t in fixed if t in plan.group_of}  # step2 edits
        summary = search_ranges(trial, m, plan, acts, data, keep, options.range_search_groups,
                                options.range_search_samples, options.threads, progress)
        if summary["changed"]:
            results.append(_refit_biases(m, info, plan, acts, weights, stats, data, options, progress))
            runs, seen, score_feeds = None, [], data  # the range choice's runs no longer hold these ranges
        results.append(StageResult("range_search", summary, round(time.perf_counter() - t, 3)))

    if score_heads:
        from .algorithms.score_bias import correct_score_biases

        t = time.perf_counter()
        summary = correct_score_biases(m, info, plan, acts, weights, score_feeds, threads=options.threads, runs=runs,
                                       measured=seen, heads=score_heads)
        if summary is not None:
            results.append(StageResult("score_bias_correction", summary, round(time.perf_counter() - t, 3)))

    t = time.perf_counter()
    qmodel, tensors = build_qdq(m, plan, acts, weights)
    if plan.host_sigmoids:
        from .algorithms.host_sigmoids import sink_past_layout

        sink_past_layout(qmodel, tensors, plan.host_sigmoids)
    results = [r for r in results if r is not None]
    by_name = {r.name: r for r in results}
    scales = _merged_scales(*(by_name[n].channel_scales for n in SCALE_ORDER if n in by_name))
    if scales:
        set_channel_scales(qmodel, scales)
    offsets = {k: v for r in results for k, v in r.channel_offsets.items()}
    if offsets:
        set_channel_offsets(qmodel, offsets)
    orders = next((r.channel_orders for r in results if r.channel_orders), None)
    if orders:
        set_channel_orders(qmodel, orders)
    origins = {k: v for r in results for k, v in r.node_origins.items()}
    if origins:  # what analysis needs to speak the float model's layer names
        set_node_origins(qmodel, origins)
        set_channel_parts(qmodel, {k: v for r in results for k, v in r.channel_parts.items()})
    seconds["qdq"] = round(time.perf_counter() - t, 3)
    report = _report(options, warnings, seconds, results)
    report["plan"] = {"quantization_points": len(plan.points), "scale_groups": len(plan.groups),
                      "weighted_ops": len(plan.weighted), "fused_activations": len(plan.fused),
                      "float_concats": plan.split_concats}
    if plan.host_branch:
        report["plan"]["host_branch"] = {
            "inputs": [t for t in info.inputs if t in plan.host_branch],
            "layers": sum(1 for n in info.nodes if n.output and n.output[0] in plan.host_branch)}
    report["calibration_samples"] = stats.samples
    return QuantResult(qmodel, tensors, report, rewritten)


def _cover_pixels(state: QuantState, data, names) -> None:
    """Widen the first points of image inputs to every pixel value (pixel_ranges.py)."""
    from .pixel_ranges import pixel_point_values

    values = pixel_point_values(state.info, state.plan, data, names) if names else {}
    for t, v in values.items():
        seen = state.stats.minmax.get(t, (v.min(), v.max()))
        state.stats.minmax[t] = (min(seen[0], float(v.min())), max(seen[1], float(v.max())))
    state.stats.pixel_values = values


def _rewritten_float(info: GraphInfo, plan: Plan, weights: Dict[int, WeightQuant]) -> Dict[str, np.ndarray]:
    """Each quantized weight and bias as the exact rewrites left it, before rounding and bias correction (a bias the
    correction adds where there was none: zeros), under the names the QDQ graph quantizes them by."""
    out: Dict[str, np.ndarray] = {}
    for w in plan.weighted:
        if w.node not in weights:
            continue
        value = np.asarray(info.const(w.w), np.float32)
        out[w.w] = value
        bias = info.const(w.bias) if w.bias else None
        out[w.bias or w.w + "_bias"] = (np.asarray(bias, np.float32) if bias is not None
                                        else np.zeros(value.shape[w.axis], np.float32))
    return out


def _report(options: "QuantOptions", warnings: List[str], seconds: Dict[str, float],
            results: List[StageResult]) -> Dict:
    """The quantizer's report, made from the stages' results: what each did and how long it took."""
    report: Dict = {"dtype": options.dtype, "algorithm": options.algorithm, "method": options.resolved_method,
                    "warnings": warnings, "stages": dict(seconds)}
    for r in results:
        report[r.name] = r.summary
        if r.seconds:
            report["stages"][r.name] = r.seconds
    return report


def _bias_correction(m: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict[str, ActQuant],
                     weights: Dict[int, WeightQuant], stats: Stats, data, options: "QuantOptions",
                     progress: bool, probe=None) -> Optional[StageResult]:
    """Fold each layer's measured (or, 'analytical', expected) output shift into its bias: sets WeightQuant.bias.
    ``probe``: the means, already measured in the weight-rounding pass."""
    if options.bias_correction == "analytical":
        from .algorithms.bias_correction import correct_biases

        return StageResult("bias_correction", correct_biases(info, plan, weights, stats.channel_mean))
    if options.bias_correction in (True, "empirical"):
        from .algorithms.bias_correction import empirical_bias_correction

        return StageResult("bias_correction", empirical_bias_correction(
            m, info, plan, acts, weights, data, options.bias_correction_samples, progress, options.threads, probe))
    return None


def _refit_biases(m: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict[str, ActQuant],
                  weights: Dict[int, WeightQuant], stats: Stats, data, options: "QuantOptions",
                  progress: bool) -> Optional[StageResult]:
    """Activation ranges changed after bias correction: its corrections were fitted to the old input scales."""
    for wq in weights.values():
        wq.bias = None
    return _bias_correction(m, info, plan, acts, weights, stats, data, options, progress)


def decodes_step_by_step(info: GraphInfo) -> bool:
    """Whether a Loop or Scan decodes step by step: its body takes an ArgMax / ArgMin / TopK, each step's choice
    feeding the next (SLANet's table decoder). Such a model's outputs on a few calibration samples do not judge
    activation ranges, since a decode diverges on some inputs whatever the ranges, so the stages that choose ranges
    on the outputs (range choice, the ranges into a Log) keep the calibrated ones (SLANet u8: a clipped set won on 3
    of 4 calibration samples and took the held-out cosine from 0.88 to 0.77). A loop without a choice (WeSpeaker's
    framing Scan) does not count."""
    from ..graph.names import subgraphs

    def decides(graph: onnx.GraphProto) -> bool:
        return any(n.op_type in DECIDED_BY_EXTREMES or any(decides(g) for g in subgraphs(n)) for n in graph.node)

    return any(n.op_type in ("Loop", "Scan") and any(decides(g) for g in subgraphs(n)) for n in info.nodes)


def _chooses_ranges(options: "QuantOptions", scheme: Scheme) -> bool:
    """A default ('normal') build with 8-bit activations judges clipped ranges against min/max on its outputs."""
    return options.algorithm == "normal" and bool(options.range_choice) and scheme.act is not None and \
        scheme.act.bits == 8


def _host_heads(m: onnx.ModelProto, info: GraphInfo, plan: Plan, options: "QuantOptions", scheme: Scheme, data,
                results: List[StageResult]) -> Plan:
    """The plan with the score heads' Sigmoids the host computes (options.host_sigmoid_heads;
    algorithms/host_sigmoids.py measures them for 'auto')."""
    from .algorithms import host_sigmoids

    t = time.perf_counter()
    heads, report = frozenset(), None
    asked = options.host_sigmoid_heads if scheme.act is not None and options.keep_mixed_concat_float else "none"
    if asked == "all":
        heads = frozenset(host_sigmoids.fused_heads(info, plan))
    elif asked == "auto" and scheme.act.bits == 8:  # a 16-bit output grid loses nothing the host would win back
        heads, report = host_sigmoids.choose(m, info, plan, data, scheme.act.bits,
                                             options.requantized_pre_activations is True, options.threads)
    if heads:
        plan = build_plan(info, options.keep_mixed_concat_float, options.requantized_pre_activations,
                          host_heads=heads)
    if plan.host_sigmoids or report:
        summary = {"on_host": sorted(plan.host_sigmoids), **({"heads": report} if report else {})}
        results.append(StageResult("host_sigmoids", summary, round(time.perf_counter() - t, 3)))
    return plan


def _choice_feeds(data, options: "QuantOptions") -> Tuple[list, list]:
    """The range choice's samples: histograms from the even-numbered ones, judged on the odd-numbered ones (a
    clipping fitted to the samples it is judged on would look better than it is); from the same ones only when the
    dataset has a single sample."""
    first = list(itertools.islice(data, 2 * max(options.range_choice_images, options.range_choice_samples)))
    if len(first) < 2:
        return first, first
    return first[0::2][:options.range_choice_images], first[1::2][:options.range_choice_samples]


def _clipped_where(info: GraphInfo, plan: Plan, base: Dict[str, ActQuant], clipped: Dict[str, ActQuant],
                   ops: Tuple[str, ...]) -> Optional[Dict[str, ActQuant]]:
    """``base`` with the scale groups of the points that ``ops`` make (as a node or as a fused activation) taken
    from ``clipped``; None when the model has no such point."""
    groups = set()
    for t in plan.points:
        p = info.producer.get(t)
        if (p is not None and info.nodes[p].op_type in ops) or plan.fused.get(t) in ops:
            groups.add(plan.group_of[t])
    if not groups:
        return None
    out = dict(base)
    for g in groups:
        for t in plan.groups[g]:
            if t in clipped:
                out[t] = clipped[t]
    return out


def _differs(a: Dict[str, ActQuant], b: Dict[str, ActQuant]) -> bool:
    return any(t not in b or (v.scale, v.zero_point) != (b[t].scale, b[t].zero_point) for t, v in a.items())


def _choose_ranges(m: onnx.ModelProto, plan: Plan, acts: Dict[str, ActQuant],
                   variants: Dict[str, Dict[str, ActQuant]], weights: Dict[int, WeightQuant], probe,
                   info: GraphInfo, data, options: "QuantOptions", extra: Sequence[str] = ()
                   ) -> Tuple[Dict[str, ActQuant], dict, Tuple[Callable, Callable], list]:
    """Min/max or one of the clipped ``variants``, whichever the outputs prefer (algorithms/range_choice.py); each
    candidate gets its own empirical bias correction (the probe measured every variant's means). Leaves
    ``weights``' biases set for the chosen one; returns its activation parameters, a report, and (float run,
    quantized run) of the chosen candidate, (tensor names, feed) -> arrays, whose sessions also output ``extra``
    (score bias correction runs them again rather than making its own), and the (float, quantized) ``extra``
    values of the samples it judged on."""
    from .algorithms import range_choice

    candidates = {"normal": acts, **variants}
    normal_biases = {k: wq.bias for k, wq in weights.items()}

    def set_biases(name: str) -> None:
        for k, wq in weights.items():
            wq.bias = normal_biases[k] if name == "normal" or probe is None else None
        if name != "normal" and probe is not None:
            probe.apply(info, weights, name)

    runner = range_choice.CandidateModel(m, plan, acts, weights, options.threads, extra)
    if not runner.measured:  # nothing the float model computes too (an NMS reading the graph inputs): min/max
        log.info("activation ranges: normal (no output of the model to judge other ranges on)")
        return acts, {"chosen": "normal", "losses": {}, "samples": 0}, None, []
    ref_sess = range_choice.reference_session(m, runner, options.threads)
    chosen, losses, per_sample = range_choice.choose(m, plan, candidates, weights, set_biases, data, len(data),
                                                     options.threads, runner=runner, ref_sess=ref_sess)
    set_biases(chosen)
    log.info("activation ranges: %s (output loss %s)", chosen,
             ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))

    def set_layer_biases(name: str, inputs: Set[str]) -> None:
        if probe is None:
            return
        for w in plan.weighted:
            if w.x in inputs and w.node in weights:
                weights[w.node].bias = None
        probe.apply(info, weights, "" if name == "normal" else name, inputs)

    acts, heads = range_choice.choose_per_output(m, plan, info, chosen, candidates, weights, set_biases,
                                                 set_layer_biases, runner, ref_sess, data)
    if heads:
        log.info("activation ranges of single outputs' own layers: %s",
                 ", ".join(f"{k}: {v}" for k, v in heads.items()))
    params = {}

    def run_quant(names, feed):  # the chosen candidate with the biases it leaves (read when first run)
        if not params:
            params.update(runner.feed(acts, weights, m))
        return runner.run([feed], params, names)[0]

    # the extra tensors of the judged samples as the chosen candidate computed them: (float, quantized) per sample
    # (not when single outputs took other ranges since)
    seen = [] if heads else list(zip(runner.recorded.get("float", []), runner.recorded.get(chosen, [])))
    return acts, {"chosen": chosen, "losses": {k: round(v, 6) for k, v in losses.items()},
                  "per_sample": {k: [round(float(x), 6) for x in v] for k, v in per_sample.items()},
                  "samples": len(data), **({"per_output": heads} if heads else {})}, (ref_sess.run, run_quant), seen


def _merged_scales(*parts: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One factor per rescaled tensor (a tensor rescaled by two rewrites carries the product)."""
    out: Dict[str, np.ndarray] = {}
    for part in parts:
        for name, s in part.items():
            out[name] = out[name] * s if name in out else s
    return out


def _target_warnings(options: "QuantOptions") -> List[str]:
    """A dtype the target NPU does not run is still simulated, with a warning (the checker/config may refuse it)."""
    from ..targets import NPU_GENERATION, QUANTIZED_DTYPES

    gen = NPU_GENERATION.get(str(options.target).lower())
    if gen and options.dtype not in QUANTIZED_DTYPES[gen]:
        msg = (f"quantized_dtype {options.dtype!r} is not a {gen.upper()} dtype (target {options.target}: "
               f"{', '.join(QUANTIZED_DTYPES[gen])}); simulated anyway")
        log.warning(msg)
        return [msg]
    return []


# Closed-form minimum of activations, so calibration needs no ReduceMin for them (x * sigmoid(x) >= -0.27846,
# x * hardsigmoid(x) >= -0.375).
ACT_MIN = {"Relu": 0.0, "Sigmoid": 0.0, "HardSigmoid": 0.0, "Softmax": 0.0, "SiLU": -0.2784645427610738,
           "HardSwish": -0.375}


def softmax_inputs(info: GraphInfo, plan: Plan) -> Dict[str, Tuple[int, ...]]:
    """Measured tensors that only Softmaxes read (not a graph output: no one else sees the values calibrate.
    softmax_floor clamps), with the axes each row spans: the one axis from opset 13 on, the axis and every later one
    before it (a Softmax then flattens to 2-D at its axis)."""
    opset = next((o.version for o in info.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    out: Dict[str, Tuple[int, ...]] = {}
    for t in plan.sources:
        readers = info.consumers.get(t, [])
        rank = info.rank(t)
        if t in info.output_set or not readers or rank is None or any(
                info.nodes[i].op_type != "Softmax" for i in readers):
            continue
        spans = set()
        for i in readers:
            axis = int(info.attr(i, "axis", -1 if opset >= 13 else 1)) % rank
            spans.add((axis,) if opset >= 13 else tuple(range(axis, rank)))
        if len(spans) == 1:
            out[t] = spans.pop()
    return out


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
            # a [1]-shaped bound is as common as a scalar; a negative floor is measured instead: exports clamp to
            # float16's range (-65504) as a guard, and that bound as the int8 minimum would zero the tensor
            if lo is not None and np.size(lo) == 1 and float(np.reshape(lo, ())) >= 0:
                out[t] = float(np.reshape(lo, ()))
    return out


def _peak_overrides(info: GraphInfo, plan: Plan, scheme: Scheme, options: "QuantOptions") -> Dict[str, str]:
    """16 bits for the maps a peak test reads (plan.peak_maps), where activations are 8-bit and the user asked
    nothing else for them."""
    from .plan import peak_maps

    if scheme.act is None or scheme.act.bits != 8:
        return {}
    out = {t: "int16" for t in peak_maps(info, plan) if t not in options.overrides}
    if out:
        log.info("peak test on %s: kept at 16 bits (on int8 a peak's neighbours tie with it and pass the test too)",
                 ", ".join(out))
    return out


def _expand_overrides(overrides: Dict[str, str], plan: Plan, scales: bool = False) -> Dict[str, str]:
    """Check override names; a tensor that range split cut into parts applies to every part, a tiled conv's weight
    to its slices and partial sums. A Sigmoid the host computes: a dtype applies to its logits, its point; a scale
    (``scales``) given for its output is on the probabilities' grid, which the host's float output does not have,
    and is set aside."""
    from ..errors import ConfigError

    points = set(plan.points)
    weights = {w.w for w in plan.weighted}
    out = {}
    for name, value in overrides.items():
        parts = [p for p in plan.points if p.startswith(name + "__split")]
        # a split depthwise weight, or the permuted weight of a conv reading a split output
        parts += [w for w in weights if w.startswith((name + "__split", name + "__perm_"))]
        # the weight of a conv the chip tiles (algorithms/conv_tiles.py): its slices' weights and its partial sums
        for w in (w for w in plan.weighted if w.w.startswith(name + "__tile")):
            conv = w.x.rsplit("__tile", 1)[0]
            parts += [w.w] + [p for p in plan.points if p.startswith(conv + "__tile") and not p.endswith("_in")
                              and p not in parts]
        if name in points or name in weights:
            out[name] = value
        elif plan.host_sigmoids.get(name) in points:  # a Sigmoid the host computes: its layer is its logits'
            if scales:
                log.info("the scale given for '%s' is set aside: the host computes that Sigmoid in float, and its "
                         "logits '%s' keep a range of their own", name, plan.host_sigmoids[name])
            else:
                out[plan.host_sigmoids[name]] = value
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


def _clip_exempt(info: GraphInfo, plan: Plan, bounded: bool = True) -> Set[int]:
    """Groups whose range must not be clipped: bounded activations (``bounded``: their range is their own, the
    histogram searches leave it), graph outputs, what feeds a float concat, and what an ArgMax / ArgMin / TopK
    decides on: a clipped top ties the strongest classes, and the index of the first wins (ddddocr's recognizer read
    two characters as a third this way). And the logit of a flag (fc_sigmoid_outputs): calibration images of one
    class make a clipped range cap the other's probability (a hand-landmark model's handedness, its logit's range
    cut to [-0.03, 1.76] from [-2.55, 1.90], read 0.49 for 0.01 on photos without a hand)."""
    exempt = {plan.group_of[x] for t in fc_sigmoid_outputs(info) for x in info.nodes[info.producer[t]].input[:1]
              if x in plan.group_of}
    for t in plan.points:
        p = info.producer.get(t)
        op = info.nodes[p].op_type if p is not None else ""
        readers = [info.nodes[c] for c in info.consumers.get(t, [])]
        feeds_tail = any(o in plan.float_tail for c in readers for o in c.output)
        decides = any(c.op_type in DECIDED_BY_EXTREMES for c in readers)
        if (bounded and (op in BOUNDED or plan.fused.get(t) in BOUNDED)) or t in info.output_set or feeds_tail or \
                decides:
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


def _pre_activation_key(t: str, algorithm: str, plan: Plan, exempt: Set[int]) -> Tuple[str, bool]:
    """What a pre-activation's range search depends on: the tensor, and whether its top may be clipped."""
    return t, algorithm != "normal" and plan.group_of[t] not in exempt


def search_pre_activations(info: GraphInfo, plan: Plan, stats: Stats, scheme: Scheme, algorithms: List[str],
                           searched: Dict[tuple, Tuple[float, float]], threads: int = 0) -> None:
    """Run the pre-activation range searches that activation_params will ask for with each of ``algorithms`` into
    ``searched``, on a thread pool: each search is independent numpy work that releases the GIL (YOLOX-nano: 112
    searches, ~2 s on one core). Same ranges as searching one by one."""
    from concurrent.futures import ThreadPoolExecutor

    from .calibrate import auto_threads

    fmt = _fmt_for(scheme)
    jobs: Set[Tuple[str, bool]] = set()
    for alg in algorithms:
        exempt = _clip_exempt(info, plan) if alg != "normal" else set()
        jobs.update(_pre_activation_key(t, alg, plan, exempt) for t in plan.pre_activations
                    if t in stats.hist and t in stats.minmax)
    jobs = sorted(k for k in jobs if k not in searched)
    if not jobs:
        return

    def search(key: Tuple[str, bool]) -> Tuple[float, float]:
        t, clip_top = key
        return act_alg.activation_range(stats.hist[t], *stats.minmax[t], plan.pre_activations[t], clip_top, fmt)

    with ThreadPoolExecutor(min(len(jobs), threads or auto_threads()), thread_name_prefix="openrknn-search") as pool:
        searched.update(zip(jobs, pool.map(search, jobs)))


_PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


def fc_sigmoid_outputs(info: GraphInfo) -> List[str]:
    """Sigmoid outputs that are model outputs (through reshapes) after a fully connected layer (Gemm, or MatMul by a
    constant, with or without its bias Add): a presence flag or a multi-label score. rknn-toolkit2 gives such an output
    the sigmoid of its input's int8 range, which holds 0, so at least [0, 0.5] (its quantization file for a
    hand-landmark model's presence flag: [0, 0.5] where calibration saw [0.0007, 0.009]); calibration images without a
    single positive then do not cap the probability at what they reached (0.009 for a hand that scores 0.33)."""
    found = []
    for out in info.outputs:
        t = out
        while t in info.producer and info.nodes[info.producer[t]].op_type in _PASS_THROUGH:
            t = info.nodes[info.producer[t]].input[0]
        node = info.nodes[info.producer[t]] if t in info.producer else None
        if node is None or node.op_type != "Sigmoid" or node.input[0] not in info.producer:
            continue
        fc = info.nodes[info.producer[node.input[0]]]
        if fc.op_type == "Add" and any(info.is_const(i) for i in fc.input):
            src = next(i for i in fc.input if not info.is_const(i))
            fc = info.nodes[info.producer[src]] if src in info.producer else fc
        if fc.op_type == "Gemm" or (fc.op_type == "MatMul" and any(info.is_const(i) for i in fc.input)):
            found.append(t)
    return found


def activation_params(info: GraphInfo, plan: Plan, stats: Stats, scheme: Scheme, algorithm: str,
                      overrides: Optional[Dict[str, str]] = None,
                      fixed: Optional[Dict[str, tuple]] = None,
                      searched: Optional[Dict[tuple, Tuple[float, float]]] = None) -> Dict[str, ActQuant]:
    """fixed: {point: (scale, zero_point)} used as given for the point's whole scale group (hybrid step2 edits).
    searched: pre-activation ranges already found by (tensor, clipped top), shared by the calls of one build."""
    searched = {} if searched is None else searched
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
        if t in plan.pre_activations and t in stats.hist:
            key = _pre_activation_key(t, algorithm, plan, exempt)
            if key not in searched:
                searched[key] = act_alg.activation_range(stats.hist[t], lo, hi, plan.pre_activations[t], key[1], fmt)
            lo, hi = searched[key]
        elif algorithm != "normal" and plan.group_of[t] not in exempt and t in stats.hist:
            lo, hi = pick(stats.hist[t], lo, hi, fmt)
        chosen[t] = (lo, hi)
    for t in fc_sigmoid_outputs(info):
        if t in chosen:  # at least [0, 0.5]: the sigmoid of an int8 input range, which holds 0
            chosen[t] = (min(chosen[t][0], 0.0), max(chosen[t][1], 0.5))
    for t, r in plan.unit_ranges.items():  # fixed by the NPU (plan.py)
        if t in chosen:
            chosen[t] = r
    for t in stats.pixel_values:  # an image's first point holds every pixel: never clipped (pixel_ranges.py)
        if t in chosen:
            chosen[t] = stats.minmax[t]
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
        pixels = [t for t in members if t in stats.pixel_values]
        if len(pixels) == 1:  # the levels that fit the pixels' own grid best (pixel_ranges.grid_range)
            key = (pixels[0], lo, hi, gfmt)  # the same for every candidate set: computed once per build
            if key not in stats.pixel_grids:
                stats.pixel_grids[key] = grid_range(stats.pixel_values[pixels[0]], lo, hi, gfmt)
            lo, hi = stats.pixel_grids[key]
        scale, zp = qparams(np.float64(lo), np.float64(hi), gfmt)
        if gfmt.bits == 8 and not gfmt.pow2 and (gfmt.symmetric or zp == gfmt.qmin) and \
                any(info.producer.get(t) is not None and info.nodes[info.producer[t]].op_type == "Softmax"
                    for t in members):
            scale = whole_reciprocal_scale(scale)
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
