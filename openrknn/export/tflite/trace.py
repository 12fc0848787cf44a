"""--trace: where LiteRT and openrknn's int8 simulator part, quantization point by point.

Cosine at the outputs says how far apart the two runs end, not where they part. Here every int8 point of the export
is computed twice from the same inputs: the simulator runs the piece of our graph between the point and the points
it reads, fed LiteRT's own values of those points, and the result is compared with LiteRT's value of the point.
What differs there is *made* by that layer (the two runtimes' float rounding in a layer our graph computes in float,
another requantization rounding in an int8 one, or an export bug); what differs in the whole run is what was made
there plus what was *carried* in from earlier layers. A quantized network carries a one-level difference on to
more values layer after layer, so a few made values can end as a visible cosine gap; this says which it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from .graph import DQ_OPS, Q_OPS

_TO_NCHW = (0, 3, 1, 2)


@dataclass
class PointTrace:
    point: str                # the quantization point (our graph's tensor name)
    ops: str                  # the ops computed between it and the points it reads, e.g. 'Conv-Sigmoid-Mul'
    mode: str                 # how the export computes them: 'int8', or 'float' when any of them is float
    size: int
    made: int                 # values LiteRT computes otherwise than the simulator from the same inputs
    made_max: int             # the largest of those differences, in the point's levels
    differ: int               # values that differ in the whole run (made here or carried in)
    rescaled: bool = False    # a TFLite rule put the point on another scale: compared on the simulator's grid


@dataclass
class TraceReport:
    points: List[PointTrace]
    skipped: Dict[str, int] = field(default_factory=dict)    # why a point was not compared -> how many

    def totals(self, mode: str) -> Tuple[int, int, int, int]:
        """(points, values, values made otherwise, values that differ in the whole run) of one mode."""
        rows = [p for p in self.points if p.mode == mode]
        return len(rows), sum(p.size for p in rows), sum(p.made for p in rows), sum(p.differ for p in rows)

    def format(self, top: int = 10) -> str:
        lines = [f"LiteRT against the simulator, point by point: {len(self.points)} int8 points compared"
                 + (" (not compared: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items()) + ")"
                    if self.skipped else "")]
        for mode, what in (("int8", "int8 layers"), ("float", "layers computed in float")):
            n, size, made, differ = self.totals(mode)
            if not n:
                continue
            most = max((p.made_max for p in self.points if p.mode == mode), default=0)
            lines.append(f"  {what}: {n} points, {size:,} values; made otherwise from the same inputs: {made:,} "
                         f"({made / size:.1e}{f', at most {most} level(s)' if made else ', bit for bit'}); differ in "
                         f"the whole run: {differ:,} ({differ / size:.1%})")
        worst = sorted((p for p in self.points if p.made), key=lambda p: (-p.made / p.size, p.point))[:top]
        if worst:
            lines.append(f"  where values are made otherwise (the {len(worst)} highest rates):")
            for p in worst:
                lines.append(f"    {p.point[:48]:<48} {p.ops[:28]:<28} {p.mode:<5} {p.made:>7,} of {p.size:<9,} "
                             f"({p.made / p.size:.1e}, <= {p.made_max} level(s)){' rescaled' if p.rescaled else ''}")
        return "\n".join(lines)


def _point_sources(graph: onnx.GraphProto) -> Dict[str, Tuple[List[str], List[onnx.NodeProto]]]:
    """point -> (the points and graph inputs it is computed from, the nodes computed between them)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    inits = {t.name for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - inits
    out: Dict[str, Tuple[List[str], List[onnx.NodeProto]]] = {}
    for q in graph.node:
        if q.op_type not in Q_OPS:
            continue
        sources: List[str] = []
        nodes: List[onnx.NodeProto] = []
        seen = set()
        todo = [q.input[0]]
        while todo:
            name = todo.pop()
            if name in seen or not name:
                continue
            seen.add(name)
            if name in graph_inputs:
                sources.append(name)
                continue
            node = producer.get(name)
            if node is None:
                continue                       # an initializer
            if node.op_type in Q_OPS:
                sources.append(name)
                continue
            if node.op_type in DQ_OPS and node.input[0] in inits:
                continue                       # a weight or bias
            nodes.append(node)
            todo.extend(node.input)
        out[q.output[0]] = (sorted(set(sources)), nodes[::-1])
    return out


def _with_points_as_outputs(model: onnx.ModelProto, points: Sequence[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    zp_types = {}
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in Q_OPS:
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            zp_types[n.output[0]] = zp.data_type if zp is not None else onnx.TensorProto.UINT8
    have = {o.name for o in m.graph.output}
    for p in points:
        if p not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(p, zp_types[p], None))
    return m


def _grid(model: onnx.ModelProto) -> Dict[str, Tuple[float, int]]:
    """point -> (scale, zero point) of the simulator's QuantizeLinear."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type in Q_OPS and n.input[1] in inits:
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            out[n.output[0]] = (float(np.asarray(inits[n.input[1]]).reshape(-1)[0]),
                                int(np.asarray(zp).reshape(-1)[0]) if zp is not None else 0)
    return out


class _LiteValues:
    """LiteRT's value of each exported point, put on the simulator's grid and layout."""

    def __init__(self, interpreter, export_points: Dict[str, Tuple[int, bool]], grid, sim_values):
        self.it, self.points, self.grid, self.sim = interpreter, export_points, grid, sim_values
        self.details = {d["index"]: d for d in interpreter.get_tensor_details()}

    def get(self, point: str) -> Optional[Tuple[np.ndarray, bool]]:
        """(LiteRT's integers on the simulator's grid, whether a TFLite rule had put them on another scale)."""
        if point not in self.points or point not in self.grid or point not in self.sim:
            return None
        index, nhwc = self.points[point]
        q = np.asarray(self.it.get_tensor(index)).astype(np.int64)
        if nhwc and q.ndim == 4:
            q = q.transpose(_TO_NCHW)
        ref = self.sim[point]
        if q.shape != ref.shape:
            return None
        d = self.details[index]["quantization_parameters"]
        if not len(d["scales"]):
            return None
        scale, zp = float(d["scales"][0]), int(d["zero_points"][0])
        s_scale, s_zp = self.grid[point]
        if np.float32(scale) == np.float32(s_scale):
            levels, rescaled = q - zp, False
        else:
            levels, rescaled = np.rint((q - zp) * (scale / s_scale)).astype(np.int64), True
        info = np.iinfo(ref.dtype)
        return np.clip(levels + s_zp, info.min, info.max).astype(ref.dtype), rescaled


def trace(pkg, tflite: bytes, report, sample: List[np.ndarray], threads: Optional[int] = None) -> TraceReport:
    """Compare LiteRT and the simulator at every exported int8 point on one input sample (one array per input).
    report: the ExportReport of `tflite` (which tensor holds each point, which layers it computes in float)."""
    from ...runtime.feeds import prepare_feeds
    from ...runtime.ort_session import make_session
    from ...runtime.tflite_runner import TfliteRunner

    model = onnx.load_from_string(pkg.model_bytes)
    sources = _point_sources(model.graph)
    grid = _grid(model)
    exposed = _with_points_as_outputs(model, list(sources))   # also the value infos the extractor needs
    full = make_session(exposed.SerializeToString(), threads)
    feeds = dict(zip([i.name for i in full.get_inputs()], prepare_feeds(sample, pkg.metadata["inputs"])))
    names = [o.name for o in full.get_outputs()]
    sim = {n: np.asarray(v) for n, v in zip(names, full.run(names, feeds))}
    runner = TfliteRunner(tflite, delegate=None, threads=threads, preserve_all_tensors=True)
    runner.run(sample)
    lite = _LiteValues(runner.interpreter, report.points, grid, sim)
    floats = {r.layer for r in report.float_layers}
    extractor = onnx.utils.Extractor(exposed)
    rows: List[PointTrace] = []
    skipped: Counter = Counter()
    for point, (inputs, nodes) in sources.items():
        mine = lite.get(point)
        if mine is None:
            skipped["held in float or reshaped by the export"] += 1
            continue
        fed = {}
        for name in inputs:
            if name in feeds:
                fed[name] = feeds[name]
                continue
            theirs = lite.get(name)
            if theirs is None:
                break
            fed[name] = theirs[0]
        if len(fed) != len(inputs):
            skipped["read a point the export holds in float"] += 1
            continue
        try:
            piece = make_session(extractor.extract_model(inputs, [point]).SerializeToString(), threads)
            again = np.asarray(piece.run([point], fed)[0])
        except Exception:  # a piece onnxruntime cannot run alone (a loop body's names): the whole run still counts
            skipped["could not run its piece alone"] += 1
            continue
        value, rescaled = mine
        made = np.abs(again.astype(np.int64) - value.astype(np.int64))
        ops = "-".join(n.op_type for n in nodes if n.op_type not in DQ_OPS) or "(none)"
        mode = "float" if any((n.name or n.output[0]) in floats for n in nodes) else "int8"
        rows.append(PointTrace(point, ops, mode, int(value.size), int((made > 0).sum()), int(made.max(initial=0)),
                               int((sim[point] != value).sum()), rescaled))
    runner.release()
    return TraceReport(rows, dict(skipped))
