"""Shared fixtures: the real test data (tests/data), tiny ONNX / TorchScript model builders, the traced reference
YOLOX-nano, reference runners, and log capture for the `openrknn` logger (which does not propagate to the root
logger)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from real_data import RealData

# Keep onnxruntime to one thread in tests and in the subprocesses they start: the machine is shared.
os.environ.setdefault("OPENRKNN_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # torch 2.x deprecates the TorchScript API that RKNN users (and load_pytorch) depend on; the warning is noise here
    for api in ("torch.jit.trace", "torch.jit.trace_method", "torch.jit.load", "torch.jit.save"):
        config.addinivalue_line("filterwarnings", f"ignore:`{api}` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True, scope="session")
def _exact_int8_sums_in_test_sessions():
    """On an x86-64 CPU without VNNI onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits and
    saturate; every session openrknn makes there widens them (runtime/ort_session.py). The onnxruntime sessions the
    tests make themselves (references, error measures on quantized graphs) are widened the same way, so a test
    compares openrknn's integers, not this CPU's saturated ones."""
    import onnxruntime as ort

    from openrknn.runtime.ort_session import int8_dots_saturate

    if not int8_dots_saturate():
        yield
        return
    original = ort.InferenceSession.__init__

    def widened(self, path_or_bytes, sess_options=None, *args, **kwargs):
        sess_options = sess_options or ort.SessionOptions()
        try:
            sess_options.get_session_config_entry("session.x64quantprecision")
        except RuntimeError:  # not set yet (openrknn's own sessions set it)
            sess_options.add_session_config_entry("session.x64quantprecision", "1")
        original(self, path_or_bytes, sess_options, *args, **kwargs)

    ort.InferenceSession.__init__ = widened
    yield
    ort.InferenceSession.__init__ = original


# ---------------------------------------------------------------- real models and images


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> RealData:
    """The committed real test data (tests/data, README there) by the paths of ../shared/data:
    real_data("models/yolox_nano_coco.onnx"), real_data("images/misc/dog.jpg"). Models are rebuilt on first use."""
    return RealData(tmp_path_factory.mktemp("real_data"))


# ---------------------------------------------------------------- logging


@pytest.fixture(autouse=True)
def _restore_openrknn_logger():
    """RKNN() adds handlers and sets level/propagate on the 'openrknn' logger; undo whatever a test left behind."""
    log = logging.getLogger("openrknn")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    for h in list(log.handlers):
        if h not in handlers:
            log.removeHandler(h)
            h.close()
    log.setLevel(level)
    log.propagate = propagate


@pytest.fixture
def rknn_log(caplog):
    """caplog that sees the 'openrknn' logger's records (RKNN() turns propagation off, like the vendor's logger)."""
    log = logging.getLogger("openrknn")
    log.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    log.removeHandler(caplog.handler)


def errors_logged(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def logged_errors():
    """Function: caplog -> list of ERROR messages."""
    return errors_logged


# ---------------------------------------------------------------- tiny ONNX models


def _const(rng: np.random.Generator, shape: Sequence[int], scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_conv_onnx(path: Path, *, cin: int = 3, cout: int = 4, hw=(8, 10), pads: int = 0, opset: int = 17,
                   batchnorm: bool = False, dynamic: Optional[Sequence[object]] = None, weights_as_inputs: bool = False,
                   input_name: str = "x", seed: int = 0) -> Path:
    """x [1,cin,H,W] -> Conv 3x3 (pads) [-> BatchNorm] -> Relu -> Conv 1x1 -> y.

    Tensor names: conv1_out, (bn_out), relu_out, y. `dynamic` replaces the input dims by these (ints or names).
    """
    rng = np.random.default_rng(seed)
    h, w = hw
    w1, b1 = _const(rng, [cout, cin, 3, 3]), _const(rng, [cout])
    w2, b2 = _const(rng, [2, cout, 1, 1]), _const(rng, [2])
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [helper.make_node("Conv", [input_name, "w1", "b1"], ["conv1_out"], name="conv1", kernel_shape=[3, 3],
                              pads=[pads] * 4)]
    cur = "conv1_out"
    if batchnorm:
        for n, a in (("bn_s", rng.uniform(0.5, 1.5, cout)), ("bn_b", rng.standard_normal(cout) * 0.1),
                     ("bn_m", rng.standard_normal(cout) * 0.1), ("bn_v", rng.uniform(0.5, 2.0, cout))):
            inits.append(numpy_helper.from_array(a.astype(np.float32), n))
        nodes.append(helper.make_node("BatchNormalization", [cur, "bn_s", "bn_b", "bn_m", "bn_v"], ["bn_out"],
                                      name="bn", epsilon=1e-3))
        cur = "bn_out"
    nodes.append(helper.make_node("Relu", [cur], ["relu_out"], name="relu"))
    nodes.append(helper.make_node("Conv", ["relu_out", "w2", "b2"], ["y"], name="conv2", kernel_shape=[1, 1]))
    in_dims = list(dynamic) if dynamic is not None else [1, cin, h, w]
    oh, ow = h - 2 + 2 * pads, w - 2 + 2 * pads
    out_dims = [1, 2, oh, ow] if dynamic is None else ["n_out", 2, "h_out", "w_out"]
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_dims)]
    if weights_as_inputs:  # what old exporters did: every weight is also a graph input
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "tiny_conv", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                          out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10 if opset >= 21 else 8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_two_input_onnx(path: Path, hw=(6, 6), seed: int = 1) -> Path:
    """a [1,3,H,W] and b [1,1,H,W] -> conv(a) + conv(b) -> y [1,2,H-2,W-2]."""
    rng = np.random.default_rng(seed)
    wa, wb = _const(rng, [2, 3, 3, 3]), _const(rng, [2, 1, 3, 3])
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")]
    nodes = [helper.make_node("Conv", ["a", "wa"], ["ca"], kernel_shape=[3, 3], name="conv_a"),
             helper.make_node("Conv", ["b", "wb"], ["cb"], kernel_shape=[3, 3], name="conv_b"),
             helper.make_node("Add", ["ca", "cb"], ["y"], name="add")]
    h, w = hw
    graph = helper.make_graph(nodes, "two_inputs",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, h, w]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, h - 2, w - 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_graph(graph, path: Path, opset: int = 13) -> Path:
    """``graph`` as a model of ``opset`` (IR version 8, which every onnxruntime reads) saved at ``path``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_samples(folder: Path, samples: Sequence, prefixes: Sequence[str] = ("",),
                  name: str = "dataset.txt") -> Path:
    """Calibration samples saved as .npy files in ``folder`` (sample k, input j: <prefixes[j]><k>.npy) plus the
    dataset file listing them, one line per sample; returns that file. A sample is one array, or a tuple of arrays
    for a model with several inputs."""
    lines = []
    for k, sample in enumerate(samples):
        arrays = sample if isinstance(sample, tuple) else (sample,)
        files = [f"{prefix}{k}.npy" for prefix in prefixes[:len(arrays)]]
        for f, a in zip(files, arrays):
            np.save(folder / f, a)
        lines.append(" ".join(files) + "\n")
    listing = folder / name
    listing.write_text("".join(lines))
    return listing


def built_rknn(path: Path, dataset: Optional[Path] = None, loader: str = "onnx", **config):
    """An RKNN with ``path`` loaded (load_onnx or load_tflite), built (int8 when ``dataset`` is given) and its
    simulator started; each step asserted to succeed. The caller releases it."""
    from openrknn.api import RKNN

    rk = RKNN(verbose=False)
    assert rk.config(**config) == 0
    assert getattr(rk, f"load_{loader}")(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=dataset is not None, dataset=str(dataset) if dataset else None) == 0, \
        rk.last_error
    assert rk.init_runtime() == 0
    return rk


def write_npy_dataset(folder: Path, shape: Sequence[int], n: int = 6, seed: int = 1, high: float = 255.0,
                      name: str = "dataset.txt") -> Path:
    """n calibration samples drawn uniform in [0, high) (float32, ``shape``, e.g. NHWC) saved as 0.npy, 1.npy, ...
    in ``folder``, plus the dataset file listing them; returns that file."""
    rng = np.random.default_rng(seed)
    return write_samples(folder, [rng.uniform(0, high, tuple(shape)).astype(np.float32) for _ in range(n)],
                         name=name)


@pytest.fixture
def conv_onnx(tmp_path) -> Callable[..., Path]:
    """Factory: conv_onnx(name='m.onnx', **make_conv_onnx options) -> path in tmp_path."""

    def make(name: str = "conv.onnx", **kw) -> Path:
        return make_conv_onnx(tmp_path / name, **kw)

    return make


@pytest.fixture
def two_input_onnx(tmp_path) -> Path:
    return make_two_input_onnx(tmp_path / "two_inputs.onnx")


def ort_run(model: "str | Path | bytes | onnx.ModelProto", feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """Reference: a bare onnxruntime session on the original model."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture(scope="session")
def ort_reference() -> Callable[..., List[np.ndarray]]:
    return ort_run


def normalise(pixels_nhwc: np.ndarray, mean: Sequence[float], std: Sequence[float],
              reorder: Optional[Sequence[int]] = None) -> np.ndarray:
    """The documented contract, written independently: model channel c = (fed[reorder[c]] - mean[c]) / std[c];
    returns float32 NCHW."""
    x = pixels_nhwc.astype(np.float64)
    if reorder is not None:
        x = x[..., list(reorder)]
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))


@pytest.fixture(scope="session")
def reference_normalise():
    return normalise


@pytest.fixture
def pixels():
    """Factory: random uint8 NHWC pixels."""

    def make(h: int, w: int, c: int = 3, n: int = 1, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)

    return make


# ---------------------------------------------------------------- TorchScript models


@pytest.fixture(scope="session")
def torch_mod():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def _tiny_net(torch):
    # Built from torch's own classes so that torch.save(net) (a pickled module) works too.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="session")
def tiny_torch_files(tmp_path_factory, torch_mod) -> Dict[str, Path]:
    """A small conv net as: traced TorchScript ('pt', input [1,3,16,20]), state dict ('state_dict'), pickled module
    ('pickled'), plus 'net' (the nn.Module itself)."""
    torch = torch_mod
    folder = tmp_path_factory.mktemp("tiny_torch")
    net = _tiny_net(torch)
    traced = torch.jit.trace(net, torch.rand(1, 3, 16, 20))
    traced.save(str(folder / "tiny.pt"))
    torch.save(net.state_dict(), folder / "tiny_state_dict.pth")
    torch.save(net, folder / "tiny_pickled.pt")
    return {"pt": folder / "tiny.pt", "state_dict": folder / "tiny_state_dict.pth",
            "pickled": folder / "tiny_pickled.pt", "net": net}


@pytest.fixture(scope="session")
def nano_pt(tmp_path_factory, real_data, torch_mod) -> Path:
    """The reference yolox-pytorch nano (3 classes, seed 0) traced at 416x416 by our own export code."""
    from openrknn.vision.yolox.export import export_torchscript

    out = tmp_path_factory.mktemp("nano") / "myself_nano.pt"
    info = export_torchscript(real_data("yolox_pytorch_ref/yolox_nano_3cls_seed0.pth"), "nano", 3, 416, out)
    assert info["output_shapes"] == [[1, 8, 52, 52], [1, 8, 26, 26], [1, 8, 13, 13]]
    return out


@pytest.fixture(scope="session")
def torchscript_run(torch_mod):
    """Function: (pt path, float32 NCHW array) -> list of numpy outputs, from torch itself."""
    cache: dict = {}

    def run(pt: Path, x: np.ndarray) -> List[np.ndarray]:
        torch = torch_mod
        key = str(pt)
        if key not in cache:
            cache[key] = torch.jit.load(key, map_location="cpu").eval()
        with torch.no_grad():
            out = cache[key](torch.from_numpy(np.ascontiguousarray(x)))
        out = out if isinstance(out, (list, tuple)) else [out]
        return [o.numpy() for o in out]

    return run


# ---------------------------------------------------------------- subprocesses


def run_python(args: Sequence[str], cwd: Optional[Path] = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `python args...` in a fresh process with this interpreter and the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd or ROOT), env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def python_subprocess():
    return run_python


@pytest.fixture
def teflon_stand_in(tmp_path, monkeypatch):
    """Wiring tests of the Teflon delegate: a stand-in libteflon.so named by the environment and an interpreter
    module whose load_delegate records the path it was given (the real LiteRT interpreter runs the model).
    Returns (library path, list of loaded paths)."""
    from openrknn.runtime import tflite_runner

    real = tflite_runner.interpreter_module()
    lib = tmp_path / "libteflon.so"
    lib.write_bytes(b"stand-in")
    loaded = []

    class Shim:
        @staticmethod
        def load_delegate(path):
            loaded.append(path)
            return "delegate"

        @staticmethod
        def Interpreter(experimental_delegates=None, **kw):
            assert experimental_delegates == ["delegate"]
            return real.Interpreter(**kw)

    monkeypatch.setattr(tflite_runner, "interpreter_module", lambda: Shim)
    monkeypatch.setenv(tflite_runner.TEFLON_ENV, str(lib))
    return lib, loaded
