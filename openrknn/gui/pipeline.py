"""What the GUI does with a model: inspect it, turn a calibration folder into a dataset.txt, build + export through
the same functions the API and the CLI use, and ask RKNN.eval_perf / eval_memory for charts when they are wired."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from ..config import make_config
from ..errors import ConfigError, DatasetError
from .jobs import Job
from ..atomic import write_text_atomic
from .sessions import CALIB_SUFFIXES

log = logging.getLogger("openrknn.gui")

BUILD_STAGES = ["Validate config", "Load model", "Calibration data", "Build", "Export .rknn", "Analyse"]


# ---------------------------------------------------------------- models


def _onnx_io(path_or_model) -> dict:
    import onnx

    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model),
                                                                                        load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def dims(vi) -> List[Any]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]

    from ..graph.layout import detect_layout

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    inputs = [{"name": i.name, "shape": dims(i), "image": len(dims(i)) == 4 and i.type.tensor_type.elem_type in floats}
              for i in model.graph.input if i.name not in inits]  # image: where mean/std/reorder apply
    by_name = {i.name: i for i in model.graph.input}
    for inp in inputs:  # channel-last models take C mean/std values: the layout the build will read (graph/layout)
        if inp["image"]:
            lay = detect_layout(model.graph, by_name[inp["name"]])
            inp["layout"] = lay.layout
            if lay.channels > 0:
                inp["channels"] = lay.channels
    outputs = [{"name": o.name, "shape": dims(o)} for o in model.graph.output]
    needs = any(not (isinstance(d, int) and d > 0) for i in inputs for d in i["shape"])
    ops = sorted({n.op_type for n in model.graph.node})
    return {"inputs": inputs, "outputs": outputs, "needs_input_size": needs, "nodes": len(model.graph.node),
            "op_types": ops, "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                                          default=None)}


def inspect_model(path: Path, framework: str, weights: Optional[Path] = None) -> dict:
    """What the model picker shows: inputs/outputs when the file records them, and whether input sizes are needed."""
    info: dict = {"framework": framework, "size_bytes": path.stat().st_size}
    if framework == "onnx":
        info.update(_onnx_io(path))
    elif framework in ("tflite", "darknet", "caffe", "tensorflow", "tfjs", "keras") or path.suffix.lower() == ".pt2":
        # converted here as the build will (a Darknet / Caffe model's weights file beside it; a torch.export archive
        # at the shapes it records): what the picker shows is the graph the build starts from
        from ..convert.loaders import load_model

        info.update(_onnx_io(load_model(path, weights=weights).model))
    elif framework == "pytorch":
        # TorchScript archives record no input shapes; the user gives them (input_size_list) as for load_pytorch.
        info.update({"inputs": None, "outputs": None, "needs_input_size": True,
                     "torchscript_archive": zipfile.is_zipfile(path)})
    else:
        from ..package import read_package
        from ..package_info import package_summary

        summary = package_summary(read_package(path), str(path))
        info.update({"inputs": summary["inputs"], "outputs": summary["outputs"], "needs_input_size": False,
                     "summary": summary})
    return info


def parse_input_size(text: Optional[str]) -> Optional[List[List[int]]]:
    """'3,224,224' or '1 3 224 224', '#' between inputs -> [[...], ...]; empty -> None (the model's own shapes)."""
    if text is None or not str(text).strip():
        return None
    shapes = []
    for part in str(text).split("#"):
        body = part.strip().strip("[]").strip()
        if not re.fullmatch(r"\d+(\s*[,x×\s]\s*\d+)*", body):
            raise ConfigError("input_size_list", text, "positive integers per input such as '3,224,224', "
                              "'1 3 224 224' or '3x224x224', with '#' between inputs")
        shapes.append([int(t) for t in re.findall(r"\d+", body)])
    return shapes


def copy_atomic(src: Path, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".copy-", dir=str(dest.parent))
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- calibration data


def _folder_samples(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CALIB_SUFFIXES)


def describe_dataset(path: Path) -> dict:
    """A dataset.txt (lines counted) or a folder of images / .npy files (files counted); DatasetError otherwise."""
    if path.is_dir():
        samples = _folder_samples(path)
        if not samples:
            raise DatasetError(f"folder '{path}' holds no calibration files ({', '.join(CALIB_SUFFIXES)}); pick a "
                               "folder of images or a dataset.txt")
        return {"kind": "folder", "path": str(path), "count": len(samples), "examples": [p.name for p in samples[:5]]}
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        if not entries:
            raise DatasetError(f"'{path}' lists no calibration files; write one image or .npy path per line")
        return {"kind": "file", "path": str(path), "count": len(entries), "examples": entries[:5]}
    raise DatasetError(f"'{path}' does not exist; give a dataset.txt or a folder of calibration images")


def dataset_from_folder(folder: Path, dest: Path) -> int:
    """Write dest (a dataset.txt) listing the folder's calibration files by absolute path; returns the count."""
    samples = _folder_samples(folder)
    if not samples:
        raise DatasetError(f"folder '{folder}' holds no calibration files ({', '.join(CALIB_SUFFIXES)})")
    write_text_atomic(dest, "".join(f"{p.resolve()}\n" for p in samples))
    return len(samples)


# ---------------------------------------------------------------- build


@dataclass
class BuildRequest:
    model_path: Path
    config: dict  # config() keyword arguments
    output: Path
    input_size_list: Optional[List[List[int]]] = None
    do_quantization: bool = False
    dataset: Optional[dict] = None  # {"kind": "file" | "folder", "path": ...}
    rknn_batch_size: Optional[int] = None
    keep_float: List[str] = field(default_factory=list)
    calib_dir: Optional[Path] = None  # where a folder's dataset.txt is written


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays, paths and other odd values in reports -> plain JSON types (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _dataset_path(req: BuildRequest) -> Optional[str]:
    if not req.do_quantization:
        return None
    if not req.dataset:
        raise DatasetError("quantization needs calibration data: pick a dataset.txt or a folder of images, or "
                           "switch quantization off for a float model")
    path = Path(req.dataset["path"])
    if req.dataset.get("kind") == "folder":
        dest = (req.calib_dir or path) / "dataset.txt"
        n = dataset_from_folder(path, dest)
        log.info("calibration: %d file(s) from %s -> %s", n, path, dest)
        return str(dest)
    describe_dataset(path)
    return str(path)


def run_build(job: Job, req: BuildRequest) -> dict:
    """The whole conversion, stage by stage, through the one conversion core; returns what the page shows."""
    from ..convert import BuildOptions, build, load_model
    from ..package import write_package
    from ..package_info import package_summary

    job.stage("Validate config")
    cfg = make_config(**req.config)
    job.stage("Load model")
    loaded = load_model(req.model_path, req.input_size_list or cfg.dynamic_base)  # dynamic_input: its largest set
    log.info("loaded %s: inputs %s", req.model_path.name, list(zip(loaded.input_names, loaded.input_shapes)))
    job.stage("Calibration data")
    dataset = _dataset_path(req)
    job.stage("Build")
    opts = BuildOptions(do_quantization=req.do_quantization, dataset=dataset, rknn_batch_size=req.rknn_batch_size,
                        keep_float=tuple(req.keep_float) if req.do_quantization else ())
    result = build(loaded, cfg, opts)
    job.stage("Export .rknn")
    size = write_package(req.output, result.package)
    log.info("exported %s (%.2f MB)", req.output.name, size / 1e6)
    job.stage("Analyse")
    analysis = analyse(req.output)
    return jsonable({
        "rknn": req.output.name, "size_bytes": size, "summary": package_summary(result.package, str(req.output)),
        "timings": result.timings, "notes": result.notes, "quant_report": result.quant_report,
        "keep_float": list(req.keep_float), **analysis,
    })


def analyse(rknn_path: Path) -> dict:
    """perf / memory dicts from the RKNN facade, as a user's script gets them; a reason where one is missing."""
    from ..api import RKNN

    out: dict = {"perf": None, "memory": None, "perf_note": "", "memory_note": ""}
    rknn = RKNN()
    try:
        if rknn.load_rknn(str(rknn_path)) != 0 or rknn.init_runtime(perf_debug=True, eval_mem=True) != 0:
            out["perf_note"] = out["memory_note"] = f"the simulator could not start: {rknn.last_error}"
            return out
        for key, call in (("perf", lambda: rknn.eval_perf(is_print=False)),
                          ("memory", lambda: rknn.eval_memory(is_print=False))):
            value = call()
            if isinstance(value, dict):
                out[key] = value
            else:
                out[f"{key}_note"] = f"eval_{key if key == 'perf' else 'memory'} returned no report: {rknn.last_error}"
    finally:
        rknn.release()
    return out
