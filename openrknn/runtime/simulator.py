"""The simulator: runs a built or loaded model on onnxruntime's CPU kernels (int8 kernels for quantized graphs)."""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import CorruptPackageError, RuntimeStateError
from ..package import check_runnable
from .feeds import prepare_feeds
from .ort_session import make_session

log = logging.getLogger("openrknn.runtime")

# what onnxruntime raises for a model it cannot load or run (its own exception types derive from Exception only)
ORT_FAILURES = tuple(t for t in vars(ort.capi.onnxruntime_pybind11_state).values()
                      if isinstance(t, type) and issubclass(t, Exception)) + (RuntimeError, UnicodeDecodeError)
# the graph input type each kind of feed needs (prepare_feeds makes nhwc feeds float32, raw feeds the metadata dtype)
_ORT_TYPE = {"float32": "float", "float64": "double"}
_UNUSABLE = ("The model payload is not a usable ONNX graph: the file was not written by a compatible openrknn or was "
             "edited or damaged under a valid checksum; re-export it (a model just built that fails here is a bug: "
             "please report it)")


class Simulator:
    """One model, one onnxruntime session. `run` takes user inputs as inference() does."""

    def __init__(self, model_bytes: bytes, metadata: dict, threads: Optional[int] = None,
                 allow_spinning: bool = True):
        check_runnable(metadata)
        self.metadata = metadata
        self.inputs_meta: List[dict] = metadata["inputs"]
        self.batch = int(metadata.get("build", {}).get("rknn_batch_size") or 1)
        try:
            self.session: Optional[ort.InferenceSession] = make_session(model_bytes, threads,
                                                                        allow_spinning=allow_spinning)
            graph_inputs = self.session.get_inputs()
            self._output_names = [o.name for o in self.session.get_outputs()]
        except ORT_FAILURES as e:
            raise CorruptPackageError(f"onnxruntime cannot open the model ({type(e).__name__}: {str(e)[:300]}). "
                                      f"{_UNUSABLE}") from None
        self._input_names = [i.name for i in graph_inputs]
        expected = [m["name"] for m in self.inputs_meta]
        if self._input_names != expected:
            raise CorruptPackageError(f"the model's graph inputs {self._input_names} do not match its metadata "
                                      f"{expected}. {_UNUSABLE}")
        for meta, graph_input in zip(self.inputs_meta, graph_inputs):
            self._check_feed_fits(meta, graph_input)

    def _check_feed_fits(self, meta: dict, graph_input) -> None:
        """The feed prepare_feeds will make for this input must be what the graph takes (else onnxruntime would
        refuse every inference with its own error)."""
        dtype = "float32" if meta["layout"] == "nhwc" else meta["dtype"]
        want_type = f"tensor({_ORT_TYPE.get(dtype, dtype)})"
        want_shape = [meta["shape"][0] // self.batch] + list(meta["shape"][1:])
        got_shape = list(graph_input.shape)
        fits = graph_input.type == want_type and len(got_shape) == len(want_shape) and all(
            not isinstance(g, int) or g == w for g, w in zip(got_shape, want_shape))
        if not fits:
            raise CorruptPackageError(f"input {meta['name']!r}: the metadata makes {dtype} feeds of shape "
                                      f"{want_shape} per frame, the graph takes {graph_input.type} {got_shape}. "
                                      f"{_UNUSABLE}")

    def run(self, inputs, data_type=None, data_format="nhwc", pass_through: Optional[Sequence[int]] = None
            ) -> List[np.ndarray]:
        if self.session is None:
            raise RuntimeStateError("the runtime was released; call init_runtime() again")
        feeds = prepare_feeds(inputs, self.inputs_meta, data_type, data_format, pass_through)
        if self.batch == 1:
            return self._run(dict(zip(self._input_names, feeds)))
        # rknn_batch_size=N: the graph is batch 1; run each frame and stack, as the NPU does frame by frame
        per_frame = [self._run({k: np.split(f, self.batch)[i] for k, f in zip(self._input_names, feeds)})
                     for i in range(self.batch)]
        return [np.concatenate([fr[k] for fr in per_frame], axis=0) for k in range(len(self._output_names))]

    def _run(self, feeds: dict) -> List[np.ndarray]:
        try:
            return self.session.run(self._output_names, feeds)
        except ORT_FAILURES as e:  # feeds were checked against the graph: the graph itself cannot run
            raise CorruptPackageError(f"onnxruntime failed running the model ({type(e).__name__}: {str(e)[:300]}). "
                                      f"{_UNUSABLE}") from None

    def run_feeds(self, feeds: dict) -> List[np.ndarray]:
        """Run graph-ready tensors (name -> array) with no input conversion (for analysis tools)."""
        if self.session is None:
            raise RuntimeStateError("the runtime was released; call init_runtime() again")
        return self.session.run(self._output_names, feeds)

    def release(self) -> None:
        self.session = None
