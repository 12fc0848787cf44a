"""Darknet .cfg + .weights -> one ONNX graph (NCHW, as Darknet computes).

The .cfg is an INI-like list of [sections]; the .weights file is a small header (major, minor, revision, images seen)
followed by each layer's float32 parameters in file order: for a convolution with batch_normalize=1 the biases,
scales, rolling means and rolling variances (filters each) then the kernels, without it the biases then the kernels.
Batch norm is folded into the convolution as Darknet computes it: (x - mean) / (sqrt(var) + 1e-6) * scale + bias.

[yolo] / [region] layers decode boxes on the CPU in every Darknet deployment: the model's outputs are the raw maps
of the convolutions they read ([1, anchors * (5 + classes), h, w]; sigmoid on x, y, objectness and classes is the
decoder's).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..errors import ModelLoadError
from . import LoadedModel, file_sha256, normalize_size_list
from .builder import GraphBuilder, UnsupportedLayer

log = logging.getLogger("openrknn.frontends.darknet")

BN_EPS = 1e-6  # Darknet adds it to the standard deviation, not to the variance


def parse_cfg(text: str, path: str = "<cfg>") -> List[Tuple[str, Dict[str, str]]]:
    sections: List[Tuple[str, Dict[str, str]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ModelLoadError(f"{path}:{lineno}: '{raw.strip()}' opens a section without closing ']'")
            sections.append((line[1:-1].strip().lower(), {}))
            continue
        if "=" not in line or not sections:
            raise ModelLoadError(f"{path}:{lineno}: '{raw.strip()}' is not 'key=value' inside a [section]; is this a "
                                 "Darknet .cfg file?")
        k, v = line.split("=", 1)
        sections[-1][1][k.strip()] = v.strip()
    if not sections or sections[0][0] not in ("net", "network"):
        raise ModelLoadError(f"{path}: a Darknet .cfg starts with a [net] section; the first section here is "
                             f"{'[' + sections[0][0] + ']' if sections else 'missing'}")
    return sections


def _int(sec: Dict[str, str], key: str, default: int, where: str) -> int:
    try:
        return int(sec.get(key, default))
    except ValueError:
        raise ModelLoadError(f"{where}: {key}={sec[key]!r} is not an integer") from None


class _Weights:
    def __init__(self, path: Path):
        data = path.read_bytes()
        if len(data) < 20:
            raise ModelLoadError(f"'{path}' is too short to be Darknet weights ({len(data)} bytes)")
        major, minor, _rev = np.frombuffer(data[:12], np.int32)
        header = 20 if major * 10 + minor >= 2 else 16  # 'images seen' became 64-bit in 0.2
        if major > 1000 or minor > 1000:
            raise ModelLoadError(f"'{path}' does not start with a Darknet weights header (version {major}.{minor}); "
                                 "pass the .weights file that matches the .cfg")
        self.path = path
        self.data = np.frombuffer(data[header:], np.float32) if (len(data) - header) % 4 == 0 else None
        if self.data is None:
            raise ModelLoadError(f"'{path}' holds {len(data) - header} bytes of weights, not a whole number of "
                                 "float32 values")
        self.pos = 0

    def take(self, n: int, where: str) -> np.ndarray:
        if self.pos + n > self.data.size:
            raise ModelLoadError(f"'{self.path}' ends before {where}'s weights ({self.data.size} values in the file, "
                                 f"{self.pos + n} needed so far): the .weights file does not match the .cfg")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _act(b: GraphBuilder, x: str, kind: str, base: str, where: str) -> str:
    if kind == "linear":
        return x
    if kind == "leaky":
        return b.node("LeakyRelu", [x], base, alpha=0.1)
    if kind == "relu":
        return b.node("Relu", [x], base)
    if kind == "logistic":
        return b.node("Sigmoid", [x], base)
    if kind in ("swish", "silu"):
        return b.node("Mul", [x, b.node("Sigmoid", [x], f"{base}/sigmoid")], base)
    if kind == "mish":
        soft = b.node("Softplus", [x], f"{base}/softplus")
        return b.node("Mul", [x, b.node("Tanh", [soft], f"{base}/tanh")], base)
    if kind == "relu6":
        return b.node("Clip", [x, b.const(np.float32(0), f"{base}/min"), b.const(np.float32(6), f"{base}/max")], base)
    raise UnsupportedLayer("Darknet", where, f"activation={kind}")


def convert(sections, weights: _Weights, name: str, input_shape=None):
    net = sections[0][1]
    c = _int(net, "channels", 3, "[net]")
    h, w = _int(net, "height", 416, "[net]"), _int(net, "width", 416, "[net]")
    if input_shape is not None:
        _, c, h, w = input_shape
    if min(c, h, w) < 1:
        raise ModelLoadError(f"[net] gives input {c}x{h}x{w}; give width, height and channels in the .cfg")
    b = GraphBuilder(name)
    x = b.add_input("data", [1, c, h, w])
    layers: List[Tuple[str, int, int, int]] = []  # (tensor, channels, h, w) per layer
    outputs: List[str] = []
    cur = (x, c, h, w)
    for idx, (kind, sec) in enumerate(sections[1:]):
        where = f"layer {idx} [{kind}]"
        base = f"{kind}_{idx}"
        t, c, h, w = cur
        if kind in ("convolutional", "conv"):
            filters = _int(sec, "filters", 1, where)
            k = _int(sec, "size", 1, where)
            stride = _int(sec, "stride", 1, where)
            groups = _int(sec, "groups", 1, where)
            dil = _int(sec, "dilation", 1, where)
            pad = _int(sec, "padding", k // 2 if _int(sec, "pad", 0, where) else 0, where)  # pad=1: size/2
            bn = _int(sec, "batch_normalize", 0, where)
            if c % groups or filters % groups:
                raise ModelLoadError(f"{where}: groups={groups} does not divide {c} input / {filters} output channels")
            bias = weights.take(filters, where).astype(np.float64)
            if bn:
                scale, mean, var = (weights.take(filters, where).astype(np.float64) for _ in range(3))
            kern = weights.take(filters * (c // groups) * k * k, where).reshape(filters, c // groups, k, k)
            kern = kern.astype(np.float64)
            if bn:
                f = scale / (np.sqrt(var) + BN_EPS)
                kern = kern * f[:, None, None, None]
                bias = bias - mean * f
            y = b.node("Conv", [t, b.const(kern.astype(np.float32), f"{base}/weight"),
                                b.const(bias.astype(np.float32), f"{base}/bias")], base, kernel_shape=[k, k],
                       strides=[stride, stride], pads=[pad] * 4, dilations=[dil, dil], group=groups)
            y = _act(b, y, sec.get("activation", "logistic"), f"{base}/act", where)
            h = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
            w = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
            cur = (y, filters, h, w)
        elif kind == "maxpool":
            k = _int(sec, "size", 2, where)
            stride = _int(sec, "stride", 2, where)
            padding = _int(sec, "padding", k - 1, where)
            if _int(sec, "maxpool_depth", 0, where) or sec.get("stride_x") or sec.get("stride_y"):
                raise UnsupportedLayer("Darknet", where, "maxpool with maxpool_depth / stride_x / stride_y")
            oh, ow = (h + padding - k) // stride + 1, (w + padding - k) // stride + 1
            # Darknet pads padding//2 before; whatever else the output size needs goes after
            pb = padding // 2
            pe_h, pe_w = (oh - 1) * stride + k - h - pb, (ow - 1) * stride + k - w - pb
            y = b.node("MaxPool", [t], base, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pb, pb, max(pe_h, 0), max(pe_w, 0)])
            cur = (y, c, oh, ow)
        elif kind == "avgpool":
            cur = (b.node("GlobalAveragePool", [t], base), c, 1, 1)
        elif kind == "upsample":
            s = _int(sec, "stride", 2, where)
            scales = b.const(np.array([1, 1, s, s], np.float32), f"{base}/scales")
            cur = (b.node("Resize", [t, "", scales], base, mode="nearest"), c, h * s, w * s)
        elif kind == "route":
            refs = [int(v) for v in sec.get("layers", "").split(",") if v.strip()]
            if not refs:
                raise ModelLoadError(f"{where}: route without layers=")
            srcs = []
            for r in refs:
                j = idx + r if r < 0 else r
                if not 0 <= j < len(layers):
                    raise ModelLoadError(f"{where}: layers={sec['layers']} points at layer {j}, which does not exist "
                                         "before it")
                srcs.append(layers[j])
            if any(s[2:] != srcs[0][2:] for s in srcs):
                raise ModelLoadError(f"{where}: routed layers have different sizes {[s[2:] for s in srcs]}")
            groups, gid = _int(sec, "groups", 1, where), _int(sec, "group_id", 0, where)
            parts = []
            for s in srcs:
                if groups > 1:
                    step = s[1] // groups
                    starts = b.const(np.array([gid * step], np.int64), f"{base}/start")
                    ends = b.const(np.array([(gid + 1) * step], np.int64), f"{base}/end")
                    axes = b.const(np.array([1], np.int64), f"{base}/axes")
                    parts.append((b.node("Slice", [s[0], starts, ends, axes], f"{base}/group"), step))
                else:
                    parts.append((s[0], s[1]))
            y = parts[0][0] if len(parts) == 1 else b.node("Concat", [p[0] for p in parts], base, axis=1)
            cur = (y, sum(p[1] for p in parts), srcs[0][2], srcs[0][3])
        elif kind == "shortcut":
            j = idx + int(sec.get("from", "-3").split(",")[0])
            if not 0 <= j < len(layers):
                raise ModelLoadError(f"{where}: from={sec.get('from')} points at a layer that does not exist")
            other = layers[j]
            if other[1:] != (c, h, w):
                raise UnsupportedLayer("Darknet", where, "shortcut between layers of different shapes")
            y = b.node("Add", [t, other[0]], base)
            cur = (_act(b, y, sec.get("activation", "linear"), f"{base}/act", where), c, h, w)
        elif kind in ("yolo", "region", "detection"):
            outputs.append(t)
        elif kind in ("dropout",):
            pass
        elif kind == "softmax":
            cur = (b.node("Softmax", [b.node("Flatten", [t], f"{base}/flatten")], base), c * h * w, 1, 1)
        elif kind == "connected":
            out = _int(sec, "output", 1, where)
            bias = weights.take(out, where).astype(np.float64)
            wm = weights.take(out * c * h * w, where).reshape(out, c * h * w).astype(np.float64)
            if _int(sec, "batch_normalize", 0, where):
                scale, mean, var = (weights.take(out, where).astype(np.float64) for _ in range(3))
                f = scale / (np.sqrt(var) + BN_EPS)
                wm, bias = wm * f[:, None], bias - mean * f
            y = b.node("Gemm", [b.node("Flatten", [t], f"{base}/flatten"), b.const(wm.astype(np.float32),
                       f"{base}/weight"), b.const(bias.astype(np.float32), f"{base}/bias")], base, transB=1)
            y = _act(b, y, sec.get("activation", "logistic"), f"{base}/act", where)
            y = b.node("Reshape", [y, b.const(np.array([1, out, 1, 1], np.int64), f"{base}/shape")], f"{base}/4d")
            cur = (y, out, 1, 1)
        else:
            raise UnsupportedLayer("Darknet", where, f"[{kind}]")
        layers.append(cur)
    left = weights.data.size - weights.pos
    if left:
        raise ModelLoadError(f"'{weights.path}' has {left} float32 values left after the last layer of the .cfg: "
                             "the .weights file does not match the .cfg (another model size or class count?)")
    b.outputs = outputs or [cur[0]]
    return b.model("openrknn-darknet")


def load_darknet(model: str | Path, weight: str | Path, input_size_list=None) -> LoadedModel:
    cfg_path, w_path = Path(model), Path(weight)
    for p, what in ((cfg_path, "Darknet .cfg"), (w_path, "Darknet .weights")):
        if not p.is_file():
            raise ModelLoadError(f"{what} file not found: '{p}'. Check the path (relative paths are resolved against "
                                 f"the current folder, {Path.cwd()}).")
    try:
        text = cfg_path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ModelLoadError(f"'{cfg_path}' is not a text file; load_darknet(model=<the .cfg>, weight=<the "
                             ".weights>)") from None
    sections = parse_cfg(text, str(cfg_path))
    shape = None
    if input_size_list is not None:
        shape = normalize_size_list(input_size_list, 1)[0]
    onnx_model = convert(sections, _Weights(w_path), cfg_path.stem, shape)
    n_yolo = sum(1 for k, _ in sections if k in ("yolo", "region", "detection"))
    notes = [f"Darknet converted to ONNX: {len(sections) - 1} layers -> {len(onnx_model.graph.node)} nodes"]
    if n_yolo:
        notes.append(f"{n_yolo} [yolo]/[region] layers: the outputs are the raw maps they read (decode on the CPU)")
    log.info("loaded Darknet %s + %s: %s", cfg_path, w_path, notes[0])
    digest = file_sha256(w_path)
    return LoadedModel(onnx_model, "darknet", str(cfg_path), digest, notes)
