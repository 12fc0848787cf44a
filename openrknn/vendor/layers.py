"""Layer by layer: the vendor's simulator against openrknn's, on one sample (`vendor-export --layers`).

rknn-toolkit2's accuracy_analysis dumps its simulator's value of every tensor it computes (simulator/<file>.txt,
named in map_name_to_file.txt, NCHW, six significant digits). openrknn computes each of those tensors again from the
vendor's own values of the tensors it reads (in its QDQ graph every dumped tensor a node reads is replaced by the
vendor's value), so a difference made in one layer does not carry into the next: what is left is each layer's own
arithmetic. On a quantization point of the package a difference is counted in steps of its scale, and a value whose
unrounded result (openrknn's) lies on a rounding tie (x.5, within TIE of a step) is counted apart: there the two
round the other way, or the dump's six digits decide it, and no model of the chip settles that. The cosine of each
tensor in a whole run (openrknn from the sample alone) shows how far such one-step differences carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper

from ..errors import PackageError
from ..metrics import cosine as _cos
from ..quant.qdq import quant_points, with_outputs as _with_outputs

TIE = 0.01          # an unrounded value within this share of a step of x.5 is on a rounding tie
UNRELATED = 0.5     # a dump this far from our tensor in a whole run holds another tensor under its name
VENDOR_COPY = "_int8"  # the vendor's int8 copy of a tensor it keeps in float (a graph input, an output)
FED = "openrknn_vendor_value:"  # graph input name prefix for the vendor's value of a tensor


def dump_files(folder: Path) -> Dict[str, Path]:
    """Tensor name -> its simulator dump file, from accuracy_analysis' map_name_to_file.txt."""
    index = folder / "map_name_to_file.txt"
    if not index.is_file():
        raise PackageError(f"{folder} has no map_name_to_file.txt: the vendor's accuracy_analysis wrote no dumps")
    out: Dict[str, Path] = {}
    for line in index.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and (folder / "simulator" / parts[1]).is_file():
            out[parts[0]] = folder / "simulator" / parts[1]
    return out


def _points(m: onnx.ModelProto) -> Dict[str, tuple]:
    """Per-tensor quantization points of a QDQ graph: dequantized tensor -> (its unrounded tensor, scale)."""
    inits = {t.name: t for t in m.graph.initializer}
    out = {}
    for name, (q, dq) in quant_points(m).items():
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
        if scale is not None and np.size(scale) == 1:
            out[name] = (q.input[0], float(np.ravel(scale)[0]))
    return out


def _session(m: onnx.ModelProto):
    from ..runtime.ort_session import make_session

    # float convs between DequantizeLinear and QuantizeLinear: the QDQ graph as written (fusions would be blocked by
    # the intermediate outputs anyway); differs from the fused kernels only at rounding ties
    return make_session(m, optimize=False)


def compare_layers(model_bytes: bytes, feeds: Dict[str, np.ndarray], dump_dir: Path) -> dict:
    """Every tensor the vendor dumped that the package's QDQ graph also computes: its single-layer difference and
    whole-run cosine. ``feeds``: the graph inputs of the sample the vendor's dumps were made from."""
    m = onnx.load_from_string(model_bytes)
    files = dump_files(Path(dump_dir))
    producer = {o: n for n in m.graph.node for o in n.output}
    graph_inputs = {i.name for i in m.graph.input}
    points = _points(m)
    # which dump holds the vendor's value of each of our tensors: its int8 copy for a quantization point of ours that
    # the vendor keeps in float (the graph input before its conversion), else the tensor itself
    source = {}
    for name in files:
        if name in producer and name not in graph_inputs:
            twin = name + VENDOR_COPY
            source[name] = twin if name in points and twin in files else name
    if not source:
        raise PackageError("none of the vendor's dumped tensors is a tensor of this model (the dumps are of another "
                           "model, or the vendor renamed every tensor)")
    named = [o for n in m.graph.node for o in n.output if o in source]
    whole_sess = _session(_with_outputs(m, named))
    whole = dict(zip(named, whole_sess.run(named, feeds)))
    # a tensor the vendor rewrote keeps our name on other values (its attention fusion's reshapes): another size,
    # or values unrelated to ours even in a whole run; such a tensor is neither compared nor fed to its readers
    vendor, unmatched = {}, {}
    for t in named:
        if not np.issubdtype(whole[t].dtype, np.floating):  # indices, masks, shapes: no arithmetic to compare
            continue
        flat = np.loadtxt(files[source[t]], dtype=np.float32, ndmin=1)
        if flat.size != whole[t].size:
            unmatched[t] = f"{flat.size} values, openrknn's {whole[t].size}"
        elif _cos(whole[t], flat) < UNRELATED:
            unmatched[t] = f"whole-run cosine {_cos(whole[t], flat):.3f}"
        else:
            vendor[t] = flat.reshape(whole[t].shape)
    if not vendor:
        raise PackageError("no tensor the vendor dumped under this model's names holds this model's values ("
                           + "; ".join(f"{t}: {why}" for t, why in list(unmatched.items())[:3])
                           + "): the dumps are of another build")
    order = [t for t in named if t in vendor]
    source = {t: source[t] for t in order}

    # the single-layer graph: each node reads the vendor's value of every dumped tensor
    single = onnx.ModelProto()
    single.CopyFrom(m)
    for n in single.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            continue  # a Loop / If / Scan body reads outer tensors by name: it keeps reading ours
        for k, x in enumerate(n.input):
            if x in source:
                n.input[k] = FED + x
    for t in order:
        single.graph.input.append(helper.make_tensor_value_info(FED + t, onnx.TensorProto.FLOAT,
                                                                list(whole[t].shape)))
    unrounded = [points[t][0] for t in order if t in points]
    names = order + [u for u in unrounded if u not in source]
    single_sess = _session(_with_outputs(single, names))
    fed = {**feeds, **{FED + t: vendor[t].astype(np.float32) for t in order}}
    ours = dict(zip(names, single_sess.run(names, fed)))

    rows = []
    for t in order:
        v, o = vendor[t].astype(np.float64), ours[t].astype(np.float64)
        row = {"tensor": t, "op": producer[points[t][0]].op_type if t in points and points[t][0] in producer
               else producer[t].op_type, "values": int(o.size), "whole_run_cosine": round(_cos(whole[t], v), 6)}
        if t in points:
            pre, scale = points[t]
            steps = np.abs(o - v) / scale
            differ = steps > 0.5
            u = np.asarray(ours[pre], np.float64) / scale
            off_half = np.abs(u - np.floor(u) - 0.5)
            tie = off_half < TIE
            row.update(point=True, scale=scale, differing=int(differ.sum()),
                       at_ties=int((differ & tie).sum()), max_steps=int(np.round(steps.max())) if o.size else 0,
                       # how far from x.5 the differing ties lie, in steps: the dumps' digits and the two
                       # arithmetics' last bits
                       tie_distance=float(off_half[differ & tie].max()) if (differ & tie).any() else 0.0)
        else:  # a tensor the package keeps unrounded (a fused conv output): the largest difference, relative
            big = max(float(np.abs(o).max()) if o.size else 0.0, 1e-30)
            row.update(point=False, max_relative=float(np.abs(o - v).max()) / big if o.size else 0.0)
        rows.append(row)
    on_grid = [r for r in rows if r["point"]]
    first = next((r for r in on_grid if r["differing"] > r["at_ties"]), None)
    unrounded = [r for r in rows if not r["point"]]
    widest = max(unrounded, key=lambda r: r["max_relative"], default=None)
    return {"tensors": len(rows), "points": len(on_grid), "unmatched": unmatched,
            "vendor_only": sorted(set(files) - set(source.values()) - set(unmatched)),
            "unrounded": len(unrounded), "unrounded_widest": widest and {k: widest[k] for k in
                                                                        ("tensor", "op", "max_relative")},
            "values": int(sum(r["values"] for r in on_grid)),
            "differing": int(sum(r["differing"] for r in on_grid)),
            "at_ties": int(sum(r["at_ties"] for r in on_grid)),
            "points_equal": sum(1 for r in on_grid if r["differing"] == 0),
            "tie_distance": max((r["tie_distance"] for r in on_grid), default=0.0),
            "first_off_tie": first["tensor"] if first else None, "rows": rows}


def summary(report: dict, worst: int = 8) -> dict:
    """The report without its rows, plus the ``worst`` points: most values differing off a tie, then at ties."""
    rows = sorted((r for r in report["rows"] if r.get("point") and r["differing"]),
                  key=lambda r: (-(r["differing"] - r["at_ties"]), -r["differing"]))
    return {**{k: v for k, v in report.items() if k != "rows"}, "worst": rows[:worst]}


def summary_lines(short: dict) -> List[str]:
    """What `vendor-export --layers` prints, from summary()."""
    lines = [f"layer by layer, {short['tensors']} tensors the vendor dumped and openrknn computes "
             f"({short['points']} quantization points), each from the vendor's own inputs:",
             f"  {short['points_equal']} points equal on every value; {short['differing']} of {short['values']} "
             f"values differ by a step or more, {short['at_ties']} of them at rounding ties"
             + (f" (unrounded within {short['tie_distance']:.2g} of a step of x.5)" if short["at_ties"] else "")]
    first: Optional[str] = short["first_off_tie"]
    lines.append(f"  first point that differs off a tie: {first}" if first else
                 "  no point differs off a rounding tie: the two compute the same integers")
    wide = short.get("unrounded_widest")
    if wide:
        lines.append(f"  {short['unrounded']} tensors openrknn keeps unrounded (fused steps); the largest difference "
                     f"there: {wide['max_relative']:.2g} of the tensor's largest value, {wide['tensor']} "
                     f"({wide['op']})")
    if short.get("unmatched"):
        lines.append(f"  {len(short['unmatched'])} tensor(s) under our names hold other values (a rewrite of the "
                     f"vendor's own), not compared: {', '.join(list(short['unmatched'])[:4])}")
    for r in short["worst"]:
        lines.append(f"  {r['tensor']} ({r['op']}): {r['differing']} of {r['values']} differ (at ties "
                     f"{r['at_ties']}, at most {r['max_steps']} step(s)); whole run cosine {r['whole_run_cosine']}")
    return lines


__all__ = ["compare_layers", "dump_files", "summary", "summary_lines"]
