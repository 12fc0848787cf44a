"""The simulator: runs a built or loaded model on onnxruntime's CPU kernels (int8 kernels for quantized graphs)."""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import RuntimeStateError
from .feeds import prepare_feeds
from .ort_session import make_session

log = logging.getLogger("openrknn.runtime")


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
