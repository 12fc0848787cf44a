"""Models quantized elsewhere (a QDQ ONNX from onnxruntime's quantize_static or a PyTorch QAT export, an int8 TFLite
model, which the TFLite loader writes as QDQ): their scales and zero points are kept.

At load, strip() turns the QDQ graph into its float graph (weights dequantized: each is exactly its integers times
its scale) and records every QuantizeLinear / DequantizeLinear parameter under the float tensor's name. At build
with do_quantization=False, build_kept() quantizes that float graph with those parameters given as QuantOptions.fixed
and every rewrite that would move a scale or a weight switched off (nearest rounding, no equalization, no bias
correction, no range split), so the package holds the source's integers. Where the target chip's rules differ (a
scale group the NPU shares between tensors, per-tensor weights on RKNPU1, a tensor the source left float), the
parameter is re-derived and one log line says which and why. The package's float reference is the dequantized
graph, so accuracy_analysis compares against what the source model computes without its quantization.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.names import rename_uses

log = logging.getLogger("openrknn.qdq_import")

PRE_PREFIX = "openrknn_pre"  # graph/preprocess.py's names: the pre-processed input is PRE_PREFIX/<input>/model_input
_Q_OPS = ("QuantizeLinear",)
_DQ_OPS = ("DequantizeLinear",)
_DOMAINS = ("", "ai.onnx", "com.microsoft")


@dataclass
class SourceQuant:
    scale: np.ndarray  # float64, 1 value or one per channel
    zero_point: np.ndarray  # int64
    dtype: str  # 'int8' | 'uint8' | 'int16' | 'uint16' | 'int32'
    axis: Optional[int]
    kind: str  # 'activation' | 'weight' | 'bias'

    def to_json(self) -> dict:
        return {"scale": self.scale.tolist(), "zero_point": self.zero_point.tolist(), "dtype": self.dtype,
                "axis": self.axis, "kind": self.kind}


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in _Q_OPS + _DQ_OPS and n.domain in _DOMAINS for n in model.graph.node)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def strip(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, Dict[str, SourceQuant], List[str]]:
    """(float model, {float tensor or weight name: its source parameters}, notes). The float model computes what
    the QDQ model computes without rounding."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    params: Dict[str, SourceQuant] = {}
    drop: List[onnx.NodeProto] = []
    renames: List[Tuple[str, str]] = []
    outputs = {o.name for o in g.output}

    def const(name: str) -> Optional[np.ndarray]:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        p = producer.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(_attr(p, "value"))
        return None

    for node in g.node:
        if node.op_type not in _DQ_OPS or node.domain not in _DOMAINS:
            continue
        scale = const(node.input[1])
        zp = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            continue
        src = node.input[0]
        data = const(src)
        y = node.output[0]
        if data is not None:  # a quantized constant (weight or bias): its float value is exact
            axis = _attr(node, "axis", 1) if scale.size > 1 else None
            z = zp if zp is not None else np.zeros_like(scale, dtype=data.dtype)
            shape = [1] * data.ndim
            if axis is not None:
                shape[axis % data.ndim] = -1
            real = (data.astype(np.float64) - z.astype(np.float64).reshape(shape if z.size > 1 else [])) * \
                scale.astype(np.float64).reshape(shape if scale.size > 1 else [])
            g.initializer.append(numpy_helper.from_array(real.astype(np.float32), y))
            kind = "bias" if data.dtype == np.int32 else "weight"
            params[y] = SourceQuant(scale.astype(np.float64).ravel(), z.astype(np.int64).ravel(), data.dtype.name,
                                    axis % data.ndim if axis is not None else None, kind)
            drop.append(node)
            continue
        q = producer.get(src)
        if q is None or q.op_type not in _Q_OPS:
            continue  # a DequantizeLinear of a graph input (an integer model input): left as it is
        x = q.input[0]
        made_by = producer.get(x)
        if y in outputs and made_by is not None and x not in outputs:
            # a quantized graph output: the op that computes it writes the output name itself
            for k, o in enumerate(made_by.output):
                if o == x:
                    made_by.output[k] = y
            renames.append((x, y))
            x = y
        params[x] = SourceQuant(scale.astype(np.float64).ravel(),
                                (zp if zp is not None else np.zeros(1, np.uint8)).astype(np.int64).ravel(),
                                (zp.dtype.name if zp is not None else "uint8"), None, "activation")
        if y in outputs:
            drop.append(node)
            continue
        renames.append((y, x))
        drop.append(node)
    for node in drop:
        g.node.remove(node)
    for old, new in renames:
        rename_uses(g, old, new)
    _outputs_written_by_their_op(g, params)
    restored = _restore_fused_relus(g, params)
    # the QuantizeLinear nodes nobody reads any more, and the integer constants only they read
    used = {i for n in g.node for i in n.input} | outputs
    for node in [n for n in g.node if n.op_type in _Q_OPS and n.domain in _DOMAINS and n.output[0] not in used]:
        g.node.remove(node)
    used = {i for n in g.node for i in n.input} | outputs
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    left = sum(1 for n in g.node if n.op_type in _Q_OPS + _DQ_OPS)
    if left:
        log.warning("%d QuantizeLinear/DequantizeLinear nodes could not be read as pairs and stay in the graph", left)
    n_act = sum(1 for p in params.values() if p.kind == "activation")
    n_w = sum(1 for p in params.values() if p.kind == "weight")
    notes = [f"quantized model: {n_act} activation and {n_w} weight scales read from its QuantizeLinear / "
             "DequantizeLinear nodes; build(do_quantization=False) keeps them"]
    if restored:
        notes.append(f"{restored} ReLU(s) the quantizer had fused into a zero-based quantization range restored in "
                     "the float graph")
    return out, params, notes


_NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Clip", "Abs", "Exp", "Softplus", "HardSigmoid"}


def _restore_fused_relus(g: onnx.GraphProto, params: Dict[str, SourceQuant]) -> int:
    """onnxruntime's QDQ export drops a ReLU (or Clip(0, x)) after a conv and lets the quantization range, whose
    lowest level is 0, do its work. The float graph needs it back: a Relu after each tensor whose source range
    starts at exactly 0 and whose op is not already non-negative; the parameter moves to the Relu's output."""
    inputs = {i.name for i in g.input}
    qmin = {"uint8": 0, "int8": -128, "uint16": 0, "int16": -32768}
    count = 0
    for name in list(params):
        p = params[name]
        if p.kind != "activation" or name in inputs or p.dtype not in qmin or int(p.zero_point[0]) != qmin[p.dtype]:
            continue
        made_by = next((n for n in g.node if name in n.output), None)
        if made_by is None or made_by.op_type in _NON_NEGATIVE:
            continue
        pre = f"{name}/before_relu"
        made_by.output[list(made_by.output).index(name)] = pre
        relu = onnx.helper.make_node("Relu", [pre], [name], name=f"{name}/fused_relu")
        g.node.insert(list(g.node).index(made_by) + 1, relu)
        count += 1
    return count


def _outputs_written_by_their_op(g: onnx.GraphProto, params: Dict[str, SourceQuant]) -> None:
    """A graph output that is an Identity of a quantized tensor: the op before it writes the output name (the graph
    optimiser would drop the Identity and rename that tensor, losing the parameter's name)."""
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input}
    for node in list(g.node):
        if node.op_type != "Identity" or node.output[0] not in outputs or node.input[0] not in params:
            continue
        src, out = node.input[0], node.output[0]
        made_by = next((n for n in g.node if src in n.output), None)
        if made_by is None or src in inputs or src in outputs:
            continue
        g.node.remove(node)
        made_by.output[list(made_by.output).index(src)] = out
        rename_uses(g, src, out)
        params[out] = params.pop(src)


# ---------------------------------------------------------------- build with the source's parameters


def _act_zero_point(p: SourceQuant, signed_target: bool) -> int:
    """The zero point in the target's integer type: uint8 and int8 grids differ by 128 (the same real values)."""
    z = int(p.zero_point[0])
    if p.dtype == "uint8" and signed_target:
        return z - 128
    if p.dtype == "int8" and not signed_target:
        return z + 128
    return z


def fixed_parameters(float_model: onnx.ModelProto, params: Dict[str, SourceQuant], dtype: str,
                     method: str, metas: Optional[List[dict]] = None, pre_activation_points: str = "chip"
                     ) -> Tuple[Dict[str, tuple], List[str], Dict[str, tuple]]:
    """(QuantOptions.fixed for the target, one line per source parameter that cannot be kept and why, the source's
    values for the tensors it could name). pre_activation_points: the build's; 'tflite' has TFLite's points."""
    from ..quant.ir import GraphInfo, normalize
    from ..quant.plan import ALL_PRE_ACTIVATIONS, build_plan
    from ..quant.schemes import get_scheme
    from ..targets.chips import requantizes_pre_activations

    scheme = get_scheme(dtype)
    policy = ALL_PRE_ACTIVATIONS if pre_activation_points == "tflite" else requantizes_pre_activations(None, dtype)
    plan = build_plan(GraphInfo(normalize(float_model)), requantized_pre_activations=policy)
    points = set(plan.points)
    weights = {w.w: w for w in plan.weighted}
    values = {t.name: t for t in float_model.graph.initializer}
    fixed: Dict[str, tuple] = {}
    changes: List[str] = []
    fed = {m["name"] for m in metas or [] if m.get("preprocess") is not None}
    for name, p in params.items():
        if p.kind == "bias":  # its scale follows from the input and weight scales, as on every int8 target
            continue
        if name in fed:  # the source's input scale is for the pre-processed value the model body reads
            name = f"{PRE_PREFIX}/{name}/model_input"
        if p.kind == "activation":
            if name not in points:
                changes.append(f"'{name}': activation scale {p.scale[0]:.6g} not kept (the NPU computes this tensor "
                               "inside a fused op, with no quantization of its own)")
                continue
            bits = 16 if p.dtype in ("int16", "uint16") else 8
            if scheme.act is None or scheme.act.bits != bits:
                changes.append(f"'{name}': {p.dtype} activation re-derived for {dtype}")
                continue
            fixed[name] = (np.array([p.scale[0]]), np.array([_act_zero_point(p, scheme.act.signed)]))
            continue
        if name not in weights:
            changes.append(f"'{name}': weight scale not kept (the weight was folded or is not a quantized operand "
                           "on the NPU)")
            continue
        per_channel = p.scale.size > 1
        if scheme.weight is None or scheme.weight.bits != (16 if p.dtype in ("int16", "uint16") else 8):
            changes.append(f"'{name}': {p.dtype} weights re-derived for {dtype}")
            continue
        if per_channel and method != "channel":
            changes.append(f"'{name}': per-channel weight scales re-derived per tensor ({dtype} with "
                           f"quantized_method='{method}')")
            continue
        if scheme.weight.symmetric and np.any(p.zero_point != 0):
            on_grid = _symmetric_on_source_grid(values.get(name), p, weights[name].axis, scheme.weight, method)
            if on_grid is None:
                changes.append(f"'{name}': asymmetric weights (zero point {p.zero_point[:3].tolist()}...) re-derived "
                               f"symmetric, as {dtype} requires")
                continue
            fixed[name], kept = on_grid
            changes.append(f"'{name}': asymmetric weights made symmetric, as {dtype} requires, on the source's own "
                           f"scale in {kept} of {fixed[name][0].size} channels (their integers less the zero point, "
                           "exactly); the others' scale from their largest weight")
            continue
        zp = p.zero_point
        if p.dtype == "uint8" and scheme.weight.signed:
            zp = zp - 128
        fixed[name] = (p.scale, zp)
    wanted = dict(fixed)  # the source's own values, to count what the package keeps
    # a ReLU's input that the source did not quantize (the ReLU restored above, or one after a cast to float): the
    # source rounded once, onto the ReLU output's zero-based grid, so the input takes that grid and rounds the same
    made_by = {o: n for n in float_model.graph.node for o in n.output}
    for name in list(fixed):
        relu = made_by.get(name)
        if relu is not None and relu.op_type == "Relu" and relu.input[0] in points and relu.input[0] not in fixed:
            fixed[relu.input[0]] = fixed[name]
    changes += _share_group_scales(fixed, plan, scheme.act)
    return fixed, changes, wanted


def _symmetric_on_source_grid(tensor, p: SourceQuant, axis: int, fmt, method: str):
    """Asymmetric source weights (old uint8 TFLite and onnxruntime U8U8 models, often trained with their fake
    quantization) for a target whose weights are symmetric: each output channel whose integers less the zero point
    fit the symmetric range keeps the source's scale, so its weights are exactly the source's; any other channel
    gets the scale of its largest weight, as a fresh quantization would. ((scales, zero points), channels kept) or
    None (per tensor with some channel out of range, or weights it cannot read)."""
    if tensor is None:
        return None
    w = numpy_helper.to_array(tensor).astype(np.float64)
    if w.ndim == 0 or p.zero_point.size > 1 and p.zero_point.size != w.shape[axis]:
        return None
    chans = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    src = np.broadcast_to(np.asarray(p.scale, np.float64).reshape(-1), (chans.shape[0],)) if p.scale.size in (
        1, chans.shape[0]) else None
    if src is None:
        return None
    ints = np.round(chans / src[:, None])
    fits = (ints.min(axis=1) >= fmt.qmin) & (ints.max(axis=1) <= fmt.qmax)
    largest = np.abs(chans).max(axis=1)
    scales = np.where(fits, src, np.maximum(largest, np.finfo(np.float32).tiny) / fmt.qmax)
    if method != "channel":
        if not fits.all() or np.unique(src).size > 1:
            return None
        scales = src[:1]
    return (scales.astype(np.float64), np.zeros(scales.size, np.int64)), int(fits.sum())


def _share_group_scales(fixed: Dict[str, tuple], plan, fmt) -> List[str]:
    """Tensors the NPU gives one scale (a concat and its inputs, a max-pool or reshape and its source) but the
    source quantized apart: one scale that holds every member's range, so none is clipped. One line per change."""
    from ..quant.schemes import qparams

    if fmt is None:
        return []
    by_group: Dict[int, List[str]] = {}
    for name in fixed:
        if name in plan.group_of:
            by_group.setdefault(plan.group_of[name], []).append(name)
    lines = []
    for members in by_group.values():
        params = {m: (float(fixed[m][0][0]), int(fixed[m][1][0])) for m in members}
        if len(set(params.values())) <= 1:
            continue
        lo = min((fmt.qmin - z) * s for s, z in params.values())
        hi = max((fmt.qmax - z) * s for s, z in params.values())
        scale, zp = qparams(np.float64(lo), np.float64(hi), fmt)
        shared = (float(scale), int(zp))
        for m in members:
            if params[m] != shared:
                others = [o for o in members if o != m]
                lines.append(f"'{m}': scale {params[m][0]:.6g} -> {shared[0]:.6g} (the NPU gives it one scale with "
                             f"{', '.join(repr(o) for o in others[:3])}{'...' if len(others) > 3 else ''}; the "
                             "widest range of them is kept)")
            fixed[m] = (np.array([shared[0]]), np.array([shared[1]]))
    return lines


def kept_options(cfg, fixed: Dict[str, tuple]):
    """QuantOptions that keep given parameters: every rewrite that would move a scale or change a weight is off,
    output Sigmoids on the host included (the source quantized their outputs on a grid of its own; the build keeps
    that grid, as it keeps every other)."""
    import dataclasses

    from .quantize import quant_options

    opts = quant_options(cfg, fixed=fixed)
    return dataclasses.replace(opts, algorithm="normal", weight_rounding="nearest", equalization=False,
                               bias_correction=False, range_split=False, range_remap=False, pow2_fit=False,
                               residual_equalization=False, range_search=False, host_sigmoid_heads="none")


def synthetic_feeds(metas: List[dict], count: int = 8, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """Calibration feeds when none are given: uniform pixels over the deployed input's range. They only set the
    ranges of tensors the source did not quantize (each such tensor is logged)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for m in metas:
            shape = list(m["shape"])
            if m.get("layout") == "nhwc" and m.get("preprocess") is not None:
                feed[m["name"]] = rng.integers(0, 256, shape).astype(np.float32)
            else:
                feed[m["name"]] = rng.standard_normal(shape).astype(m.get("dtype", "float32"))
        feeds.append(feed)
    return feeds


def compare(result_tensors: Dict[str, dict], fixed: Dict[str, tuple]) -> Tuple[int, List[str]]:
    """How many given parameters the package holds exactly; a line for each it holds differently (a scale group
    the chip shares between tensors takes one of them)."""
    kept, changed = 0, []
    for name, (scale, zp) in fixed.items():
        t = result_tensors.get(name)
        if t is None:
            changed.append(f"'{name}': not a quantized tensor of the built model")
            continue
        got = np.ravel(np.asarray(t.get("scale", []), np.float64))
        want = np.ravel(np.asarray(scale, np.float64))
        got_z = np.ravel(np.asarray(t.get("zero_point", []), np.int64))
        want_z = np.ravel(np.asarray(zp, np.int64))
        if got.size == want.size and np.allclose(got, want, rtol=1e-6, atol=0) and (
                got_z.size != want_z.size or np.array_equal(got_z, want_z)):
            kept += 1
        else:
            changed.append(f"'{name}': scale {want[:2].tolist()} -> {got[:2].tolist()} (a scale group the NPU shares "
                           "with another tensor)")
    return kept, changed


def build_kept(loaded, cfg, dataset: Optional[str], progress: bool = True):
    """Float graph + the source's parameters -> (QDQ model, quantization record, report, float model, metas, notes).
    Calibration data (dataset, else synthetic_feeds) only sets the tensors the source left unquantized."""
    from ..quant import quantize
    from .float_graph import build_float_graph
    from .quantize import calibration_data, quantization_record

    import dataclasses

    # the pre-processing stays a step of its own: folded into the first conv it would change that conv's weights
    float_model, metas, notes = build_float_graph(loaded, dataclasses.replace(
        cfg, optimization_level=min(cfg.optimization_level, 2)))
    fixed, changes, wanted = fixed_parameters(float_model, loaded.source_quant, cfg.quantized_dtype,
                                              cfg.quantized_method, metas, cfg.pre_activation_points)
    from pathlib import Path

    if dataset and Path(dataset).is_file():
        feeds = list(calibration_data(dataset, metas, cfg))
    else:  # build(do_quantization=False)'s dataset is optional (the vendor ignores it)
        log.info("no calibration dataset (%s): tensors the source left unquantized get ranges from synthetic "
                 "inputs", dataset or "none given")
        loose = [m["name"] for m in metas if m["name"] not in fixed and f"{PRE_PREFIX}/{m['name']}/model_input" not in
                 fixed]
        if loose:
            # synthetic pixels (0..255) or normal noise would set this input's range: right only by chance
            log.warning("input(s) %s carry no quantization in the source (a 16x8 TFLite's int16 input, a QDQ model's "
                        "float input), so synthetic values set their ranges and real inputs of another range come "
                        "out wrong; give build(dataset=...) real inputs", ", ".join(repr(n) for n in loose))
        dataset = None
        feeds = synthetic_feeds(metas)
    result = quantize(float_model, feeds, kept_options(cfg, fixed), progress)
    kept, diffs = compare(result.tensors, wanted)
    explained = {line.split("'")[1] for line in changes if line.startswith("'")}
    diffs = [line for line in diffs if line.split("'")[1] not in explained]
    for line in changes + diffs:
        log.info("source quantization re-derived: %s", line)
    given = sum(1 for p in loaded.source_quant.values() if p.kind != "bias")
    log.info("source quantization: %d of %d given scales kept exactly (%d re-derived by %s's rules)", kept, given,
             given - kept, cfg.target)
    record = quantization_record(cfg, result, len(feeds), None,
                                 source_parameters={"given": given, "kept": kept, "re_derived": changes + diffs,
                                                    "calibration": "dataset" if dataset else "synthetic"})
    record["weight_rounding"] = "kept"
    notes = notes + [f"source quantization: {kept} of {given} scales kept exactly"]
    return result.model, record, result.report, float_model, metas, notes
