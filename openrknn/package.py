"""The `.rknn` container openrknn writes: an open, versioned, checksummed file (no pickle).

Layout (all integers little-endian; docs/model-format.md is the specification):

    offset  size  field
         0     8  magic b"ORKNN\\x00\\r\\n"
         8     4  uint32 format version (FORMAT_VERSION)
        12     4  uint32 flags (0; reserved)
        16     8  uint64 metadata length M
        24     8  uint64 payload length P
        32    32  SHA-256 of (metadata bytes + payload bytes)
        64     M  metadata: UTF-8 JSON object, sorted keys
      64+M     P  payload: a serialized onnx.ModelProto
    nothing after 64+M+P

A board installs only numpy + onnxruntime, so this module imports the standard library only (plus openrknn.errors):
never torch, onnx or the quantizer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Optional, Union

from openrknn import __version__
from openrknn.errors import CorruptPackageError, PackageError, PackageVersionError, VendorPackageError

FORMAT_VERSION = 1
SECTIONS_KEY = "payload_sections"  # present only when a float reference follows the model
MAGIC = b"ORKNN\x00\r\n"
# magic, version, flags, metadata length, payload length, sha256(metadata + payload)
_HEADER = struct.Struct("<8sIIQQ32s")
HEADER_SIZE = _HEADER.size  # 64
REQUIRED_KEYS = ("toolkit", "toolkit_version", "target_platform", "inputs", "outputs", "build")

_DAMAGED = "the file is damaged or was not fully copied; re-export it (export_rknn) or copy it again in binary mode"

PathLike = Union[str, "os.PathLike[str]"]


class PackageNotFoundError(PackageError, FileNotFoundError):
    """The .rknn path does not exist. Also a FileNotFoundError, so generic `except OSError` code keeps working."""

    def __init__(self, message: str, path: str):
        super().__init__(errno.ENOENT, message, path)

    def __str__(self) -> str:  # OSError's "[Errno 2] ...: 'path'" would repeat the path the message already names
        return str(self.strerror)


@dataclass
class RknnPackage:
    metadata: dict  # JSON-able; schema in docs/model-format.md
    model_bytes: bytes  # serialized onnx.ModelProto
    # Optional float graph kept beside a quantized one, so accuracy_analysis works on a loaded file too.
    float_model_bytes: Optional[bytes] = None


# ---------------------------------------------------------------- encoding


def _json_default(obj: Any) -> Any:
    # numpy arrays and scalars (scales, zero points) without importing numpy here.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} value {obj!r} is not JSON-serialisable")


def _encode_metadata(metadata: Any) -> bytes:
    try:
        text = json.dumps(
            metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
        )
    except (TypeError, ValueError) as e:
        # ValueError: NaN/inf (not JSON; a reader in another language would reject it)
        raise PackageError(f"package metadata cannot be stored as JSON: {e}. Use plain numbers, strings, lists, "
                           "dicts") from None
    return text.encode("utf-8")


def _metadata_problems(meta: Any) -> list[str]:
    """Everything wrong with a decoded metadata object against the required schema (empty list = valid)."""
    if not isinstance(meta, dict):
        return [f"metadata must be a JSON object, got {type(meta).__name__}"]
    problems = [f"missing required key {k!r}" for k in REQUIRED_KEYS if k not in meta]
    for key in ("toolkit", "toolkit_version"):
        if key in meta and not (isinstance(meta[key], str) and meta[key]):
            problems.append(f"{key!r} must be a non-empty string, got {meta[key]!r}")
    tp = meta.get("target_platform")
    if "target_platform" in meta and not (
        isinstance(tp, list) and tp and all(isinstance(p, str) and p for p in tp)
    ):
        problems.append(f"'target_platform' must be a non-empty list of chip names, got {tp!r}")
    for key in ("inputs", "outputs"):
        if key not in meta:
            continue
        entries = meta[key]
        if not (isinstance(entries, list) and entries):
            problems.append(f"{key!r} must be a non-empty list, got {entries!r}")
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                problems.append(f"{key}[{i}] must be an object with a string 'name', got {entry!r}")
            elif "shape" in entry and not isinstance(entry["shape"], list):
                problems.append(f"{key}[{i}].shape must be a list, got {entry['shape']!r}")
    if "build" in meta and not isinstance(meta["build"], dict):
        problems.append(f"'build' must be an object, got {meta['build']!r}")
    for key in ("quantization", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            problems.append(f"{key!r} must be an object or null, got {meta[key]!r}")
    return problems


def _encode(pkg: RknnPackage) -> tuple[bytes, bytes, bytes]:
    """(header, metadata bytes, payload) for pkg; raises PackageError for anything a reader would refuse."""
    if not isinstance(pkg, RknnPackage):
        raise PackageError(f"write_package needs an RknnPackage, got {type(pkg).__name__}")
    if not isinstance(pkg.model_bytes, (bytes, bytearray, memoryview)):
        raise PackageError(f"RknnPackage.model_bytes must be bytes (a serialized ONNX model), got "
                           f"{type(pkg.model_bytes).__name__}; use model.SerializeToString()")
    payload = bytes(pkg.model_bytes)
    if not payload:
        raise PackageError("RknnPackage.model_bytes is empty: there is no model to write")
    metadata = dict(pkg.metadata)
    metadata.pop(SECTIONS_KEY, None)
    if pkg.float_model_bytes:
        metadata[SECTIONS_KEY] = {"model": len(payload), "float_reference": len(pkg.float_model_bytes)}
        payload += bytes(pkg.float_model_bytes)
    meta_bytes = _encode_metadata(metadata)
    # validate what a reader will see (tuples -> lists, numpy -> lists), so we never write a file we would refuse
    problems = _metadata_problems(json.loads(meta_bytes))
    if problems:
        raise PackageError("package metadata is not valid: " + "; ".join(problems))
    digest = hashlib.sha256(meta_bytes + payload).digest()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(meta_bytes), len(payload), digest)
    return header, meta_bytes, payload


def package_to_bytes(pkg: RknnPackage) -> bytes:
    """The exact bytes write_package would store (e.g. to send a model to a board)."""
    return b"".join(_encode(pkg))


# ---------------------------------------------------------------- writing


def _umask() -> int:
    # os.umask can only be read by setting it; /proc avoids that brief process-wide change where it exists.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: str) -> None:
    # makes the rename itself durable; not possible on every OS/filesystem, so best effort
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_package(path: PathLike, pkg: RknnPackage) -> int:
    """Write pkg to path atomically (temp file in the same folder, fsync, os.replace). Returns the bytes written.

    On any failure nothing is left behind: no partial file, no temp file, and an existing file at path is unchanged.
    """
    target = os.path.abspath(os.fsdecode(os.fspath(path)))
    chunks = _encode(pkg)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise PackageError(f"cannot write {target}: the folder {folder} does not exist; create it first")
    if os.path.isdir(target):
        raise PackageError(f"cannot write {target}: it is a folder; give a file name such as model.rknn")
    try:  # keep an existing file's permissions, as an in-place overwrite would; else the usual 0o666 & ~umask
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise PackageError(f"cannot write {target}: creating a file in {folder} failed ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        _remove_quietly(tmp)
        if isinstance(e, OSError):
            raise PackageError(f"writing {target} failed ({e}); nothing was written and any existing file there "
                               f"is unchanged. Check free disk space and permissions") from e
        raise
    _fsync_dir(folder)
    return sum(len(c) for c in chunks)


# ---------------------------------------------------------------- reading


def _u64(data: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def _vendor_details(data: bytes) -> str:
    """Best-effort facts about a vendor RKNN-Toolkit file: format version word, toolkit version, target."""
    if data.startswith(b"CYPTRKNN"):
        return "an encrypted vendor model (CYPTRKNN)"
    if data[4:8] == b"RKNN":
        return "a bare vendor FlatBuffers model"
    if len(data) < 16:
        return "a vendor model (file too short to read its version word)"
    if data[4:8] != b"\x00\x00\x00\x00":  # not the usual 8-byte signature; the word after 'RKNN' is all we know
        return f"a vendor model, format version word {struct.unpack_from('<I', data, 4)[0]}"
    version = _u64(data, 8)
    facts = [f"format version word {version}"]
    info = _vendor_json(data)
    if info.get("version"):
        facts.append(f"written by RKNN-Toolkit {info['version']}")
    platform = info.get("target_platform")
    if platform:
        facts.append("for " + (", ".join(map(str, platform)) if isinstance(platform, list) else str(platform)))
    source = info.get("ori_network_platform") or info.get("network_platform")
    if source:
        facts.append(f"converted from {source}")
    return "a vendor model, " + ", ".join(facts)


def _vendor_json(data: bytes) -> dict:
    """The JSON trailer of a Toolkit2 file, or {} (its position depends on an undocumented 40-byte pad)."""
    if len(data) < 24:
        return {}
    size = _u64(data, 16)
    for pad in (40, 0):
        pos = 24 + pad + size
        if pos + 8 > len(data):
            continue
        json_size = _u64(data, pos)
        if json_size == 0 or pos + 8 + json_size > len(data):
            continue
        try:
            obj = json.loads(data[pos + 8: pos + 8 + json_size].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            return obj
    return {}


def _onnx_ir_version(data: bytes) -> int | None:
    # ModelProto starts with field 1 (ir_version, varint: tag 0x08) then usually producer_name/graph/opset_import...
    onnx_next_tags = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}
    if len(data) > 3 and data[0] == 0x08 and 1 <= data[1] <= 30 and data[2] in onnx_next_tags:
        return data[1]
    return None


def _foreign_kind(data: bytes) -> tuple[str, str]:
    """(what the file looks like, what to do instead) for a file that is not an openrknn package."""
    ir = _onnx_ir_version(data)
    if ir is not None:
        return (f"an ONNX model (protobuf, IR version {ir})",
                "Load it with RKNN.load_onnx(model=...), then build() and export_rknn() to make a .rknn package")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "a PNG image", "Images are inference()/dataset.txt inputs, not models; pass the .rknn model file here"
    if data.startswith(b"\xff\xd8\xff"):
        return "a JPEG image", "Images are inference()/dataset.txt inputs, not models; pass the .rknn model file here"
    if data.startswith(b"PK\x03\x04"):
        if b"constants.pkl" in data or b"/code/" in data:
            return ("a TorchScript archive (torch.jit.save)",
                    "Load it with RKNN.load_pytorch(model=..., input_size_list=...), then build() and export_rknn()")
        if b"data.pkl" in data:
            return ("a torch.save() checkpoint (state dict or pickled module)",
                    "Trace the model with torch.jit.trace(model, example).save('model.pt'), then use load_pytorch()")
        return "a zip archive", ("Unpack it and pass the .rknn file inside, or load the model with "
                                 "load_onnx/load_pytorch")
    if len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5:
        advice = ("openrknn never loads pickles; export the model to TorchScript (torch.jit.trace) or ONNX and load "
                  "it with load_pytorch/load_onnx")
        return "a Python pickle (legacy torch.save?)", advice
    if data.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array", "Arrays are inference()/dataset.txt inputs, not models"
    if data[4:8] == b"TFL3":
        return "a TensorFlow Lite model", "Convert it to ONNX (e.g. tf2onnx) and use RKNN.load_onnx()"
    if data.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model itself", "Run `git lfs pull` to fetch the real file"
    if data.startswith(b"\x1f\x8b"):
        return "gzip-compressed data", "Decompress it first"
    advice = ("Pass a .rknn file written by openrknn export_rknn(), or load the original model with "
              "load_onnx/load_pytorch")
    return f"an unknown format (first bytes {data[:8].hex(' ')})", advice


def _check_header_start(data: bytes, source: str) -> None:
    """Refuse anything whose first bytes are not an openrknn package, saying what it is instead."""
    if data.startswith((b"RKNN", b"CYPTRKNN")) or data[4:8] == b"RKNN":
        raise VendorPackageError(
            f"{source} is {_vendor_details(data)} from Rockchip's RKNN-Toolkit; only the vendor's runtime "
            f"(librknnrt / RKNN-Toolkit-Lite) can run it. openrknn cannot read vendor models: re-convert the "
            f"original .pt/.onnx with openrknn (load_pytorch/load_onnx, build, export_rknn)")
    if not data:
        raise CorruptPackageError(f"{source} is empty (0 bytes); {_DAMAGED}")
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise CorruptPackageError(
            f"{source} has {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header of a .rknn package; "
            f"{_DAMAGED}")
    if data.startswith(MAGIC[:6]) and not data.startswith(MAGIC):
        # the \r\n in the magic is there to catch exactly this
        raise CorruptPackageError(
            f"{source} is an openrknn package whose line endings were rewritten (magic {data[:8]!r}, expected "
            f"{MAGIC!r}): it was copied in text mode (FTP ASCII, git autocrlf, a text editor). Copy it again in "
            f"binary mode or re-export it")
    if not data.startswith(MAGIC):
        what, todo = _foreign_kind(data)
        raise CorruptPackageError(f"{source} is not an openrknn .rknn package: it looks like {what}. {todo}")


def _parse_header(data: bytes, source: str) -> tuple[int, int, bytes]:
    """Checks magic, version, flags and sizes; returns (metadata length, payload length, sha256)."""
    _check_header_start(data, source)
    if len(data) >= 12:
        version = struct.unpack_from("<I", data, 8)[0]
        # checked before the sizes: a newer format may lay the rest out differently
        if version > FORMAT_VERSION:
            raise PackageVersionError(
                f"{source} uses .rknn format version {version}, but this openrknn ({__version__}) reads versions "
                f"up to {FORMAT_VERSION}; upgrade openrknn (pip install -U openrknn) on this machine")
        if version == 0:
            raise CorruptPackageError(f"{source} has format version 0, which no openrknn writes; {_DAMAGED}")
    if len(data) < HEADER_SIZE:
        raise CorruptPackageError(
            f"{source} has {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header of a .rknn package; "
            f"{_DAMAGED}")
    _, _, flags, meta_len, payload_len, digest = _HEADER.unpack_from(data, 0)
    if flags != 0:
        raise PackageVersionError(
            f"{source} sets header flags 0x{flags:08x}, which this openrknn ({__version__}) does not know "
            f"(format version {FORMAT_VERSION} defines none); upgrade openrknn")
    expected = HEADER_SIZE + meta_len + payload_len
    if len(data) < expected:
        raise CorruptPackageError(
            f"{source} is truncated: the header announces {expected} bytes ({HEADER_SIZE} header + {meta_len} "
            f"metadata + {payload_len} payload) but the file has {len(data)} ({expected - len(data)} missing); "
            f"{_DAMAGED}")
    if len(data) > expected:
        raise CorruptPackageError(
            f"{source} has {len(data) - expected} unexpected trailing bytes after the payload: the header announces "
            f"{expected} bytes but the file has {len(data)}; {_DAMAGED}")
    if payload_len == 0:
        raise CorruptPackageError(f"{source} has an empty payload (no model); {_DAMAGED}")
    return meta_len, payload_len, digest


def read_package_bytes(data: bytes, source: str = "<bytes>") -> RknnPackage:
    """Parse and verify a whole .rknn container held in memory. `source` names it in error messages."""
    data = bytes(data)
    meta_len, _, digest = _parse_header(data, source)
    body = memoryview(data)[HEADER_SIZE:]
    actual = hashlib.sha256(body).digest()
    if actual != digest:
        raise CorruptPackageError(
            f"{source} failed its checksum: SHA-256 of metadata + payload is {actual.hex()[:16]}..., the header "
            f"says {digest.hex()[:16]}...; {_DAMAGED}")
    try:
        metadata = json.loads(bytes(body[:meta_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptPackageError(f"{source} has metadata that is not valid UTF-8 JSON ({e}); {_DAMAGED}") from e
    problems = _metadata_problems(metadata)
    if problems:
        raise CorruptPackageError(
            f"{source} has invalid metadata: {'; '.join(problems)}. It was not written by a compatible openrknn or "
            f"was edited by hand; re-export it")
    payload = body[meta_len:]
    sections = metadata.pop(SECTIONS_KEY, None)
    if sections is None:
        return RknnPackage(metadata=metadata, model_bytes=bytes(payload))
    sizes_ok = (isinstance(sections, dict) and all(isinstance(sections.get(k), int) and sections[k] > 0
                                                   for k in ("model", "float_reference"))
                and sections["model"] + sections["float_reference"] == len(payload))
    if not sizes_ok:
        raise CorruptPackageError(f"{source} has payload sections {sections!r} that do not add up to the payload size "
                                  f"{len(payload)}; {_DAMAGED}")
    cut = sections["model"]
    return RknnPackage(metadata=metadata, model_bytes=bytes(payload[:cut]), float_model_bytes=bytes(payload[cut:]))


def read_package(path: PathLike) -> RknnPackage:
    """Read and verify a .rknn file: magic, version, sizes, checksum and metadata schema."""
    name = os.fsdecode(os.fspath(path))
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise PackageNotFoundError(
            f"no such .rknn file: {name} (absolute: {os.path.abspath(name)}); check the path or create it with "
            f"export_rknn()", name) from e
    except IsADirectoryError as e:
        raise PackageError(f"{name} is a folder, not a .rknn file") from e
    except OSError as e:
        raise PackageError(f"cannot read {name}: {e.strerror or e}") from e
    return read_package_bytes(data, source=name)


# ---------------------------------------------------------------- description


def package_summary(pkg: RknnPackage, path: str | None = None) -> dict:
    """A JSON-able overview of pkg (what `openrknn info --json` prints). Missing optional fields become None."""
    meta = pkg.metadata
    meta_len = len(_encode_metadata(meta))
    float_len = len(pkg.float_model_bytes or b"")
    size = HEADER_SIZE + meta_len + len(pkg.model_bytes) + float_len
    if path is not None:
        try:
            size = os.path.getsize(path)
        except OSError:
            pass
    inputs = []
    for entry in meta.get("inputs") or []:
        pre = entry.get("preprocess") or {}
        inputs.append({
            "name": entry.get("name"), "shape": entry.get("shape"), "dtype": entry.get("dtype"),
            "layout": entry.get("layout"), "model_shape": entry.get("model_shape"),
            "reorder_channel": pre.get("reorder_channel"), "mean": pre.get("mean"), "std": pre.get("std"),
            "folded_into": pre.get("folded_into"),
        })
    outputs = [{"name": o.get("name"), "shape": o.get("shape"), "dtype": o.get("dtype")}
               for o in meta.get("outputs") or []]
    quant = meta.get("quantization")
    quant_summary = None
    if isinstance(quant, dict):
        tensors = quant.get("tensors") or {}
        quant_summary = {
            "dtype": quant.get("dtype"), "algorithm": quant.get("algorithm"), "method": quant.get("method"),
            "weight_rounding": quant.get("weight_rounding") or "nearest",  # files from before the option: nearest
            "quantized_tensors": len(tensors),
            "per_channel_tensors": sum(1 for t in tensors.values()
                                       if isinstance(t, dict) and t.get("axis") is not None),
        }
    return {
        "file": path, "size_bytes": size, "format_version": FORMAT_VERSION,
        "toolkit": meta.get("toolkit"), "toolkit_version": meta.get("toolkit_version"),
        "created_utc": meta.get("created_utc"), "target_platform": meta.get("target_platform"),
        "inputs": inputs, "outputs": outputs, "build": meta.get("build") or {},
        "quantization": quant_summary, "source": meta.get("source"),
        "metadata_bytes": meta_len, "payload_bytes": len(pkg.model_bytes),
        "payload_sha256": hashlib.sha256(pkg.model_bytes).hexdigest(),
        "float_reference_bytes": float_len,
    }


def _fmt_list(values: Any) -> str:
    if values is None:
        return "?"
    if isinstance(values, list):
        return "[" + ", ".join(_fmt_list(v) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)
                               for v in values) + "]"
    return str(values)


def _fmt_reorder(order: Any) -> str:
    if order is None:
        return "none"
    text = " ".join(map(str, order)) if isinstance(order, list) else str(order)
    return text + (" (swaps RGB <-> BGR)" if order == [2, 1, 0] else "")


def _wrap_options(options: dict, indent: str, width: int = 100) -> list[str]:
    lines, line = [], indent
    for key in sorted(options):
        item = f"{key}={options[key]!r}"
        if line.strip() and len(line) + len(item) + 2 > width:
            lines.append(line.rstrip(", "))
            line = indent
        line += item + ", "
    if line.strip():
        lines.append(line.rstrip(", "))
    return lines or [indent + "(none recorded)"]


def describe_package(pkg: RknnPackage, path: str | None = None) -> str:
    """Readable multi-line description of a package (`openrknn info`)."""
    s = package_summary(pkg, path)
    targets = s["target_platform"]
    lines = [
        f"openrknn package: {s['file'] or '(in memory)'}",
        f"  size:            {s['size_bytes']:,} bytes, format version {s['format_version']}",
        f"  toolkit:         {s['toolkit']} {s['toolkit_version']}",
        f"  created:         {s['created_utc'] or 'unknown'}",
        f"  target platform: {', '.join(targets) if isinstance(targets, list) else targets}",
        f"inputs ({len(s['inputs'])}):",
    ]
    for i in s["inputs"]:
        into = i["folded_into"]
        into = ", ".join(into) if isinstance(into, list) else into
        folded = f"yes, into {into}" if into else "no (applied by graph nodes)"
        lines.append(f"  {i['name']}: deployed {_fmt_list(i['shape'])} {i['dtype'] or '?'} {i['layout'] or '?'}; "
                     f"model-side {_fmt_list(i['model_shape'])}")
        lines.append(f"      reorder_channel: {_fmt_reorder(i['reorder_channel'])}; mean {_fmt_list(i['mean'])}; "
                     f"std {_fmt_list(i['std'])}; folded into the model: {folded}")
    lines.append(f"outputs ({len(s['outputs'])}):")
    lines += [f"  {o['name']}: {_fmt_list(o['shape'])} {o['dtype'] or '?'}" for o in s["outputs"]]
    lines.append("build options:")
    lines += _wrap_options(s["build"], "  ")
    q = s["quantization"]
    if q is None:
        lines.append("quantization:    none (float model)")
    else:
        lines.append(f"quantization:    dtype {q['dtype']}, algorithm {q['algorithm']}, method {q['method']}, "
                     f"weight rounding {q['weight_rounding']}; {q['quantized_tensors']} quantized tensors "
                     f"({q['per_channel_tensors']} per-channel)")
    src = s["source"]
    if src:
        digest = src.get("sha256")
        lines.append(f"source:          {src.get('framework', '?')} {src.get('file', '?')}"
                     + (f" (sha256 {digest[:16]}...)" if isinstance(digest, str) and digest else ""))
    else:
        lines.append("source:          unknown")
    lines.append(f"payload:         ONNX model, {s['payload_bytes']:,} bytes, sha256 {s['payload_sha256'][:16]}...")
    return "\n".join(lines)
