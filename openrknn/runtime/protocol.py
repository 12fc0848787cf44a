"""The openrknn board protocol, version 1: framing, array encoding, handshake MACs and the remote error types.

docs/protocol.md is the specification. Every message is one frame:

    offset  size  field
         0     4  magic b"ORKP"
         4     2  uint16 protocol version (PROTOCOL_VERSION)
         6     2  uint16 flags (0; reserved)
         8     4  uint32 header length H
        12     8  uint64 body length B
        20     H  header: one UTF-8 JSON object
      20+H     B  body: an optional raw blob, then arrays (raw little-endian C-order bytes, each at an 8-byte offset)

The header's "arrays" list gives each array's dtype (a name from DTYPES) and shape; "blob" gives the blob length.
Nothing is ever unpickled or evaluated: a frame is JSON plus bytes that numpy views with a whitelisted dtype.
Both sides check the lengths against their limits before reading (or allocating) anything.

Receivers bound everything before they allocate it: the header's length and JSON depth, each array's element count,
the body length against the header's arrays, and (with a deadline or a minimum rate) the time a whole frame may take.

Board side: imports only the standard library, numpy, openrknn.errors and openrknn.bounded_json.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import bounded_json
from ..errors import OpenRKNNError

PROTOCOL_VERSION = 1
MAGIC = b"ORKP"
# magic, protocol version, flags, header length, body length; this prefix layout never changes between versions, so
# either side can always tell a version mismatch from garbage
PREFIX = struct.Struct("<4sHHIQ")
PREFIX_SIZE = PREFIX.size  # 20
DEFAULT_PORT = 8765
MAX_HEADER_BYTES = 1 << 20  # a header is a small JSON object; 1 MiB leaves room for big metadata
HANDSHAKE_MAX_HEADER = 16 << 10  # before authentication only a tiny auth frame is accepted
DEFAULT_MAX_MESSAGE = 512 << 20  # header + body; a model upload is the largest message
ARRAY_ALIGN = 8
MAX_NDIM = 32
MAX_ARRAYS = 1024  # arrays in one frame
MAX_HEADER_DEPTH = 32  # nested lists/objects in a header (a load reply's metadata is the deepest, about 5)
AUTH_CONTEXT = b"openrknn-auth-v1:"  # domain separation: the MACs are useless for anything but this handshake

# dtype names on the wire -> numpy dtypes, always little-endian
DTYPES: Dict[str, np.dtype] = {name: np.dtype(code) for name, code in (
    ("bool", "?"), ("uint8", "u1"), ("int8", "i1"), ("uint16", "<u2"), ("int16", "<i2"), ("uint32", "<u4"),
    ("int32", "<i4"), ("uint64", "<u8"), ("int64", "<i8"), ("float16", "<f2"), ("float32", "<f4"),
    ("float64", "<f8"))}


# ---------------------------------------------------------------- errors


class RemoteError(OpenRKNNError):
    """Something went wrong talking to a board running `openrknn serve`."""


class BoardConnectionError(RemoteError, ConnectionError):
    """No usable connection: the board is unreachable, refused it, or the connection was lost."""


class BoardUnreachableError(BoardConnectionError):
    """The address did not answer (no route, DNS failure, connect timeout)."""


class BoardRefusedError(BoardConnectionError):
    """The address answered but nothing listens on the port."""


class ConnectionLostError(BoardConnectionError):
    """The peer closed the connection or stopped answering within the timeout."""


class PeerClosedError(ConnectionLostError):
    """The peer closed the connection cleanly between two frames."""


class AuthError(RemoteError):
    """The handshake failed: wrong or missing token, or a request before authentication."""


class ProtocolError(RemoteError):
    """A frame broke the protocol (bad magic, bad header, bad array spec, lengths that do not add up)."""


class FrameTimeoutError(ProtocolError, TimeoutError):
    """A frame did not arrive completely within its deadline (a peer that stalls or trickles bytes)."""


class ProtocolVersionError(ProtocolError):
    """The two sides speak different protocol versions."""


class MessageTooLargeError(ProtocolError):
    """A frame (usually a model upload) is larger than the receiver accepts."""


class RemoteServerError(RemoteError):
    """The server ran the request and it failed there; carries the server's error kind and message."""

    def __init__(self, message: str, kind: str = "ServerError", server_message: str = ""):
        super().__init__(message)
        self.kind, self.server_message = kind, server_message


# ---------------------------------------------------------------- arrays


def dtype_name(dt: np.dtype) -> Optional[str]:
    """The wire name of a numpy dtype (any byte order), or None when it cannot travel."""
    dt = np.dtype(dt)
    for name, wire in DTYPES.items():
        if dt.kind == wire.kind and dt.itemsize == wire.itemsize:
            return name
    return None


def to_wire_array(a: np.ndarray, what: str = "array") -> np.ndarray:
    """A C-contiguous little-endian copy (or the array itself when it already is one) with a wire dtype."""
    name = dtype_name(a.dtype)
    if name is None:
        raise ProtocolError(f"{what} has dtype {a.dtype}, which the protocol cannot carry; use one of "
                            f"{', '.join(DTYPES)}")
    wire = DTYPES[name]
    if a.dtype != wire:
        a = a.astype(wire)
    return np.ascontiguousarray(a)


def _align(n: int) -> int:
    return -(-n // ARRAY_ALIGN) * ARRAY_ALIGN


@dataclass
class ArraySpec:
    dtype: np.dtype
    shape: Tuple[int, ...]
    offset: int
    nbytes: int


def array_layout(specs: object, blob_len: int, max_bytes: Optional[int] = None) -> Tuple[List[ArraySpec], int]:
    """Check a header's "arrays" list and place each array in the body. Returns (specs, body length they need).

    max_bytes (a receiver's message limit): no array may describe more bytes than that, counting only its non-zero
    dimensions, so an empty array with a huge dimension ([2**70, 0]) is refused too (numpy could not even shape it).
    Pure: runs before the body is read, so a bad spec is refused without allocating anything."""
    if specs is None:
        specs = []
    if not isinstance(specs, list):
        raise ProtocolError(f"header 'arrays' must be a list, got {type(specs).__name__}")
    if len(specs) > MAX_ARRAYS:
        raise ProtocolError(f"header 'arrays' lists {len(specs)} arrays, more than the {MAX_ARRAYS} a frame may carry")
    if not isinstance(blob_len, int) or isinstance(blob_len, bool) or blob_len < 0:
        raise ProtocolError(f"header 'blob' must be a byte count >= 0, got {blob_len!r:.40}")
    out, pos = [], blob_len
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ProtocolError(f"arrays[{i}] must be an object with 'dtype' and 'shape', got {spec!r:.80}")
        name, shape = spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or name not in DTYPES:
            raise ProtocolError(f"arrays[{i}].dtype={name!r:.80} is not allowed; allowed: {', '.join(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ProtocolError(f"arrays[{i}].shape={shape!r:.80} must be a list of at most {MAX_NDIM} ints >= 0")
        dt = DTYPES[name]
        nbytes = extent = dt.itemsize
        for d in shape:
            nbytes *= d
            extent *= max(d, 1)
        if max_bytes is not None and extent > max_bytes:
            raise ProtocolError(f"arrays[{i}].shape={shape!r:.80} ({name}) describes more than the {max_bytes:,}-byte "
                                "message limit of the receiver")
        pos = _align(pos)
        out.append(ArraySpec(dt, tuple(shape), pos, nbytes))
        pos += nbytes
    return out, pos


def array_specs(arrays: Sequence[np.ndarray]) -> List[dict]:
    return [{"dtype": dtype_name(a.dtype), "shape": list(a.shape)} for a in arrays]


# ---------------------------------------------------------------- frames


@dataclass
class Frame:
    header: dict
    blob: memoryview = field(default_factory=lambda: memoryview(b""))
    arrays: List[np.ndarray] = field(default_factory=list)
    size: int = 0  # bytes on the wire


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} value {obj!r:.60} cannot be sent; use plain numbers, strings and lists")


def encode_header(header: dict) -> bytes:
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=False, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"request cannot be encoded as JSON: {e}") from e


def frame_buffers(header: dict, arrays: Sequence[np.ndarray] = (), blob: bytes = b"") -> List[memoryview]:
    """The buffers of one frame, in order, without copying the blob or the arrays."""
    arrays = [to_wire_array(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    header = dict(header)
    if arrays:
        header["arrays"] = array_specs(arrays)
    if blob:
        header["blob"] = len(blob)
    head = encode_header(header)
    specs, body_len = array_layout(header.get("arrays"), len(blob))
    buffers = [memoryview(PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(head), body_len) + head)]
    pos = 0
    if blob:
        buffers.append(memoryview(blob).cast("B"))
        pos = len(blob)
    for spec, a in zip(specs, arrays):
        if spec.offset > pos:
            buffers.append(memoryview(bytes(spec.offset - pos)))
        if spec.nbytes:
            buffers.append(memoryview(a).cast("B"))
        pos = spec.offset + spec.nbytes
    return buffers


def send_frame(sock: socket.socket, header: dict, arrays: Sequence[np.ndarray] = (), blob: bytes = b"") -> int:
    """Send one frame; returns its size in bytes. Socket errors propagate (callers know what they were doing)."""
    buffers = frame_buffers(header, arrays, blob)
    total = sum(b.nbytes for b in buffers)
    if hasattr(sock, "sendmsg"):
        # one gathering syscall for header and arrays: no copies, and the peer is not woken for the header alone
        while buffers:
            sent = sock.sendmsg(buffers[:1024])  # IOV_MAX
            while buffers and sent >= buffers[0].nbytes:
                sent -= buffers[0].nbytes
                buffers.pop(0)
            if sent:
                buffers[0] = buffers[0][sent:]
        return total
    for buf in buffers:
        sock.sendall(buf)
    return total


def tune_socket(sock: socket.socket) -> None:
    """No Nagle delay for small frames. Buffer sizes are left to the kernel's autotuning (setting them would switch
    it off, and boards cap them low)."""
    for level, opt in ((socket.IPPROTO_TCP, socket.TCP_NODELAY), (socket.SOL_SOCKET, socket.SO_KEEPALIVE)):
        try:
            sock.setsockopt(level, opt, 1)
        except OSError:
            pass


class _FrameClock:
    """The time limits of one frame: each read waits at most io_timeout, and the whole frame must be in by its
    deadline (an absolute one, such as the end of the handshake, and/or io_timeout + size / min_rate)."""

    def __init__(self, io_timeout: Optional[float], deadline: Optional[float], min_rate: Optional[float]):
        self.io_timeout, self.fixed, self.min_rate = io_timeout, deadline, min_rate
        self.start = time.monotonic()
        self.deadline = deadline
        self.size = PREFIX_SIZE

    def frame_size(self, size: int) -> None:
        """Once the prefix tells the frame's size, its rate deadline follows."""
        self.size = size
        if self.min_rate and self.io_timeout is not None:
            by_rate = self.start + self.io_timeout + size / self.min_rate
            self.deadline = by_rate if self.fixed is None else min(self.fixed, by_rate)

    def arm(self, sock: socket.socket, got: int) -> None:
        if self.deadline is None:
            if self.io_timeout is not None:
                sock.settimeout(self.io_timeout)
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.expired(got)
        sock.settimeout(left if self.io_timeout is None else min(left, self.io_timeout))

    def expired(self, got: int) -> FrameTimeoutError:
        waited = time.monotonic() - self.start
        return FrameTimeoutError(f"the frame was not completed in time: {got:,} of {self.size:,} bytes arrived in "
                                 f"{waited:.1f} s; a peer must send a whole frame promptly")


def recv_exact_into(sock: socket.socket, view: memoryview, what: str, clock: Optional[_FrameClock] = None,
                    before: int = 0) -> None:
    """Fill view from sock. `before`: bytes of this frame already read (for messages)."""
    got, n = 0, view.nbytes
    while got < n:
        if clock is not None:
            clock.arm(sock, before + got)
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            if clock is None:
                raise
            raise clock.expired(before + got) from None
        if k == 0:
            size = f" of {clock.size:,}" if clock is not None else ""
            raise ConnectionLostError(f"the connection closed after {before + got:,}{size} bytes of the frame, in its "
                                      f"{what}")
        got += k


def parse_prefix(data: bytes, max_header: int, max_message: int) -> Tuple[int, int]:
    """(header length, body length) from a 20-byte prefix, refusing bad magic, other versions and oversize frames."""
    magic, version, flags, head_len, body_len = PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"not an openrknn protocol frame (first bytes {data[:4]!r}, expected {MAGIC!r}); is "
                            "this port an openrknn server/client?")
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(f"the peer speaks protocol version {version}, this side speaks "
                                   f"{PROTOCOL_VERSION}; install the same openrknn version on the board and the PC")
    if flags != 0:
        raise ProtocolError(f"frame flags {flags:#x} are not defined in protocol version {PROTOCOL_VERSION}")
    if head_len == 0 or head_len > max_header:
        raise ProtocolError(f"frame header length {head_len} is outside 1..{max_header} bytes")
    if head_len + body_len > max_message:
        raise MessageTooLargeError(f"frame of {head_len + body_len:,} bytes is larger than the {max_message:,}-byte "
                                   "limit of the receiver")
    return head_len, body_len


def decode_header(raw: bytes) -> dict:
    try:
        header = bounded_json.loads(raw, MAX_HEADER_DEPTH)
    except bounded_json.JSONLimitError as e:
        raise ProtocolError(f"frame header is not UTF-8 JSON this receiver accepts ({str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header must be a JSON object, got {type(header).__name__}")
    return header


def recv_frame(sock: socket.socket, max_message: int = DEFAULT_MAX_MESSAGE, max_header: int = MAX_HEADER_BYTES,
               first_timeout: Optional[float] = None, io_timeout: Optional[float] = None,
               deadline: Optional[float] = None, min_rate: Optional[float] = None) -> Frame:
    """Read one frame. first_timeout bounds the wait for its first bytes (idle time between requests; socket.timeout
    when it passes), io_timeout every later read. A whole-frame limit applies when asked: `deadline` (time.monotonic()
    value) and/or `min_rate` (bytes/s: the frame must be in within io_timeout + its size / min_rate of its first
    byte); a frame that misses it raises FrameTimeoutError. The header and array specs are checked before the body is
    read; a frame that breaks the rules raises ProtocolError and leaves the connection unusable (the caller closes
    it)."""
    first_wait = first_timeout
    if deadline is not None:
        left = deadline - time.monotonic()
        first_wait = left if first_wait is None else min(first_wait, left)
        if first_wait <= 0:
            raise socket.timeout("the deadline passed before the frame began")
    if first_wait is not None:
        sock.settimeout(first_wait)
    prefix = bytearray(PREFIX_SIZE)
    view = memoryview(prefix)
    k = sock.recv_into(view, PREFIX_SIZE)  # the first bytes wait up to first_timeout ...
    if k == 0:
        raise PeerClosedError("the peer closed the connection")
    # ... the rest of the frame must follow promptly
    clock = _FrameClock(io_timeout, deadline, min_rate)
    clock.frame_size(PREFIX_SIZE)
    if k < PREFIX_SIZE:
        recv_exact_into(sock, view[k:], "frame prefix", clock, k)
    head_len, body_len = parse_prefix(bytes(prefix), max_header, max_message)
    clock.frame_size(PREFIX_SIZE + head_len + body_len)
    raw_head = bytearray(head_len)
    recv_exact_into(sock, memoryview(raw_head), "frame header", clock, PREFIX_SIZE)
    header = decode_header(bytes(raw_head))
    specs, needed = array_layout(header.get("arrays"), header.get("blob", 0), max_message)
    if needed != body_len:
        raise ProtocolError(f"the header describes {needed:,} body bytes (blob + arrays) but the frame carries "
                            f"{body_len:,}: the array shapes/dtypes do not match the data")
    body = np.empty(body_len, np.uint8)  # not bytearray: that zero-fills megabytes we overwrite at once
    bview = memoryview(body)
    if body_len:
        recv_exact_into(sock, bview, "frame body", clock, PREFIX_SIZE + head_len)
    blob_len = header.get("blob", 0)
    arrays = [np.frombuffer(body, dtype=s.dtype, count=s.nbytes // s.dtype.itemsize, offset=s.offset).reshape(s.shape)
              if s.nbytes else np.zeros(s.shape, s.dtype) for s in specs]
    return Frame(header, bview[:blob_len], arrays, PREFIX_SIZE + head_len + body_len)


# ---------------------------------------------------------------- replies and errors


def error_header(kind: str, message: str) -> dict:
    return {"ok": False, "error": {"kind": kind, "message": message}}


def reply_error(header: dict) -> Tuple[str, str]:
    """(kind, message) of an error reply; tolerant of malformed ones."""
    err = header.get("error")
    if not isinstance(err, dict):
        return "ServerError", f"malformed error reply {header!r:.200}"
    return str(err.get("kind", "ServerError")), str(err.get("message", ""))


# ---------------------------------------------------------------- handshake


def client_mac(token: str, nonce: str) -> str:
    """What the client sends to prove it knows the token (the token itself never travels)."""
    return hmac.new(token.encode("utf-8"), AUTH_CONTEXT + b"client:" + nonce.encode("ascii"), hashlib.sha256
                    ).hexdigest()


def server_mac(token: str, nonce: str, client_nonce: str) -> str:
    """What the server sends back to prove it knows the token too (the client checks it)."""
    msg = AUTH_CONTEXT + b"server:" + nonce.encode("ascii") + b":" + client_nonce.encode("ascii")
    return hmac.new(token.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def macs_equal(expected: str, given: object) -> bool:
    """Constant-time comparison; anything that is not an ASCII string is simply unequal."""
    if not isinstance(given, str):
        return False
    try:
        given_b = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected.encode("ascii"), given_b)


def model_key(data: bytes, post: bytes = b"") -> str:
    """The name a server shares a model under (attach / load): the SHA-256 of its bytes, followed by those of its
    host-side tail when it has one (a vendor .rknn and its .post.onnx), the model's length between them so that no
    other split of the same bytes shares its key."""
    h = hashlib.sha256(bytes(data))
    if post:
        h.update(b"/post/%d/" % len(data))
        h.update(bytes(post))
    return h.hexdigest()
