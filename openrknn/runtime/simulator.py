"""The simulator: runs a built or loaded model on onnxruntime's CPU kernels (int8 kernels for quantized graphs).

One frame runs on one session that uses every core (lowest latency). Many frames (a batch array, `run_many` over a
folder) run concurrently, one frame per core, on a second single-threaded session: small models keep a core busy
far better than one frame split across cores, so throughput grows with the cores.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import CorruptPackageError, RuntimeStateError
from ..package import check_runnable
from .feeds import prepare_feeds
from .ort_session import make_session
from .shape_sets import apply_patch, matching_set, patched_metadata
from .speedups import speed_up

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
        # config(dynamic_input=...): the other shape sets, each a Simulator of its own made on first use
        entry = metadata.get("dynamic_input")
        self._sets = entry["sets"] if entry and len(entry["sets"]) > 1 else None
        self._base_set = entry["base"] if self._sets else 0
        self._set_sims: dict = {}
        self.inputs_meta: List[dict] = metadata["inputs"]
        self.batch = int(metadata.get("build", {}).get("rknn_batch_size") or 1)
        # exact rewrites: same outputs, faster onnxruntime kernels
        self._source_bytes, self._threads, self._allow_spinning = model_bytes, threads, allow_spinning
        fast = speed_up(model_bytes, {m["name"]: m["shape"] for m in self.inputs_meta if m.get("shape")})
        if fast.applied:
            log.debug("simulator graph rewrites: %s", fast.applied)
        self.rewrites = fast.applied
        self._disabled = fast.disabled_optimizers
        model_bytes = self._model_bytes = fast.model_bytes
        self.workers = max(1, int(threads or 0) or int(os.environ.get("OPENRKNN_THREADS") or 0) or _cores())
        self._frame_session: Optional[ort.InferenceSession] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        try:
            self.session: Optional[ort.InferenceSession] = make_session(
                model_bytes, threads, allow_spinning=allow_spinning, disabled_optimizers=self._disabled)
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
        want_shape = [meta["shape"][0] // self.batch] + list(meta["shape"][1:]) if meta["shape"] else []
        got_shape = list(graph_input.shape)
        fits = graph_input.type == want_type and len(got_shape) == len(want_shape) and all(
            not isinstance(g, int) or g == w for g, w in zip(got_shape, want_shape))
        if not fits:
            raise CorruptPackageError(f"input {meta['name']!r}: the metadata makes {dtype} feeds of shape "
                                      f"{want_shape} per frame, the graph takes {graph_input.type} {got_shape}. "
                                      f"{_UNUSABLE}")

    def run(self, inputs, data_type=None, data_format="nhwc", pass_through: Optional[Sequence[int]] = None
            ) -> List[np.ndarray]:
        """One sample (one array per model input). An input may carry k times the deployed batch of frames: they
        run concurrently and the outputs come back stacked along the first axis."""
        return self.run_many([inputs], data_type, data_format, pass_through)[0]

    def run_many(self, samples: Sequence, data_type=None, data_format="nhwc",
                 pass_through: Optional[Sequence[int]] = None, times_ms: Optional[list] = None
                 ) -> List[List[np.ndarray]]:
        """Many samples (each as run() takes it), run concurrently on every core; outputs in sample order.
        times_ms: if given, gets each sample's own run time (ms)."""
        if self.session is None:
            raise RuntimeStateError("the runtime was released; call init_runtime() again")
        if self._sets:
            return self._run_shape_sets(samples, data_type, data_format, pass_through, times_ms)
        return self._run_samples(samples, data_type, data_format, pass_through, times_ms)

    def _run_samples(self, samples: Sequence, data_type, data_format, pass_through, times_ms) -> list:
        return self._run_prepared([prepare_feeds(x, self.inputs_meta, data_type, data_format, pass_through,
                                                 many=True) for x in samples], times_ms)

    def _run_prepared(self, feeds_per_sample: Sequence[List[np.ndarray]], times_ms) -> list:
        prepared = [self._units(feeds) for feeds in feeds_per_sample]
        flat = [u for units in prepared for u in units]
        done = self._run_units(flat)
        results, pos = [], 0
        for units in prepared:
            part = done[pos:pos + len(units)]
            pos += len(units)
            if times_ms is not None:
                times_ms.append(sum(ms for _, ms in part))
            outs = [o for o, _ in part]
            # rknn_batch_size=N and many frames: each frame ran alone (as the NPU runs them); stack them back
            results.append(outs[0] if len(outs) == 1 else
                           [np.concatenate([fr[k] for fr in outs], axis=0) for k in range(len(self._output_names))])
        return results

    def _run_shape_sets(self, samples: Sequence, data_type, data_format, pass_through, times_ms) -> list:
        """Each sample on the shape set its inputs have (their model made on first use), in sample order; the
        feeds prepared while matching the set are the ones that run."""
        groups: dict = {}
        for k, x in enumerate(samples):
            index, feeds = matching_set(x, self.metadata, data_type, data_format, pass_through)
            groups.setdefault(index, []).append((k, feeds))
        results: list = [None] * len(samples)
        times: list = [0.0] * len(samples)
        for index, members in groups.items():
            sim = self if index == self._base_set else self._set_simulator(index)
            took: list = []
            outs = sim._run_prepared([feeds for _, feeds in members], took)
            for (k, _), o, ms in zip(members, outs, took):
                results[k], times[k] = o, ms
        if times_ms is not None:
            times_ms.extend(times)
        return results

    def _set_simulator(self, index: int) -> "Simulator":
        if index not in self._set_sims:
            entry = self._sets[index]
            self._set_sims[index] = Simulator(apply_patch(self._source_bytes, entry["patch"]),
                                              patched_metadata(self.metadata, entry), self._threads,
                                              self._allow_spinning)
        return self._set_sims[index]

    def _units(self, feeds: List[np.ndarray]) -> List[dict]:
        """Split prepared feeds into graph-sized runs (the graph takes one frame of an rknn_batch_size=N model)."""
        framed = [(f, m) for f, m in zip(feeds, self.inputs_meta) if m["shape"]]  # a scalar input has no frames
        n = framed[0][0].shape[0] // max(1, framed[0][1]["shape"][0] // self.batch) if framed else 1
        if n == 1:
            return [dict(zip(self._input_names, feeds))]
        parts = [np.split(f, n) if f.ndim else [f] * n for f in feeds]  # the same scalar for every frame
        return [{k: p[i] for k, p in zip(self._input_names, parts)} for i in range(n)]

    def _run_units(self, units: List[dict]) -> List[tuple]:
        if len(units) == 1 or self.workers == 1:
            return [self._timed(self.session, u) for u in units]
        if self._frame_session is None:
            try:
                self._frame_session = make_session(self._model_bytes, 1, allow_spinning=False,
                                                   disabled_optimizers=self._disabled)
            except ORT_FAILURES as e:
                raise CorruptPackageError(f"onnxruntime cannot open the model ({type(e).__name__}: "
                                          f"{str(e)[:300]}). {_UNUSABLE}") from None
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="openrknn-sim")
        sess = self._frame_session
        return list(self._pool.map(lambda u: self._timed(sess, u), units))

    def _timed(self, session, feeds: dict) -> tuple:
        t0 = time.perf_counter()
        out = self._run(feeds, session)
        return out, (time.perf_counter() - t0) * 1e3

    def _run(self, feeds: dict, session=None) -> List[np.ndarray]:
        try:
            return (session or self.session).run(self._output_names, feeds)
        except ORT_FAILURES as e:  # feeds were checked against the graph: the graph itself cannot run
            raise CorruptPackageError(f"onnxruntime failed running the model ({type(e).__name__}: {str(e)[:300]}). "
                                      f"{_UNUSABLE}") from None

    def run_feeds(self, feeds: dict) -> List[np.ndarray]:
        """Run graph-ready tensors (name -> array) with no input conversion (for analysis tools)."""
        if self.session is None:
            raise RuntimeStateError("the runtime was released; call init_runtime() again")
        return self.session.run(self._output_names, feeds)

    def release(self) -> None:
        for sim in self._set_sims.values():
            sim.release()
        self._set_sims = {}
        self.session = None
        self._frame_session = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
