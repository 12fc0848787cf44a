"""Calibration statistics kept across builds, so many configurations of one model calibrate once.

The two collection passes of calibrate.py (pass 1: collect_minmax; pass 2: collect_histograms) are functions of the
graph they run, the calibration feeds (after decoding and pre-processing) and what they are asked to collect. A
StatsCache keys each pass by a hash of exactly those three and keeps what the pass wrote into Stats. A build whose
graph, feeds and request match an earlier one gets the stored numbers instead of running the model again, so its
output is byte-identical to an uncached build. Configurations that differ only after calibration (algorithm
normal / kl_divergence / mmse read one pass 1; kl_divergence and mmse also share pass 2; weight rounding, targets of
one generation) share statistics; a rewrite that changes the graph before a pass (e.g. equalization with per-layer
weights) makes a different key, and that pass runs.

Stores: MemoryStore (one process), DirStore (a folder: processes of one machine share it, and a file lock makes
the first asker compute while the others wait for its result). Any object with get(key) -> bytes | None,
put(key, bytes) and claim(key) (a context manager held while computing) works, e.g. a store in Ray's object store.
Entries are npz bytes with a JSON index (no pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import onnx

from .calibrate import Stats, collect_histograms, collect_minmax

log = logging.getLogger("openrknn.quant.stats_cache")

# Bump when what a pass stores, or how it computes it, changes: old entries then stop matching.
FORMAT = 2
_ARRAY_FIELDS = ("channel_mean", "channel_minmax", "channel_samples", "channel_steadiness", "hist")


class MemoryStore:
    """Entries in this process's memory."""

    def __init__(self) -> None:
        self._entries: Dict[str, bytes] = {}
        self._locks: Dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: str) -> Optional[bytes]:
        return self._entries.get(key)

    def put(self, key: str, value: bytes) -> None:
        self._entries[key] = value

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def __len__(self) -> int:
        return len(self._entries)


class DirStore:
    """Entries as files ``<key>.npz`` in a folder shared by the processes of one machine (written atomically)."""

    def __init__(self, folder: "str | os.PathLike") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> Optional[bytes]:
        try:
            return (self.folder / f"{key}.npz").read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, value: bytes) -> None:
        from ..atomic import write_bytes_atomic

        write_bytes_atomic(self.folder / f"{key}.npz", value)

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        import fcntl

        with open(self.folder / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.npz")))


class StatsCache:
    """Drop-in for the two calibration passes; ``hits`` / ``misses`` count passes reused / run."""

    def __init__(self, store=None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.hits = 0
        self.misses = 0
        self._fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ the passes
    def collect_minmax(self, model: onnx.ModelProto, tensors: Sequence[str], data, mean_inputs, stats: Stats,
                       progress: bool = True, threads: int = 0, known_min=None, channel_tensors: Sequence[str] = (),
                       sample_tensors: Sequence[str] = (), softmax_axes=None) -> None:
        request = {"pass": "minmax", "tensors": list(tensors),
                   "mean_inputs": {k: list(v) for k, v in sorted(mean_inputs.items())},
                   "known_min": sorted((known_min or {}).items()), "channel_tensors": list(channel_tensors),
                   "sample_tensors": list(sample_tensors), "softmax_axes": sorted((softmax_axes or {}).items())}

        def run(fresh: Stats) -> None:
            collect_minmax(model, tensors, data, mean_inputs, fresh, progress, threads, known_min, channel_tensors,
                           sample_tensors, softmax_axes=softmax_axes)

        self._cached(self._key(model, data, request), run, stats, Stats())

    def collect_histograms(self, model: onnx.ModelProto, tensors: Sequence[str], data, stats: Stats,
                           bins: int = 2048, samples_per_tensor: int = 1 << 16, progress: bool = True,
                           threads: int = 0) -> None:
        # pass 2 bins each tensor over the range pass 1 found: those ranges are part of what it was asked
        ranges = [list(map(float, stats.minmax[t])) for t in tensors]
        request = {"pass": "histograms", "tensors": list(tensors), "ranges": ranges, "bins": int(bins),
                   "samples_per_tensor": int(samples_per_tensor)}

        def run(fresh: Stats) -> None:
            collect_histograms(model, tensors, data, fresh, bins, samples_per_tensor, progress, threads)

        seed = Stats(minmax={t: stats.minmax[t] for t in tensors})
        self._cached(self._key(model, data, request), run, stats, seed, keep=("hist",))

    # ------------------------------------------------------------------ machinery
    def _cached(self, key: str, run, stats: Stats, fresh: Stats, keep: Optional[Tuple[str, ...]] = None) -> None:
        blob = self.store.get(key)
        if blob is None:
            with self.store.claim(key):
                blob = self.store.get(key)  # another process may have computed it while we waited
                if blob is None:
                    run(fresh)
                    if keep:  # store only what the pass produced, not the ranges it was seeded with
                        fresh = Stats(**{f: getattr(fresh, f) for f in keep}, samples=fresh.samples,
                                      seconds=dict(fresh.seconds))
                    blob = encode_stats(fresh)
                    self.store.put(key, blob)
                    self.misses += 1
                    log.debug("calibration pass computed and stored (%s)", key[:12])
                    merge_stats(stats, decode_stats(blob))
                    return
        self.hits += 1
        log.info("calibration statistics reused from an earlier build (%s)", key[:12])
        part = decode_stats(blob)
        part.seconds = {k: 0.0 for k in part.seconds}  # the report says what this build spent
        merge_stats(stats, part)

    def _key(self, model: onnx.ModelProto, data, request: dict) -> str:
        h = hashlib.sha256()
        h.update(f"openrknn-calibration-stats/{FORMAT}\n".encode())
        h.update(hashlib.sha256(model.SerializeToString(deterministic=True)).digest())
        h.update(self._data_fingerprint(data))
        h.update(json.dumps(request, sort_keys=True).encode())
        return h.hexdigest()

    def _data_fingerprint(self, data) -> bytes:
        """sha256 of every feed as the quantizer sees it, in order: the file list, decoding, channel order and
        resizing are all in it."""
        try:
            return self._fingerprints[data]
        except (KeyError, TypeError):
            pass
        h = hashlib.sha256()
        for feed in data:
            for name in sorted(feed):
                arr = np.ascontiguousarray(feed[name])
                h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
                h.update(memoryview(arr).cast("B"))
        digest = h.digest()
        with contextlib.suppress(TypeError):  # plain lists cannot be weakly referenced: hashed on each pass
            self._fingerprints[data] = digest
        return digest


def merge_stats(into: Stats, part: Stats) -> None:
    """Copy what a pass produced into the build's Stats (fresh arrays: later stages may change them)."""
    into.minmax.update(part.minmax)
    for name in _ARRAY_FIELDS:
        getattr(into, name).update(getattr(part, name))
    if part.samples:
        into.samples = part.samples
    into.seconds.update(part.seconds)


def encode_stats(stats: Stats) -> bytes:
    """npz bytes: arrays as a0, a1, ...; a JSON index (minmax, sample count, seconds, which array is what)."""
    arrays: Dict[str, np.ndarray] = {}
    index: Dict[str, dict] = {f: {} for f in _ARRAY_FIELDS}

    def add(arr) -> str:
        k = f"a{len(arrays)}"
        arrays[k] = np.asarray(arr)
        return k

    for t, v in stats.channel_mean.items():
        index["channel_mean"][t] = add(v)
    for t, (lo, hi) in stats.channel_minmax.items():
        index["channel_minmax"][t] = [add(lo), add(hi)]
    for t, v in stats.channel_samples.items():
        index["channel_samples"][t] = add(v)
    for t, v in stats.channel_steadiness.items():
        index["channel_steadiness"][t] = add(v)
    for t, v in stats.hist.items():
        index["hist"][t] = add(v)
    meta = {"minmax": {t: [float(a), float(b)] for t, (a, b) in stats.minmax.items()}, "samples": stats.samples,
            "seconds": stats.seconds, "pooled": stats.pooled, "arrays": index}
    arrays["__index__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_stats(blob: bytes) -> Stats:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        meta = json.loads(z["__index__"].tobytes().decode())
        idx = meta["arrays"]
        return Stats(minmax={t: (v[0], v[1]) for t, v in meta["minmax"].items()},
                     channel_mean={t: z[k] for t, k in idx["channel_mean"].items()},
                     channel_minmax={t: (z[a], z[b]) for t, (a, b) in idx["channel_minmax"].items()},
                     channel_samples={t: z[k] for t, k in idx["channel_samples"].items()},
                     channel_steadiness={t: z[k] for t, k in idx["channel_steadiness"].items()},
                     pooled=meta["pooled"], hist={t: z[k] for t, k in idx["hist"].items()},
                     samples=int(meta["samples"]), seconds=dict(meta["seconds"]))


__all__ = ["StatsCache", "MemoryStore", "DirStore", "encode_stats", "decode_stats", "merge_stats"]
