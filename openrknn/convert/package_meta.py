"""The one place a built graph becomes an in-memory .rknn package: inputs/outputs, build options, quantization,
source. Nothing here depends on time or on where files were: the same model, config and data give the same bytes
(the file's own mtime says when it was written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import onnx
from onnx import helper

from .. import __version__
from ..config import BuildConfig
from ..graph.shapes import run_shapes
from ..package import RknnPackage
from .float_graph import dims


@dataclass(frozen=True)
class BuildFlags:
    """The build() arguments recorded in the file."""

    do_quantization: bool
    dataset: Optional[str] = None
    pre_compile: bool = False
    rknn_batch_size: int = 1


def output_metas(model: onnx.ModelProto) -> List[dict]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = [{"name": o.name, "shape": dims(o),
            "dtype": helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type).name}
           for o in inferred.graph.output]
    if any(d < 0 for m in out for d in m["shape"]):
        # dims shape inference cannot follow (through an If's branches): one run at the fixed input shapes
        for m, shape in zip(out, run_shapes(model, [m["name"] for m in out])):
            m["shape"] = list(shape)
    return out


def source_record(framework: str, source_file: Optional[str], sha256: Optional[str], notes: List[str]) -> dict:
    """Where the model came from: the file's name (not its folder, which differs between machines) and hash."""
    return {"framework": framework, "file": Path(source_file).name if source_file else None, "sha256": sha256,
            "notes": list(notes)}


def make_package(float_model: onnx.ModelProto, model: onnx.ModelProto, input_metas: List[dict], cfg: BuildConfig,
                 flags: BuildFlags, quantization: Optional[dict], source: dict) -> RknnPackage:
    """``model`` is what runs (float or QDQ); a quantized model keeps ``float_model`` beside it so accuracy_analysis
    also works after load_rknn."""
    batch = flags.rknn_batch_size
    inputs = [dict(m) for m in input_metas]
    outputs = output_metas(model)
    if batch > 1:  # the file records what the application feeds and gets back: N frames per call
        for m in inputs + outputs:
            m["shape"] = [m["shape"][0] * batch] + list(m["shape"][1:])
    build = {k: v for k, v in cfg.to_dict().items() if k not in ("mean_values", "std_values", "reorder_channel")}
    build.update({"do_quantization": flags.do_quantization,
                  "dataset": Path(flags.dataset).name if flags.dataset else None,
                  "pre_compile": flags.pre_compile, "rknn_batch_size": batch})
    metadata = {
        "toolkit": "openrknn",
        "toolkit_version": __version__,
        "target_platform": list(cfg.target_platform),
        "inputs": inputs,
        "outputs": outputs,
        "build": build,
        "quantization": quantization,
        "source": source,
    }
    model.producer_name, model.producer_version = "openrknn", __version__
    float_ref = float_model.SerializeToString() if flags.do_quantization else None
    return RknnPackage(metadata=metadata, model_bytes=model.SerializeToString(), float_model_bytes=float_ref)
