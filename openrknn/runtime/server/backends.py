"""What runs a model on the board, by kind of file: openrknn's own package on onnxruntime (CPU), a vendor .rknn on the
NPU through rknn-toolkit-lite2, an int8 .tflite through the TFLite interpreter (on the NPU with Mesa's Teflon
delegate when it loads, on the CPU otherwise). Each backend runs a request's inputs and says what it is."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from ...errors import InferenceInputError, PackageError

log = logging.getLogger("openrknn.server")

KINDS = ("openrknn", "vendor", "tflite")
TFLITE_IDENTIFIER = b"TFL3"  # the FlatBuffers file identifier of a TFLite model, at bytes 4..8


def kind_of(data: bytes) -> str:
    """'openrknn', 'vendor' or 'tflite' from a file's first bytes ('openrknn' for anything else: its reader then
    says what the bytes are)."""
    from ..npu_lite import is_vendor_file

    head = bytes(data[:8])
    if is_vendor_file(head):
        return "vendor"
    if head[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    return "openrknn"


def _only_defaults(kind: str, data_type, pass_through) -> None:
    if data_type is not None and data_type not in ("uint8", ["uint8"]):
        raise InferenceInputError(f"data_type={data_type!r:.60}: a {kind} model takes its inputs as they are "
                                  "(uint8 NHWC images); convert them before inference")
    if pass_through is not None and any(pass_through):
        raise InferenceInputError(f"inputs_pass_through is for openrknn packages; a {kind} model has its "
                                  "pre-processing built in")


def _nhwc(arrays: Sequence[np.ndarray], data_format) -> List[np.ndarray]:
    formats = data_format if isinstance(data_format, list) else [data_format] * len(arrays)
    out = []
    for a, f in zip(arrays, formats):
        a = np.asarray(a)
        if f == "nchw" and a.ndim == 4:
            a = a.transpose(0, 2, 3, 1)
        elif f not in (None, "nhwc", "nchw"):
            raise InferenceInputError(f"data_format={f!r:.20} must be 'nhwc' or 'nchw'")
        out.append(a)
    return out


class SimulatorBackend:
    """An openrknn package on onnxruntime: the simulator's own input conversion, profiling by layer."""

    kind = "openrknn"

    def __init__(self, data: bytes, source: str, threads: Optional[int]):
        from ...package import read_package_bytes
        from ..simulator import Simulator

        pkg = read_package_bytes(data, source)
        self.model_bytes = pkg.model_bytes
        self.simulator = Simulator(pkg.model_bytes, pkg.metadata, threads=threads, allow_spinning=False)
        self.metadata = self.simulator.metadata

    def run(self, arrays, data_type=None, data_format="nhwc", pass_through=None) -> List[np.ndarray]:
        return self.simulator.run(list(arrays), data_type=data_type, data_format=data_format,
                                  pass_through=pass_through)

    def release(self) -> None:
        self.simulator.release()


class VendorBackend:
    """A vendor .rknn on the NPU (rknnlite.api.RKNNLite), with its host-side float tail when it came with one."""

    kind = "vendor"

    def __init__(self, data: bytes, post: bytes, core_mask):
        from ..npu_lite import NpuLiteModel

        # RKNNLite.load_rknn takes a path: the bytes go to a private temporary file for the model's lifetime
        fd, self._path = tempfile.mkstemp(prefix="openrknn-vendor-", suffix=".rknn")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.model = NpuLiteModel(self._path, core_mask=core_mask, post=post or None)
        except BaseException:
            os.unlink(self._path)
            raise
        self.model_bytes = b""
        self.metadata = {"inputs": None, "outputs": None, "kind": self.kind,
                         "core_mask": self.model.core_mask, "post": bool(post)}

    def run(self, arrays, data_type=None, data_format="nhwc", pass_through=None) -> List[np.ndarray]:
        _only_defaults(self.kind, data_type, pass_through)
        if isinstance(data_format, list):
            data_format = data_format[0] if data_format else "nhwc"
        return self.model.run(list(arrays), data_format=data_format or "nhwc")

    def release(self) -> None:
        try:
            self.model.release()
        finally:
            if os.path.exists(self._path):
                os.unlink(self._path)


class TfliteBackend:
    """An int8 .tflite in the TFLite interpreter, through Mesa's Teflon delegate on the NPU when it loads."""

    kind = "tflite"

    def __init__(self, data: bytes, delegate: Optional[str], threads: Optional[int]):
        from ..tflite_runner import TfliteRunner

        self.runner = TfliteRunner(bytes(data), delegate=delegate, threads=threads)
        self.model_bytes = b""
        self.metadata = {"kind": self.kind, "delegate": self.runner.delegate_path,
                         "inputs": [{"name": d["name"], "shape": [int(s) for s in d["shape"]],
                                     "dtype": np.dtype(d["dtype"]).name} for d in self.runner.inputs],
                         "outputs": [{"name": d["name"], "shape": [int(s) for s in d["shape"]],
                                      "dtype": np.dtype(d["dtype"]).name} for d in self.runner.outputs]}

    def run(self, arrays, data_type=None, data_format="nhwc", pass_through=None) -> List[np.ndarray]:
        _only_defaults(self.kind, data_type, pass_through)
        return self.runner.run(_nhwc(arrays, data_format))

    def release(self) -> None:
        self.runner.release()


def open_backend(data: bytes, post: bytes, source: str, threads: Optional[int], core_mask="auto",
                 tflite_delegate: Optional[str] = "auto"):
    """The backend for these bytes. A host-side tail (`post`, ONNX) belongs only with a vendor model."""
    kind = kind_of(data)
    if post and kind != "vendor":
        raise PackageError(f"a .post.onnx tail came with {source}, which is a {kind} model; only a vendor .rknn "
                           "written by `openrknn vendor-export` has one")
    if kind == "vendor":
        return VendorBackend(data, post, core_mask)
    if kind == "tflite":
        return TfliteBackend(data, tflite_delegate, threads)
    return SimulatorBackend(data, source, threads)


def time_runs(run: Callable[[], object], runs: int, host: str, kind: str) -> dict:
    """Wall time of `runs` calls of run() after one warm-up, for backends without a per-layer profiler (the NPU
    runtimes): the `perf` reply with an empty layer list."""
    run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e6)
    total = float(np.mean(times))
    return {"layers": [], "total_us": round(total, 1), "fps": round(1e6 / total, 2) if total else None,
            "layers_total_us": 0.0, "runs": runs, "wall_median_us": round(float(np.median(times)), 1),
            "host": host, "backend": kind}
