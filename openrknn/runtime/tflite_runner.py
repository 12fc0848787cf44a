"""Run an int8 .tflite model with the TFLite interpreter, on the NPU through Mesa's Teflon delegate when present.

Board side: needs only numpy and a TFLite interpreter package (`ai-edge-litert`, or the older `tflite-runtime`).
`delegate="auto"` loads libteflon.so when it is found (OPENRKNN_TEFLON, then the usual library folders) and runs on
the CPU otherwise; an explicit path must load, or the runner refuses with the reason.
"""

from __future__ import annotations

import glob
import logging
import os
import warnings
from typing import List, Optional, Sequence, Union

import numpy as np

from ..errors import InferenceInputError, ModelLoadError, NotSupportedError

log = logging.getLogger("openrknn.runtime")

TEFLON_LIBRARY = "libteflon.so"
TEFLON_ENV = "OPENRKNN_TEFLON"
SEARCH_DIRS = ("/usr/lib", "/usr/lib/*-linux-gnu", "/usr/local/lib", "/usr/local/lib/*-linux-gnu",
               "/usr/lib/*-linux-gnu/teflon", "/usr/lib/teflon")


def interpreter_module():
    """The TFLite interpreter module of whichever package is installed."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return __import__(name, fromlist=["Interpreter"])
        except ImportError:
            continue
    raise NotSupportedError("running a .tflite model needs a TFLite interpreter: pip install ai-edge-litert "
                            "(or tflite-runtime on older boards)")


def find_teflon(search_dirs: Sequence[str] = SEARCH_DIRS) -> Optional[str]:
    """Path of Mesa's Teflon delegate, or None."""
    env = os.environ.get(TEFLON_ENV)
    if env:
        return env
    for pattern in search_dirs:
        for folder in sorted(glob.glob(pattern)):
            path = os.path.join(folder, TEFLON_LIBRARY)
            if os.path.isfile(path):
                return path
    return None


class TfliteRunner:
    """One .tflite model in one interpreter. `run` takes one array per input, NHWC as the model was exported."""

    def __init__(self, model: Union[str, bytes], delegate: Optional[str] = "auto", threads: Optional[int] = None,
                 preserve_all_tensors: bool = False):
        """preserve_all_tensors: keep every intermediate tensor readable after a run (export trace; more memory)."""
        mod = interpreter_module()
        path = find_teflon() if delegate == "auto" else delegate
        self.delegate_path: Optional[str] = None
        delegates = []
        if path:
            try:
                delegates = [mod.load_delegate(path)]
                self.delegate_path = path
            except (ValueError, OSError, RuntimeError) as e:
                if delegate != "auto":
                    raise ModelLoadError(f"the TFLite delegate {path} did not load ({e}); check that Mesa's Teflon "
                                         "is installed and the rocket NPU driver is loaded (ls /dev/accel), or run "
                                         "without a delegate") from e
                log.warning("Teflon delegate %s found but not loadable (%s): running on the CPU", path, e)
        source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": model}
        if preserve_all_tensors:
            source["experimental_preserve_all_tensors"] = True
        try:
            with warnings.catch_warnings():  # LiteRT warns that preserving tensors is for debugging: it is, here
                warnings.simplefilter("ignore", UserWarning)
                self.interpreter = mod.Interpreter(**source, experimental_delegates=delegates or None,
                                                   num_threads=threads)
            self.interpreter.allocate_tensors()
        except ValueError as e:
            raise ModelLoadError(f"the TFLite interpreter refused the model: {e}") from e
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        log.info("TFLite model ready (%s)", f"delegate {self.delegate_path}" if self.delegate_path else "CPU")

    @property
    def on_npu(self) -> bool:
        return self.delegate_path is not None

    def run(self, inputs: Union[np.ndarray, List[np.ndarray]]) -> List[np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if len(inputs) != len(self.inputs):
            raise InferenceInputError(f"the model has {len(self.inputs)} input(s) but {len(inputs)} were given")
        for x, d in zip(inputs, self.inputs):
            shape = tuple(int(s) for s in d["shape"])
            x = np.asarray(x)
            if x.ndim == len(shape) - 1:
                x = x[None]
            if x.shape != shape:
                raise InferenceInputError(f"input '{d['name']}' has shape {list(x.shape)}, the model takes "
                                          f"{list(shape)} ({np.dtype(d['dtype']).name}, NHWC)")
            if x.dtype != d["dtype"]:
                if np.issubdtype(d["dtype"], np.integer):
                    info = np.iinfo(d["dtype"])
                    x = np.clip(np.rint(x), info.min, info.max)
                x = x.astype(d["dtype"])
            self.interpreter.set_tensor(d["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.outputs]

    def release(self) -> None:
        self.interpreter = None
