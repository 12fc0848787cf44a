"""The simulator: runs a built or loaded model on onnxruntime's CPU kernels (int8 kernels for quantized graphs)."""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import RuntimeStateError
from .feeds import prepare_feeds

log = logging.getLogger("openrknn.runtime")


def make_session(model_bytes: bytes, threads: Optional[int] = None, profile_prefix: Optional[str] = None,
                 allow_spinning: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if not allow_spinning:  # a server sharing cores with its clients: idle threads must sleep, not spin
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # onnxruntime's own warnings are about its internals, not the user's model
    threads = threads if threads is not None else int(os.environ.get("OPENRKNN_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


class Simulator:
    """One model, one onnxruntime session. `run` takes user inputs as inference() does."""

    def __init__(self, model_bytes: bytes, metadata: dict, threads: Optional[int] = None,
                 allow_spinning: bool = True):
        self.metadata = metadata
        self.inputs_meta: List[dict] = metadata["inputs"]
        self.batch = int(metadata.get("build", {}).get("rknn_batch_size") or 1)
        self.session: Optional[ort.InferenceSession] = make_session(model_bytes, threads,
                                                                    allow_spinning=allow_spinning)
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output_names = [o.name for o in self.session.get_outputs()]
        expected = [m["name"] for m in self.inputs_meta]
        if self._input_names != expected:
            raise RuntimeStateError(f"the model's graph inputs {self._input_names} do not match its metadata "
                                    f"{expected}; the file was not written by openrknn's builder")

    def run(self, inputs, data_type=None, data_format="nhwc", pass_through: Optional[Sequence[int]] = None
            ) -> List[np.ndarray]:
        if self.session is None:
            raise RuntimeStateError("the runtime was released; call init_runtime() again")
        feeds = prepare_feeds(inputs, self.inputs_meta, data_type, data_format, pass_through)
        if self.batch == 1:
            return self.session.run(self._output_names, dict(zip(self._input_names, feeds)))
        # rknn_batch_size=N: the graph is batch 1; run each frame and stack, as the NPU does frame by frame
        per_frame = [self.session.run(self._output_names, {k: np.split(f, self.batch)[i]
                                                           for k, f in zip(self._input_names, feeds)})
                     for i in range(self.batch)]
        return [np.concatenate([fr[k] for fr in per_frame], axis=0) for k in range(len(self._output_names))]

    def run_feeds(self, feeds: dict) -> List[np.ndarray]:
        """Run graph-ready tensors (name -> array) with no input conversion (for analysis tools)."""
        if self.session is None:
            raise RuntimeStateError("the runtime was released; call init_runtime() again")
        return self.session.run(self._output_names, feeds)

    def release(self) -> None:
        self.session = None
