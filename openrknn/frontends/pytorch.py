"""TorchScript (.pt from torch.jit.trace / torch.jit.script) and torch.export archives (.pt2) -> ONNX. torch is
imported here only, lazily."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zipfile
from pathlib import Path
from typing import List, Optional

import onnx

from ..errors import ModelLoadError
from . import OPSET, LoadedModel, file_sha256, normalize_size_list
from .torch_fused import register as register_fused_kernels

log = logging.getLogger("openrknn.frontends.pytorch")

_TRACE_HINT = (
    "load_pytorch needs a TorchScript file made by torch.jit.trace (or torch.jit.script), or a torch.export "
    "archive, which hold the network structure. Make one with:\n"
    "    model = YourNet(...); model.load_state_dict(torch.load('weights.pth')); model.eval()\n"
    "    torch.jit.trace(model, torch.rand(1, 3, H, W)).save('model.pt')\n"
    "    # or: torch.export.save(torch.export.export(model, (torch.rand(1, 3, H, W),)), 'model.pt2')\n"
    "For YOLOX weights from the yolox-pytorch code use `openrknn yolox export --weights W.pth --phi nano "
    "--num-classes N -o model.pt`."
)


def _sniff_torch_file(path: Path) -> str:
    """Tell a TorchScript archive from a torch.save file without unpickling anything."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any("/code/" in n or n.startswith("code/") or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
            return "exported"  # torch.export.save's archive (.pt2): an ExportedProgram
        if any(n.endswith("data.pkl") for n in names):
            return "torch.save"
        return "zip"
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:1] == b"\x80":  # legacy (non-zip) torch.save: a raw pickle stream
        return "torch.save"
    if head.startswith(b"\x08") or b"onnx" in head.lower():
        return "maybe-onnx"
    return "unknown"


def load_torchscript(path: str | Path):
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"PyTorch model file not found: '{path}'. Check the path (relative paths are resolved "
                             f"against the current folder, {Path.cwd()}).")
    kind = _sniff_torch_file(path)
    if kind == "torch.save":
        raise ModelLoadError(f"'{path}' is a torch.save file (a state dict or a pickled nn.Module), not TorchScript. "
                             + _TRACE_HINT)
    if kind == "maybe-onnx" and path.suffix.lower() == ".onnx":
        raise ModelLoadError(f"'{path}' looks like an ONNX model; use load_onnx(model='{path}') instead.")
    if kind == "exported":
        return _load_exported(path).module()  # its graph, callable as an nn.Module (already in eval form)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError with long C++ traces; keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"'{path}' could not be loaded as TorchScript ({first}). " + _TRACE_HINT) from None
    module.eval()
    return module


def _load_exported(path: Path):
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"'{path}' is a torch.export archive that this torch ({torch.__version__}) cannot "
                             f"read ({first}); save it again with this torch version, or trace the model to "
                             "TorchScript.") from None


def _example_shapes(program, path: Path) -> List[List[int]]:
    """The input shapes a torch.export archive was exported with (it stores its example inputs)."""
    examples = program.example_inputs
    args = list(examples[0]) if examples else []
    if not args or not all(hasattr(a, "shape") for a in args):
        raise ModelLoadError(f"'{path}' stores no example tensors to take its input shapes from; give "
                             "input_size_list, e.g. input_size_list=[[1, 3, 224, 224]]")
    return [list(a.shape) for a in args]


def load_pytorch(path: str | Path, input_size_list) -> LoadedModel:
    import torch

    exported = Path(path).is_file() and _sniff_torch_file(Path(path)) == "exported"
    program = _load_exported(Path(path)) if exported else None  # read once
    if exported and not input_size_list:
        input_size_list = _example_shapes(program, Path(path))
    shapes = normalize_size_list(input_size_list)
    if not shapes:
        raise ModelLoadError("load_pytorch needs input_size_list (TorchScript files do not record input shapes), "
                             "e.g. input_size_list=[[3, 416, 416]]")
    module = program.module() if exported else load_torchscript(path)
    # TorchScript does not record its inputs' ranks: a shape below 4-D is taken without its batch dim ([3, H, W]),
    # unless the model only runs on it as given (a transformer's [1, tokens, width])
    given = [list(s) for s in ([input_size_list] if all(isinstance(v, int) for v in input_size_list)
                               else input_size_list)]
    failure = None
    for candidate in [shapes] + ([given] if given != shapes else []):
        torch.manual_seed(0)
        dummy = tuple(torch.rand(*s) for s in candidate)
        try:
            with torch.no_grad():
                sample_out = module(*dummy)
            shapes = candidate
            break
        except Exception as e:
            failure = failure or e
    else:
        first = str(failure).strip().splitlines()
        msg = next((ln for ln in reversed(first) if ln.strip()), type(failure).__name__)
        raise ModelLoadError(f"the TorchScript model in '{path}' does not run on inputs of shape "
                             f"{[list(s) for s in shapes]} from input_size_list: {msg.strip()}. Check the channel "
                             "count and size the model was traced with.")
    n_out = len(_flatten_outputs(sample_out))
    if exported:  # torch's TorchScript exporter cannot switch an exported graph's mode: give it a trace of it
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.trace(module, dummy, check_trace=False)
    buf = io.BytesIO()
    input_names = [f"input{i}" if len(shapes) > 1 else "input" for i in range(len(shapes))]
    output_names = [f"output{i}" for i in range(n_out)]
    register_fused_kernels(OPSET)
    try:
        # the TorchScript exporter's deprecation and trace warnings, and the graph it prints when it fails
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, dummy, buf, dynamo=False, opset_version=OPSET, input_names=input_names,
                              output_names=output_names, do_constant_folding=True)
    except Exception as e:
        if exported and _has_onnxscript():  # torch's own exporter of ExportedPrograms (dynamo), then load_onnx
            return _via_dynamo(program, Path(path), shapes, str(e).strip().splitlines()[0])
        if exported:
            raise ModelLoadError(f"exporting '{path}' to ONNX with torch's TorchScript exporter failed: "
                                 f"{str(e).strip().splitlines()[0]}. `pip install onnxscript` lets torch's own "
                                 "exporter of torch.export programs write it instead.") from None
        raise ModelLoadError(f"exporting '{path}' to ONNX failed: {str(e).strip().splitlines()[0]}. An operator may "
                             f"lack an ONNX mapping at opset {OPSET} (a transformer's attention traced with "
                             "gradients on: trace it under torch.no_grad()); exporting the nn.Module yourself, "
                             "torch.onnx.export(model, x, 'model.onnx'), and calling load_onnx() gives you more "
                             "control.") from None
    model = onnx.load_from_string(buf.getvalue())
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    what = "torch.export program" if exported else "TorchScript"
    notes = [f"{what} exported to ONNX opset {OPSET} with {len(model.graph.node)} nodes"]
    log.info("loaded %s %s: inputs %s, %d outputs", what, path, shapes, n_out)
    return LoadedModel(model, "pytorch", str(path), file_sha256(path), notes)


def _has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it; in the torch extra, not a core dependency)
        return True
    except ImportError:
        return False


def _via_dynamo(program, path: Path, shapes: List[List[int]], first_failure: str) -> LoadedModel:
    """An ExportedProgram the TorchScript exporter could not write, through torch's own exporter of them (opset 18
    or newer) and load_onnx, which steps it down."""
    import tempfile

    import torch

    from .onnx import load_onnx

    with tempfile.TemporaryDirectory(prefix="openrknn-export-") as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(program, (), str(out), verbose=False)
        except Exception as e:
            raise ModelLoadError(f"exporting '{path}' to ONNX failed with both of torch's exporters "
                                 f"({first_failure}; {str(e).strip().splitlines()[0]})") from None
        loaded = load_onnx(out, input_size_list=shapes)
    notes = [f"torch.export program exported by torch's dynamo exporter (the TorchScript one failed: "
             f"{first_failure[:120]})"] + loaded.notes
    log.info("loaded torch.export program %s: inputs %s", path, shapes)
    return LoadedModel(loaded.model, "pytorch", str(path), file_sha256(path), notes)


def _flatten_outputs(out) -> List:
    if isinstance(out, (list, tuple)):
        flat: List = []
        for o in out:
            flat.extend(_flatten_outputs(o))
        return flat
    if isinstance(out, dict):
        return _flatten_outputs(list(out.values()))
    return [out]


def reference_outputs(path: str | Path, inputs_nchw: List, device: Optional[str] = None) -> List:
    """Run the original TorchScript on float NCHW numpy inputs (for verification in tests and reports)."""
    import torch

    module = load_torchscript(path)
    with torch.no_grad():
        out = module(*[torch.from_numpy(x) for x in inputs_nchw])
    return [o.numpy() for o in _flatten_outputs(out)]
