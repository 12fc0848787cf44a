"""`from openrknn.api import RKNN`: a drop-in for RKNN-Toolkit scripts.

A thin facade: it checks call order, turns exceptions into the vendor's return codes (0 = ok, -1 = failed) with one
clear logged error, and delegates every real step to convert/ (load, build, hybrid), runtime/ and analysis/.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys
from typing import Any, List, Optional

from . import __version__, logs
from .config import BuildConfig, make_config
from .errors import ConfigError, ModelLoadError, OpenRKNNError, RuntimeStateError

log = logs.LOGGER

FAILED = -1


def _guarded(default_fail: Any = FAILED):
    """Run an API method; a failure is logged once, clearly, and returned as the vendor's error value."""

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(self: "RKNN", *args, **kwargs):
            try:
                sig.bind(self, *args, **kwargs)
            except TypeError as e:  # a typo in a keyword must not be silently ignored
                allowed = ", ".join(p for p in sig.parameters if p != "self")
                log.error("%s: %s; its arguments are: %s", fn.__name__.lstrip("_"), e, allowed)
                self.last_error = e
                return default_fail
            try:
                return fn(self, *args, **kwargs)
            except OpenRKNNError as e:
                log.error("%s: %s", fn.__name__, e)
                self.last_error = e
            except FileNotFoundError as e:
                log.error("%s: file not found: %s", fn.__name__, e.filename or e)
                self.last_error = e
            except Exception as e:  # a bug of ours: keep the traceback in verbose logs, one line otherwise
                log.error("%s failed unexpectedly: %s: %s (run with verbose=True for the traceback; please report "
                          "it)", fn.__name__, type(e).__name__, e)
                log.debug("traceback", exc_info=True)
                self.last_error = e
            return default_fail

        return inner

    return wrap


class RKNN:
    """The RKNN-Toolkit API on openrknn's pipeline. Usable as a context manager.

    Vendor arguments that have no meaning here are accepted so scripts run unchanged: load_pytorch(convert_engine)
    (the TorchScript exporter is always used), load_rknn(load_model_in_npu), init_runtime(async_mode, core_mask).
    """

    def __init__(self, verbose: bool = False, verbose_file: Optional[str] = None):
        self.verbose = bool(verbose)
        self._handlers: List[logging.Handler] = []
        logs.request_console_level(self, logging.DEBUG if self.verbose else logs.DEFAULT_LEVEL)
        if verbose_file:
            fh = logging.FileHandler(verbose_file, encoding="utf-8")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            fh.setLevel(logging.DEBUG)
            self._handlers.append(fh)
            log.addHandler(fh)
        self.last_error: Optional[BaseException] = None
        self._config: BuildConfig = make_config()
        self._config_set = False  # hybrid step 2 uses step 1's stored config unless config() was called here
        self._config_error: Optional[ConfigError] = None
        self._loaded = None  # frontends.LoadedModel
        self._build = None  # convert.BuildResult
        self._package = None  # package.RknnPackage (built or loaded)
        self._board_model = None  # runtime.connect.BoardModel: a loaded vendor .rknn or .tflite
        self._board_refusal: Optional[Exception] = None  # why the simulator cannot run that model
        self._runtime = None  # runtime.Simulator or remote client
        self._runtime_opts: dict = {}
        self.hybrid_report: Optional[dict] = None  # what build(auto_hybrid=True) promoted and what it costs

    # ---- configuration -------------------------------------------------------------------------------------------
    def config(self, **kwargs) -> int:
        try:
            self._config = make_config(**kwargs)
            self._config_set = True
            self._config_error = None
        except ConfigError as e:
            # remembered: a build after a failed config() must not silently use defaults
            self._config_error = e
            log.error("config: %s", e)
            self.last_error = e
            return FAILED
        log.debug("config: %s", self._config)
        return 0

    # ---- loaders -------------------------------------------------------------------------------------------------
    @_guarded()
    def load_pytorch(self, model: str, input_size_list=None, inputs: Optional[List[str]] = None,
                     outputs: Optional[List[str]] = None, convert_engine: str = "torch") -> int:
        from .convert import load_pytorch

        with self._loading_at_dynamic_base(input_size_list) as sizes:
            self._set_loaded(load_pytorch(model, sizes, inputs, outputs))
        return 0

    @_guarded()
    def load_onnx(self, model: str, inputs: Optional[List[str]] = None, input_size_list=None,
                  input_initial_val=None, outputs: Optional[List[str]] = None) -> int:
        """input_initial_val (rknn-toolkit2's order and meaning): one entry per input, a value that input is fixed to
        as a constant (a sample rate, a mode flag) or None; an If on such a value keeps only the branch it takes."""
        from .convert import load_onnx

        with self._loading_at_dynamic_base(input_size_list) as sizes:
            self._set_loaded(load_onnx(model, inputs=inputs, input_size_list=sizes, outputs=outputs,
                                       input_initial_val=input_initial_val))
        return 0

    @contextlib.contextmanager
    def _loading_at_dynamic_base(self, input_size_list):
        """input_size_list as given; with config(dynamic_input=...) and none given, its largest set (where build()
        calibrates), and a load that fails there says so."""
        base = None if input_size_list else self._config.dynamic_base
        try:
            yield input_size_list or base
        except ModelLoadError as e:
            if base is None:
                raise
            raise ModelLoadError(f"config(dynamic_input=...) loads the model at its largest shape set {base}, and "
                                 f"it does not load there: {e}") from None

    @_guarded()
    def load_tflite(self, model: str, input_is_nchw: bool = False) -> int:
        """A .tflite model (float, or int8 with its scales kept). input_is_nchw=True: the model's 4-D input is
        taken as NCHW (the feed is NHWC either way)."""
        from .convert.loaders import load_tflite

        self._set_loaded(load_tflite(model, input_is_nchw=bool(input_is_nchw)))
        return 0

    @_guarded()
    def load_darknet(self, model: str, weight: str) -> int:
        """A Darknet .cfg and its .weights; [yolo] layers' raw input maps become the outputs."""
        from .convert.loaders import load_darknet

        self._set_loaded(load_darknet(model, weight))
        return 0

    @_guarded()
    def load_caffe(self, model: str, blobs: Optional[str] = None, input_name: Optional[str] = None,
                   proto: Optional[str] = None) -> int:
        """A Caffe .prototxt and its .caffemodel. Toolkit v1's load_caffe(model, proto, blobs) is accepted too
        (proto='caffe'; 'lstm_caffe' is not supported)."""
        from .convert.loaders import load_caffe

        if blobs in ("caffe", "lstm_caffe") and proto is None:  # Toolkit v1, positional: (model, proto, blobs)
            proto, blobs, input_name = blobs, input_name, None
        if proto not in (None, "caffe"):
            raise ConfigError("proto", proto, ["caffe"], "openrknn reads the standard caffe.proto")
        self._set_loaded(load_caffe(model, blobs, input_name))
        return 0

    @_guarded()
    def load_tensorflow(self, tf_pb: str, inputs: List[str], input_size_list, outputs: List[str],
                        input_is_nchw: bool = False, predef_file: Optional[str] = None, mean_values=None,
                        dequantize_layers=None) -> int:
        """A frozen TensorFlow GraphDef (.pb): inputs/outputs are tensor or node names; input_size_list one shape
        per input ([H, W, C] or [1, H, W, C]). Toolkit v1's predef_file / mean_values / dequantize_layers are
        accepted and have no effect (set mean/std with config())."""
        from .convert.loaders import load_tensorflow

        for key, value in (("predef_file", predef_file), ("mean_values", mean_values),
                           ("dequantize_layers", dequantize_layers)):
            if value is not None:
                log.warning("load_tensorflow(%s=...) has no effect in openrknn%s", key,
                            ": give mean/std with config()" if key == "mean_values" else "")
        self._set_loaded(load_tensorflow(tf_pb, inputs, input_size_list, outputs, input_is_nchw=bool(input_is_nchw)))
        return 0

    @_guarded()
    def load_tfjs(self, model: str, inputs: Optional[List[str]] = None, input_size_list=None,
                  outputs: Optional[List[str]] = None) -> int:
        """A TensorFlow.js graph or layers (Keras) model: its model.json, the .bin weight shards beside it.
        inputs/outputs default to the graph's placeholders (the model's input layers) and the outputs its signature
        (the model) names; input_size_list to the placeholders' shapes, channel-last (give it where H or W is -1).
        Not in rknn-toolkit2's API."""
        from .convert.loaders import load_tfjs

        self._set_loaded(load_tfjs(model, inputs, input_size_list, outputs))
        return 0

    @_guarded()
    def load_keras(self, model: str, input_size_list=None, outputs: Optional[List[str]] = None) -> int:
        """A Keras model file: the .h5 / .hdf5 that model.save() writes in Keras 2 (or legacy format in Keras 3), or
        Keras 3's .keras archive. input_size_list: channel-last, where the model leaves H or W open; outputs: layer
        names to end at. RKNN-Toolkit 1's call (rknn-toolkit2 dropped it); TensorFlow and Keras are not needed."""
        from .convert.loaders import load_keras

        self._set_loaded(load_keras(model, input_size_list, outputs))
        return 0

    @_guarded()
    def load_rknn(self, path: str, load_model_in_npu: bool = False) -> int:
        """An openrknn .rknn; or a model only a board runs (a vendor .rknn: its NPU runtime; an int8 .tflite: LiteRT,
        which also runs here), for init_runtime(target, device_id) to upload."""
        from .errors import PackageError
        from .package import read_package

        self._release_runtime()
        self._board_model = None
        try:
            self._package = read_package(path)
        except PackageError as e:
            board = self._board_model_of(path, e)
            if board is None:
                raise
            self._package, self._loaded, self._build = None, None, None
            self._board_model, self._board_refusal = board, e
            log.info("loaded %s: a %s model%s; init_runtime(target, device_id) runs it on a board", path, board.kind,
                     " with its host-side tail" if board.post else "")
            return 0
        self._loaded, self._build = None, None
        meta = self._package.metadata
        log.info("loaded %s: target %s, inputs %s", path, ",".join(meta["target_platform"]),
                 [(i["name"], i.get("shape")) for i in meta["inputs"]])  # shape is optional in the format
        return 0

    @staticmethod
    def _board_model_of(path: str, error: Exception):
        """A vendor .rknn or a .tflite the reader refused, as a model for a board; None for anything else."""
        from .runtime.connect import BoardModel
        from .runtime.server.backends import kind_of

        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            return None
        return BoardModel.from_file(path) if kind_of(head) != "openrknn" else None

    def _set_loaded(self, loaded) -> None:
        self._release_runtime()
        self._loaded, self._build, self._package = loaded, None, None
        for note in loaded.notes:
            log.info("%s", note)

    # ---- build / export ------------------------------------------------------------------------------------------
    def _check_config(self) -> None:
        if self._config_error is not None:
            raise RuntimeStateError(f"config() failed earlier ({self._config_error}); fix it and call config() again "
                                    "first")

    @_guarded()
    def build(self, do_quantization: bool = True, dataset: Optional[str] = "dataset.txt", pre_compile: bool = False,
              rknn_batch_size: Optional[int] = None, auto_hybrid: bool = False) -> int:
        """auto_hybrid=True (int8 only): promote the fewest layers to 16-bit until every output's cosine against
        the float model reaches config(auto_hybrid_cos_thresh=...) (default 0.98)."""
        from .convert import BuildOptions, build

        self._check_config()
        if self._loaded is None:
            raise RuntimeStateError("build() needs a model: call a loader first (load_onnx, load_pytorch, "
                                    "load_tflite, load_darknet, load_caffe, load_tensorflow, load_tfjs or load_keras)"
                                    + (" (a loaded .rknn is already built; use it directly)" if self._package else ""))
        self._release_runtime()
        opts = BuildOptions(do_quantization=bool(do_quantization), dataset=dataset, pre_compile=bool(pre_compile),
                            rknn_batch_size=rknn_batch_size, auto_hybrid=bool(auto_hybrid))
        self._build = build(self._loaded, self._config, opts)
        self.hybrid_report = self._build.hybrid_report
        self._package = self._build.package
        return 0

    @_guarded()
    def hybrid_quantization_step1(self, dataset: Optional[str] = "dataset.txt", rknn_batch_size: Optional[int] = None,
                                  proposal: bool = False, proposal_dataset_size: int = 1,
                                  output_dir: str = ".") -> int:
        """Write <model>.model, <model>.data and <model>.quantization.cfg (edit its custom_quantize_layers, then call
        hybrid_quantization_step2). Files go to output_dir (default: the current folder, like the vendor)."""
        from .convert.hybrid import hybrid_step1

        self._check_config()
        if self._loaded is None:
            raise RuntimeStateError("hybrid_quantization_step1() needs a model: call load_pytorch() or load_onnx()")
        paths = hybrid_step1(self._loaded, self._config, dataset, out_dir=output_dir, proposal=bool(proposal))
        for kind, path in paths.items():
            log.info("hybrid step 1 wrote %s: %s", kind, path)
        return 0

    @_guarded()
    def hybrid_quantization_step2(self, model_input: str, data_input: str, model_quantization_cfg: str) -> int:
        """Build from step 1's files after editing the .quantization.cfg; then export_rknn() as after build()."""
        from .convert.hybrid import hybrid_step2

        self._release_runtime()
        self._check_config()
        cfg = self._config if self._config_set else None
        self._build = hybrid_step2(model_input, data_input, model_quantization_cfg, cfg)
        self._package = self._build.package
        return 0

    @_guarded()
    def export_rknn(self, export_path: str) -> int:
        from .package import write_package

        if self._package is None:
            raise RuntimeStateError("export_rknn() needs a built model: call build() first")
        n = write_package(export_path, self._package)
        log.info("exported %s (%.2f MB)", export_path, n / 1e6)
        return 0

    # ---- runtime -------------------------------------------------------------------------------------------------
    @_guarded()
    def init_runtime(self, target: Optional[str] = None, device_id: Optional[str] = None, perf_debug: bool = False,
                     eval_mem: bool = False, async_mode: bool = False, core_mask: int = 0) -> int:
        if self._board_model is not None:
            return self._init_board_model(target, device_id)
        if self._package is None:
            raise RuntimeStateError("init_runtime() needs a model: build() one or load_rknn() a file first")
        self._release_runtime()
        self._runtime_opts = {"target": target, "device_id": device_id, "perf_debug": bool(perf_debug),
                              "eval_mem": bool(eval_mem)}
        if target is None:
            from .runtime.simulator import Simulator

            self._runtime = Simulator(self._package.model_bytes, self._package.metadata)
            log.info("simulator ready (onnxruntime %s, CPU)", _ort_version())
            return 0
        from .runtime.connect import connect_board

        self._runtime = connect_board(target, device_id, self._package)
        return 0

    def _init_board_model(self, target: Optional[str], device_id: Optional[str]) -> int:
        from .runtime.connect import connect_board

        self._release_runtime()
        self._runtime_opts = {"target": target, "device_id": device_id}
        model = self._board_model
        if target is not None:
            self._runtime = connect_board(target, device_id, model)
        elif model.kind == "tflite":
            from .runtime.server.backends import TfliteBackend

            self._runtime = TfliteBackend(model.data, delegate="auto", threads=None)
            log.info("TFLite model ready on this machine (%s)", model.source)
        else:
            raise type(self._board_refusal)(f"{self._board_refusal}. A board with rknn-toolkit-lite2 runs it: "
                                            "init_runtime(target='rk3588', device_id=...) with `openrknn serve` there")
        return 0

    @_guarded(default_fail=None)
    def inference(self, inputs, data_type: Optional[str] = None, data_format: str = "nhwc",
                  inputs_pass_through: Optional[List[int]] = None):
        """Returns a list of numpy arrays, or None on failure (logged), like the vendor."""
        if self._runtime is None:
            raise RuntimeStateError("inference() needs init_runtime() first")
        return self._runtime.run(inputs, data_type=data_type, data_format=data_format,
                                 pass_through=inputs_pass_through)

    # ---- analysis ------------------------------------------------------------------------------------------------
    @_guarded(default_fail=None)
    def eval_perf(self, inputs=None, is_print: bool = True, loop_cnt: int = 10):
        from .analysis.package_reports import eval_perf

        if self._runtime is None:
            raise RuntimeStateError("eval_perf() needs init_runtime() first")
        if self._package is None:  # a vendor .rknn or a .tflite from load_rknn: not an openrknn package
            raise RuntimeStateError("eval_perf() estimates openrknn models (their layers and quantization are in the "
                                    "package); a vendor .rknn or a .tflite has none of that here. Run eval_perf on the "
                                    "openrknn .rknn it was exported from (openrknn perf model.rknn --target CHIP)")
        return eval_perf(self._package, self._runtime, inputs, self._runtime_opts.get("perf_debug", False), is_print,
                         target=self._runtime_opts.get("target"), runs=max(1, int(loop_cnt)))

    @_guarded(default_fail=None)
    def eval_memory(self, is_print: bool = True):
        from .analysis.package_reports import eval_memory

        if self._runtime is None:
            raise RuntimeStateError("eval_memory() needs init_runtime() first")
        if self._package is None:  # a vendor .rknn or a .tflite from load_rknn: not an openrknn package
            raise RuntimeStateError("eval_memory() estimates openrknn models (their layers and quantization are in "
                                    "the package); a vendor .rknn or a .tflite has none of that here. Run eval_memory "
                                    "on the openrknn .rknn it was exported from (openrknn perf model.rknn --target "
                                    "CHIP)")
        return eval_memory(self._package, self._runtime, is_print, target=self._runtime_opts.get("target"))

    @_guarded()
    def accuracy_analysis(self, inputs, output_dir: str = "./snapshot", target: Optional[str] = None,
                          device_id: Optional[str] = None) -> int:
        from .analysis.package_reports import accuracy_analysis

        if self._package is None:
            raise RuntimeStateError("accuracy_analysis() needs a model: build() one or load_rknn() a file first")
        accuracy_analysis(self._package, inputs, output_dir)
        return 0

    # ---- devices and versions ------------------------------------------------------------------------------------
    @_guarded(default_fail=None)
    def list_devices(self):
        from .runtime.connect import list_devices

        return list_devices()

    @_guarded(default_fail=None)
    def get_sdk_version(self) -> str:
        if self._runtime is not None and hasattr(self._runtime, "sdk_version"):
            return self._runtime.sdk_version()
        return (f"openrknn {__version__} (simulator: onnxruntime {_ort_version()}, python "
                f"{sys.version.split()[0]}, {os.uname().machine if hasattr(os, 'uname') else ''})")

    # ---- lifetime ------------------------------------------------------------------------------------------------
    def _release_runtime(self) -> None:
        if self._runtime is not None:
            try:
                self._runtime.release()
            finally:
                self._runtime = None

    def release(self) -> None:
        self._release_runtime()
        self._loaded = self._build = self._package = self._board_model = None
        for h in self._handlers:
            log.removeHandler(h)
            h.close()
        self._handlers = []
        logs.release_console_level(self)

    def __enter__(self) -> "RKNN":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @_guarded()
    def export_tflite(self, export_path: str, input_dtype: str = "uint8", shape_set=None) -> int:
        """Write the w8a8 model as an int8 .tflite with its scales and integers kept (Mesa Teflon runs it).
        input_dtype: 'uint8' (image pixels, the board's feed) or 'float32' (features that are not whole numbers).
        shape_set: with config(dynamic_input=...), the set to write ('1x3x240x320' or its index; default the
        largest): a .tflite takes one shape."""
        from .export.tflite import export_tflite

        if self._package is None:
            raise RuntimeStateError("export_tflite() needs a built model: build() a w8a8 model or load_rknn() one")
        export_tflite(self._package, export_path, input_dtype, shape_set)
        return 0

    def __del__(self):  # handlers must not pile up across objects in long sessions
        try:
            for h in self._handlers:
                log.removeHandler(h)
        except Exception:
            pass

    # ---- vendor export (openrknn's quantization, the vendor's compiler) ---------------------------------------------
    @_guarded()
    def export_vendor_rknn(self, export_path: str, target: Optional[str] = None, validate=None,
                           validate_out: Optional[str] = None, route: str = "auto",
                           dataset: Optional[str] = None, shape_set=None) -> int:
        """Compile the built or loaded model into a vendor .rknn with rknn-toolkit2 running in its own Python
        (`openrknn vendor-setup`, or OPENRKNN_VENDOR_PYTHON). validate: a dataset.txt or image/.npy paths run on the
        vendor simulator right after compiling; per-output cosine against openrknn's simulator goes to
        <export_path>.validation.json. shape_set: with config(dynamic_input=...), the set to compile (default the
        largest). See docs/vendor.md."""
        from .vendor import export_vendor

        if self._package is None:
            raise RuntimeStateError("export_vendor_rknn() needs a model: build() one or load_rknn() a file first")
        samples = [validate] if isinstance(validate, (str, os.PathLike)) else validate
        res = export_vendor(self._package, export_path, target=target, validate=samples, validate_out=validate_out,
                            route=route, dataset=dataset, shape_set=shape_set)
        self.vendor_export = res
        log.info("exported vendor model %s (%s, route %s)", res.path, res.toolkit, res.route)
        return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
