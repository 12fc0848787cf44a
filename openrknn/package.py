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

A board installs only numpy + onnxruntime, so this module imports the standard library only (plus openrknn's own
stdlib-only helpers: errors, the metadata schema, bounded JSON, the protobuf framing reader): never torch, onnx or the
quantizer. The readable summary `openrknn info` prints lives in openrknn.package_info.
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

from openrknn import __version__, bounded_json, onnx_wire
from openrknn.errors import CorruptPackageError, PackageError, PackageVersionError, VendorPackageError
from openrknn.package_schema import REQUIRED_KEYS, SECTIONS_KEY, metadata_problems, runtime_problems  # noqa: F401

FORMAT_VERSION = 1
MAGIC = b"ORKNN\x00\r\n"
# magic, version, flags, metadata length, payload length, sha256(metadata + payload)
_HEADER = struct.Struct("<8sIIQQ32s")
HEADER_SIZE = _HEADER.size  # 64

_DAMAGED = "the file is damaged or was not fully copied; re-export it (export_rknn) or copy it again in binary mode"
# after the checksum passed, a bad field was written that way: by another tool, or edited and re-hashed
_EDITED = "It was not written by a compatible openrknn or was edited by hand; re-export it"

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


def encode_metadata(metadata: Any) -> bytes:
    """The metadata bytes exactly as a package stores them (sorted keys, compact, UTF-8)."""
    try:
        text = json.dumps(
            metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
        )
    except (TypeError, ValueError) as e:
        # ValueError: NaN/inf (not JSON; a reader in another language would reject it)
        raise PackageError(f"package metadata cannot be stored as JSON: {e}. Use plain numbers, strings, lists, "
                           "dicts") from None
    return text.encode("utf-8")


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
    meta_bytes = encode_metadata(metadata)
    # validate what a reader will see (tuples -> lists, numpy -> lists), so we never write a file we would refuse
    problems = metadata_problems(json.loads(meta_bytes), len(payload))
    if not problems:
        problems = _payload_problems(bytes(pkg.model_bytes), metadata)
        if pkg.float_model_bytes:
            problems += _payload_problems(bytes(pkg.float_model_bytes), {}, "float reference")
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
#
# Every read is bounded by a length the file itself states: the size from fstat, then the header's M and P once the
# file size is known to equal 64 + M + P. Only regular files are opened (a FIFO would block, /dev/zero never ends),
# and each byte is read at most once.

MAX_METADATA_BYTES = 64 << 20  # far above real metadata (per-channel scales of big models), far below a memory risk
MAX_METADATA_DEPTH = 32  # levels of nested lists/objects; openrknn writes 5
_SNIFF = 64 << 10  # bytes from each end of a non-package file used to say what it is
_VENDOR_TRAILER_MAX = 1 << 20  # a vendor file's JSON trailer is read only to name the file, and only this much


class _BufferSource:
    """A package held in memory."""

    def __init__(self, data: Union[bytes, bytearray, memoryview], name: str):
        self._view = memoryview(data).cast("B")
        self.size, self.name = self._view.nbytes, name

    def read(self, offset: int, n: int) -> memoryview:
        return self._view[offset: offset + max(0, n)]


class _FileSource:
    """A regular file opened for reading; reads stop at the size fstat gave when it was opened."""

    def __init__(self, f: Any, size: int, name: str):
        self._f, self.size, self.name = f, size, name

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        self._f.seek(offset)
        chunks, got = [], 0
        while got < n:
            chunk = self._f.read(n - got)
            if not chunk:
                raise CorruptPackageError(
                    f"{self.name} became shorter while it was read ({self.size} bytes when opened, {offset + got} "
                    "read): it is being written or copied right now; wait until that finishes and try again")
            chunks.append(chunk)
            got += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Sample:
    """What naming a file that is not a package needs: its first and last _SNIFF bytes, plus any other range read on
    demand (a vendor file's JSON trailer)."""

    def __init__(self, src: Any, head: bytes):
        self.src, self.size = src, src.size
        self.first = head + bytes(src.read(len(head), min(src.size, _SNIFF) - len(head)))
        self.tail_start = max(len(self.first), src.size - _SNIFF)
        self.tail = bytes(src.read(self.tail_start, src.size - self.tail_start))

    def sniff(self) -> bytes:
        return self.first + self.tail

    def read(self, offset: int, n: int) -> bytes:
        end, out = min(offset + n, self.size), bytearray()
        while offset < end:
            if offset < len(self.first):
                part = self.first[offset:min(end, len(self.first))]
            elif offset >= self.tail_start:
                part = self.tail[offset - self.tail_start:end - self.tail_start]
            else:
                part = bytes(self.src.read(offset, min(end, self.tail_start) - offset))
            out += part
            offset += len(part)
        return bytes(out)

    def u64(self, offset: int) -> Optional[int]:
        raw = self.read(offset, 8)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else None


def _vendor_details(sample: _Sample) -> str:
    """Best-effort facts about a vendor RKNN-Toolkit file: format version word, toolkit version, target."""
    data = sample.first
    if data.startswith(b"CYPTRKNN"):
        return "an encrypted vendor model (CYPTRKNN)"
    if data[4:8] == b"RKNN":
        return "a bare vendor FlatBuffers model"
    if sample.size < 16:
        return "a vendor model (file too short to read its version word)"
    if data[4:8] != b"\x00\x00\x00\x00":  # not the usual 8-byte signature; the word after 'RKNN' is all we know
        return f"a vendor model, format version word {struct.unpack_from('<I', data, 4)[0]}"
    facts = [f"format version word {sample.u64(8)}"]
    info = _vendor_json(sample)
    version = info.get("version")
    if isinstance(version, (str, int, float)) and not isinstance(version, bool) and version:
        facts.append(f"written by RKNN-Toolkit {str(version)[:40]}")
    platform = info.get("target_platform")
    if platform:
        names = platform if isinstance(platform, list) else [platform]
        facts.append("for " + ", ".join(str(p)[:40] for p in names[:8] if isinstance(p, (str, int))))
    source = info.get("ori_network_platform") or info.get("network_platform")
    if isinstance(source, str) and source:
        facts.append(f"converted from {source[:40]}")
    return "a vendor model, " + ", ".join(facts)


def _vendor_json(sample: _Sample) -> dict:
    """The JSON trailer of a Toolkit2 file, or {} (its position depends on an undocumented 40-byte pad)."""
    size = sample.u64(16)
    if size is None:
        return {}
    for pad in (40, 0):
        pos = 24 + pad + size
        json_size = sample.u64(pos) if pos + 8 <= sample.size else None
        if not json_size or json_size > _VENDOR_TRAILER_MAX or pos + 8 + json_size > sample.size:
            continue
        try:
            obj = bounded_json.loads(sample.read(pos + 8, json_size), MAX_METADATA_DEPTH)
        except bounded_json.JSONLimitError:
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


def _refuse_start(src: Any, head: bytes, source: str) -> None:
    """Refuse a file whose first bytes are not an openrknn package's magic, saying what it is instead."""
    if head.startswith((b"RKNN", b"CYPTRKNN")) or head[4:8] == b"RKNN":
        raise VendorPackageError(
            f"{source} is {_vendor_details(_Sample(src, head))} from Rockchip's RKNN-Toolkit; only the vendor's "
            f"runtime (librknnrt / RKNN-Toolkit-Lite) can run it. openrknn cannot read vendor models: re-convert the "
            f"original .pt/.onnx with openrknn (load_pytorch/load_onnx, build, export_rknn)")
    if not head:
        raise CorruptPackageError(f"{source} is empty (0 bytes); {_DAMAGED}")
    if len(head) < len(MAGIC) and MAGIC.startswith(head):
        raise CorruptPackageError(
            f"{source} has {len(head)} bytes, shorter than the {HEADER_SIZE}-byte header of a .rknn package; "
            f"{_DAMAGED}")
    if head.startswith(MAGIC[:6]):
        # the \r\n in the magic is there to catch exactly this
        raise CorruptPackageError(
            f"{source} is an openrknn package whose line endings were rewritten (magic {head[:8]!r}, expected "
            f"{MAGIC!r}): it was copied in text mode (FTP ASCII, git autocrlf, a text editor). Copy it again in "
            f"binary mode or re-export it")
    what, todo = _foreign_kind(_Sample(src, head).sniff())
    raise CorruptPackageError(f"{source} is not an openrknn .rknn package: it looks like {what}. {todo}")


def _parse_header(head: bytes, size: int, source: str) -> tuple[int, int, bytes]:
    """Checks version, flags and sizes of a header that starts with MAGIC; returns (M, P, sha256)."""
    if len(head) >= 12:
        version = struct.unpack_from("<I", head, 8)[0]
        # checked before the sizes: a newer format may lay the rest out differently
        if version > FORMAT_VERSION:
            raise PackageVersionError(
                f"{source} uses .rknn format version {version}, but this openrknn ({__version__}) reads versions "
                f"up to {FORMAT_VERSION}; upgrade openrknn (pip install -U openrknn) on this machine")
        if version == 0:
            raise CorruptPackageError(f"{source} has format version 0, which no openrknn writes; {_DAMAGED}")
    if size < HEADER_SIZE:
        raise CorruptPackageError(
            f"{source} has {size} bytes, shorter than the {HEADER_SIZE}-byte header of a .rknn package; {_DAMAGED}")
    _, _, flags, meta_len, payload_len, digest = _HEADER.unpack_from(head, 0)
    if flags != 0:
        raise PackageVersionError(
            f"{source} sets header flags 0x{flags:08x}, which this openrknn ({__version__}) does not know "
            f"(format version {FORMAT_VERSION} defines none); upgrade openrknn")
    expected = HEADER_SIZE + meta_len + payload_len
    if size < expected:
        raise CorruptPackageError(
            f"{source} is truncated: the header announces {expected} bytes ({HEADER_SIZE} header + {meta_len} "
            f"metadata + {payload_len} payload) but the file has {size} ({expected - size} missing); {_DAMAGED}")
    if size > expected:
        raise CorruptPackageError(
            f"{source} has {size - expected} unexpected trailing bytes after the payload: the header announces "
            f"{expected} bytes but the file has {size}; {_DAMAGED}")
    if payload_len == 0:
        raise CorruptPackageError(f"{source} has an empty payload (no model); {_DAMAGED}")
    if meta_len > MAX_METADATA_BYTES:
        raise CorruptPackageError(
            f"{source} declares {meta_len:,} bytes of metadata, more than the {MAX_METADATA_BYTES:,} a reader "
            f"accepts (docs/model-format.md); {_EDITED}")
    return meta_len, payload_len, digest


def _payload_problems(model: bytes, metadata: dict, what: str = "model") -> list[str]:
    """Why the payload is not the ONNX model the metadata describes (empty list = it is)."""
    try:
        graph = onnx_wire.graph_names(model)
    except onnx_wire.WireError as e:
        return [f"the {what} payload is not an ONNX model ({e})"]
    problems = []
    for key, names in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        for i, entry in enumerate(metadata.get(key) or []):
            if entry["name"] not in names:
                problems.append(f"{key}[{i}].name {entry['name']!r:.80} is not a graph {key[:-1]} of the {what} "
                                f"payload (it has {', '.join(map(repr, names[:8])) or 'none'})")
    return problems


def _decode(meta_bytes: Any, payload: Any, source: str) -> RknnPackage:
    """Metadata and payload of a file that passed its checksum -> a package, or CorruptPackageError naming the field."""
    try:
        metadata = bounded_json.loads(meta_bytes, MAX_METADATA_DEPTH)
    except bounded_json.JSONLimitError as e:
        raise CorruptPackageError(f"{source} has metadata that is not valid UTF-8 JSON ({e}); {_EDITED}") from None
    problems = metadata_problems(metadata, len(payload))
    if problems:
        raise CorruptPackageError(f"{source} has invalid metadata: {'; '.join(problems)}. {_EDITED}")
    sections = metadata.pop(SECTIONS_KEY, None)
    cut = sections["model"] if sections else len(payload)
    model, reference = bytes(payload[:cut]), (bytes(payload[cut:]) if sections else None)
    problems = _payload_problems(model, metadata)
    if reference is not None:
        problems += [p for p in _payload_problems(reference, {}, "float reference")]
    if problems:
        raise CorruptPackageError(f"{source}: {'; '.join(problems)}. {_EDITED}")
    return RknnPackage(metadata=metadata, model_bytes=model, float_model_bytes=reference)


def _read(src: Any, source: str) -> RknnPackage:
    head = bytes(src.read(0, HEADER_SIZE))
    if not head.startswith(MAGIC):
        _refuse_start(src, head, source)
    meta_len, payload_len, digest = _parse_header(head, src.size, source)
    meta_bytes = src.read(HEADER_SIZE, meta_len)
    payload = src.read(HEADER_SIZE + meta_len, payload_len)
    check = hashlib.sha256(meta_bytes)
    check.update(payload)
    actual = check.digest()
    if actual != digest:
        raise CorruptPackageError(
            f"{source} failed its checksum: SHA-256 of metadata + payload is {actual.hex()[:16]}..., the header "
            f"says {digest.hex()[:16]}...; {_DAMAGED}")
    return _decode(meta_bytes, payload, source)


def read_package_bytes(data: Union[bytes, bytearray, memoryview], source: str = "<bytes>") -> RknnPackage:
    """Parse and verify a whole .rknn container held in memory. `source` names it in error messages."""
    return _read(_BufferSource(data, source), source)


def _kind_of(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device (like /dev/zero)"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _refuse_special(where: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = _kind_of(mode)
    if kind == "a folder":
        raise PackageError(f"{where} is a folder, not a .rknn file")
    raise PackageError(f"{where} is {kind}, not a regular file: a .rknn package is read from a regular file only; "
                       "pass the path of the .rknn file itself")


def open_regular_file(name: str) -> tuple[Any, int]:
    """(unbuffered file object, size) for a regular file, opened without blocking; PackageError for anything else
    (a folder, a FIFO, a device such as /dev/zero, a socket), PackageNotFoundError when nothing is there."""
    where = name
    if os.path.islink(name):
        where = f"{name} (a link to {os.path.realpath(name)})"
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for a regular file
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError as e:
        raise PackageNotFoundError(
            f"no such .rknn file: {where} (absolute: {os.path.abspath(name)}); check the path or create it with "
            f"export_rknn()", name) from e
    except IsADirectoryError as e:
        raise PackageError(f"{where} is a folder, not a .rknn file") from e
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise PackageError(f"cannot open a file whose path has {len(name)} characters: the name is too long for "
                               "this system; check the path") from None
        try:  # e.g. ENXIO for a socket: say what is there when that is why
            mode = os.stat(name).st_mode
        except OSError:
            mode = stat.S_IFREG
        _refuse_special(where, mode)
        raise PackageError(f"cannot open {where}: {e.strerror or e}") from e
    try:
        info = os.fstat(fd)
        _refuse_special(where, info.st_mode)
        return os.fdopen(fd, "rb", buffering=0), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_package(path: PathLike) -> RknnPackage:
    """Read and verify a .rknn file: magic, version, sizes, checksum, metadata schema and payload framing."""
    try:
        name = os.fsdecode(os.fspath(path))
    except TypeError:
        raise PackageError(f"a .rknn path must be a string or path-like object, got {type(path).__name__}") from None
    if "\x00" in name:
        raise PackageError(f"the path {name!r:.120} contains a NUL byte, which no file name can hold; check the path")
    f, size = open_regular_file(name)
    with f:
        try:
            return _read(_FileSource(f, size, name), name)
        except OSError as e:
            raise PackageError(f"cannot read {name}: {e.strerror or e}") from e


def check_runnable(metadata: dict, source: str = "the model") -> None:
    """Refuse (CorruptPackageError) metadata that reading accepts but a runtime cannot run: an input without its
    shape or layout, a batch that does not divide the inputs (docs/model-format.md, "What running needs")."""
    problems = runtime_problems(metadata)
    if problems:
        raise CorruptPackageError(f"{source} cannot run: {'; '.join(problems)}. {_EDITED}")
