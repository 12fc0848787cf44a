"""Range split: give channel groups of very different ranges their own scales, by an exact graph rewrite.

A per-tensor activation scale spans the widest channel; a channel whose range is 100x smaller keeps 2-3 levels
and its information is gone (detector stems do this: a few very wide channels next to narrow ones that the network
amplifies). When depthwise convs read such a tensor, it can be cut by channels without changing the function:
the producing conv (with its fused activation) becomes one conv per channel group, each depthwise consumer becomes
one depthwise conv per group, and their activated outputs are concatenated in group order; the convs that read
them get their input channels permuted to match (or, for other readers, a Gather puts the channels back in order,
pure data movement). Other readers of the split tensor itself (a CSP block's residual Add) read its parts joined
the same way. Every new tensor is an ordinary per-tensor quantized NPU tensor; only the op count grows.
SiLU/ReLU6 need no homogeneity here (unlike equalization).

The concatenated depthwise outputs still share one scale. Where only pointwise-style convs (no padding) read them,
each part is also remapped: x -> k x + b stretches its range onto the widest part's, the part's output quantizer
absorbs it (a scale and zero-point change on the NPU, no extra pass), and the readers' weights (/k) and biases undo
it, so every part gets all 256 levels. A remap is proposed where the rounding noise it takes out of the readers,
measured on calibration values, is worth it (choose_remap), and made when the proposals together lower the model's
output error enough (remap_check); it may cut the depthwise conv into finer parts for it.
On YOLOX-nano the first depthwise output (narrow channels amplified by the 1x1 conv after it) carried most of the
w8a8 error (bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph.names import splice_nodes
from ..ir import GraphInfo
from ..plan import REMAP_OPS, Plan
from ..stages import Needs, QuantState, Rewrite, StageResult


def _fused_chain(info: GraphInfo, plan: Plan, conv: int) -> Optional[Tuple[List[int], str]]:
    """Nodes from a conv to its quantization point (conv, then its fused activation nodes), and that point."""
    y = info.nodes[conv].output[0]
    if y in plan.points and y not in plan.pre_activations:
        return [conv], y
    if y not in plan.internal and y not in plan.pre_activations:
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
    """point -> (producer chain, [depthwise consumer chains]) for points made by a conv and read by depthwise convs
    and, besides them, at most by residual Adds (which get the parts joined back, see split_tensor)."""
    producer_conv = {}
    for w in plan.weighted:
        if info.nodes[w.node].op_type == "Conv":
            fc = _fused_chain(info, plan, w.node)
            if fc is not None:
                producer_conv[fc[1]] = fc[0]
    out = {}
    for t, chain in producer_conv.items():
        readers = info.consumers.get(t, [])
        cons = [c for c in readers if _is_depthwise(info, c)]
        # besides depthwise convs, only residual Adds: other readers (plain convs, a Concat, a Resize) measured
        # worse on the corpus with the parts joined back for them (bench/RESULTS.md, session 64)
        if not cons or t in info.output_set or any(info.nodes[c].op_type != "Add" for c in readers if c not in cons):
            continue
        if int(info.attr(chain[0], "group", 1)) != 1 and not _is_depthwise(info, chain[0]):
            continue
        cchains = [_fused_chain(info, plan, c) for c in cons]
        if any(cc is None or cc[1] in info.output_set for cc in cchains):
            continue
        out[t] = (chain, [cc[0] for cc in cchains])
    return out


# A tensor read by depthwise convs and by residual Adds (a CSP block's input, which the block's Add reads too) is
# split for the depthwise convs alone; the Adds take the parts joined back (a Concat and a Gather, two more ops, at
# the whole tensor's scale as before). It is cut where its channel ranges span this many times the usual ratio (the
# narrowest keep under 3 bits of 8), into at most this many parts.
SHARED_RATIO = 4.0
SHARED_GROUPS = 2
DEAD = 1e-6  # a channel whose range is below this share of the widest is constant (dead): it fits any group
# a channel whose span in a typical calibration sample is under this share of its span in all of them is silent in
# most samples and fires in a few (calibrate.Stats.channel_steadiness): the next input may take it far past its
# calibrated range (a face landmark net's rarely firing ReLU channels did, and their narrow part clipped them).
# Channels active everywhere but varying (a recognizer's HardSwish features) are above it (bench/RESULTS.md,
# session 58).
STEADY = 0.05
# the headroom a part gets above such a channel's calibrated top: about the growth they showed on unseen inputs
HEADROOM = 8.0


def part_range(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray, steadiness: Optional[np.ndarray] = None
               ) -> Tuple[float, float]:
    """The calibration range of the part holding channels ``idx`` of a split tensor (per-channel ``lo`` / ``hi``):
    theirs, widened up to HEADROOM times the top of any channel under STEADY ``steadiness`` in it, never past the
    whole tensor's top. A part whose steady channels reach that far already is left as it is; so is the widest."""
    lo, hi = np.ravel(lo), np.ravel(hi)
    a, b = float(np.min(lo[idx])), float(np.max(hi[idx]))
    if steadiness is not None:
        rare = np.asarray(idx)[np.ravel(steadiness)[idx] < STEADY]
        if len(rare):
            b = min(max(b, HEADROOM * float(np.max(np.maximum(hi[rare], 0)))), float(np.max(hi)))
    return a, b


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
    names = {}
    for src in node.input[1:3]:
        if src:
            names[src] = _fresh(src + suffix, info, inits)
            inits.append(numpy_helper.from_array(info.const(src)[idx], names[src]))
    return names


def _sliced_channel_consts(info: GraphInfo, i: int, idx: np.ndarray, channels: int, suffix: str,
                           inits: list) -> Dict[str, str]:
    """Replacement inputs for a fused activation node i (after a conv) restricted to channels idx: a per-channel
    constant (a PRelu slope [C, 1, 1] or [1, C, 1, 1], a per-channel Mul / Add) keeps only its part's channels."""
    names = {}
    for src in info.nodes[i].input[1:]:
        if not src or src not in info.inits:
            continue
        c = info.const(src)
        if c.ndim == 4 and c.shape[1] == channels:
            part = c[:, idx]
        elif c.ndim == 3 and c.shape[0] == channels:
            part = c[idx]
        else:
            continue  # a scalar, or a constant that does not follow the channels
        names[src] = _fresh(src + suffix, info, inits)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(part), names[src]))
    return names


def _fresh(name: str, info: GraphInfo, inits: list) -> str:
    """An initializer name not yet taken: exporters share one constant (a zero bias) between convs, and two splits
    of it must not collide."""
    taken = set(info.inits) | {t.name for t in inits}
    k, out = 0, name
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    return out


def split_tensor(model: onnx.ModelProto, info: GraphInfo, point: str, producer: List[int],
                 consumers: List[List[int]], groups: List[np.ndarray],
                 orders: Optional[Dict[str, np.ndarray]] = None,
                 remap: Optional[Dict[str, List[Tuple[float, float]]]] = None,
                 origins: Optional[Dict[str, str]] = None,
                 channel_parts: Optional[Dict[str, Tuple[str, np.ndarray]]] = None) -> onnx.ModelProto:
    """Rewrite (see module doc). Consumer outputs keep their names; the split point itself disappears. A consumer
    output left in group order (its conv readers permuted) is recorded in ``orders``: new channel j = old order[j].
    ``remap`` {consumer output: [(k, b) per group]}: each part x becomes k * x + b before the concat, and the
    readers' weights and biases undo it (see choose_remap). ``origins`` gets {new node: the node it was made from},
    ``channel_parts`` {part: (the tensor it holds channels of, those channels)} for the parts of the split point and
    of each consumer's output (before any remap)."""
    made: Dict[str, str] = {}
    held: Dict[str, Tuple[str, np.ndarray]] = {}
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
        channels = int(info.const(info.nodes[producer[0]].input[1]).shape[0])
        for k, i in enumerate(producer):
            if k:
                mapping.update(_sliced_channel_consts(info, i, idx, channels, suffix, inits))
            n = _rename(info.nodes[i], mapping, suffix)
            if k == 0 and int(info.attr(i, "group", 1)) > 1:
                # a depthwise producer: its input channels must follow the group too
                gname = info.nodes[i].input[0] + suffix + "_in"
                ind = info.nodes[i].input[0] + suffix + "_idx"
                inits.append(numpy_helper.from_array(idx.astype(np.int64), ind))
                prod_nodes.append(helper.make_node("Gather", [info.nodes[i].input[0], ind], [gname], axis=1,
                                                   name=n.name + "_gather"))
                made[n.name + "_gather"] = info.nodes[i].name
                n.input[0] = gname
                _set_group(n, len(idx))
            prod_nodes.append(n)
            made[n.name] = info.nodes[i].name
        point_parts.append(mapping[point])
        held[mapping[point]] = (point, idx)
    order = np.concatenate(groups).astype(np.int64)
    inv = np.argsort(order).astype(np.int64)
    if any(c not in drop for c in info.consumers.get(point, [])):
        # readers other than the depthwise convs (a residual Add) read the parts joined back in channel order
        joined = _joined_back(point, point_parts, inv, inits)
        prod_nodes += joined
        made.update({n.name: info.nodes[producer[0]].name for n in joined})
    new_nodes[max(producer)] = prod_nodes
    replaced: Dict[int, onnx.NodeProto] = {}
    for chain in consumers:
        out_point = None
        nodes = []
        parts = []
        for g, idx in enumerate(groups):
            suffix = f"__split{g}"
            mapping = _sliced_conv(info, chain[0], idx, suffix, inits, True)
            mapping[point] = point_parts[g]
            channels = int(info.const(info.nodes[chain[0]].input[1]).shape[0])
            for k, i in enumerate(chain):
                if k:
                    mapping.update(_sliced_channel_consts(info, i, idx, channels, suffix, inits))
                n = _rename(info.nodes[i], mapping, suffix)
                if k == 0:
                    _set_group(n, len(idx))
                nodes.append(n)
                made[n.name] = info.nodes[i].name
            out_point = _chain_output(info, chain)
            parts.append(mapping[out_point])
            held[mapping[out_point]] = (out_point, idx)
        readers = info.consumers.get(out_point, [])
        if readers and out_point not in info.output_set and all(_plain_conv(info, r) for r in readers):
            # the readers take the channels in group order: permute their weights' input axis, no Gather
            affine = (remap or {}).get(out_point)
            if affine is not None:
                parts = _remap_parts(parts, affine, nodes, inits)
            nodes.append(helper.make_node("Concat", parts, [out_point], axis=1, name=out_point + "_split_concat"))
            if orders is not None:
                orders[out_point] = order
            for r in readers:
                node = onnx.NodeProto()
                node.CopyFrom(info.nodes[r])
                sfx = f"__perm_{_safe_suffix(out_point)}"
                w = info.const(node.input[1])[:, order]
                if affine is not None:  # the reader undoes the remap: x = (x' - b) / k per input channel
                    k = np.concatenate([np.full(len(idx), a[0]) for idx, a in zip(groups, affine)])
                    b = np.concatenate([np.full(len(idx), a[1]) for idx, a in zip(groups, affine)])
                    w = (w / k.reshape(1, -1, 1, 1)).astype(np.float32)
                    old = info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else \
                        np.zeros(w.shape[0], np.float32)
                    bias = (old - w.reshape(w.shape[0], w.shape[1], -1).sum(2) @ b).astype(np.float32)
                    bname = (node.input[2] if len(node.input) > 2 and node.input[2] else node.name + "_bias") + sfx
                    inits.append(numpy_helper.from_array(bias, bname))
                    if len(node.input) > 2:
                        node.input[2] = bname
                    else:
                        node.input.append(bname)
                wname = node.input[1] + sfx
                inits.append(numpy_helper.from_array(w, wname))
                node.input[1] = wname
                replaced[r] = node
        else:
            nodes += _joined_back(out_point, parts, inv, inits)
        new_nodes[max(chain)] = nodes
        for n in nodes:  # the join, reorder and remap nodes rebuild the chain's output
            made.setdefault(n.name, info.nodes[info.producer[out_point]].name)
    if origins is not None:
        origins.update(made)
    if channel_parts is not None:
        channel_parts.update(held)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    splice_nodes(g, list(info.nodes), {**{i: [n] for i, n in replaced.items()}, **new_nodes}, drop)
    g.initializer.extend(inits)
    known = {v.name for v in g.value_info}
    for n in (n for ns in new_nodes.values() for n in ns):  # types now, shapes once at the end (normalize)
        for o in n.output:
            if o not in known and o not in info.output_set:
                g.value_info.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
    return out


def _joined_back(t: str, parts: List[str], inv: np.ndarray, inits: list) -> List[onnx.NodeProto]:
    """The nodes that rebuild ``t`` in its channel order from its ``parts`` (in group order): a Concat, then a
    Gather by ``inv``, pure data movement."""
    cat, perm = t + "__split_cat", t + "__split_perm"
    inits.append(numpy_helper.from_array(inv, perm))
    return [helper.make_node("Concat", parts, [cat], axis=1, name=t + "_split_concat"),
            helper.make_node("Gather", [cat, perm], [t], axis=1, name=t + "_split_order")]


def _remap_parts(parts: List[str], affine: List[Tuple[float, float]], nodes: list, inits: list) -> List[str]:
    """k * part + b after each part (scalar Mul/Add: the plan folds them into the part's fused activation, or on
    RKNPU2 makes them a layer of their own, plan._absorb_affine)."""
    out = []
    for p, (k, b) in zip(parts, affine):
        y = p
        if k != 1.0:
            inits.append(numpy_helper.from_array(np.array(k, np.float32), p + "__remap_k"))
            nodes.append(helper.make_node("Mul", [y, p + "__remap_k"], [p + "__scaled"], name=p + REMAP_OPS[0]))
            y = p + "__scaled"
        if b != 0.0:
            inits.append(numpy_helper.from_array(np.array(b, np.float32), p + "__remap_b"))
            nodes.append(helper.make_node("Add", [y, p + "__remap_b"], [p + "__shifted"], name=p + REMAP_OPS[1]))
            y = p + "__shifted"
        out.append(y)
    return out


def _pad_free(info: GraphInfo, i: int) -> bool:
    """A conv that never reads padding: a remapped input's zero need not be a grid point."""
    pads = info.attr(i, "pads", None)
    auto = info.attr(i, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return auto in ("NOTSET", "VALID") and (pads is None or not any(int(p) for p in pads))


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


def remappable_outputs(info: GraphInfo, consumers: List[List[int]]) -> List[str]:
    """The depthwise consumers' outputs that range split may remap per part: read only by plain convs that never
    read padding (YOLOX-nano's and MobileNetV2's depthwise -> pointwise pairs)."""
    out = []
    for chain in consumers:
        t = _chain_output(info, chain)
        readers = info.consumers.get(t, [])
        if readers and t not in info.output_set and all(_plain_conv(info, r) and _pad_free(info, r) for r in readers):
            out.append(t)
    return out


def split_candidates(model: onnx.ModelProto) -> Dict[str, List[str]]:
    """The NCHW tensors range split could cut (made by a conv, read by depthwise convs and at most residual Adds),
    each with its remappable consumer outputs (see remappable_outputs)."""
    from ..plan import build_plan

    info = GraphInfo(model)
    return {t: [o for o in remappable_outputs(info, cons) if info.rank(o) == 4]
            for t, (_, cons) in candidates(info, build_plan(info)).items() if info.rank(t) == 4}


REMAP_RATIO = 2.0  # a consumer output's channel groups are cut until each spans <= this (1 bit lost at most)
REMAP_MIN = 1.25   # parts whose spans differ less than this keep their common scale without a remap
# a remap (and the finer parts it may need, one more op each) is made where it takes rounding noise worth at least
# this share of the readers' output power (-31 dB) out of them: set between the benefits of the YOLOX-nano outputs
# whose remap helped and the next one down, whose remap cost mmse accuracy (bench/quant_accuracy.py)
REMAP_BENEFIT = 8e-4
# the remaps are made when, all together, they take at least this share of the output power out of the output error
# (each proposed tensor rounded per group against on one shared range, the rest float; see remap_check)
REMAP_CHECK = 1e-3


@dataclass
class Remap:
    """Per channel group of a depthwise output: x -> k * x + b (see choose_remap)."""

    affine: List[Tuple[float, float]]
    benefit: float  # rounding noise taken out of the readers' outputs, as a share of their signal power
    target: Tuple[float, float]  # the range every part is stretched onto (the widest part's)


def _readers(info: GraphInfo, t: str) -> List[np.ndarray]:
    """t's readers' weights as [out, in, taps]."""
    weights = [info.const(info.nodes[r].input[1]) for r in info.consumers.get(t, [])]
    return [w.reshape(w.shape[0], w.shape[1], -1) for w in weights]


def choose_remap(info: GraphInfo, t: str, lo: np.ndarray, hi: np.ndarray, x: np.ndarray,
                 groups: List[np.ndarray], levels: int) -> Optional[Remap]:
    """Stretch every channel group of t onto the widest group's range (its readers' weights take 1/k), so the
    scale the parts share gives each of them all its levels, and say how much rounding noise that takes out of
    t's readers' outputs. Noise model per channel c: e_c * rho_c * step_c^2 / 12, with e_c the energy of the
    weights reading c and rho_c c's measured rounding noise over the uniform model's (< 1 for ReLU zeros,
    sparse or constant channels), means left out (bias correction removes them). x: t's values at a few
    calibration positions, [C, positions]. The stretch also moves the readers' weight columns down their weight
    grids; GPTQ rounding absorbs most of that, and an uncompensated model of it predicted losses that did not
    happen (on YOLOX-nano u8 the stretch it advised against raised the output cosine)."""
    lo_g = np.array([min(float(lo[idx].min()), 0.0) for idx in groups])
    hi_g = np.array([max(float(hi[idx].max()), 0.0) for idx in groups])
    span = hi_g - lo_g
    ref = int(np.argmax(span))
    if span[ref] <= 0 or span[ref] / max(span.min(), 1e-30) < REMAP_MIN:
        return None
    # a dead part stays; a stretch past one level per step of the widest part finds nothing more to resolve
    k_group = np.where(span > span[ref] * DEAD, np.minimum(span[ref] / np.maximum(span, 1e-30), levels), 1.0)
    k = np.zeros(len(lo))
    for g, idx in enumerate(groups):
        k[idx] = k_group[g]
    step = span[ref] / levels
    err = np.round((x - lo_g[ref]) / step) * step + lo_g[ref] - x
    rho = np.clip(err.var(1) / (step * step / 12.0), 0.0, 2.0)
    energy = sum(np.square(w, dtype=np.float64).sum((0, 2)) for w in _readers(info, t))
    signal = _reader_power(info, t, x - x.mean(1, keepdims=True)) / x.shape[1]
    saved = float((energy * rho * step * step * (1.0 - 1.0 / (k * k))).sum()) / 12.0
    affine = []
    for g, kg in enumerate(k_group):
        kg = float(np.float32(kg))
        bg = 0.0 if kg == 1.0 or (lo_g[ref] == 0.0 and lo_g[g] == 0.0) else float(np.float32(lo_g[ref] - kg * lo_g[g]))
        affine.append((kg, bg))
    return Remap(affine, saved / max(signal, 1e-30), (float(lo_g[ref]), float(hi_g[ref])))


def _reader_power(info: GraphInfo, t: str, x: np.ndarray) -> float:
    """Power of x ([C, positions] values of t) through t's conv readers (taps add as independent)."""
    power = 0.0
    for w in _readers(info, t):
        for tap in range(w.shape[2]):
            power += float(np.square(w[:, :, tap] @ x, dtype=np.float64).sum())
    return power


def _refine(groups: List[np.ndarray], finer: List[np.ndarray], channels: int) -> List[np.ndarray]:
    """Cut each group by a finer partition of the same channels (the pieces of a group stay adjacent)."""
    label = np.zeros(channels, np.int64)
    for g, idx in enumerate(finer):
        label[idx] = g
    return [idx[label[idx] == v] for idx in groups for v in dict.fromkeys(label[idx].tolist())]


def _decide(info: GraphInfo, lo: np.ndarray, hi: np.ndarray, cons: List[List[int]], ranges, samples,
            levels: int, max_ratio: float, max_groups: int, min_benefit: float):
    """A candidate's channel groups, and the remaps {depthwise output: Remap} its outputs get: the split tensor's
    own grouping, cut finer where a remappable output's remap onto the finer groups is worth it."""
    groups = group_channels(lo, hi, max_ratio=max_ratio, max_groups=max_groups) or [np.arange(len(lo))]
    chosen = {}
    for o in remappable_outputs(info, cons):
        if o not in ranges or o not in samples:
            continue
        finer = group_channels(*ranges[o], max_ratio=REMAP_RATIO, max_groups=max_groups)
        trial = _refine(groups, finer, len(lo)) if finer else groups
        choice = choose_remap(info, o, *ranges[o], samples[o], trial, levels)
        if choice is not None and choice.benefit >= min_benefit:
            groups = trial
            chosen[o] = choice
    # fitted again where a later output cut the groups finer than this one's remap saw
    fitted = {o: r if len(r.affine) == len(groups) else choose_remap(info, o, *ranges[o], samples[o], groups, levels)
              for o, r in chosen.items()}
    return groups, {o: r for o, r in fitted.items() if r is not None}


def remap_check(model: onnx.ModelProto, proposed: Dict[str, List[np.ndarray]],
                ranges: Dict[str, Tuple[np.ndarray, np.ndarray]], data, threads: int = 0, samples: int = 2,
                min_drop: float = REMAP_CHECK) -> Tuple[bool, Dict]:
    """Whether the proposed remaps lower the model's output error enough to be worth their ops: the float model
    with each proposed tensor rounded to 8 bits per channel group (the group's own range, as the remap gives it)
    against the same tensors rounded on one shared range, on the first ``samples`` calibration samples; the drop
    in output error must be at least ``min_drop`` of the output power. The local noise measure in choose_remap
    cannot see what happens downstream: a detector's first depthwise output feeds everything, so its remaps take a
    large share of the output error away, while MobileNetV2's projections feed residual sums, where they barely
    show."""
    import itertools

    from ...graph.outputs import comparable_outputs
    from ..calibrate import make_session
    from ..qdq import with_outputs

    info = GraphInfo(model)

    def rounded(per_group: bool) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        after: Dict[int, list] = {}
        for t, groups in proposed.items():
            lo, hi = np.minimum(ranges[t][0], 0.0), np.maximum(ranges[t][1], 0.0)
            if per_group:
                for idx in groups:
                    lo[idx], hi[idx] = lo[idx].min(), hi[idx].max()
            else:
                lo, hi = np.full_like(lo, lo.min()), np.full_like(hi, hi.max())
            scale = np.maximum((hi - lo) / 255.0, 1e-12).astype(np.float32)
            zero = np.round(-lo / scale).astype(np.float32)
            c = {k: t + "__chk_" + k for k in ("s", "z", "lo", "hi", "a", "b", "r", "q", "d")}
            m.graph.initializer.extend([numpy_helper.from_array(scale.reshape(1, -1, 1, 1), c["s"]),
                                        numpy_helper.from_array(zero.reshape(1, -1, 1, 1), c["z"]),
                                        numpy_helper.from_array(np.array(0, np.float32), c["lo"]),
                                        numpy_helper.from_array(np.array(255, np.float32), c["hi"])])
            for i in info.consumers.get(t, []):
                node = m.graph.node[i]
                node.input[:] = [t + "__chk" if x == t else x for x in node.input]
            # per-channel fake quantization from opset-11 ops (per-axis QuantizeLinear needs opset 13)
            n = helper.make_node
            after[info.producer[t]] = [n("Div", [t, c["s"]], [c["a"]]), n("Add", [c["a"], c["z"]], [c["b"]]),
                                       n("Round", [c["b"]], [c["r"]]), n("Clip", [c["r"], c["lo"], c["hi"]], [c["q"]]),
                                       n("Sub", [c["q"], c["z"]], [c["d"]]), n("Mul", [c["d"], c["s"]], [t + "__chk"])]
        nodes = [x for i, node in enumerate(m.graph.node) for x in [node] + after.get(i, [])]
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        return m

    # the outputs, or where one is an NMS's selection, what the selection reads (its length may differ per version)
    names = comparable_outputs(model.graph)
    sessions = [make_session(with_outputs(m, names), threads) for m in (model, rounded(False), rounded(True))]
    err, n = np.zeros(2), 0
    for feed in itertools.islice(data, samples):
        ref, shared, grouped = (s.run(names, feed) for s in sessions)
        power = sum(float(np.square(r, dtype=np.float64).sum()) for r in ref)
        for k, out in enumerate((shared, grouped)):
            err[k] += sum(float(np.square(o - r, dtype=np.float64).sum()) for o, r in zip(out, ref)) / power
        n += 1
    err /= max(n, 1)
    made = bool(err[0] - err[1] >= min_drop)
    return made, {"tensors": sorted(proposed), "output_error_shared": round(float(err[0]), 6),
                  "output_error_grouped": round(float(err[1]), 6), "made": made}


def range_split(model: onnx.ModelProto, ranges: Dict[str, Tuple[np.ndarray, np.ndarray]], max_ratio: float = 8.0,
                max_groups: int = 3, samples: Optional[Dict[str, np.ndarray]] = None, levels: int = 255,
                min_benefit: float = REMAP_BENEFIT, confirm=None, requantized_pre_activations: bool = False
                ) -> Tuple[onnx.ModelProto, Dict, Dict[str, tuple]]:
    """Split every candidate whose per-channel ranges (``ranges``: tensor -> (min[C], max[C]), from calibration)
    span more than ``max_ratio``, or whose remappable consumer outputs' ranges (also in ``ranges`` when measured)
    span more than REMAP_RATIO; those outputs' parts are remapped onto one range (see choose_remap).
    Returns the model, a report, and the new tensors: {part: (original tensor, channel indices, None)} for the
    split tensor's parts, {part: (original, None, None)} for the depthwise outputs' parts (a subset of the
    original's channels, so within its range), {part: (original, None, (lo, hi))} for remapped parts.
    report["channel_orders"]: tensors left in group order (see split_tensor); report["channel_affine"]:
    {tensor: (factor[C], offset[C])} with float = quantized-model tensor * factor + offset, original order;
    report["pooled"]: lists of remapped parts stretched onto one range, whose histograms are one distribution
    (the concat's) for kl_divergence / mmse. ``confirm``: called once with every remap the candidates would get,
    {depthwise output: channel groups}, before any is made; returns (make them?, a report entry).
    ``requantized_pre_activations``: the plan's (plan.py); a depthwise conv's requantized output is cut into parts
    like its activation's, {part: (original, channel indices, None)}."""
    from ..ir import normalize
    from ..plan import build_plan

    samples = samples or {}
    pools: List[List[str]] = []
    done = []
    orders: Dict[str, np.ndarray] = {}
    affines: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    parts: Dict[str, Tuple[str, Optional[np.ndarray], Optional[Tuple[float, float]]]] = {}
    origins: Dict[str, str] = {}
    channels: Dict[str, Tuple[str, np.ndarray]] = {}
    # candidates once, by node name (normalize() names every node): a rewrite moves indices, not names; a chain
    # an earlier rewrite cut up is gone by name, as it would be from a fresh plan
    first = GraphInfo(model)
    first_plan = build_plan(first, requantized_pre_activations=requantized_pre_activations)
    found = candidates(first, first_plan)
    named = {t: ([first.nodes[i].name for i in prod], [[first.nodes[i].name for i in c] for c in cons])
             for t, (prod, cons) in found.items()}
    # each candidate's groups and remaps, decided on the model as given: a rewrite elsewhere only permutes, folds
    # or slices the weights the decision reads, so it would decide the same
    # a tensor that other ops read too (see candidates) is held to a stricter bar and fewer parts
    limits = {t: (max_ratio * SHARED_RATIO, SHARED_GROUPS) if len(first.consumers.get(t, [])) > len(cons)
              else (max_ratio, max_groups) for t, (_, cons) in found.items()}
    decided = {t: _decide(first, lo, hi, found[t][1], ranges, samples, levels, *limits[t], min_benefit)
               for t, (lo, hi) in ranges.items() if t in found}
    check = None
    proposed = {o: groups for groups, fitted in decided.values() for o in fitted}
    if confirm is not None and proposed:
        # all the remaps, judged together on the model's outputs before any is made
        made, check = confirm(proposed)
        if not made:
            decided = {t: _decide(first, lo, hi, found[t][1], ranges, samples, levels, *limits[t], float("inf"))
                       for t, (lo, hi) in ranges.items() if t in found}
    for t, (lo, hi) in ranges.items():
        if t not in decided or len(decided[t][0]) == 1:  # the other keys are remap outputs' ranges
            continue
        groups, fitted = decided[t]
        info = GraphInfo(model)
        index = {n.name: i for i, n in enumerate(info.nodes)}
        prod_names, cons_names = named[t]
        if not all(n in index for n in prod_names + [n for c in cons_names for n in c]):
            continue
        prod, cons = [index[n] for n in prod_names], [[index[n] for n in c] for c in cons_names]
        made: Dict[str, str] = {}
        model = split_tensor(model, info, t, prod, cons, groups, orders, {o: r.affine for o, r in fitted.items()},
                             made, channels)
        origins.update({k: origins.get(v, v) for k, v in made.items()})
        for g, idx in enumerate(groups):
            parts[f"{t}__split{g}"] = (t, idx, None)
        if len(info.consumers.get(t, [])) > len(cons):  # the parts joined back for the other readers
            parts[f"{t}__split_cat"] = (t, None, None)
        # a requantized conv output inside the producing chain (pre_activation_points='tflite': the conv before
        # the SiLU whose output is split) is cut into the same channel parts
        for pre in (o for i in prod for o in info.nodes[i].output[:1] if o in first_plan.pre_activations):
            for g, idx in enumerate(groups):
                parts[f"{pre}__split{g}"] = (pre, idx, None)
        for chain in cons:
            pre = info.nodes[chain[0]].output[0]
            if pre in first_plan.pre_activations:  # a part of its own: the NPU requantizes it before the activation
                for g, idx in enumerate(groups):
                    parts[f"{pre}__split{g}"] = (pre, idx, None)
            out = _chain_output(info, chain)
            if out not in fitted:
                for g in range(len(groups)):
                    parts[f"{out}__split{g}"] = (out, None, None)
                continue
            pooled = []
            if requantized_pre_activations:  # the activation's part is int8 before its remap (plan._absorb_affine)
                for g, idx in enumerate(groups):
                    parts[f"{out}__split{g}"] = (out, idx, None)
            for g, (idx, (k, b)) in enumerate(zip(groups, fitted[out].affine)):
                name = f"{out}__split{g}" + ("__shifted" if b != 0.0 else "__scaled" if k != 1.0 else "")
                olo, ohi = ranges[out]
                own = (min(float(olo[idx].min()), 0.0), max(float(ohi[idx].max()), 0.0))
                stretched = k != 1.0 or own[1] - own[0] == fitted[out].target[1] - fitted[out].target[0]
                parts[name] = (out, None, fitted[out].target if stretched else own)
                if stretched:
                    pooled.append(name)
            pools.append(pooled)
            stretch = np.empty(len(lo), np.float32)
            shift = np.empty(len(lo), np.float32)
            for idx, (kg, bg) in zip(groups, fitted[out].affine):
                stretch[idx], shift[idx] = kg, bg
            affines[out] = (1.0 / stretch, -shift / stretch)
        r = np.maximum(hi, 0) - np.minimum(lo, 0)
        entry = {"tensor": t, "groups": [len(g) for g in groups],
                 "range_ratio": round(float(r.max() / max(r.min(), 1e-12)), 1)}
        if fitted:
            entry["remapped"] = sorted(fitted)
        done.append(entry)
    return (normalize(model) if done else model), \
        {"tensors": done, "channel_orders": orders, "channel_affine": affines, "pooled": pools,
         "node_origins": origins, "channel_parts": channels,
         **({"remap_check": check} if check else {})}, parts


class RangeSplit(Rewrite):
    """After pass 1: cut the candidates whose channel ranges are too uneven, remapping depthwise outputs' parts where
    that pays (the output check runs the float model on two calibration samples). The parts' ranges come from the
    per-channel statistics, so no extra calibration pass is needed."""

    name = "range_split"

    def enabled(self, state: QuantState) -> bool:
        return bool(state.options.range_split)

    def needs(self, state: QuantState) -> Needs:
        sources = state.plan.sources
        found = split_candidates(state.model)
        remap = [o for t, outs in found.items() if t in sources for o in outs if o in sources] \
            if state.options.range_remap else []
        pre = [o for t in found if t in sources for c in state.info.consumers.get(t, [])
               for o in state.info.nodes[c].output[:1] if o in state.plan.pre_activations]
        # and a requantized conv output inside the chain that makes the split tensor (pre_activation_points='tflite':
        # conv -> activation -> the tensor), cut into the same parts by range_split
        chains = candidates(state.info, state.plan)
        pre += [o for t in found if t in sources and t in chains for i in chains[t][0]
                for o in state.info.nodes[i].output[:1] if o in state.plan.pre_activations]
        self.candidates = [t for t in found if t in sources] + remap + pre
        # the remap measures rounding noise on sampled values of 8-bit outputs
        return Needs(channel_ranges=list(self.candidates),
                     channel_samples=remap if state.scheme.act.bits == 8 else [])

    def apply(self, state: QuantState) -> Optional[StageResult]:
        if not self.candidates:
            return None
        stats, options, model = state.stats, state.options, state.model
        ranges = {c: stats.channel_minmax[c] for c in self.candidates}
        new_model, report, parts = range_split(
            model, ranges, options.range_split_ratio, samples=stats.channel_samples,
            levels=(1 << state.scheme.act.bits) - 1,
            confirm=lambda proposed: remap_check(model, proposed, ranges, state.data, options.threads),
            requantized_pre_activations=options.requantized_pre_activations)
        stats.pooled = report.pop("pooled")
        for part, (orig, idx, remapped) in parts.items():
            if remapped is not None:
                stats.minmax[part] = remapped
            elif idx is None:
                stats.minmax[part] = stats.minmax[orig]
            else:
                lo, hi = stats.channel_minmax[orig]
                stats.minmax[part] = part_range(lo, hi, idx, stats.channel_steadiness.get(orig))
        affine = report.pop("channel_affine", {})
        orders = report.pop("channel_orders", None)
        origins, channels = report.pop("node_origins"), report.pop("channel_parts")
        state.replace_model(new_model)
        return StageResult(self.name, report, channel_scales={t: f for t, (f, _) in affine.items()},
                           channel_offsets={t: o for t, (_, o) in affine.items()}, channel_orders=orders,
                           node_origins=origins, channel_parts=channels)
