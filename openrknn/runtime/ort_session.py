"""The one place an onnxruntime CPU session is made (simulator, server, calibration, analysis, hybrid search)."""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import onnxruntime as ort

log = logging.getLogger("openrknn.runtime")


_EMPTY: list = []
_SATURATES: list = []


def int8_dots_saturate(machine: Optional[str] = None, flags: Optional[set] = None) -> bool:
    """True on an x86-64 CPU without VNNI. There onnxruntime's uint8 x int8 kernels (the simulator's QDQ types)
    add pairs of products in 16 bits (VPMADDUBSW), which saturate: 255 x 127 x 2 does not fit, and a conv whose
    inputs and weights are both large gets a wrong sum (onnxruntime issues 5849, 6004, 14642; VNNI's VPDPBUSD adds
    in 32 bits). ``machine`` / ``flags``: platform.machine() and the CPU's feature flags, read when not given (Linux
    /proc/cpuinfo, else numpy's CPU feature table)."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if flags is None:
        flags = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        if not flags:
            features: dict = {}
            for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, numpy 1
                try:
                    features = __import__(module, fromlist=["__cpu_features__"]).__cpu_features__
                    break
                except (ImportError, AttributeError):
                    continue
            flags = {"avx512_vnni"} if features.get("AVX512VNNI") else {"no_vnni_known"}
    return not ({"avx512_vnni", "avx_vnni"} & flags)


def _saturates() -> bool:
    if not _SATURATES:
        _SATURATES.append(int8_dots_saturate())
        if _SATURATES[0]:
            log.info("this x86-64 CPU has no VNNI: onnxruntime's int8 sums are widened to 16 bits first "
                     "(session.x64quantprecision), exact where its pairwise 16-bit adds would saturate, and slower")
    return _SATURATES[0]


def _empty_folder() -> str:
    """A private empty folder (one per process) for external-data lookups of models given as bytes, removed when
    the process exits (every process that ran a session left one in the temp folder before)."""
    if not _EMPTY:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="openrknn-no-external-data-")
        _EMPTY.append(folder)
        atexit.register(shutil.rmtree, folder, True)  # a forked worker leaves by os._exit: its parent removes it
    return _EMPTY[0]


def make_session(model: Union[bytes, str, "object"], threads: Optional[int] = None, *, optimize: bool = True,
                 profile_prefix: Optional[str] = None, optimized_path: Optional[str] = None,
                 allow_spinning: bool = True, disabled_optimizers=()) -> ort.InferenceSession:
    """A CPU session for ``model`` (serialized bytes, a path, or an onnx.ModelProto).

    threads: intra-op threads; None = $OPENRKNN_THREADS, else onnxruntime's default (one per core).
    optimize: onnxruntime's graph optimizations (off where the graph must run exactly as written, e.g. shape probes).
    profile_prefix / optimized_path: onnxruntime's profiler output and the optimized graph, for host timings.
    allow_spinning: False where the process shares its cores (a server beside its clients): idle threads sleep.
    disabled_optimizers: onnxruntime graph transformers to leave out (runtime/speedups.py says which and why).
    """
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # onnxruntime's own warnings are about its internals, not the user's model
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is None:
        threads = int(os.environ.get("OPENRKNN_THREADS", "0") or 0)
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1  # graphs run sequentially: no second pool
    if _saturates():  # widen the int8 products to 16 bits before adding them: exact sums, slower
        opts.add_session_config_entry("session.x64quantprecision", "1")
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    if isinstance(model, (bytes, bytearray)):
        # a model from bytes (a package, an upload) resolves external-data paths against the working folder: an
        # uploaded graph could read any file there. Ours never carry external data; point the lookup at an empty
        # folder so such a tensor is refused.
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", _empty_folder())
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"], **extra)
