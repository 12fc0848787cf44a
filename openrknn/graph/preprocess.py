"""Put the board's pre-processing inside the graph, as the NPU does.

The built model takes what the board feeds: NHWC pixels (0..255) in the feed's channel order. For each 4-D float input
the graph starts with  Transpose(NHWC->NCHW) -> Gather(reorder) -> Sub(mean) -> Div(std)  and at optimization level 3
those are folded into the first convolution(s) where that is exact. A channel-last model input (graph/layout.py) is
fed the same way: when the model's own first step is Transpose(NHWC->NCHW) that Transpose becomes the chain's (the
model body then reads the NCHW pre-processed tensor, and the fold below applies); otherwise the chain runs in NHWC
(Gather/Sub/Div on the last axis) with no Transpose at all. Folding:
- channel reorder and 1/std always fold into the conv weights (a permutation and a per-input-channel scale);
- the mean folds into the conv bias only when the conv has no padding (padded zeros would otherwise stand for a
  pixel value of `mean`, not 0); with padding the Sub stays, moved before the conv in feed channel order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

from . import layout as layout_mod
from .names import rename_uses, unique_name, used_names

log = logging.getLogger("openrknn.graph")

PREFIX = "openrknn_pre"


@dataclass
class InputPreprocess:
    name: str
    channels: int
    mean: List[float]  # model channel order, len == channels
    std: List[float]
    reorder: Optional[List[int]]  # model channel c takes fed channel reorder[c]; None = identity
    layout: str = "nchw"  # the model input's own layout (graph/layout.py)
    layout_reason: str = ""


def _dims(value_info) -> List[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def is_image_input(value_info) -> bool:
    t = value_info.type.tensor_type
    return len(t.shape.dim) == 4 and t.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


def _n_values(i: int, *per_input) -> Optional[int]:
    """How many per-channel values the config gives for input i (None when it gives none or one for all)."""
    counts = [len(v[i] if i < len(v) else v[-1]) for v in per_input if v is not None]
    counts = [c for c in counts if c > 1]
    return max(counts) if counts else None


def input_layouts(model: onnx.ModelProto, mean_values=None, std_values=None, reorder_channel=None,
                  input_layout=None) -> List[Optional[layout_mod.InputLayout]]:
    """The layout of each graph input (None for inputs that are not 4-D float images); see graph/layout.py."""
    out: List[Optional[layout_mod.InputLayout]] = []
    for i, inp in enumerate(model.graph.input):
        if not is_image_input(inp):
            out.append(None)
            continue
        explicit = None
        if input_layout is not None:
            explicit = input_layout[i] if i < len(input_layout) else input_layout[-1]
        out.append(layout_mod.detect_layout(model.graph, inp, _n_values(i, mean_values, std_values, reorder_channel),
                                            explicit))
    return out


def make_specs(model: onnx.ModelProto, mean_values, std_values, reorder_channel,
               input_layout=None) -> List[Optional[InputPreprocess]]:
    """One spec per graph input (None for inputs that are not 4-D float images)."""
    specs: List[Optional[InputPreprocess]] = []
    layouts = input_layouts(model, mean_values, std_values, reorder_channel, input_layout)
    for i, (inp, lay) in enumerate(zip(model.graph.input, layouts)):
        if lay is None:
            specs.append(None)
            continue
        c = lay.channels

        def pick(values, default, i=i, c=c):
            if values is None:
                return [default] * c
            v = values[i] if i < len(values) else values[-1]
            return [float(x) for x in (v * c if len(v) == 1 else v)]  # one value stands for every channel

        reorder = reorder_channel[i] if reorder_channel is not None else None
        specs.append(InputPreprocess(inp.name, c, pick(mean_values, 0.0), pick(std_values, 1.0),
                                     list(reorder) if reorder is not None else None, lay.layout, lay.reason))
    return specs


def _chain(graph, spec: InputPreprocess, src: str, axis: int, const_shape: List[int]) -> List[onnx.NodeProto]:
    """Gather(reorder) -> Sub(mean) -> Div(std) on ``axis``, reading ``src``; the last node's output is renamed by
    the caller. Empty when the pre-processing is the identity."""
    nodes: List[onnx.NodeProto] = []
    cur = src
    c = spec.channels
    if spec.reorder is not None and spec.reorder != list(range(c)):
        idx = f"{PREFIX}/{spec.name}/reorder_idx"
        graph.initializer.append(numpy_helper.from_array(np.array(spec.reorder, np.int64), idx))
        nxt = f"{PREFIX}/{spec.name}/reordered"
        nodes.append(helper.make_node("Gather", [cur, idx], [nxt], axis=axis, name=f"{PREFIX}/{spec.name}/reorder"))
        cur = nxt
    if any(spec.mean):
        m = f"{PREFIX}/{spec.name}/mean"
        graph.initializer.append(numpy_helper.from_array(np.array(spec.mean, np.float32).reshape(const_shape), m))
        nxt = f"{PREFIX}/{spec.name}/centered"
        nodes.append(helper.make_node("Sub", [cur, m], [nxt], name=f"{PREFIX}/{spec.name}/sub_mean"))
        cur = nxt
    if any(s != 1.0 for s in spec.std):
        s_name = f"{PREFIX}/{spec.name}/std"
        graph.initializer.append(numpy_helper.from_array(np.array(spec.std, np.float32).reshape(const_shape), s_name))
        nxt = f"{PREFIX}/{spec.name}/scaled"
        nodes.append(helper.make_node("Div", [cur, s_name], [nxt], name=f"{PREFIX}/{spec.name}/div_std"))
    return nodes


def _absorb_model_transposes(graph, name: str, inner: str) -> List[str]:
    """The channel-last input's own Transpose(0,3,1,2) readers are dropped: their readers read ``inner`` (the NCHW
    pre-processed tensor). Returns their names."""
    dropped = []
    outputs = {o.name for o in graph.output}
    for t in layout_mod.consumers(graph, name):
        if t.output[0] in outputs:  # a graph output keeps its name: an Identity writes it (hwc_to_chw's one node)
            index = list(graph.node).index(t)
            graph.node.insert(index, helper.make_node("Identity", [inner], [t.output[0]], name=t.name or t.output[0]))
        else:
            rename_uses(graph, t.output[0], inner)
        graph.node.remove(t)
        dropped.append(t.name or t.output[0])
    return dropped


def attach(model: onnx.ModelProto, specs: List[Optional[InputPreprocess]]) -> List[dict]:
    """Rewrite the model in place so that image inputs are float32 NHWC with the pre-processing inside.

    Returns per-input metadata for the container (deployed shape, layout, pre-processing).
    """
    graph = model.graph
    new_nodes: List[onnx.NodeProto] = []
    metas: List[dict] = []
    for inp, spec in zip(list(graph.input), specs):
        shape = _dims(inp)
        if spec is None:
            metas.append({"name": inp.name, "shape": shape,
                          "dtype": helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name,
                          "layout": "raw", "model_shape": shape, "preprocess": None})
            continue
        for out in graph.output:
            if out.name == spec.name:
                raise ValueError(f"input '{spec.name}' is also a graph output; cannot attach pre-processing")
        if spec.layout == "nhwc":
            n, h, w, c = shape
        else:
            n, c, h, w = shape
        inner = f"{PREFIX}/{spec.name}/model_input"
        model_type = inp.type.tensor_type.elem_type
        absorbed: List[str] = []
        if spec.layout == "nhwc" and not layout_mod.first_consumers_are_to_nchw(graph, spec.name):
            # the model body reads NHWC: pre-process on the last axis, no Transpose
            chain = _chain(graph, spec, spec.name, 3, [1, 1, 1, c])
            if not chain and model_type == TensorProto.FLOAT:
                inner = spec.name  # nothing to do: the body reads the fed tensor itself
            else:
                rename_uses(graph, spec.name, inner)
        else:
            if spec.layout == "nhwc":
                absorbed = _absorb_model_transposes(graph, spec.name, inner)
            else:
                rename_uses(graph, spec.name, inner)  # the body (Loop/If bodies too) reads the pre-processed tensor
            nchw = f"{PREFIX}/{spec.name}/nchw"
            chain = [helper.make_node("Transpose", [spec.name], [nchw], perm=layout_mod.TO_NCHW,
                                      name=f"{PREFIX}/{spec.name}/transpose")]
            chain += _chain(graph, spec, nchw, 1, [1, c, 1, 1])
        if model_type != TensorProto.FLOAT:  # pixels arrive as float32; the body keeps its own float type
            src = chain[-1].output[0] if chain else spec.name
            chain.append(helper.make_node("Cast", [src], [inner], to=model_type, name=f"{PREFIX}/{spec.name}/cast"))
        elif chain:
            chain[-1].output[0] = inner  # the last step writes the tensor the model body reads
        new_nodes += chain
        inp.type.tensor_type.elem_type = TensorProto.FLOAT
        dims = inp.type.tensor_type.shape.dim
        for d, v in zip(dims, (n, h, w, c)):
            d.Clear()
            d.dim_value = v
        pre = {"reorder_channel": spec.reorder, "mean": spec.mean, "std": spec.std, "folded_into": None}
        metas.append({"name": spec.name, "shape": [n, h, w, c], "dtype": "uint8", "layout": "nhwc",
                      "model_shape": shape, "model_layout": spec.layout,
                      "model_dtype": helper.tensor_dtype_to_np_dtype(model_type).name, "preprocess": pre})
        if spec.layout == "nhwc":
            log.info("input '%s' is channel-last (%s)%s", spec.name, spec.layout_reason,
                     f"; its Transpose {', '.join(absorbed)} now starts the pre-processing" if absorbed else "")
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return metas


def _consumers(graph, name: str) -> List[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_identity(pre: dict) -> bool:
    c = len(pre["mean"])
    return (not any(pre["mean"]) and all(v == 1.0 for v in pre["std"])
            and (pre["reorder_channel"] is None or list(pre["reorder_channel"]) == list(range(c))))


def fold_into_first_conv(model: onnx.ModelProto, metas: List[dict]) -> List[str]:
    """Fold reorder/mean/std into the convolutions that read the pre-processed input, where exact. In place."""
    graph = model.graph
    inits: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    folded_notes = []
    for meta in metas:
        pre = meta.get("preprocess")
        if not pre or _is_identity(pre) or meta.get("model_dtype", "float32") != "float32":
            continue  # nothing to fold, or a float16/double body whose weights we leave in their own type
        name = meta["name"]
        inner = f"{PREFIX}/{name}/model_input"
        convs = _consumers(graph, inner)
        graph_outs = {o.name for o in graph.output}
        if not convs or inner in graph_outs or any(
            n.op_type != "Conv" or _attr(n, "group", 1) != 1 or n.input[1] not in inits
            or (len(n.input) > 2 and n.input[2] and n.input[2] not in inits) for n in convs
        ):
            continue
        c = len(pre["mean"])
        reorder = pre["reorder_channel"] or list(range(c))
        inv = np.argsort(reorder)
        mean_fed = np.array(pre["mean"], np.float64)[inv]  # mean of fed channel j
        std_fed = np.array(pre["std"], np.float64)[inv]
        pads_zero = all(not any(_attr(n, "pads", [0])) and _attr(n, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET",
                                                                                                b"VALID", "VALID")
                        for n in convs)
        fold_mean = pads_zero or not mean_fed.any()
        for conv in convs:
            w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            w_new = w[:, inv] / std_fed.reshape(1, c, 1, 1)
            b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                 if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0]))
            if fold_mean:
                b = b - (w_new * mean_fed.reshape(1, c, 1, 1)).sum(axis=(1, 2, 3))
            # unique: a siamese model's inputs read the same first weights, each input folds its own copy
            taken = {t.name for t in graph.initializer}
            w_name = unique_name(f"{conv.input[1]}/{PREFIX}_folded", taken)
            b_name = unique_name(f"{conv.input[1]}/{PREFIX}_folded_bias", taken)
            graph.initializer.append(numpy_helper.from_array(w_new.astype(np.float32), w_name))
            graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), b_name))
            conv.input[1] = w_name
            if len(conv.input) > 2:
                conv.input[2] = b_name
            else:
                conv.input.append(b_name)
        # Rebuild the pre-processing chain: Transpose [-> Sub(mean in feed order)] -> convs
        prefix = f"{PREFIX}/{name}/"
        keep = [n for n in graph.node if not (n.name.startswith(prefix) and n.op_type != "Transpose")]
        del graph.node[:]
        graph.node.extend(keep)
        src = f"{PREFIX}/{name}/nchw"
        if not fold_mean:
            m = f"{PREFIX}/{name}/mean_fed"
            graph.initializer.append(numpy_helper.from_array(mean_fed.astype(np.float32).reshape(1, c, 1, 1), m))
            sub = helper.make_node("Sub", [src, m], [inner], name=f"{PREFIX}/{name}/sub_mean")
            transpose_idx = next(i for i, n in enumerate(graph.node) if n.name == f"{PREFIX}/{name}/transpose")
            graph.node.insert(transpose_idx + 1, sub)
        else:
            rename_uses(graph, inner, src)
        pre["folded_into"] = [n.name for n in convs]
        pre["mean_folded"] = bool(fold_mean)
        what = "reorder, std" + (" and mean" if fold_mean and mean_fed.any() else "")
        folded_notes.append(f"input '{name}': {what} folded into {', '.join(n.name or '?' for n in convs)}"
                            + ("" if fold_mean else " (mean kept as a Sub: the conv pads its input)"))
    used = used_names(graph)  # constants read only inside a Loop/If body are still used
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return folded_notes
