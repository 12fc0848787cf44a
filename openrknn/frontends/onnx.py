"""ONNX files -> one clean ONNX graph at OPSET with static shapes."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import onnx
from onnx import version_converter

from ..errors import ModelLoadError
from ..graph.constants import constant_value, constants
from ..graph.control_flow import inline_constant_ifs, predicate_ifs
from ..graph.dynamic_quant import float_from_dynamic_quant
from ..graph.float_types import to_float32
from ..graph.names import graph_and_bodies, sort_nodes, subgraphs, used_names
from ..graph.outputs import exposed_intermediates
from ..graph.shapes import infer_shapes
from . import OPSET, LoadedModel, file_sha256, normalize_size_list
from .newer_ops import EXPORT_ADVICE, quantized_weights_in_older_types, spell_out

log = logging.getLogger("openrknn.frontends.onnx")

# onnxruntime runs opset 7 and newer; older files and files newer than OPSET are converted to OPSET by onnx's
# version converter, up to the newest opset this onnx release knows.
MIN_OPSET, MAX_OPSET = 7, onnx.defs.onnx_opset_version()


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelLoadError(f"ONNX model file not found: '{path}'. Check the path (relative paths are resolved "
                             f"against the current folder, {Path.cwd()}).")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        raise ModelLoadError(f"'{path}' is a zip archive (a PyTorch .pt file?), not ONNX; use load_pytorch() for "
                             "TorchScript files.")
    if head.startswith(b"RKNN") or head.startswith(b"ORKNN"):
        raise ModelLoadError(f"'{path}' is an .rknn model; use load_rknn() for it.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f"'{path}' is not a readable ONNX model ({type(e).__name__}: {str(e)[:200]}). Re-export "
                             "it, e.g. with torch.onnx.export.") from None
    _load_external_data(model, path)
    return model


def _all_initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_initializers(sub)


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Weights stored beside the model (models over 2 GB, or exported with external data) are read from the
    model's own folder, as onnxruntime does; a missing data file is named."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    external = [t for t in _all_initializers(model.graph) if uses_external_data(t)]
    if not external:
        return
    for t in external:
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        if not (path.parent / loc).is_file():
            raise ModelLoadError(f"'{path}' keeps weight '{t.name}' in an external data file '{loc}' that is not in "
                                 f"{path.parent}; copy that file next to the model (the same relative path) and load "
                                 "again")
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelLoadError(f"reading the external weights of '{path}' failed ({type(e).__name__}: "
                             f"{str(e)[:200]}); check that the data files beside it are complete") from None


def _merge_opset_imports(model: onnx.ModelProto, path: Path, notes: List[str]) -> None:
    """One entry per domain: onnx.compose.merge_models writes the default domain twice (once as '', once unset),
    which onnxruntime reads as one but onnx's version converter upgrades only one of."""
    seen: Dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in seen and seen[domain] != imp.version:
            raise ModelLoadError(f"'{path}' declares the opset of domain '{domain or 'ai.onnx'}' twice, as "
                                 f"{seen[domain]} and {imp.version}; re-export or merge the model with one opset")
        seen[domain] = imp.version
    if len(seen) < len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in seen.items())
        notes.append("the opset imports listed a domain twice (as onnx.compose writes them): merged")


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelLoadError("the ONNX model declares no default-domain opset; it was not written by a standard exporter")


def _drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Old exporters list weights as graph inputs too; they are constants, not things the user feeds."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    dropped = len(model.graph.input) - len(keep)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return dropped


def _fix_input_values(model: onnx.ModelProto, values: Sequence, shapes: List[List[int]], notes: List[str]) -> \
        List[List[int]]:
    """rknn-toolkit2's input_initial_val: inputs given a value become constants (a sample rate, a mode flag), so
    the graph can fold what depends on them. ``values`` holds one entry per model input, None for inputs fed at run
    time. Returns ``shapes`` without the entries of the inputs that became constants."""
    import numpy as np

    inputs = list(model.graph.input)
    if not isinstance(values, (list, tuple)) or len(values) != len(inputs):
        given = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ModelLoadError(f"input_initial_val has {given} entries but the model has {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); give one entry per input, in this order, with "
                             "None for the inputs fed at run time")
    keep, kept_shapes = [], []
    for idx, (inp, value) in enumerate(zip(inputs, values)):
        if value is None:
            keep.append(inp)
            if shapes:
                kept_shapes.append(shapes[idx])
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        try:
            raw = np.asarray(value)
            arr = raw.astype(dtype)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"input_initial_val for input '{inp.name}' is not a {dtype.name} array ({e}); give a "
                                 "numpy array or a number") from None
        if raw.dtype.kind in "fc" and dtype.kind in "iub" and not np.array_equal(arr, raw):
            raise ModelLoadError(f"input_initial_val for input '{inp.name}' holds {raw.ravel()[:4].tolist()}, but the "
                                 f"input is {dtype.name}; give whole numbers")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in inp.type.tensor_type.shape.dim]
        want = list(shapes[idx]) if shapes else list(dims)
        if None not in want and list(arr.shape) != want and arr.size == int(np.prod(want, dtype=np.int64)):
            arr = arr.reshape(want)  # 16000 for a [1] input
        if len(arr.shape) != len(dims) or any(d is not None and d != s for d, s in zip(want, arr.shape)):
            seen = [d if d is not None else "?" for d in want]
            raise ModelLoadError(f"input_initial_val for input '{inp.name}' has shape {list(arr.shape)} but the "
                                 f"input's shape is {seen}; give an array of that shape")
        model.graph.initializer.append(onnx.numpy_helper.from_array(arr, inp.name))
        notes.append(f"input '{inp.name}' fixed to the constant {arr.ravel()[:4].tolist()}"
                     f"{' ...' if arr.size > 4 else ''} (input_initial_val)")
    if len(keep) == len(inputs):
        return shapes
    if not keep:
        raise ModelLoadError("input_initial_val gives a value for every input, which leaves the model nothing to feed "
                             "at run time; give None for the inputs the model is run on")
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return kept_shapes


def _fix_input_shapes(model: onnx.ModelProto, shapes: List[List[int]]) -> List[str]:
    notes = []
    inputs = list(model.graph.input)
    if shapes and len(shapes) != len(inputs):
        raise ModelLoadError(f"input_size_list has {len(shapes)} shapes but the model has {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); give one shape per input, in this order")
    for idx, inp in enumerate(inputs):
        dims = inp.type.tensor_type.shape.dim
        want = shapes[idx] if shapes else None
        if want is not None and len(want) != len(dims):
            raise ModelLoadError(f"input '{inp.name}' has {len(dims)} dimensions but input_size_list gives "
                                 f"{want}; give a shape with {len(dims)} dimensions")
        for k, d in enumerate(dims):
            static = d.HasField("dim_value") and d.dim_value > 0
            if want is not None:
                if static and d.dim_value != want[k]:
                    seen = [x.dim_value if x.HasField("dim_value") else x.dim_param for x in dims]
                    raise ModelLoadError(f"input_size_list gives {want} for input '{inp.name}' but the model's input "
                                         f"shape is {seen}; the model cannot run at that size. Fix input_size_list "
                                         "(or leave it out for models with static shapes).")
                if not static:
                    d.Clear()
                    d.dim_value = want[k]
            elif not static:
                if k == 0:
                    d.Clear()
                    d.dim_value = 1
                    notes.append(f"input '{inp.name}': dynamic batch fixed to 1")
                else:
                    raise ModelLoadError(f"input '{inp.name}' has a dynamic dimension {k} ('{d.dim_param or '?'}'); "
                                         "give input_size_list to fix it, one full shape per input in this order: "
                                         f"input_size_list={_size_list_example(inputs)} (or, for several sizes in "
                                         "one model, config(dynamic_input=[[shapes of set 1], [shapes of set 2], "
                                         "...]) before loading)")
    return notes


def _size_list_example(inputs) -> str:
    """input_size_list as the user would write it for these inputs, a dynamic dim by its name: [[1, N], [2, 1, 128]]."""
    shapes = []
    for i in inputs:
        dims = []
        for k, d in enumerate(i.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(str(d.dim_value))
            else:
                dims.append("1" if k == 0 else (d.dim_param or "N"))
        shapes.append("[" + ", ".join(dims) + "]")
    return "[" + ", ".join(shapes) + "]"


def _clear_stale_shapes(model: onnx.ModelProto) -> None:
    """Stored intermediate and output shapes come from the exporter (its own input size, -1 for "dynamic", or just
    wrong); they are re-inferred from the fixed input sizes, so stale ones cannot contradict the inference."""
    del model.graph.value_info[:]
    for o in model.graph.output:
        for d in o.type.tensor_type.shape.dim:
            d.Clear()


def _name_nodes(model: onnx.ModelProto) -> int:
    """Give every node a unique name: old exporters leave names empty or repeat them, and the per-layer report,
    hybrid quantization and accuracy analysis address layers by node name."""
    seen = set()
    renamed = 0
    taken = {n.name for n in model.graph.node if n.name}
    for k, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{k}"
        name, i = base, 1
        while name in seen or (name != node.name and name in taken):
            name, i = f"{base}_{i}", i + 1
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed


def _dry_run(model: onnx.ModelProto) -> Optional[str]:
    """None when onnxruntime builds a session for the model and runs it once on zeros of the fixed input shapes, else
    its complaint. The loader's shapes are then known to be ones the model can run at."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a check, not a fast session
    # onnxruntime's default threads (the cores): on a large input this one run is most of the load
    try:
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in model.graph.input:
            shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
            feeds[i.name] = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        sess.run(None, feeds)
        return None
    except Exception as e:
        return str(e)


# the load note of a file onnx's strict check rejects and onnxruntime runs (build() then accepts the same objection)
STRICT_CHECK_NOTE = "onnx's strict shape inference objected"


def _predicated(model: onnx.ModelProto):
    """(the model with its Ifs on data predicated, their names) when it has such Ifs and, once predicated, still runs
    at the fixed sizes with each branch pair's outputs of one shape; else None (the Ifs stay: a branch that cannot
    run on the inputs it is not taken for, or branches whose outputs differ in shape, which a Where would broadcast)."""
    from ..graph.shapes import run_shapes

    if not any(n.op_type == "If" for n in model.graph.node):
        return None
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    pairs: List = []
    names = predicate_ifs(candidate, pairs)
    if not names:
        return None
    try:  # one run on zeros: it fails where a branch cannot run, and gives each branch output's shape
        shapes = run_shapes(candidate, [t for pair in pairs for t in pair])
    except Exception:
        return None
    if any(list(a) != list(b) for a, b in zip(shapes[0::2], shapes[1::2])):
        return None
    _name_nodes(candidate)
    return candidate, names


def _setting_hint(model: onnx.ModelProto) -> str:
    """The check runs on zeros; a setting input (a sample rate, a mode flag, a resize factor) may need a real value,
    which input_initial_val gives."""
    def setting(i) -> bool:  # a few numbers, not data such as an image or a feature vector
        dims = i.type.tensor_type.shape.dim
        size = 1
        for d in dims:
            size *= d.dim_value
        kind = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).kind
        return kind in "iub" and size <= 16 or kind == "f" and len(dims) <= 1 and size <= 4

    names = [i.name for i in model.graph.input]
    settings = [i.name for i in model.graph.input if setting(i)]
    if not settings:
        return ""
    example = ", ".join("np.array(VALUE)" if n in settings else "None" for n in names)
    return (f" The check fed zeros to the setting input(s) {', '.join(repr(n) for n in settings)}; if the model "
            f"needs a real value there (a sample rate, a mode flag, a scale that sizes an output: the NPU's graph "
            f"has fixed shapes), fix it: load_onnx(..., input_initial_val=[{example}]).")


def _node_in_message(model: onnx.ModelProto, message: str) -> str:
    """'node NAME (OP)' for the node an onnx/onnxruntime message names, to say where the problem is."""
    for node in model.graph.node:
        if node.name and any(p in message for p in (f"node name: {node.name})", f"Node ({node.name})",
                                                     f"Name: {node.name} ", f"Name:'{node.name}'")):
            return f"node '{node.name}' ({node.op_type})"
    return "a node"


def _cut(model: onnx.ModelProto, inputs: Optional[Sequence[str]], outputs: Optional[Sequence[str]]) -> onnx.ModelProto:
    names = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    for role, req in (("inputs", inputs), ("outputs", outputs)):
        for name in req or []:
            if name not in names:
                sample = ", ".join(sorted(names)[:12])
                raise ModelLoadError(f"{role}=[... '{name}' ...] names no tensor of this model; tensor names include: "
                                     f"{sample} ... (open the model in Netron to see all)")
    in_names = list(inputs) if inputs else [i.name for i in model.graph.input]
    out_names = list(outputs) if outputs else [o.name for o in model.graph.output]
    if sorted(in_names) == sorted(i.name for i in model.graph.input) and \
            sorted(out_names) == sorted(o.name for o in model.graph.output):
        return model  # the whole model (rknn-toolkit2 asks for inputs= with a dynamic model's sizes): nothing to cut
    model = onnx.shape_inference.infer_shapes(model)
    try:
        cut = onnx.utils.Extractor(model).extract_model(in_names, out_names)
    except Exception as e:
        raise ModelLoadError(f"cutting the sub-graph {in_names} -> {out_names} failed: {e}. The outputs must be "
                             "reachable from the given inputs alone.") from None
    # the extractor keeps only the initializers the kept nodes name themselves, not those an If / Loop body reads
    have = {t.name for t in cut.graph.initializer}
    read = {x for n in cut.graph.node for sub in subgraphs(n) for x in used_names(sub)}
    cut.graph.initializer.extend(t for t in model.graph.initializer if t.name in read - have)
    return cut


def _note_exposed_intermediates(model: onnx.ModelProto, path: Path, notes: List[str]) -> None:
    """Outputs the model also reads further cost int8 accuracy (graph/outputs.py); a user who needs only the final
    outputs can say so with load_onnx(outputs=...)."""
    exposed = exposed_intermediates(model.graph)
    if not exposed:
        return
    finals = [o.name for o in model.graph.output if o.name not in exposed]
    shown = ", ".join(repr(x) for x in exposed[:4]) + (f" and {len(exposed) - 4} more" if len(exposed) > 4 else "")
    one = len(exposed) == 1
    notes.append(f"output{'' if one else 's'} {shown} also feed{'s' if one else ''} the model's later layers "
                 f"({'an intermediate result' if one else 'intermediate results'} it exposes): as "
                 f"{'an output it' if one else 'outputs they'} "
                 "must stay exact, so build()'s range choice weighs "
                 f"{'it' if one else 'them'} like the final outputs and cross-layer equalization (per-layer weights) "
                 f"leaves {'it' if one else 'them'} alone"
                 + (f"; if you use only {finals}, load_onnx(..., outputs={finals}) lifts these constraints"
                    if finals else ""))
    log.warning("'%s': %s", path, notes[-1])


def load_onnx(path: str | Path, inputs: Optional[Sequence[str]] = None, input_size_list=None,
              input_initial_val: Optional[Sequence] = None, outputs: Optional[Sequence[str]] = None) -> LoadedModel:
    path = Path(path)
    model = _read(path)
    notes: List[str] = []
    _merge_opset_imports(model, path, notes)
    opset = _default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelLoadError(f"'{path}' uses opset {opset}; supported are {MIN_OPSET}..{MAX_OPSET}. Re-export the "
                             f"model with opset_version={OPSET}.")
    dropped = _drop_initializer_inputs(model)
    if dropped:
        notes.append(f"{dropped} weights listed as graph inputs treated as constants")
    renamed = _name_nodes(model)
    if renamed:
        notes.append(f"{renamed} nodes without a unique name were named")
    _sort(model, path, notes)
    dynamic = float_from_dynamic_quant(model)
    if dynamic:
        notes.append(f"{dynamic} dynamically quantized ops (onnxruntime quantize_dynamic: integer weights, activations "
                     "quantized per call on the CPU) turned back into float ops with their weights dequantized; "
                     "build() quantizes them for the NPU")
        log.info("'%s': %s", path, notes[-1])
    widened = to_float32(model)
    if widened:
        notes.append(f"float16 / float64 parts made float32 ({widened} weights, casts and tensor types): the "
                     "quantizer and simulator compute in float32, and the NPU runs float layers in its own fp16")
        log.info("'%s': %s", path, notes[-1])
    if inputs or outputs:
        cut = _cut(model, inputs, outputs)
        if cut is not model:
            notes.append(f"sub-graph cut: inputs {list(inputs or [])}, outputs {list(outputs or [])}")
        model = cut
    if not outputs:
        _note_exposed_intermediates(model, path, notes)
    ranks = [len(i.type.tensor_type.shape.dim) for i in model.graph.input]
    first = [d[0].dim_value if len(d) and d[0].HasField("dim_value") else None
             for d in (i.type.tensor_type.shape.dim for i in model.graph.input)]
    shapes = normalize_size_list(input_size_list, ranks=ranks, first_dims=first) if input_size_list is not None \
        else []
    if input_initial_val is not None:
        shapes = _fix_input_values(model, input_initial_val, shapes, notes)
    notes += _fix_input_shapes(model, shapes)
    _clear_stale_shapes(model)
    inlined = inline_constant_ifs(model)
    if inlined:
        _name_nodes(model)
        notes.append(f"{len(inlined)} If node(s) with a constant condition replaced by the branch taken: "
                     + ", ".join(inlined))
        log.info("'%s': %s", path, notes[-1])
    predicated = _predicated(model)
    if predicated is not None:
        model, names = predicated
        notes.append(f"{len(names)} If node(s) on data computed as both branches and a Where on the condition (an NPU "
                     f"graph is static; the branch not taken runs too): " + ", ".join(names))
        log.info("'%s': %s", path, notes[-1])
    if opset != OPSET:
        spelled = spell_out(model, OPSET) if opset > OPSET else {}
        if opset >= 21:
            spelled.update(quantized_weights_in_older_types(model))
        try:
            hidden = _hide_new_forms(model, opset) if opset > OPSET else 0
            model = version_converter.convert_version(model, OPSET)
            if hidden:
                _restore_hidden(model)
            if opset < 11:
                _keep_asymmetric(model)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(_conversion_failure(model, path, opset, str(e))) from None
        notes.append(f"converted from opset {opset} to {OPSET}")
        if spelled:
            notes.append(f"ops and types with no opset-{OPSET} form written as opset-{OPSET} ones computing the same: "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(spelled.items())))
            log.info("'%s': %s", path, notes[-1])
    model = _check(model, path, notes)
    log.info("loaded ONNX %s (opset %d): inputs %s", path, opset,
             [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input])
    return LoadedModel(model, "onnx", str(path), file_sha256(path), notes)


def _conversion_failure(model: onnx.ModelProto, path: Path, opset: int, error: str) -> str:
    """What failed in onnx's version converter, naming the first node of the op it had no way down for."""
    found = re.search(r"(?:No Previous Version of|for) (\w+)\b", error)
    op = found.group(1) if found else None
    node = next((n for g in graph_and_bodies(model.graph) for n in g.node if op and n.op_type == op), None)
    if opset > OPSET and node is not None:
        return (f"{op} node '{node.name}' (opset {opset}) has no opset-{OPSET} form here ({error[:200]}); "
                f"{EXPORT_ADVICE}")
    advice = EXPORT_ADVICE if opset > OPSET else f"re-export the model with opset_version={OPSET}"
    return f"converting '{path}' from opset {opset} to {OPSET} failed ({error[:300]}); {advice}"


def _sort(model: onnx.ModelProto, path: Path, notes: List[str]) -> None:
    """Nodes listed before the producers of their inputs (onnxruntime sorts a graph itself; onnx's shape inference
    and checker, and every pass here that reads nodes in order, do not) are put in graph order."""
    try:
        early = sort_nodes(model.graph)
    except ValueError as e:
        raise ModelLoadError(f"'{path}' cannot run: {e}. Re-export the model.") from None
    if early:
        notes.append(f"nodes put in graph order: {early} were listed before a node computing one of their inputs")
        log.info("'%s': %s", path, notes[-1])


def _keep_asymmetric(model: onnx.ModelProto) -> None:
    """onnx's version converter turns Upsample (opsets 7-9) and Resize-10 into Resize without their sampling rule,
    so a linear one takes Resize's default half-pixel centres (a DeepLabV3 from TFLite: logits off by up to 4). Below
    opset 11 every Resize of the converted model is one of them (it renames their outputs and names). Their rule,
    written as Resize-11 writes it: asymmetric coordinates; nearest rounds down where it enlarges and up where it
    shrinks (onnxruntime's Resize-10, the reference; one that does both on different axes rounds down)."""
    for g in graph_and_bodies(model.graph):
        consts = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type != "Resize":
                continue
            scales = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            shrinks = scales is not None and all(s <= 1 for s in onnx.numpy_helper.to_array(scales).reshape(-1))
            keep = [a for a in n.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del n.attribute[:]
            n.attribute.extend(keep + [onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                       onnx.helper.make_attribute("nearest_mode", "ceil" if shrinks else "floor")])


_HIDDEN = "openrknn.hidden"  # a private domain, which onnx's version converter passes over
REDUCE_AXES_INPUT_18 = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


_CONSTANT_OF_SHAPE_9_TYPES = {getattr(onnx.TensorProto, t) for t in (
    "FLOAT16", "FLOAT", "DOUBLE", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")}


def _hide_new_forms(model: onnx.ModelProto, opset: int) -> int:
    """Ops whose opset-18 form onnx's version converter cannot step down (it has no adapter, and refuses every model
    holding one), though they mean what opset 13 meant: the reductions with constant axes (rewritten here to the
    attribute form), Pad without its new 'axes' input, ConstantOfShape of a type opset 9 has, Split into equal parts
    (its new 'num_outputs' attribute: the same as opset 13's Split with no sizes when the axis divides evenly; the
    load's run at the fixed shapes checks that it does), GridSample of ``opset`` 20 and later (opset 16's modes
    renamed; the load's run checks it samples a 4-D input, the one kind opset 16 has). They go into a private
    domain for the conversion and come back after it (_restore_hidden)."""
    consts = {}
    for g in graph_and_bodies(model.graph):
        consts.update(constants(g))
    n = 0
    for g in graph_and_bodies(model.graph):
        for node in g.node:
            if node.domain in ("", "ai.onnx") and node.op_type in REDUCE_AXES_INPUT_18 and len(node.input) > 1:
                # opset 18 moved these ops' axes from an attribute to an input; the converter's adapter finds it
                # only in the node's own graph, not in an enclosing one (an If branch reading the main graph's)
                # (an exporter that did not fold its constants computes them: a Reshape of two Constants)
                axes = constant_value(g, node.input[1], consts, opset, None) if node.input[1] else None
                if not node.input[1]:
                    del node.input[1:]
                elif axes is not None:
                    del node.input[1:]
                    node.attribute.append(onnx.helper.make_attribute("axes", axes.astype(int).ravel().tolist()))
                else:
                    raise ModelLoadError(f"{node.op_type} node '{node.name}' reduces over axes computed at run "
                                         f"time, which have no opset-{OPSET} form; re-export the model with "
                                         f"opset_version={OPSET}")
                if any(a.name == "noop_with_empty_axes" and a.i for a in node.attribute):
                    raise ModelLoadError(f"{node.op_type} node '{node.name}' sets noop_with_empty_axes, which has "
                                         f"no opset-{OPSET} form; re-export the model with opset_version={OPSET}")
                keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
                del node.attribute[:]
                node.attribute.extend(keep)
                node.domain = _HIDDEN
                n += 1
                continue
            if node.domain in ("", "ai.onnx") and node.op_type == "ConstantOfShape":
                # opsets 20 and 21 only added value types (bfloat16, float8, 4-bit), with no adapter back
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None and value.data_type not in _CONSTANT_OF_SHAPE_9_TYPES:
                    raise ModelLoadError(f"ConstantOfShape node '{node.name}' makes a tensor of ONNX type "
                                         f"{onnx.TensorProto.DataType.Name(value.data_type)}, which has no "
                                         f"opset-{OPSET} form; re-export the model with opset_version={OPSET}")
                node.domain = _HIDDEN
                n += 1
                continue
            if node.domain in ("", "ai.onnx") and node.op_type in ("ScatterElements", "ScatterND") and \
                    any(a.name == "reduction" and a.s in (b"max", b"min") for a in node.attribute):
                raise ModelLoadError(f"{node.op_type} node '{node.name}' scatters with reduction 'max' / 'min' "
                                     f"(opset 18), which has no opset-{OPSET} form and no NPU form (a graph network's "
                                     "pooling); cut the model before it with load_onnx(..., outputs=[...]) and run "
                                     "the rest on the CPU")
            if node.domain in ("", "ai.onnx") and node.op_type == "GridSample" and opset >= 20:
                # opset 20 renamed the modes and allowed N-D sampling; a 4-D one means what opset 16's does
                mode = next((a for a in node.attribute if a.name == "mode"), None)
                if mode is not None:
                    mode.s = {b"linear": b"bilinear", b"cubic": b"bicubic"}.get(mode.s, mode.s)
                node.domain = _HIDDEN
                n += 1
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Pad", "Split"):
                continue
            if node.op_type == "Pad" and any(a.name == "mode" and a.s == b"wrap" for a in node.attribute):
                raise ModelLoadError(f"Pad node '{node.name}' wraps around (mode 'wrap', opset 19), which has no "
                                     f"opset-{OPSET} form; re-export the model with another padding mode")
            if node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
                raise ModelLoadError(f"Pad node '{node.name}' pads only some axes (its opset-18 'axes' input), "
                                     f"which has no opset-{OPSET} form here; re-export the model with "
                                     f"opset_version={OPSET}, or pad every axis")
            if node.op_type == "Split":
                keep = [a for a in node.attribute if a.name != "num_outputs"]
                del node.attribute[:]
                node.attribute.extend(keep)
            node.domain = _HIDDEN
            n += 1
    if n:
        model.opset_import.append(onnx.helper.make_opsetid(_HIDDEN, 1))
    return n


def _restore_hidden(model: onnx.ModelProto) -> None:
    for g in graph_and_bodies(model.graph):
        for node in g.node:
            if node.domain == _HIDDEN:
                node.domain = ""
    keep = [o for o in model.opset_import if o.domain != _HIDDEN]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _check(model: onnx.ModelProto, path: Path, notes: List[str]) -> onnx.ModelProto:
    """onnxruntime is the judge: the model must run once at the fixed input shapes. onnx's strict shape inference
    and checker run too; when they object to a model that runs (they are stricter than the runtime, e.g. about a
    stored shape they cannot prove), the model is kept with the shapes that could be inferred."""
    try:
        checked = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        onnx.checker.check_model(checked)
        strict_error = None
    except Exception as e:
        checked, strict_error = None, str(e)
    run_error = _dry_run(model)
    if run_error is not None:
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        where = _node_in_message(model, run_error + " " + (strict_error or ""))
        raise ModelLoadError(f"'{path}' does not run at input shapes {shapes}: {where} fails in onnxruntime "
                             f"({run_error[:300]}). If the model was exported for another input size, give that size "
                             "in input_size_list; otherwise cut the model before that node with "
                             "load_onnx(..., outputs=[...]) and run the rest on the CPU." + _setting_hint(model))
    if strict_error is None:
        return checked
    log.warning("onnx's strict shape inference objects to '%s' but onnxruntime runs it; continuing (%s)", path,
                strict_error[:300])
    notes.append(f"{STRICT_CHECK_NOTE} ({strict_error[:160]}); onnxruntime runs the model")
    return infer_shapes(model, data_prop=True)


def cut_loaded(loaded: LoadedModel, inputs: Optional[Sequence[str]], outputs: Optional[Sequence[str]]) -> LoadedModel:
    """Cut a loaded model (e.g. a TorchScript export) to the sub-graph between the named tensors."""
    model = _cut(loaded.model, inputs, outputs)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    note = f"sub-graph cut: inputs {list(inputs or [])}, outputs {list(outputs or [])}"
    return dataclasses.replace(loaded, model=model, notes=loaded.notes + [note])
