"""Model file -> LoadedModel: the one place that picks a frontend by file type."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..errors import ModelLoadError
from ..frontends import LoadedModel

PYTORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".jit")
ONNX_SUFFIXES = (".onnx",)


def model_kind(path: str | Path) -> str:
    """'onnx', 'pytorch' or 'rknn' from the file name; ModelLoadError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in PYTORCH_SUFFIXES:
        return "pytorch"
    if suffix == ".rknn":
        return "rknn"
    raise ModelLoadError(f"'{path}': unknown model type '{suffix}'; give a TorchScript .pt, an .onnx or an .rknn "
                         "file")


def load_pytorch(path: str | Path, input_size_list, inputs: Optional[List[str]] = None,
                 outputs: Optional[List[str]] = None) -> LoadedModel:
    from ..frontends.pytorch import load_pytorch as load

    loaded = load(path, input_size_list)
    if inputs or outputs:
        from ..frontends.onnx import cut_loaded

        loaded = cut_loaded(loaded, inputs, outputs)
    return loaded


def load_onnx(path: str | Path, inputs: Optional[List[str]] = None, input_size_list=None,
              outputs: Optional[List[str]] = None) -> LoadedModel:
    from ..frontends.onnx import load_onnx as load

    return load(path, inputs=inputs, input_size_list=input_size_list, outputs=outputs)


def load_model(path: str | Path, input_size_list=None, inputs: Optional[List[str]] = None,
               outputs: Optional[List[str]] = None) -> LoadedModel:
    """Dispatch on the file type: TorchScript .pt or ONNX (an .rknn is already converted)."""
    kind = model_kind(path)
    if kind == "onnx":
        return load_onnx(path, inputs=inputs, input_size_list=input_size_list, outputs=outputs)
    if kind == "pytorch":
        return load_pytorch(path, input_size_list, inputs, outputs)
    raise ModelLoadError(f"'{path}' is already an .rknn model; nothing to convert (use `openrknn info` or "
                         "`openrknn run` on it, or load_rknn() in Python)")
