"""Seeded mutators for `.rknn` files: damaged copies (truncations, bit flips, byte runs, length fields), crafted files
with a valid checksum (metadata edits at the JSON and the text level, payload edits), vendor-like and foreign files,
and special files (FIFO, links to /dev/zero, folders, bad names). Each case is a plain description the harness turns
into a file; the same seed always gives the same cases.

The seeds are real packages built through the public API (an image model float and int8 with its float reference, a
model with an image and a raw input, a batch-2 build), so every field of the format is exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

MAGIC = b"ORKNN\x00\r\n"
HEADER = struct.Struct("<8sIIQQ32s")

# mutation kinds: (name, weight, forged = the checksum is recomputed so the reader gets past it)
KINDS: List[Tuple[str, int, bool]] = [
    ("truncate", 8, False), ("flip", 12, False), ("byte_run", 6, False), ("insert_delete", 5, False),
    ("length_field", 8, False), ("splice", 3, False),
    ("meta_edit", 22, True), ("meta_text", 10, True), ("payload_edit", 10, True), ("header_forged", 4, True),
    ("vendor", 5, False), ("foreign", 4, False), ("special", 3, False),
]
FORGED = {name for name, _, forged in KINDS if forged}
SPECIALS = ["fifo", "dev_zero", "dev_urandom", "dev_null", "folder", "dangling_link", "link_loop", "nul_name",
            "long_name", "unix_socket"]


@dataclass
class Seed:
    name: str
    path: Path  # the .rknn file
    inputs_path: Path  # .npz with the inputs the fuzz worker feeds (arr_0, arr_1, ...)
    data: bytes


@dataclass
class Case:
    number: int
    kind: str
    seed: str
    data: Optional[bytes] = None  # the file's bytes, or None for a special file
    special: Optional[str] = None
    detail: str = ""

    @property
    def forged(self) -> bool:
        return self.kind in FORGED


# ---------------------------------------------------------------- seeds


def _image_model(path: Path, with_raw: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    if with_raw:  # a second, non-image input: stored with layout "raw"
        nodes += [helper.make_node("GlobalAveragePool", ["y"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flat"),
                  helper.make_node("Add", ["f", "v"], ["z"], name="add")]
        inputs.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(nodes, "fuzz_seed", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def build_seeds(folder: Path, names: Optional[List[str]] = None) -> List[Seed]:
    """Real packages through the public API, with the inputs the worker feeds them."""
    from openrknn.api import RKNN

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for k in range(4):
        np.save(folder / f"cal{k}.npy", rng.integers(0, 256, (8, 8, 3)).astype(np.float32))
    (folder / "dataset.txt").write_text("".join(f"cal{k}.npy\n" for k in range(4)))
    image = _image_model(folder / "image.onnx")
    two = _image_model(folder / "two.onnx", with_raw=True)
    norm = {"mean_values": [[10, 20, 30]], "std_values": [[2, 3, 4]]}
    recipes: Dict[str, Tuple[Path, dict, dict]] = {
        "float": (image, dict(norm, reorder_channel="2 1 0"), {"do_quantization": False}),
        "int8": (image, norm, {"do_quantization": True, "dataset": str(folder / "dataset.txt")}),
        "two_inputs": (two, {"mean_values": [[10, 20, 30], [0]], "std_values": [[2, 3, 4], [1]]},
                       {"do_quantization": False}),
        "batch2": (image, norm, {"do_quantization": False, "rknn_batch_size": 2}),
    }
    seeds = []
    for name in names or list(recipes):
        onnx_path, cfg, build = recipes[name]
        out = folder / f"{name}.rknn"
        r = RKNN()
        try:
            assert r.config(**cfg) == 0
            assert r.load_onnx(str(onnx_path)) == 0, r.last_error
            assert r.build(**build) == 0, r.last_error
            assert r.export_rknn(str(out)) == 0, r.last_error
        finally:
            r.release()
        batch = build.get("rknn_batch_size", 1)
        feeds = [rng.integers(0, 256, (batch, 8, 8, 3), dtype=np.uint8)]
        if name == "two_inputs":
            feeds.append(rng.standard_normal((1, 4)).astype(np.float32))
        np.savez(folder / f"{name}.npz", *feeds)
        seeds.append(Seed(name, out, folder / f"{name}.npz", out.read_bytes()))
    return seeds


# ---------------------------------------------------------------- container helpers


def split(data: bytes) -> Tuple[dict, bytes, bytes]:
    """(header fields, metadata bytes, payload) of a well-formed package."""
    magic, version, flags, m, p, digest = HEADER.unpack_from(data, 0)
    fields = {"version": version, "flags": flags, "m": m, "p": p, "digest": digest}
    return fields, data[64:64 + m], data[64 + m:64 + m + p]


def forge(meta: bytes, payload: bytes, version: int = 1, flags: int = 0) -> bytes:
    """A container whose checksum and lengths are right for whatever metadata and payload it is given."""
    digest = hashlib.sha256(meta + payload).digest()
    return HEADER.pack(MAGIC, version, flags, len(meta), len(payload), digest) + meta + payload


_DEEP = "\u0001deep\u0001"


def _dumps(meta) -> bytes:
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _interesting(rng: random.Random):
    """Values that break naive readers: wrong types, bool for int, extremes, empties, deep nesting."""
    choices: List[Callable[[], object]] = [
        lambda: None, lambda: True, lambda: False, lambda: 0, lambda: -1, lambda: 1, lambda: 2,
        lambda: 2 ** 31, lambda: 2 ** 63, lambda: 2 ** 70, lambda: -(2 ** 70), lambda: 1.5, lambda: 1e308,
        lambda: "", lambda: "x", lambda: "nhwc", lambda: "raw", lambda: "nchw", lambda: "float32", lambda: "object",
        lambda: "\u202e\u0000\ud7ff", lambda: "y" * rng.choice([100, 10_000]), lambda: [], lambda: {},
        lambda: [1, 2], lambda: [1, 8, 8], lambda: [2, 8, 8, 3], lambda: [0, 8, 8, 3], lambda: [1, 8, 8, 3, 1],
        lambda: [True, 8, 8, 3], lambda: [1.0, 8, 8, 3], lambda: ["1", "8"], lambda: [None], lambda: [[1]],
        lambda: {"a": 1}, lambda: {"model": 1, "float_reference": 1}, lambda: list(range(rng.choice([3, 1000]))),
        lambda: _DEEP,
    ]
    return rng.choice(choices)()


def _paths(node, prefix=()) -> List[tuple]:
    """Every (path to a value) in a JSON tree."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:16]):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _parent(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    return tree


# targeted edits of the fields readers and the runtime rely on (the list and their neighbours)
_TARGETED: List[Tuple[str, Callable[[dict, random.Random], None]]] = [
    ("drop inputs[0].shape", lambda m, r: m["inputs"][0].pop("shape", None)),
    ("drop inputs[0].layout", lambda m, r: m["inputs"][0].pop("layout", None)),
    ("drop inputs[-1].dtype", lambda m, r: m["inputs"][-1].pop("dtype", None)),
    ("rknn_batch_size", lambda m, r: m["build"].update(rknn_batch_size=r.choice(["x", {}, -1, 0, True, 2, 3, 2.0,
                                                                                     None, 10 ** 6]))),
    ("inputs[0].shape", lambda m, r: m["inputs"][0].update(shape=r.choice(
        [[1, 8, 8], [1, 8, 8, 3, 1], [0, 8, 8, 3], [2, 8, 8, 3], [1, 8, 8, 4], [1, 2 ** 40, 8, 3], [1, -8, 8, 3],
         "1,8,8,3", None]))),
    ("inputs[0].layout", lambda m, r: m["inputs"][0].update(layout=r.choice(["nchw", "raw", "NHWC", "", None, 1]))),
    ("inputs[-1].dtype", lambda m, r: m["inputs"][-1].update(dtype=r.choice(["object", "float64", "int64", "uint8",
                                                                             "bool", "U8", 7]))),
    ("payload_sections", lambda m, r: m.update(payload_sections=r.choice([
        True, {"model": True, "float_reference": True}, {"model": "1", "float_reference": 2}, {"model": -1},
        {"model": 1, "float_reference": 1}, {"model": 0, "float_reference": 5}, [1, 2], None]))),
    ("preprocess.mean", lambda m, r: (m["inputs"][0].get("preprocess") or {}).update(
        mean=r.choice([[1, 2], ["a", "b", "c"], [1, 2, 3, 4], [], None]))),
    ("preprocess.reorder", lambda m, r: (m["inputs"][0].get("preprocess") or {}).update(
        reorder_channel=r.choice([[0, 0, 1], [2, 1], [3, 1, 0], "2 1 0", [True, 1, 0], []]))),
    ("preprocess drop std", lambda m, r: (m["inputs"][0].get("preprocess") or {}).pop("std", None)),
    ("inputs[0].name", lambda m, r: m["inputs"][0].update(name=r.choice(["", "X", "y", 5, None, "x\u0000"]))),
    ("outputs[0].name", lambda m, r: m["outputs"][0].update(name=r.choice(["", "x", "other", None]))),
    ("duplicate input", lambda m, r: m["inputs"].append(dict(m["inputs"][0]))),
    ("swap inputs", lambda m, r: m["inputs"].reverse()),
    ("target_platform", lambda m, r: m.update(target_platform=r.choice([[], "rk1808", [1], [""], None]))),
    ("toolkit", lambda m, r: m.update(toolkit=r.choice(["", None, 1, "vendor"]))),
    ("quantization", lambda m, r: m.update(quantization=r.choice([[], "u8", {"tensors": []},
                                                                  {"tensors": {"a": {"scale": ["x"]}}},
                                                                  {"tensors": {"a": {"zero_point": [0.5]}}},
                                                                  {"tensors": {"a": 5}}, None]))),
    ("source", lambda m, r: m.update(source=r.choice(["a.pt", {"sha256": 5}, {"notes": "n"}, None, {}]))),
    ("unknown key", lambda m, r: m.update({r.choice(["future", "zzz", "a"]): _interesting(r)})),
    ("build not a dict", lambda m, r: m.update(build=r.choice([[], "x", None]))),
    ("drop required", lambda m, r: m.pop(r.choice(["toolkit", "toolkit_version", "target_platform", "inputs",
                                                   "outputs", "build"]), None)),
]


def _meta_edit(meta_bytes: bytes, rng: random.Random) -> Tuple[bytes, str]:
    meta = json.loads(meta_bytes)
    if rng.random() < 0.55:
        name, edit = rng.choice(_TARGETED)
        edit(meta, rng)
        detail = name
    else:
        paths = _paths(meta)
        path = rng.choice(paths)
        parent = _parent(meta, path)
        op = rng.choice(["replace", "replace", "delete", "wrap"])
        if op == "delete":
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        else:
            parent[path[-1]] = _interesting(rng)
        detail = f"{op} {'/'.join(map(str, path))}"
    text = _dumps(meta)
    deep = json.dumps(_DEEP).encode()
    if deep in text:
        depth = rng.choice([33, 200, 5000, 100_000])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        text = text.replace(deep, opener * depth + b"1" + closer * depth, 1)
        detail += f" (nested {depth} deep)"
    return text, detail


def _meta_text(meta_bytes: bytes, rng: random.Random) -> Tuple[bytes, str]:
    data = bytearray(meta_bytes)
    op = rng.choice(["flip", "truncate", "brackets", "number", "nan", "bom", "garbage"])
    if op == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del data[rng.randrange(len(data)):]
    elif op == "brackets":
        pos = rng.randrange(len(data))
        data[pos:pos] = b"[" * rng.choice([40, 1000, 200_000])
    elif op in ("number", "nan"):
        digits = [i for i, c in enumerate(data) if 0x30 <= c <= 0x39]
        if digits:
            i = rng.choice(digits)
            repl = rng.choice([b"NaN", b"Infinity", b"-Infinity"]) if op == "nan" else rng.choice(
                [b"1e999", b"-1e999", b"9" * 5000, b"1" + b"0" * 400, b"-0", b"0.0000000000000000001e-400"])
            data[i:i + 1] = repl
    elif op == "bom":
        data[0:0] = b"\xef\xbb\xbf"
    else:
        data = bytearray(rng.randbytes(rng.choice([0, 1, 16, 400])))
    return bytes(data), op


def _payload_edit(payload: bytes, rng: random.Random, other: bytes) -> Tuple[bytes, str]:
    data = bytearray(payload)
    op = rng.choice(["flip", "flip", "truncate", "random", "other", "zero_run", "append"])
    if op == "flip":
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del data[rng.randrange(1, len(data)):]
    elif op == "random":
        data = bytearray(rng.randbytes(rng.choice([1, 8, 64, len(payload)])))
    elif op == "other":
        data = bytearray(other)
    elif op == "zero_run":
        i = rng.randrange(len(data))
        data[i:i + rng.randint(1, 64)] = bytes(min(64, len(data) - i))
    else:
        data += rng.randbytes(rng.randint(1, 32))
    return bytes(data), op


def _vendor(rng: random.Random) -> Tuple[bytes, str]:
    model = b"\x14\x00\x00\x00RKNN" + rng.randbytes(rng.randint(0, 200))
    trailer_kind = rng.choice(["json", "deep", "list", "garbage", "huge_len", "none", "cypt", "bare"])
    version = rng.choice([1, 6, 0x1001, 2 ** 64 - 1])
    size = len(model) if rng.random() < 0.8 else rng.choice([0, 2 ** 63, len(model) + 9])
    head = b"RKNN\x00\x00\x00\x00" + struct.pack("<QQ", version, size) + b"\x00" * rng.choice([40, 0])
    if trailer_kind == "json":
        body = json.dumps({"version": rng.choice(["2.3.0", 5, None, ["x"]]),
                           "target_platform": rng.choice([["rk3588"], "rk3568", [1, None], {}])}).encode()
    elif trailer_kind == "deep":
        body = b"[" * rng.choice([2000, 100_000]) + b"]" * 10
    elif trailer_kind == "list":
        body = b"[1,2,3]"
    else:
        body = rng.randbytes(rng.randint(0, 64))
    length = len(body) if trailer_kind != "huge_len" else rng.choice([2 ** 63, 2 ** 40, len(body) + 1])
    if trailer_kind == "cypt":
        return b"CYPTRKNN" + rng.randbytes(64), trailer_kind
    if trailer_kind == "bare":
        return b"\x1c\x00\x00\x00RKNN" + rng.randbytes(64), trailer_kind
    tail = b"" if trailer_kind == "none" else struct.pack("<Q", length) + body
    return head + model + tail, trailer_kind


def _foreign(rng: random.Random, seeds: List[Seed]) -> Tuple[bytes, str]:
    op = rng.choice(["random", "empty", "magic_only", "magic_prefix", "text_mode", "onnx", "zip", "png", "pickle",
                     "npy", "lfs", "big_random"])
    _, _, payload = split(rng.choice(seeds).data)
    data = {
        "random": lambda: rng.randbytes(rng.randint(1, 4096)),
        "empty": lambda: b"",
        "magic_only": lambda: MAGIC,
        "magic_prefix": lambda: MAGIC[:rng.randint(1, 7)],
        "text_mode": lambda: b"ORKNN\x00\n" + rng.randbytes(100),
        "onnx": lambda: payload,
        "zip": lambda: b"PK\x03\x04" + rng.randbytes(100) + rng.choice([b"constants.pkl", b"data.pkl", b""]),
        "png": lambda: b"\x89PNG\r\n\x1a\n" + rng.randbytes(50),
        "pickle": lambda: b"\x80\x04\x95" + rng.randbytes(30),
        "npy": lambda: b"\x93NUMPY\x01\x00" + rng.randbytes(60),
        "lfs": lambda: b"version https://git-lfs.github.com/spec/v1\n",
        "big_random": lambda: rng.randbytes(rng.choice([70_000, 200_000])),
    }[op]()
    return data, op


_LENGTH_VALUES = [0, 1, 63, 64, 65, 2 ** 32 - 1, 2 ** 32, 2 ** 62, 2 ** 63, 2 ** 64 - 1]


def _length_field(data: bytes, rng: random.Random) -> Tuple[bytes, str]:
    fields, meta, payload = split(data)
    out = bytearray(data)
    which = rng.choice(["m", "p", "m", "p", "version", "flags", "swap"])
    if which == "swap":
        struct.pack_into("<QQ", out, 16, fields["p"], fields["m"])
        return bytes(out), "swap M/P"
    size = len(data)
    if which in ("m", "p"):
        current = fields[which]
        value = rng.choice(_LENGTH_VALUES + [current + 1, current - 1, current * 2, size, size - 64])
        struct.pack_into("<Q", out, 16 if which == "m" else 24, max(0, value) % 2 ** 64)
        return bytes(out), f"{which}={value}"
    value = rng.choice([0, 2, 255, 2 ** 31, 2 ** 32 - 1])
    struct.pack_into("<I", out, 8 if which == "version" else 12, value)
    return bytes(out), f"{which}={value}"


def _truncate(data: bytes, rng: random.Random) -> Tuple[bytes, str]:
    fields, meta, _ = split(data)
    points = [0, 1, 7, 8, 12, 16, 24, 32, 63, 64, 64 + len(meta) // 2, 64 + len(meta), 64 + len(meta) + 1,
              len(data) - 1, rng.randrange(len(data))]
    cut = rng.choice(points)
    return data[:cut], f"cut at {cut}"


def _flip(data: bytes, rng: random.Random) -> Tuple[bytes, str]:
    out = bytearray(data)
    n = rng.choice([1, 1, 1, 2, 3, 8, 32])
    region = rng.choice(["any", "header", "meta"])
    fields, meta, _ = split(data)
    lo, hi = {"any": (0, len(data)), "header": (0, 64), "meta": (64, 64 + max(1, len(meta)))}[region]
    for _ in range(n):
        i = rng.randrange(lo, hi)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out), f"{n} bit(s) in {region}"


def _byte_run(data: bytes, rng: random.Random) -> Tuple[bytes, str]:
    out = bytearray(data)
    i = rng.randrange(len(data))
    n = rng.choice([1, 4, 16, 256])
    fill = rng.choice([b"\x00", b"\xff", None])
    run = fill * n if fill else rng.randbytes(n)
    out[i:i + n] = run[:len(out[i:i + n])]
    return bytes(out), f"{n} bytes at {i}"


def _insert_delete(data: bytes, rng: random.Random) -> Tuple[bytes, str]:
    i = rng.randrange(len(data))
    if rng.random() < 0.5:
        n = rng.choice([1, 3, 100])
        return data[:i] + rng.randbytes(n) + data[i:], f"insert {n} at {i}"
    n = rng.choice([1, 3, 100])
    return data[:i] + data[i + n:], f"delete {n} at {i}"


def _splice(data: bytes, rng: random.Random, other: bytes) -> Tuple[bytes, str]:
    op = rng.choice(["concat", "append_garbage", "prefix_garbage", "mix"])
    if op == "concat":
        return data + other, op
    if op == "append_garbage":
        return data + rng.randbytes(rng.randint(1, 100)), op
    if op == "prefix_garbage":
        return rng.randbytes(rng.randint(1, 10)) + data, op
    cut = rng.randrange(min(len(data), len(other)))
    return data[:cut] + other[cut:], op


def _header_forged(data: bytes, rng: random.Random) -> Tuple[bytes, str]:
    """Valid checksum, odd header: other versions and flags, moved metadata/payload boundary."""
    fields, meta, payload = split(data)
    op = rng.choice(["version", "flags", "boundary", "empty_meta", "empty_payload"])
    if op == "version":
        return forge(meta, payload, version=rng.choice([0, 2, 2 ** 32 - 1])), op
    if op == "flags":
        return forge(meta, payload, flags=rng.choice([1, 2 ** 31])), op
    if op == "boundary":
        k = rng.randint(-20, 20)
        joined = meta + payload
        cut = max(0, min(len(joined), len(meta) + k))
        return forge(joined[:cut], joined[cut:]), f"boundary {k:+d}"
    if op == "empty_meta":
        return forge(b"", payload), op
    return forge(meta, b""), op


class ContainerFuzzer:
    """Case n of a run is a pure function of (seed, n)."""

    def __init__(self, seeds: List[Seed], seed: int = 0):
        self.seeds, self.seed = seeds, seed
        self._names = [k for k, _, _ in KINDS]
        self._weights = [w for _, w, _ in KINDS]

    def case(self, number: int) -> Case:
        rng = random.Random(f"{self.seed}:{number}")
        kind = rng.choices(self._names, self._weights)[0]
        seed = rng.choice(self.seeds)
        other = rng.choice(self.seeds)
        data = seed.data
        fields, meta, payload = split(data)
        if kind == "special":
            return Case(number, kind, seed.name, special=rng.choice(SPECIALS))
        if kind == "truncate":
            out, detail = _truncate(data, rng)
        elif kind == "flip":
            out, detail = _flip(data, rng)
        elif kind == "byte_run":
            out, detail = _byte_run(data, rng)
        elif kind == "insert_delete":
            out, detail = _insert_delete(data, rng)
        elif kind == "length_field":
            out, detail = _length_field(data, rng)
        elif kind == "splice":
            out, detail = _splice(data, rng, other.data)
        elif kind == "meta_edit":
            new_meta, detail = _meta_edit(meta, rng)
            out = forge(new_meta, payload)
        elif kind == "meta_text":
            new_meta, detail = _meta_text(meta, rng)
            out = forge(new_meta, payload)
        elif kind == "payload_edit":
            model_len = json.loads(meta).get("payload_sections", {}).get("model", len(payload))
            target = rng.choice(["model", "model", "whole"])
            if target == "model":
                new_model, detail = _payload_edit(payload[:model_len], rng, split(other.data)[2])
                new_payload = new_model + payload[model_len:]
            else:
                new_payload, detail = _payload_edit(payload, rng, split(other.data)[2])
            out = forge(meta, new_payload)
            detail = f"{target}: {detail}"
        elif kind == "header_forged":
            out, detail = _header_forged(data, rng)
        elif kind == "vendor":
            out, detail = _vendor(rng)
        else:
            out, detail = _foreign(rng, self.seeds)
        if kind not in FORGED and kind not in ("vendor", "foreign") and out == data:
            out = data[:-1]  # a mutation that changed nothing: make it a truncation instead
            detail += " (no-op -> cut 1)"
        return Case(number, kind, seed.name, data=out, detail=detail)


def materialize(case: Case, folder: Path) -> str:
    """Write the case as a file in folder (or make the special file); returns the path to hand the reader."""
    path = folder / f"case{case.number}.rknn"
    if case.data is not None:
        path.write_bytes(case.data)
        return str(path)
    kind = case.special
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in ("dev_zero", "dev_urandom", "dev_null"):
        path.symlink_to("/dev/" + kind[4:])
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling_link":
        path.symlink_to(folder / "nothing-here")
    elif kind == "link_loop":
        path.symlink_to(path)
    elif kind == "nul_name":
        return str(folder / "case\x00.rknn")
    elif kind == "long_name":
        return str(folder / ("n" * 5000 + ".rknn"))
    elif kind == "unix_socket":
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(str(path))
        except OSError:  # the folder's path is too long for a socket address: a FIFO is the nearest thing
            os.mkfifo(path)
        finally:
            s.close()
    return str(path)


def cleanup(path: str) -> None:
    try:
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        else:
            p.unlink()
    except (OSError, ValueError):
        pass
