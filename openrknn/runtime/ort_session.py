"""The one place an onnxruntime CPU session is made (simulator, server, calibration, analysis, hybrid search)."""

from __future__ import annotations

import os
from typing import Optional, Union

import onnxruntime as ort


_EMPTY: list = []


def _empty_folder() -> str:
    """A private empty folder (one per process) for external-data lookups of models given as bytes."""
    if not _EMPTY:
        import tempfile

        _EMPTY.append(tempfile.mkdtemp(prefix="openrknn-no-external-data-"))
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
