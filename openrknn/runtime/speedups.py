"""Exact rewrites of a quantized (QDQ) graph that let onnxruntime pick its fast kernels, applied when the simulator
loads a model. Each one leaves every output bit for bit as onnxruntime computes the graph as stored (tests pin it);
they only steer around kernels that are slow for reasons unrelated to the result.

- Max pooling in float: onnxruntime turns DQ -> MaxPool -> Q into a uint8 MaxPool whose kernel is orders of magnitude
  slower than its float one (YOLOX's SPP pools). A max of values on one quantization grid is on that grid, so
  quantizing it again (same scale and zero point) is the identity: the Q/DQ pair after the pool goes, and onnxruntime's
  QDQ propagation (which would move the DQ back behind the pool) is turned off for the session.
- Depthwise convs with per-channel weight zero points (asymmetric_quantized-u8 with quantized_method='channel'):
  onnxruntime's depthwise QLinearConv has no fast path for them. The same conv as a grouped conv of G channels per
  group, each channel's weights on its own input channel and its zero point (a zero weight) on the other G - 1, runs
  the integer GEMM path: same integer sums, same requantization. Depthwise convs of a few channels (range split's
  small parts: 1, 3, 5 channels) go the same way as one dense group: the depthwise kernel pays per pixel. Only
  where the conv's output goes straight to a quantize step (onnxruntime's QLinearConv): a conv computed in float
  (its activation before the quantize step) would sum in another order.
- Depthwise convs whose channel count is not a multiple of 8 (range split's wide parts: 28, 91, 143 channels), fed by
  a dense conv: onnxruntime's integer depthwise kernel runs such a count at a third to half of its speed (28
  channels at 112x112: 0.70 ms against 0.21 ms for the float conv of 32). Both convs get zero-weight channels up to
  the next multiple of 8 and a Slice drops them after the depthwise conv's quantize step; every real channel sums
  the same integers (MobileNetV2 w8a8, one thread: 7.8 -> 5.9 ms per frame; float 7.6 ms). With per-channel weight
  zero points the count goes up to a multiple of 16 instead, the grouped form's fastest group, which also lets it
  take a part whose count no group size divides (a prime 191 ran 6.2 ms in the per-channel kernel; MobileNetV2 u8
  per-channel 24 -> 13.5 ms); this rule runs first, then the grouped form on the edited graph.
- The mean subtraction of the pre-processing as a 1x1 depthwise conv (weight 1, bias -mean): onnxruntime's layout
  pass moves a Sub behind the NHWC integer convs into NHWC, where its broadcast over a 3-wide last axis runs element
  by element (MobileNetV2: 1.0-1.15 ms of a 9 ms frame, against 0.08 ms in NCHW); a float conv stays NCHW. x * 1 is x
  and x + (-m) is x - m in IEEE arithmetic, so the values are the same.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..onnx_wire import WireError, graph_names
from .graph_edit import Node, WireModel, encode_new_node, encode_node

log = logging.getLogger("openrknn.runtime")

# onnxruntime graph transformers to leave out when the float-pooling rewrite ran
NO_QDQ_PROPAGATION = ("QDQPropagationTransformer",)
_SAME_GRID_OPS = ("MaxPool", "GlobalMaxPool")
DEPTHWISE_GROUP = 16  # channels per group of the grouped form; measured fastest among 4..32 (bench/RESULTS.md)
SMALL_DEPTHWISE = 8  # at most this many channels: one dense group (range split's small parts; bench/RESULTS.md)
CHANNEL_ALIGN = 8  # depthwise channel counts onnxruntime's integer kernel runs at full speed are multiples of this
GROUPED = "grouped depthwise (per-channel weight zero points)"
ALIGNED = "depthwise channels padded to a multiple of 8"
DENSE = "small depthwise as a dense conv"


@dataclass
class Rewritten:
    model_bytes: bytes
    disabled_optimizers: List[str] = field(default_factory=list)
    applied: Dict[str, int] = field(default_factory=dict)  # rule -> how many places


def speed_up(model_bytes: bytes, input_shapes: Optional[Dict[str, Sequence[int]]] = None) -> Rewritten:
    """The model with the exact speed rewrites applied (unchanged when none applies or it cannot be read).
    input_shapes: the graph inputs' shapes as the package's metadata states them (the mean rewrite needs the
    channel count of the tensor the mean is taken from; without them it is not made)."""
    try:
        wm = WireModel(model_bytes)
    except (WireError, UnicodeDecodeError, ValueError) as e:
        log.debug("speed rewrites skipped: %s", e)
        return Rewritten(model_bytes)
    if not any(n.op_type == "QuantizeLinear" for n in wm.nodes):
        return Rewritten(model_bytes)
    try:
        outputs = set(graph_names(model_bytes).outputs)
        wm.graph_outputs = outputs
        producer, consumers = _links(wm)
        pools = _float_pooling(wm, producer, consumers)
        aligned = _aligned_depthwise(wm, producer, consumers)
        if aligned:  # the grouped form reads the padded depthwise convs: a second pass over the edited graph
            wm = WireModel(wm.serialize())
            wm.graph_outputs = outputs
            producer, consumers = _links(wm)
        depthwise = _grouped_depthwise(wm, producer, consumers)
        means = _mean_as_conv(wm, producer, input_shapes or {})
        out = Rewritten(wm.serialize() if wm.changed or aligned else model_bytes)
    except Exception as e:  # a malformed tensor in an uploaded package: onnxruntime judges the bytes as they are
        log.debug("speed rewrites skipped: %s", e)
        return Rewritten(model_bytes)
    if pools:
        out.applied["float max pooling"] = pools
        out.disabled_optimizers = list(NO_QDQ_PROPAGATION)
    out.applied.update(depthwise)
    if aligned:
        out.applied[ALIGNED] = aligned
    if means:
        out.applied["mean subtraction as a 1x1 conv"] = means
    return out


def _links(wm: WireModel):
    """(tensor -> producing node, tensor -> reading nodes) of the model's graph."""
    producer = {o: n for n in wm.nodes for o in n.outputs}
    consumers: Dict[str, List[Node]] = defaultdict(list)
    for n in wm.nodes:
        for t in n.inputs:
            consumers[t].append(n)
    return producer, consumers


def _same(wm: WireModel, a: List[str], b: List[str]) -> bool:
    """Two Q/DQ nodes' (scale, zero point) inputs hold the same values."""
    if len(a) < 3 or len(b) < 3:
        return False
    for x, y in zip(a[1:3], b[1:3]):
        if x == y:
            continue
        ax, ay = wm.array(x), wm.array(y)
        if ax is None or ay is None or ax.dtype != ay.dtype or not np.array_equal(ax, ay):
            return False
    return True


def _float_pooling(wm: WireModel, producer: Dict[str, Node], consumers: Dict[str, List[Node]]) -> int:
    done = 0
    for n in wm.nodes:
        if n.op_type not in _SAME_GRID_OPS or n.domain not in ("", "ai.onnx") or len(n.outputs) != 1:
            continue
        dq = producer.get(n.inputs[0]) if n.inputs else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
            continue
        if n.outputs[0] in wm.graph_outputs:
            continue
        readers = consumers.get(n.outputs[0], [])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or readers[0].domain != dq.domain:
            continue
        q = readers[0]
        after = consumers.get(q.outputs[0], [])
        if len(after) != 1 or after[0].op_type != "DequantizeLinear" or after[0].domain != dq.domain \
                or q.outputs[0] in wm.graph_outputs:
            continue
        dq2 = after[0]
        if not (_same(wm, dq.inputs, q.inputs) and _same(wm, q.inputs, dq2.inputs)):
            continue
        wm.replaced[n.index] = encode_node(n, outputs=[dq2.outputs[0]])
        wm.replaced[q.index] = b""
        wm.replaced[dq2.index] = b""
        done += 1
    return done


def _grouped_depthwise(wm: WireModel, producer: Dict[str, Node], consumers: Dict[str, List[Node]]
                       ) -> Dict[str, int]:
    done: Dict[str, int] = {}
    for n in wm.nodes:
        if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or len(n.inputs) < 2 or n.index in wm.replaced:
            continue
        if not _feeds_quantize(wm, n, consumers):
            continue  # only a conv that onnxruntime runs as QLinearConv (integer sums: the same in any grouping)
        wdq = producer.get(n.inputs[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.domain not in ("", "ai.onnx") \
                or len(wdq.inputs) < 3 or not wm.is_initializer(wdq.inputs[0]) or len(consumers[wdq.outputs[0]]) != 1:
            continue
        w, zp = wm.array(wdq.inputs[0]), wm.array(wdq.inputs[2])
        channels = n.int_attrs.get("group", 1)
        if w is None or zp is None or w.ndim != 4 or w.shape[1] != 1 or channels != w.shape[0] or channels < 2 \
                or zp.size not in (1, channels):
            continue
        if zp.size == channels and not np.all(zp == zp[0]):
            g, rule = _group_size(channels), GROUPED
        elif channels <= SMALL_DEPTHWISE:
            g, rule = channels, DENSE
        else:
            continue
        if g is None:
            continue
        # weight (o, i) of the grouped form: the depthwise weight where i is o's own channel, else o's zero point
        zero = np.broadcast_to(zp.reshape(-1), (channels,)).reshape(-1, 1, 1, 1)
        wide = np.repeat(zero, g, axis=1) * np.ones((1, 1) + w.shape[2:], w.dtype)
        idx = np.arange(channels)
        wide[idx, idx % g] = w[:, 0]
        name = wm.fresh_name(wdq.inputs[0] + "__grouped")
        wm.add_initializer(name, wide.astype(w.dtype))
        wm.replaced[wdq.index] = encode_node(wdq, inputs=[name] + wdq.inputs[1:])
        wm.replaced[n.index] = encode_node(n, int_attrs={"group": channels // g})
        done[rule] = done.get(rule, 0) + 1
    return done


def _quantize_after(conv: Node, consumers: Dict[str, List[Node]]) -> Optional[Tuple[Optional[Node], Node]]:
    """(its Relu/Clip or None, the QuantizeLinear) when a conv's output reaches a quantize step directly or through
    a Relu/Clip, each the only reader of the tensor before it; else None."""
    readers = consumers.get(conv.outputs[0], []) if conv.outputs else []
    if len(readers) != 1:
        return None
    if readers[0].op_type == "QuantizeLinear":
        return None, readers[0]
    act = readers[0]
    if act.op_type not in ("Relu", "Clip") or act.domain not in ("", "ai.onnx"):
        return None
    after = consumers.get(act.outputs[0], [])
    return (act, after[0]) if len(after) == 1 and after[0].op_type == "QuantizeLinear" else None


def _sole_reader(t: str, consumers: Dict[str, List[Node]], op_type: str) -> Optional[Node]:
    readers = consumers.get(t, [])
    ok = len(readers) == 1 and readers[0].op_type == op_type and readers[0].domain in ("", "ai.onnx")
    return readers[0] if ok else None


class _Padder:
    """Zero-weight output channels for convs' weights, biases and their quantization parameters, as new
    initializers the DequantizeLinear nodes are pointed at (the originals may be shared). Nothing is written
    until commit()."""

    def __init__(self, wm: WireModel, producer: Dict[str, Node], consumers: Dict[str, List[Node]]):
        self.wm, self.producer, self.consumers = wm, producer, consumers
        self.edits: Dict[int, bytes] = {}
        self.inits: List[tuple] = []

    def _dq(self, t: str) -> Optional[Node]:
        dq = self.producer.get(t)
        ok = dq is not None and dq.op_type == "DequantizeLinear" and dq.domain in ("", "ai.onnx") and \
            len(dq.inputs) in (2, 3) and dq.index not in self.wm.replaced and len(self.consumers.get(t, [])) == 1 and \
            all(self.wm.is_initializer(i) and self.wm.array(i) is not None for i in dq.inputs)
        return dq if ok else None

    def _padded(self, name: str, channels: int, extra: int, fill) -> Optional[str]:
        a = self.wm.array(name)
        if a.ndim == 0 or a.size == 1:
            return name  # per tensor: every channel, the new ones too
        if a.shape[0] != channels:
            return None
        new = self.wm.fresh_name(name + "__aligned")
        self.inits.append((new, np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])))
        return new

    def _dq_inputs(self, dq: Node, channels: int, extra: int, fills: tuple) -> Optional[List[str]]:
        names = [self._padded(t, channels, extra, f) for t, f in zip(dq.inputs, fills)]
        return None if None in names else names

    def conv(self, conv: Node, channels: int, extra: int) -> bool:
        """Plan the padded weight (and bias) of ``conv``; False when their form is not the one handled."""
        wdq = self._dq(conv.inputs[1])
        if wdq is None or len(wdq.inputs) != 3 or self.wm.array(wdq.inputs[0]).shape[0] != channels:
            return False
        scale, zp = (self.wm.array(t).reshape(-1) for t in wdq.inputs[1:3])
        if (scale.size > 1 or zp.size > 1) and wdq.int_attrs.get("axis", 1) != 0:
            return False
        # a new channel's weights sit at its zero point: (w - z) = 0, whatever the input
        names = self._dq_inputs(wdq, channels, extra, (zp[0] if zp.size == 1 else 0, 1.0, 0))
        if names is None:
            return False
        if len(conv.inputs) > 2 and conv.inputs[2]:
            bdq = self._dq(conv.inputs[2])
            x_dq = self.producer.get(conv.inputs[0])
            if bdq is None or self.wm.array(bdq.inputs[0]).dtype != np.int32 or x_dq is None or \
                    x_dq.op_type != "DequantizeLinear" or self.wm.array(x_dq.inputs[1]) is None:
                return False
            # onnxruntime fuses the conv only where the bias scale is input scale x weight scale: with per-channel
            # weights a new channel's weight scale is 1, so its bias scale is the input's; with one weight scale
            # every channel's bias scale is the same, the new ones' too
            bias_scale = self.wm.array(bdq.inputs[1]).reshape(-1)[0] if scale.size == 1 else \
                self.wm.array(x_dq.inputs[1]).reshape(-1)[0]
            bnames = self._dq_inputs(bdq, channels, extra, (0, bias_scale, 0))
            if bnames is None:
                return False
            self.edits[bdq.index] = encode_node(bdq, inputs=bnames)
        self.edits[wdq.index] = encode_node(wdq, inputs=names)
        return True

    def commit(self) -> None:
        for name, array in self.inits:
            self.wm.add_initializer(name, array)
        self.wm.replaced.update(self.edits)


def _aligned_depthwise(wm: WireModel, producer: Dict[str, Node], consumers: Dict[str, List[Node]]) -> int:
    """conv -> [act] -> Q -> DQ -> depthwise conv (C channels, C % 8 != 0) -> [act] -> Q: both convs get C' - C
    zero-weight channels (C' the next multiple of 8, or of 16 with per-channel weight zero points: the grouped form's
    group) and a Slice keeps the first C after the last Q. The
    depthwise conv's channels are independent, the dense conv's output channels too, and both run as integer
    QLinearConvs (each feeds a quantize step), so every real channel's sums and requantization are unchanged."""
    done = 0
    for dw in wm.nodes:
        channels = dw.int_attrs.get("group", 1)
        if dw.op_type != "Conv" or dw.domain not in ("", "ai.onnx") or len(dw.inputs) < 2 or dw.index in wm.replaced \
                or channels <= SMALL_DEPTHWISE or dw.inputs[1] not in producer:
            continue
        wdq = producer[dw.inputs[1]]
        zp = wm.array(wdq.inputs[2]) if len(wdq.inputs) > 2 else None
        per_channel_zp = zp is not None and zp.size == channels and not np.all(zp == zp.reshape(-1)[0])
        # per-channel weight zero points: the grouped form takes the conv after this rule, fastest in groups of 16
        # (MobileNetV2 u8 per-channel 15.0 -> 13.5 ms against its own divisors), and a prime count it cannot take
        align = DEPTHWISE_GROUP if per_channel_zp else CHANNEL_ALIGN
        if channels % align == 0:
            continue
        w = wm.array(wdq.inputs[0])
        x_dq = producer.get(dw.inputs[0])
        if w is None or w.ndim != 4 or w.shape[:2] != (channels, 1) or not _feeds_quantize(wm, dw, consumers) \
                or x_dq is None or x_dq.op_type != "DequantizeLinear" or len(consumers.get(dw.inputs[0], [])) != 1:
            continue
        q_out = _quantize_after(dw, consumers)[1]
        x_q = producer.get(x_dq.inputs[0])
        if x_q is None or x_q.op_type != "QuantizeLinear" or _sole_reader(x_q.outputs[0], consumers,
                                                                          "DequantizeLinear") is None:
            continue
        # the dense conv (and its Relu/Clip) whose quantize step feeds the depthwise conv alone
        src = producer.get(x_q.inputs[0])
        if src is not None and src.op_type in ("Relu", "Clip") and len(consumers.get(src.outputs[0], [])) == 1:
            src = producer.get(src.inputs[0])
        if src is None or src.op_type != "Conv" or src.domain not in ("", "ai.onnx") or src.index in wm.replaced \
                or src.int_attrs.get("group", 1) != 1 or not _feeds_quantize(wm, src, consumers) \
                or _quantize_after(src, consumers)[1] is not x_q:
            continue
        if any(t in wm.graph_outputs for t in (src.outputs[0], x_q.outputs[0], x_dq.outputs[0], dw.outputs[0])):
            continue
        extra = -channels % align
        padder = _Padder(wm, producer, consumers)
        if not (padder.conv(src, channels, extra) and padder.conv(dw, channels, extra)):
            continue
        padder.commit()
        wm.replaced[dw.index] = encode_node(dw, int_attrs={"group": channels + extra})
        # the padded tensor leaves under a new name; a Slice restores the original one with C channels
        wide = wm.fresh_name(q_out.outputs[0] + "__aligned")
        wm.replaced[q_out.index] = encode_node(q_out, outputs=[wide])
        starts, ends, axes = (wm.fresh_name(f"{wide}_{k}") for k in ("starts", "ends", "axes"))
        for name, value in ((starts, 0), (ends, channels), (axes, 1)):
            wm.add_initializer(name, np.asarray([value], np.int64))
        wm.insert_after(q_out.index, encode_new_node("Slice", [wide, starts, ends, axes], [q_out.outputs[0]],
                                                     wm.fresh_name(wide + "_slice")))
        done += 1
    return done


def _feeds_quantize(wm: WireModel, conv: Node, consumers: Dict[str, List[Node]]) -> bool:
    """The conv's output reaches a QuantizeLinear directly, or through a Relu/Clip that onnxruntime removes because
    the quantize step clamps the same way (its ReluQuantFusion / ClipQuantFusion): it becomes a QLinearConv."""
    found = _quantize_after(conv, consumers)
    if found is None:
        return False
    act, q = found
    if act is None:
        return True
    if len(q.inputs) < 3:
        return False
    scale, zp = wm.array(q.inputs[1]), wm.array(q.inputs[2])
    if scale is None or zp is None or zp.size != 1 or scale.size != 1 or zp.dtype not in (np.uint8, np.int8):
        return False
    info, z, s32 = np.iinfo(zp.dtype), int(zp.reshape(-1)[0]), np.float32(scale.reshape(-1)[0])
    if act.op_type == "Relu":
        return z == info.min
    # onnxruntime's test, in its float32 arithmetic: the clip range covers the quantized range within one epsilon
    lo, hi = s32 * np.float32(info.min - z), s32 * np.float32(info.max - z)
    bounds = [wm.array(t) if t else None for t in act.inputs[1:3]]
    if len(bounds) != 2 or any(b is None or b.size != 1 for b in bounds):
        return False
    eps = np.finfo(np.float32).eps
    cmin, cmax = (np.float32(b.reshape(-1)[0]) for b in bounds)
    return bool(cmin - lo <= eps and hi - cmax <= eps)


def _group_size(channels: int) -> int | None:
    """Channels per group: the largest divisor <= DEPTHWISE_GROUP (at least 4), or all channels when few."""
    for g in range(DEPTHWISE_GROUP, 3, -1):
        if channels % g == 0:
            return g
    return channels if channels <= 2 * DEPTHWISE_GROUP else None


def _mean_as_conv(wm: WireModel, producer: Dict[str, Node], input_shapes: Dict[str, Sequence[int]]) -> int:
    """Sub(Transpose(graph input), mean [1, C, 1, 1]) -> Conv(x, ones [C, 1, 1, 1], -mean, group=C), where the
    stated input shape and the transpose's perm give the subtracted tensor C channels on axis 1 (a conv with any
    other channel count would not load)."""
    from onnx import helper

    done = 0
    for n in wm.nodes:
        if n.op_type != "Sub" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 2 or n.index in wm.replaced:
            continue
        mean = wm.array(n.inputs[1])
        t = producer.get(n.inputs[0])
        if mean is None or mean.dtype != np.float32 or mean.ndim != 4 or mean.shape[0] != 1 \
                or mean.shape[2:] != (1, 1) or mean.shape[1] < 2 or t is None or t.op_type != "Transpose":
            continue
        shape, perm = input_shapes.get(t.inputs[0]), t.ints_attrs.get("perm")
        if shape is None or perm is None or len(shape) != 4 or sorted(perm) != [0, 1, 2, 3] \
                or shape[perm[1]] != mean.shape[1]:
            continue
        c = int(mean.shape[1])
        w_name, b_name = wm.fresh_name(n.inputs[1] + "__one"), wm.fresh_name(n.inputs[1] + "__neg")
        wm.add_initializer(w_name, np.ones((c, 1, 1, 1), np.float32))
        wm.add_initializer(b_name, np.negative(mean.reshape(c)))
        wm.replaced[n.index] = helper.make_node("Conv", [n.inputs[0], w_name, b_name], n.outputs, name=n.name,
                                                group=c).SerializeToString()
        done += 1
    return done
