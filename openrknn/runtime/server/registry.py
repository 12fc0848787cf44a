"""The models a server holds: shared between connections by content (SHA-256), released with the last holder; and
the only way a client's path reaches the board's file system (regular files under --model-dir). A model is any of
the three kinds backends.py runs: an openrknn package, a vendor .rknn (with its host-side tail), an int8 .tflite."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from ...errors import PackageError, RuntimeStateError
from ...package import PackageNotFoundError, open_regular_file
from .. import protocol as P
from .backends import open_backend
from .facts import process_memory

log = logging.getLogger("openrknn.server")

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; a longer request path cannot name a file


@dataclass
class ServedModel:
    """One model the server holds, shared by every connection that loaded or attached the same bytes."""

    key: str  # protocol.model_key of the model bytes (and its host-side tail)
    backend: object  # backends.SimulatorBackend | VendorBackend | TfliteBackend
    package_bytes: int
    rss_delta_bytes: Optional[int]
    source: str
    refs: int = 0
    loaded_at: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def metadata(self) -> dict:
        return self.backend.metadata

    @property
    def model_bytes(self) -> bytes:  # the ONNX payload an openrknn package's profiling session runs
        return self.backend.model_bytes

    @property
    def simulator(self):
        return getattr(self.backend, "simulator", None)


class ModelRegistry:
    """Models by content; each connection holds references, the last release frees the session."""

    def __init__(self, max_models: int, threads: Optional[int], core_mask="auto", tflite_delegate="auto"):
        self.max_models, self.threads = max_models, threads
        self.core_mask, self.tflite_delegate = core_mask, tflite_delegate
        self._models: Dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def get(self, key: str) -> Optional[ServedModel]:
        with self._lock:
            return self._models.get(key)

    def acquire(self, key: str) -> Optional[ServedModel]:
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                entry.refs += 1
            return entry

    def load(self, data: bytes, source: str, post: bytes = b"") -> Tuple[ServedModel, bool]:
        """(entry, shared): open the model (and its host-side tail) unless the same bytes are already loaded."""
        key = P.model_key(data, post)
        entry = self.acquire(key)
        if entry is not None:
            return entry, True
        with self._lock:
            if len(self._models) >= self.max_models:
                raise RuntimeStateError(f"the server already holds {len(self._models)} models (its limit); release "
                                        "models you no longer use (rknn.release()) or restart it with a larger "
                                        "--max-models")
        before = process_memory()["rss_bytes"]
        backend = open_backend(data, post, source, self.threads, self.core_mask, self.tflite_delegate)
        after = process_memory()["rss_bytes"]
        delta = after - before if before is not None and after is not None else None
        fresh = ServedModel(key, backend, len(data) + len(post), delta, source)
        with self._lock:
            entry = self._models.setdefault(key, fresh)  # another connection may have loaded it meanwhile
            entry.refs += 1
        if entry is not fresh:
            backend.release()
        return entry, entry is not fresh

    def release(self, key: str) -> None:
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                return
            entry.refs -= 1
            if entry.refs <= 0:
                del self._models[key]
                entry.backend.release()
                log.info("model %s unloaded (no connection holds it)", key[:12])


def read_model_file(path: object, model_dirs: Sequence[str], max_bytes: int) -> bytes:
    """The bytes of a .rknn a client names by path: a regular file under one of model_dirs, at most max_bytes.
    Every refusal is an openrknn error the client receives by name (never a blocked thread: FIFOs are refused)."""
    if not isinstance(path, str) or not path:
        raise P.ProtocolError(f"load path must be a non-empty string, got {path!r:.80}")
    if "\x00" in path:
        raise PackageError(f"load path {path!r:.80} contains a NUL byte, which no file name can hold")
    if len(path) > MAX_PATH_CHARS:
        raise PackageError(f"load path has {len(path):,} characters; a path on the board has at most "
                           f"{MAX_PATH_CHARS}")
    real = os.path.realpath(path)
    roots = [os.path.realpath(d) for d in model_dirs]
    if not any(os.path.commonpath([real, r]) == r for r in roots):
        raise RuntimeStateError(f"{path} is outside the folders this server may read models from "
                                f"({', '.join(roots)}); copy the model there or restart the server with --model-dir")
    try:
        f, size = open_regular_file(real)
    except PackageNotFoundError:
        raise RuntimeStateError(f"{path} does not exist on the board") from None
    except PackageError as e:  # a folder, a FIFO, a device, a name too long, no permission
        raise PackageError(f"{e} (on the board)") from None
    with f:
        if size > max_bytes:
            raise P.MessageTooLargeError(f"{path} has {size:,} bytes, over the server's {max_bytes:,}-byte model limit "
                                         "(--max-message-mb)")
        chunks, got = [], 0
        while got < size:
            chunk = f.read(size - got)
            if not chunk:
                raise PackageError(f"{path} became shorter while the server read it; it is being written right now: "
                                   "wait until that finishes and load it again")
            chunks.append(chunk)
            got += len(chunk)
    return b"".join(chunks)
