"""The real models and images the tests use, from the compact set committed in tests/data (its README says what each
file is, where it came from and how it was made).

Paths are the ones of ../shared/data (models/..., images/..., yolox_pytorch_ref/...), so a test names the file it
means. Images, labels and reference outputs are read straight from tests/data. The models and the YOLOX reference
weights and input are kept there in a compact form and rebuilt on first use into a session folder:
- ONNX models: weights stored as float16, restored to float32 (the graph is the original one);
- MobileNetV2: its state dict (conv / linear weights as float16 with 7 mantissa bits) loaded into a module that
  mirrors torchvision's MobileNetV2, then traced to TorchScript, as the original file was made;
- yolox_nano_3cls_seed0.pth: regenerated exactly (same seed, same draw order as the reference code; a checksum of
  the original's tensors guards it);
- input_nchw_float32.npy: iris_test.jpg through the reference recipe (centred letterbox, pad 128, ImageNet mean/std).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict

import numpy as np

DATA = Path(__file__).resolve().parent / "data"

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# sha256 of the original yolox_nano_3cls_seed0.pth's tensors (key, dtype, shape, bytes; in key order)
NANO_REF_SHA256 = "da1d5aef80138cb1311f69368cbfcab01942560141356deff2defbeb5c5f7380"


class RealData:
    """`real_data("models/yolox_nano_coco.onnx")` -> a path to that file; `root` holds the layout of ../shared/data
    (for code such as bench/quant_accuracy.py that reads a data folder) once the files it needs have been asked for."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in ("images", "coco_80_labels.txt"):
            _link(DATA / name, root / name)

    def __call__(self, rel: str) -> Path:
        out = self.root / rel
        if out.exists():
            return out
        build = RECIPES.get(rel)
        if build is None:
            src = DATA / rel
            if not src.exists():
                raise FileNotFoundError(f"{rel} is not in the committed test data ({DATA}); see {DATA / 'README.md'}")
            out.parent.mkdir(parents=True, exist_ok=True)
            _link(src, out)
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        build(tmp)
        os.replace(tmp, out)
        return out


def _link(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        return
    try:
        dst.symlink_to(src, target_is_directory=src.is_dir())
    except OSError:  # no symlinks (some Windows setups): copy
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)


# ---------------------------------------------------------------- ONNX models with float16-stored weights


def compact_onnx(src: Path, dst: Path, min_size: int = 16) -> int:
    """Store every float32 initializer of >= min_size values as float16 (the file is a storage form, not a model to
    run: restore_onnx turns it back). Returns how many were converted."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    assert not [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16], src
    count = 0
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and math.prod(t.dims) >= min_size:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
            count += 1
    onnx.save(model, str(dst))
    return count


def restore_onnx(src: Path, dst: Path) -> None:
    """float16 initializers back to float32: the original graph, weights rounded to float16 precision."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _onnx_recipe(name: str) -> Callable[[Path], None]:
    return lambda out: restore_onnx(DATA / "models" / f"{name}.fp16.onnx", out)


# ---------------------------------------------------------------- MobileNetV2 (torchvision layout)

# (expansion, output channels, repeats, first stride) per stage: the MobileNetV2 paper's table 2
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


def mobilenet_v2(num_classes: int = 1000):
    """MobileNetV2 with the module names and forward of torchvision's, so its state dict loads and the trace has the
    same operators (conv, batch_norm, hardtanh_, add, adaptive_avg_pool2d, flatten, dropout, linear)."""
    import torch
    from torch import nn

    def conv_bn_relu6(cin, cout, k, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1)]
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                       nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn_relu6(3, 32, 3, 2)], 32
            for t, c, n, s in MOBILENET_V2_STAGES:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn_relu6(cin, 1280, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2().eval()


MANTISSA_BITS = 7  # of float16's 10: bfloat16's precision keeps the file under 5 MB (low bits are noise to lzma)


def _round_mantissa(a: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """float16 values rounded (half to even) to ``bits`` mantissa bits, as uint16 patterns."""
    drop = 10 - bits
    u = a.astype(np.float16).view(np.uint16).astype(np.uint32)
    low, keep = u & ((1 << drop) - 1), u >> drop
    up = (low > (1 << (drop - 1))) | ((low == (1 << (drop - 1))) & (keep & 1 == 1))
    return ((keep + up) << drop).astype(np.uint16)


def compact_state_dict(state: Dict[str, "object"], dst: Path) -> None:
    """Weights of >= 2 dims as float16 rounded to MANTISSA_BITS, the rest (BN statistics, biases, counters) as they
    are. One lzma stream: a JSON line listing (name, dtype, shape, packed), then the weights' high bytes, their low
    bytes shifted right by the dropped bits (planes: the high bytes compress well, the low ones barely), then the rest
    raw."""
    import lzma

    entries, high, low, rest = [], [], [], []
    for k, v in state.items():
        a = v.numpy()
        if v.dim() >= 2:
            u = _round_mantissa(a).reshape(-1)
            high.append((u >> 8).astype(np.uint8).tobytes())
            low.append(((u & 255) >> (10 - MANTISSA_BITS)).astype(np.uint8).tobytes())
            entries.append([k, "float16", list(a.shape), True])
        else:
            rest.append(np.ascontiguousarray(a).tobytes())
            entries.append([k, str(a.dtype), list(a.shape), False])
    head = json.dumps({"mantissa_bits": MANTISSA_BITS, "entries": entries}).encode() + b"\n"
    blob = head + b"".join(high) + b"".join(low) + b"".join(rest)
    dst.write_bytes(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))


def load_compact_state_dict(src: Path) -> "OrderedDict[str, object]":
    import lzma

    import torch

    blob = lzma.decompress(src.read_bytes())
    cut = blob.index(b"\n")
    head = json.loads(blob[:cut])
    drop = 10 - head["mantissa_bits"]
    packed = [e for e in head["entries"] if e[3]]
    n = sum(int(np.prod(e[2])) for e in packed)
    body = memoryview(blob)[cut + 1:]
    high = np.frombuffer(body[:n], np.uint8).astype(np.uint16)
    low = np.frombuffer(body[n:2 * n], np.uint8).astype(np.uint16)
    weights = ((high << 8) | (low << drop)).view(np.float16)
    out, at, raw = OrderedDict(), 0, 2 * n
    for name, dtype, shape, is_packed in head["entries"]:
        size = int(np.prod(shape))
        if is_packed:
            a = weights[at:at + size].astype(np.float32).reshape(shape)
            at += size
        else:
            nbytes = size * np.dtype(dtype).itemsize
            a = np.frombuffer(body[raw:raw + nbytes], dtype).reshape(shape).copy()
            raw += nbytes
        out[name] = torch.from_numpy(a)
    return out


def _mobilenet_recipe(out: Path) -> None:
    import torch

    model = mobilenet_v2()
    model.load_state_dict(load_compact_state_dict(DATA / "models" / "mobilenet_v2_imagenet.weights.xz"), strict=True)
    with torch.no_grad():  # no control flow to check: check_trace would only run the model twice more
        traced = torch.jit.trace(model, torch.zeros(1, 3, 224, 224), check_trace=False)
    traced.save(str(out))


# ---------------------------------------------------------------- yolox-pytorch reference (yolox_pytorch_ref/)

# yolox-pytorch's YOLOXHead builds, per level, these modules in this order (then lists them grouped by kind)
_HEAD_BUILD_ORDER = ("stems", "cls_convs", "cls_preds", "reg_convs", "reg_preds", "obj_preds")


def nano_reference_state_dict() -> "OrderedDict[str, object]":
    """The reference weights, drawn again: torch.manual_seed(0), yolox-pytorch's YoloBody(3, 'nano') with PyTorch's
    default initialisation (every Conv2d: kaiming_uniform_(a=sqrt(5)) weight, then U(+-1/sqrt(fan_in)) bias, in the
    order the constructor creates them), then per BatchNorm in module order U(0.5, 1.5) weight, U(-0.2, 0.2) bias,
    U(-0.2, 0.2) running_mean, U(0.5, 2.0) running_var. The keys and shapes come from the reference's key list."""
    import torch

    entries = json.loads((DATA / "yolox_pytorch_ref" / "yolox_pytorch_state_dict_keys.json").read_text())["nano"]
    state = OrderedDict((k, torch.zeros(shape, dtype=torch.int64 if k.endswith("num_batches_tracked")
                                        else torch.float32)) for k, shape in entries)
    modules = list(OrderedDict.fromkeys(k.rsplit(".", 1)[0] for k in state))
    convs = [m for m in modules if state[m + ".weight"].dim() == 4]
    bns = [m for m in modules if m + ".running_mean" in state]

    def build_order(name: str):
        parts = name.split(".")
        return (1, int(parts[2]), _HEAD_BUILD_ORDER.index(parts[1])) if parts[0] == "head" else (0,)

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in sorted(convs, key=build_order):  # stable: within a group, the key order is the build order
            w = state[m + ".weight"]
            torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            if m + ".bias" in state:
                bound = 1 / math.sqrt(w[0].numel())
                state[m + ".bias"].uniform_(-bound, bound, generator=gen)
        for m in bns:
            for attr, lo, hi in (("weight", 0.5, 1.5), ("bias", -0.2, 0.2), ("running_mean", -0.2, 0.2),
                                 ("running_var", 0.5, 2.0)):
                state[f"{m}.{attr}"].uniform_(lo, hi, generator=gen)
    return state


def state_dict_sha256(state) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(f"{k}|{v.dtype}|{list(v.shape)}|".encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def _nano_pth_recipe(out: Path) -> None:
    import torch

    state = nano_reference_state_dict()
    got = state_dict_sha256(state)
    if got != NANO_REF_SHA256:
        raise RuntimeError(f"the regenerated yolox_nano_3cls_seed0.pth differs from the reference (sha256 {got}, "
                           f"expected {NANO_REF_SHA256}): torch's random streams or default init changed")
    with open(out, "wb") as f:
        torch.save(state, f)


def reference_input(image_path: Path, size: int = 416) -> np.ndarray:
    """The reference recipe: centred letterbox with pad 128 (INTER_LINEAR), BGR -> RGB, (x - mean) / std, NCHW."""
    import cv2

    img = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    ih, iw = img.shape[:2]
    scale = min(size / iw, size / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    boxed = np.full((size, size, 3), 128, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    boxed[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = (boxed[:, :, ::-1] - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)  # float64, then float32
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def _input_recipe(out: Path) -> None:
    with open(out, "wb") as f:
        np.save(f, reference_input(DATA / "images" / "misc" / "iris_test.jpg"))


RECIPES: Dict[str, Callable[[Path], None]] = {
    "models/yolox_nano_coco.onnx": _onnx_recipe("yolox_nano_coco"),
    "models/nanodet_m_coco.onnx": _onnx_recipe("nanodet_m_coco"),
    "models/ultraface_rfb320.onnx": _onnx_recipe("ultraface_rfb320"),
    "models/mobilenet_v2_imagenet.pt": _mobilenet_recipe,
    "yolox_pytorch_ref/yolox_nano_3cls_seed0.pth": _nano_pth_recipe,
    "yolox_pytorch_ref/input_nchw_float32.npy": _input_recipe,
}
