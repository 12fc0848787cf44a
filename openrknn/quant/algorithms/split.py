"""Range split: give channel groups of very different ranges their own scales, by an exact graph rewrite.

A per-tensor activation scale spans the widest channel; a channel whose range is 100x smaller keeps 2-3 levels
and its information is gone (YOLOX-nano's stem output: channels up to 136 next to channels of 0.2-1.1 that the
network amplifies). When every consumer of such a tensor is a depthwise conv, the tensor can be cut by channels
without changing the function: the producing conv (with its fused activation) becomes one conv per channel
group, each depthwise consumer becomes one depthwise conv per group, and their activated outputs are concatenated
in group order; the convs that read them get their input channels permuted to match (or, for other readers, a
Gather puts the channels back in order, pure data movement). Every new tensor is an ordinary per-tensor
quantized NPU tensor; only the op count grows. SiLU/ReLU6 need no homogeneity here (unlike equalization).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import GraphInfo
from ..plan import Plan


def _fused_chain(info: GraphInfo, plan: Plan, conv: int) -> Optional[Tuple[List[int], str]]:
    """Nodes from a conv to its quantization point (conv, then its fused activation nodes), and that point."""
    y = info.nodes[conv].output[0]
    if y in plan.points:
        return [conv], y
    if y not in plan.internal:
        return None
    chain, frontier = [conv], [y]
    point = None
    while frontier:
        t = frontier.pop()
        for c in info.consumers.get(t, []):
            if c in chain:
                continue
            chain.append(c)
            out = info.nodes[c].output[0]
            if out in plan.points:
                point = out if point in (None, out) else ""
            elif out in plan.internal:
                frontier.append(out)
            else:
                return None
    if not point:
        return None
    return sorted(chain), point


def _is_depthwise(info: GraphInfo, i: int) -> bool:
    node = info.nodes[i]
    if node.op_type != "Conv" or not info.is_const(node.input[1]):
        return False
    w = info.const(node.input[1])
    return w.shape[1] == 1 and int(info.attr(i, "group", 1)) == w.shape[0] > 1


def candidates(info: GraphInfo, plan: Plan) -> Dict[str, Tuple[List[int], List[List[int]]]]:
    """point -> (producer chain, [consumer chains]) for points made by a conv and read only by depthwise convs."""
    producer_conv = {}
    for w in plan.weighted:
        if info.nodes[w.node].op_type == "Conv":
            fc = _fused_chain(info, plan, w.node)
            if fc is not None:
                producer_conv[fc[1]] = fc[0]
    out = {}
    for t, chain in producer_conv.items():
        cons = info.consumers.get(t, [])
        if not cons or t in info.output_set or not all(_is_depthwise(info, c) for c in cons):
            continue
        if int(info.attr(chain[0], "group", 1)) != 1 and not _is_depthwise(info, chain[0]):
            continue
        cchains = [_fused_chain(info, plan, c) for c in cons]
        if any(cc is None or cc[1] in info.output_set for cc in cchains):
            continue
        out[t] = (chain, [cc[0] for cc in cchains])
    return out


DEAD = 1e-6  # a channel whose range is below this share of the widest is constant (dead): it fits any group


def group_channels(lo: np.ndarray, hi: np.ndarray, max_ratio: float = 8.0, max_groups: int = 3,
                   min_group: int = 1) -> Optional[List[np.ndarray]]:
    """Cut channels, sorted by range, where the range drops the most, until each group spans <= max_ratio
    (or max_groups is reached). Dead channels join the widest group. None when one group already does."""
    r = np.maximum(np.maximum(hi, 0) - np.minimum(lo, 0), 0.0)
    live = r > r.max() * DEAD
    order = np.argsort(-r)
    order = order[live[order]]
    dead = np.flatnonzero(~live)
    groups = [order]
    while len(groups) < max_groups:
        worst = max(range(len(groups)), key=lambda g: r[groups[g][0]] / r[groups[g][-1]])
        g = groups[worst]
        if r[g[0]] / r[g[-1]] <= max_ratio or len(g) < 2 * min_group:
            break
        gaps = np.log(r[g[:-1]]) - np.log(r[g[1:]])
        gaps[:min_group - 1] = -1
        if min_group > 1:
            gaps[len(gaps) - min_group + 1:] = -1
        cut = int(np.argmax(gaps)) + 1
        groups[worst:worst + 1] = [g[:cut], g[cut:]]
    if len(groups) == 1:
        return None
    groups[0] = np.concatenate([groups[0], dead])
    return [np.sort(g) for g in groups]


def _rename(node: onnx.NodeProto, mapping: Dict[str, str], suffix: str) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.name = node.name + suffix
    for k, t in enumerate(new.input):
        new.input[k] = mapping.get(t, t)
    for k, t in enumerate(new.output):
        mapping[t] = t + suffix
        new.output[k] = t + suffix
    return new


def _sliced_conv(info: GraphInfo, i: int, idx: np.ndarray, suffix: str, inits: list,
                 depthwise: bool) -> Dict[str, str]:
    """Replacement inputs for conv i restricted to output channels idx (depthwise: also its group count)."""
    node = info.nodes[i]
    names = {node.input[1]: node.input[1] + suffix}
    inits.append(numpy_helper.from_array(info.const(node.input[1])[idx], node.input[1] + suffix))
    if len(node.input) > 2 and node.input[2]:
        names[node.input[2]] = node.input[2] + suffix
        inits.append(numpy_helper.from_array(info.const(node.input[2])[idx], node.input[2] + suffix))
    return names


def split_tensor(model: onnx.ModelProto, info: GraphInfo, point: str, producer: List[int],
                 consumers: List[List[int]], groups: List[np.ndarray],
                 orders: Optional[Dict[str, np.ndarray]] = None) -> onnx.ModelProto:
    """Rewrite (see module doc). Consumer outputs keep their names; the split point itself disappears. A consumer
    output left in group order (its conv readers permuted) is recorded in ``orders``: new channel j = old order[j]."""
    new_nodes: Dict[int, List[onnx.NodeProto]] = {}
    inits: list = []
    drop = set(producer)
    for chain in consumers:
        drop.update(chain)
    point_parts = []
    prod_nodes = []
    for g, idx in enumerate(groups):
        suffix = f"__split{g}"
        mapping = _sliced_conv(info, producer[0], idx, suffix, inits, False)
        for k, i in enumerate(producer):
            n = _rename(info.nodes[i], mapping, suffix)
            if k == 0 and int(info.attr(i, "group", 1)) > 1:
                # a depthwise producer: its input channels must follow the group too
                gname = info.nodes[i].input[0] + suffix + "_in"
                ind = info.nodes[i].input[0] + suffix + "_idx"
                inits.append(numpy_helper.from_array(idx.astype(np.int64), ind))
                prod_nodes.append(helper.make_node("Gather", [info.nodes[i].input[0], ind], [gname], axis=1,
                                                   name=n.name + "_gather"))
                n.input[0] = gname
                _set_group(n, len(idx))
            prod_nodes.append(n)
        point_parts.append(mapping[point])
    new_nodes[max(producer)] = prod_nodes
    order = np.concatenate(groups).astype(np.int64)
    inv = np.argsort(order).astype(np.int64)
    replaced: Dict[int, onnx.NodeProto] = {}
    for chain in consumers:
        out_point = None
        nodes = []
        parts = []
        for g, idx in enumerate(groups):
            suffix = f"__split{g}"
            mapping = _sliced_conv(info, chain[0], idx, suffix, inits, True)
            mapping[point] = point_parts[g]
            for k, i in enumerate(chain):
                n = _rename(info.nodes[i], mapping, suffix)
                if k == 0:
                    _set_group(n, len(idx))
                nodes.append(n)
            out_point = _chain_output(info, chain)
            parts.append(mapping[out_point])
        readers = info.consumers.get(out_point, [])
        if readers and out_point not in info.output_set and all(_plain_conv(info, r) for r in readers):
            # the readers take the channels in group order: permute their weights' input axis, no Gather
            nodes.append(helper.make_node("Concat", parts, [out_point], axis=1, name=out_point + "_split_concat"))
            if orders is not None:
                orders[out_point] = order
            for r in readers:
                node = onnx.NodeProto()
                node.CopyFrom(info.nodes[r])
                wname = node.input[1] + f"__perm_{_safe_suffix(out_point)}"
                inits.append(numpy_helper.from_array(info.const(node.input[1])[:, order], wname))
                node.input[1] = wname
                replaced[r] = node
        else:
            cat = out_point + "__split_cat"
            perm = out_point + "__split_perm"
            inits.append(numpy_helper.from_array(inv, perm))
            nodes.append(helper.make_node("Concat", parts, [cat], axis=1, name=out_point + "_split_concat"))
            nodes.append(helper.make_node("Gather", [cat, perm], [out_point], axis=1,
                                          name=out_point + "_split_order"))
        new_nodes[max(chain)] = nodes
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes_out = []
    for i, node in enumerate(info.nodes):
        if i in new_nodes:
            nodes_out.extend(new_nodes[i])
        elif i in replaced:
            nodes_out.append(replaced[i])
        elif i not in drop:
            nodes_out.append(node)
    del g.node[:]
    g.node.extend(nodes_out)
    g.initializer.extend(inits)
    known = {v.name for v in g.value_info}
    for n in (n for ns in new_nodes.values() for n in ns):  # types now, shapes once at the end (normalize)
        for o in n.output:
            if o not in known and o not in info.output_set:
                g.value_info.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
    return out


def _plain_conv(info: GraphInfo, i: int) -> bool:
    node = info.nodes[i]
    return (node.op_type == "Conv" and int(info.attr(i, "group", 1)) == 1 and len(node.input) > 1
            and info.is_const(node.input[1]) and node.input[0] != node.input[1])


def _safe_suffix(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[-40:]


def _chain_output(info: GraphInfo, chain: List[int]) -> str:
    """The tensor a fused chain hands to the rest of the graph."""
    for i in chain:
        for o in info.nodes[i].output:
            if any(c not in chain for c in info.consumers.get(o, [])) or o in info.output_set:
                return o
    return info.nodes[chain[-1]].output[0]


def _set_group(node: onnx.NodeProto, group: int) -> None:
    for a in node.attribute:
        if a.name == "group":
            a.i = group
            return
    node.attribute.append(helper.make_attribute("group", group))


def channel_ranges(model: onnx.ModelProto, tensors: List[str], data, samples: int = 8,
                   threads: int = 0) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per-channel (axis 1) min and max of NCHW tensors over the first ``samples`` calibration samples."""
    import itertools

    from ..calibrate import augment, make_session

    outs = {}
    for t in tensors:
        outs[t + "__cmin"] = ("ReduceMin", t, (0, 2, 3))
        outs[t + "__cmax"] = ("ReduceMax", t, (0, 2, 3))
    sess = make_session(augment(model, outs), threads)
    names = list(outs)
    lo = {t: None for t in tensors}
    hi = {t: None for t in tensors}
    for feed in itertools.islice(data, samples):
        res = sess.run(names, feed)
        for k, t in enumerate(tensors):
            a, b = res[2 * k], res[2 * k + 1]
            lo[t] = a if lo[t] is None else np.minimum(lo[t], a)
            hi[t] = b if hi[t] is None else np.maximum(hi[t], b)
    return {t: (lo[t], hi[t]) for t in tensors if lo[t] is not None}


def split_candidates(model: onnx.ModelProto) -> List[str]:
    """The NCHW tensors range split could cut (made by a conv, read only by depthwise convs)."""
    from ..plan import build_plan

    info = GraphInfo(model)
    return [t for t in candidates(info, build_plan(info)) if info.rank(t) == 4]


def range_split(model: onnx.ModelProto, ranges: Dict[str, Tuple[np.ndarray, np.ndarray]], max_ratio: float = 8.0,
                max_groups: int = 3) -> Tuple[onnx.ModelProto, Dict, Dict[str, Tuple[str, Optional[np.ndarray]]]]:
    """Split every candidate whose per-channel ranges (``ranges``: tensor -> (min[C], max[C]), from calibration)
    span more than ``max_ratio``. Returns the model, a report, and the new tensors: {part: (original tensor,
    channel indices)} for the split tensor's parts, {part: (original, None)} for the depthwise outputs' parts
    (a subset of the original's channels, so within its range). report["channel_orders"]: tensors left in group
    order (see split_tensor)."""
    from ..ir import normalize
    from ..plan import build_plan

    done = []
    orders: Dict[str, np.ndarray] = {}
    parts: Dict[str, Tuple[str, Optional[np.ndarray]]] = {}
    for t, (lo, hi) in ranges.items():
        groups = group_channels(lo, hi, max_ratio=max_ratio, max_groups=max_groups)
        if groups is None:
            continue
        info = GraphInfo(model)
        cur = candidates(info, build_plan(info))
        if t not in cur:
            continue
        prod, cons = cur[t]
        model = split_tensor(model, info, t, prod, cons, groups, orders)
        for g, idx in enumerate(groups):
            parts[f"{t}__split{g}"] = (t, idx)
            for chain in cons:
                out = _chain_output(info, chain)
                parts[f"{out}__split{g}"] = (out, None)
        r = np.maximum(hi, 0) - np.minimum(lo, 0)
        done.append({"tensor": t, "groups": [len(g) for g in groups],
                     "range_ratio": round(float(r.max() / max(r.min(), 1e-12)), 1)})
    return (normalize(model) if done else model), {"tensors": done, "channel_orders": orders}, parts
