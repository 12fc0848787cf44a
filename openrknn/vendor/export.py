"""openrknn package -> vendor .rknn, through the vendor toolkit's own Python (never imported here).

export_vendor() prepares the model (prepare.py), writes the job and its files to a temporary folder, runs runner.py
with the vendor interpreter, moves the vendor file into place, and with `validate` compares the vendor simulator's
outputs (run in the same vendor process, right after compiling: the only time its simulator works) with openrknn's
simulator on the same inputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import NotSupportedError, PackageError
from .env import VendorPython, VendorToolkitError, find_vendor_python
from .job import ValidateSpec, VendorJob
from .prepare import VendorModel, prepare

log = logging.getLogger("openrknn.vendor")

RUNNER = Path(__file__).with_name("runner.py")
ROUTES = ("auto", "qdq", "ranges")
# chips each toolkit compiles for (rknn-toolkit 1.x: RKNPU1; rknn-toolkit2: RKNPU2)
TOOLKIT_FOR = {"rknpu1": "rknn-toolkit", "rknpu2": "rknn-toolkit2"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
STEP1_SAMPLES = 4  # calibration samples handed to the vendor's hybrid_quantization_step1 (route "ranges")
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class VendorExport:
    path: str  # the vendor .rknn
    post_path: Optional[str]  # the float tail the host runs after the vendor outputs (None: not needed)
    route: str
    toolkit: str
    seconds: float
    vendor: dict  # the runner's result (per-step seconds, cfg tensors edited...)
    notes: List[str] = field(default_factory=list)
    validation: Optional[dict] = None
    carried: dict = field(default_factory=dict)  # what reached the vendor (_carried)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na and nb else 0.0


def _target(metadata: dict, target: Optional[str]) -> str:
    from ..targets import NPU_GENERATION, PLATFORMS

    chips = metadata.get("target_platform") or []
    chosen = (target or (chips[0] if chips else "")).lower()
    if chosen not in NPU_GENERATION:
        raise NotSupportedError(f"target {chosen!r} is not a known chip; allowed: {', '.join(PLATFORMS)}")
    if chips and NPU_GENERATION[chosen] != NPU_GENERATION[chips[0]]:
        raise NotSupportedError(f"the model was built for {', '.join(chips)} ({NPU_GENERATION[chips[0]].upper()}) "
                                f"but --target {chosen} is {NPU_GENERATION[chosen].upper()}; rebuild it for "
                                f"{chosen} with openrknn first (config(target_platform='{chosen}'))")
    return chosen


def _config(vm: VendorModel, metadata: dict, toolkit: str, target: str) -> Dict[str, object]:
    cfg: Dict[str, object] = {"mean_values": vm.mean_values, "std_values": vm.std_values,
                              "target_platform": target if toolkit == "rknn-toolkit2" else [target]}
    build = metadata.get("build") or {}
    if toolkit == "rknn-toolkit2":
        cfg["quant_img_RGB2BGR"] = bool(build.get("quant_img_RGB2BGR", False))
        cfg["quantized_dtype"] = "w8a8"
        cfg["quantized_method"] = build.get("quantized_method") or "channel"
        # its rewrite of Concat -> Conv into one partial conv per concat input adds int8 partial sums our graph does
        # not have (openrknn's concat of range-split parts is one tensor on one grid, read by one conv)
        cfg["disable_rules"] = ["fuse_concat_conv"]
    else:  # rknn-toolkit 1.x: its own names; the reorder stays in our graph, so none here
        cfg["quantized_dtype"] = build.get("quantized_dtype") or "asymmetric_quantized-u8"
        cfg["reorder_channel"] = " ".join(str(i) for i in range(len(vm.mean_values[0])))
    return cfg


def read_samples(samples: Sequence[PathLike], metadata: dict) -> List[tuple]:
    """[(stem, [array per input])] from a dataset.txt or image / .npy files, decoded as the package's build did."""
    from ..quant.dataset import InputSpec, read_dataset
    from ..runtime.feeds import graph_dtype

    specs = [InputSpec(i["name"], tuple(i["shape"]), graph_dtype(i)) for i in metadata["inputs"]]
    rgb2bgr = bool((metadata.get("build") or {}).get("quant_img_RGB2BGR", False))
    paths = [Path(s) for s in samples]
    if len(paths) == 1 and paths[0].suffix.lower() == ".txt":
        ds_path, tmp = paths[0], None
    else:
        bad = [str(p) for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES + (".npy",)]
        if bad:
            raise PackageError(f"--validate takes one dataset.txt or image/.npy files; {bad[0]!r} is neither")
        tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        tmp.write("\n".join(str(p.absolute()) for p in paths) + "\n")
        tmp.close()
        ds_path = Path(tmp.name)
    try:
        data = read_dataset(ds_path, specs, rgb2bgr=rgb2bgr)
        out = []
        used: Dict[str, int] = {}
        for k, entry_paths in enumerate(data.paths):
            feeds = data.sample(k)
            stem = entry_paths[0].stem
            used[stem] = used.get(stem, 0) + 1
            if used[stem] > 1:
                stem = f"{stem}-{used[stem]}"
            out.append((stem, [_as_fed(feeds[s.name], s.shape) for s in specs]))
        return out
    finally:
        if tmp is not None:
            os.unlink(tmp.name)


def _as_fed(a: np.ndarray, shape: tuple) -> np.ndarray:
    """Pixels (whole numbers in 0..255: an image, a uint8 .npy) as the uint8 a board is fed; any other values (a
    float feature, a diffusion model's noise level) as float32: rounded to bytes they would be other inputs (a noise
    level of 0.3 became 0, whose log is -inf)."""
    a = np.asarray(a).reshape(shape)
    if np.all((a >= 0) & (a <= 255) & (a == np.round(a))):
        return a.astype(np.uint8)
    return a.astype(np.float32)


def _write_calibration(samples: List[tuple], folder: Path, rgb2bgr: bool) -> str:
    """The vendor's dataset.txt: 3-channel pixel inputs as PNG (lossless; it decodes images with OpenCV and turns
    them to RGB unless quant_img_RGB2BGR, so the file holds the channels it will hand back in our feed order), others
    as NCHW .npy (the layout it asks of .npy calibration files)."""
    import cv2

    lines = []
    for k, (_stem, arrays) in enumerate(samples):
        names = []
        for i, a in enumerate(arrays):
            if a.ndim == 4 and a.shape[3] == 3 and a.dtype == np.uint8:
                p = folder / f"calib_{k}_{i}.png"
                cv2.imwrite(str(p), np.ascontiguousarray(a[0] if rgb2bgr else a[0, :, :, ::-1]))
            else:
                p = folder / f"calib_{k}_{i}.npy"
                np.save(p, np.transpose(a, (0, 3, 1, 2)) if a.ndim == 4 else a)
            names.append(p.name)
        lines.append(" ".join(names))
    (folder / "dataset.txt").write_text("\n".join(lines) + "\n")
    return "dataset.txt"


def _run_runner(vp: VendorPython, job: VendorJob, work: Path, timeout: float) -> dict:
    (work / "job.json").write_text(job.to_json())
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # never let our packages (or their numpy) into the vendor's interpreter
    cmd = [vp.python, str(RUNNER), str(work / "job.json")]
    log.info("vendor: %s %s (%s) compiling through route %r", vp.toolkit, vp.version, vp.python, job.route)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(work))
    except subprocess.TimeoutExpired as e:
        raise VendorToolkitError(f"the vendor toolkit ran over {timeout:.0f} s on this model and was stopped") from e
    (work / "vendor.log").write_text(proc.stdout + proc.stderr)
    result_path = work / job.result
    if not result_path.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        signal = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        raise VendorToolkitError(f"the vendor toolkit process died{signal} with exit code {proc.returncode} before "
                                 f"reporting; its last lines:\n{tail}")
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        said = _vendor_errors(proc.stdout + proc.stderr)
        raise VendorToolkitError(f"the vendor toolkit failed at {result.get('step')}: {result.get('error')}"
                                 + (f"; the vendor said: {said}" if said else ""))
    result["layers"] = layer_table(proc.stdout + proc.stderr)
    return result


LAYER_LINE = re.compile(r"^D RKNN: \[[0-9:.]+\]\s+(\d+)\s+([A-Za-z][A-Za-z0-9_]*)\s+(INT4|INT8|UINT8|INT16|INT32|"
                        r"FLOAT16|FLOAT32|FLOAT|BFLOAT16)\s+(NPU|CPU)\s.*\s(\S+:\S+)\s*$")


def layer_table(text: str) -> List[dict]:
    """The compiled layer table the vendor's compiler prints in verbose mode: [{id, op, dtype, target, name}] (name:
    its FullName, 'OpType:node name'); [] when the text has none (a toolkit that prints another format)."""
    rows, seen = [], set()
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        m = LAYER_LINE.match(line.rstrip())
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            rows.append({"id": int(m.group(1)), "op": m.group(2), "dtype": m.group(3), "target": m.group(4),
                         "name": m.group(5)})
    return rows


def _vendor_errors(text: str) -> str:
    """The vendor's own error lines ('E step: message', colour codes removed), the last three."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.strip() for ln in plain.splitlines() if re.match(r"^E \w", ln.strip())
             and "rknn-toolkit" not in ln and "Traceback" not in ln]
    return " | ".join(lines[-3:])


def export_vendor(package_or_path, out: PathLike, target: Optional[str] = None,
                  validate: Optional[Sequence[PathLike]] = None, validate_out: Optional[PathLike] = None,
                  route: str = "auto", dataset: Optional[PathLike] = None, vendor: Optional[VendorPython] = None,
                  timeout: float = 3600.0, keep_work: Optional[PathLike] = None, shape_set=None,
                  layers: bool = False) -> VendorExport:
    """Compile an openrknn package (object or .rknn path) into a vendor .rknn at `out`.

    route: 'qdq' (the vendor compiles our QDQ graph, with our int8 quantizer on every pre-activation), 'ranges' (the
    vendor quantizes our rewritten float graph with our weight integers, our ranges for every tensor of its cfg and
    our hybrid's 16-bit layers), 'auto' (ranges, then qdq if that fails; qdq alone without calibration samples).
    dataset: calibration samples for the tensors the vendor quantizes and the package does not (default: the
    validation samples, else the package's build dataset). validate: samples (one dataset.txt or
    image / .npy files) run on the vendor simulator right after compiling and compared with openrknn's simulator.
    keep_work: a folder that keeps each route's job, vendor files and log (<keep_work>/<route>/), for a closer look
    at what the vendor did; by default they go to a temporary folder that is removed. shape_set: a dynamic_input
    model's set to compile (its label such as '1x3x240x320', or its index; default: the largest). layers: also run
    the vendor's accuracy_analysis on the first validation sample and compare every tensor it dumps with openrknn's,
    layer by layer (vendor/layers.py; written to OUT.layers.json, summed up in ``validation["layers"]``)."""
    from ..package import RknnPackage, read_package
    from ..runtime.shape_sets import base_set_only, package_of_set

    if route not in ROUTES:
        raise NotSupportedError(f"route {route!r} is not one of {', '.join(ROUTES)}")
    pkg = package_or_path if isinstance(package_or_path, RknnPackage) else read_package(package_or_path)
    note = base_set_only(pkg.metadata, "the vendor .rknn", "shape_set= (--shape-set) compiles another")
    if shape_set is not None:
        pkg = package_of_set(pkg, shape_set)
    elif note:
        log.warning("vendor-export: %s", note)
    meta = pkg.metadata
    branch = _host_branch(pkg)
    if branch:
        log.warning("vendor-export: %s", branch)
    chip = _target(meta, target)
    from ..targets import NPU_GENERATION

    toolkit = TOOLKIT_FOR[NPU_GENERATION[chip]]
    if layers and not validate:
        raise PackageError("layers=True (--layers) compares the vendor's tensors on a validation sample: give one "
                           "with validate= (--validate IMAGE)")
    if layers and toolkit != "rknn-toolkit2":
        raise NotSupportedError(f"--layers reads rknn-toolkit2's accuracy_analysis dumps; {chip} compiles with "
                                f"{toolkit}")
    out = Path(out).absolute()
    if out.is_dir():
        raise PackageError(f"cannot write {out}: it is a folder; give a file name such as model.vendor.rknn")
    if not out.parent.is_dir():
        raise PackageError(f"cannot write {out}: the folder {out.parent} does not exist; create it first")
    loops = [n.name or n.output[0] for n in onnx.load_from_string(pkg.model_bytes).graph.node if n.op_type == "Loop"]
    if loops:  # measured on SLANet: it refuses them in build, after minutes of calibration on our side
        raise NotSupportedError(f"rknn-toolkit2 refuses a model with a Loop ({', '.join(loops[:3])}): \"will cause "
                                "the graph to be a dynamic graph! Remove it manually\". Cut the model before the loop "
                                "(load_onnx(..., outputs=[...])) and run the loop on the host")
    vp = vendor or find_vendor_python()
    if vp.toolkit != "unknown" and vp.toolkit != toolkit:
        raise VendorToolkitError(f"{chip} needs {toolkit}, but the vendor Python {vp.python} has {vp.toolkit} "
                                 f"{vp.version}; point OPENRKNN_VENDOR_PYTHON at an interpreter with {toolkit}")
    samples = read_samples(validate, meta) if validate else []
    quantized = bool(meta.get("quantization"))
    t0 = time.time()
    calib = calibration_samples(meta, dataset, samples) if quantized else []
    # auto: ranges first (it carries more: hybrid 16-bit layers, every pre-activation left to the vendor's own
    # full-precision fusion where it has one); qdq when ranges fails or there are no calibration samples
    auto = ["ranges", "qdq"] if calib else ["qdq"]
    routes = ["float"] if not quantized else (auto if route == "auto" else [route])
    extra = _extra_ranges(pkg, calib) if quantized else None
    errors = []
    for r in routes:
        with _work_folder(keep_work, r) as tmp:
            work = Path(tmp)
            try:
                exp = _attempt(pkg, r, chip, toolkit, vp, work, out, samples, validate_out, calib, extra, timeout,
                               layers)
            except (VendorToolkitError, NotSupportedError) as e:
                if r == routes[-1]:
                    if errors:
                        raise VendorToolkitError("; then ".join(errors + [f"route {r!r}: {e}"])) from e
                    raise
                log.warning("vendor route %r failed (%s); trying %r", r, str(e).splitlines()[0],
                            routes[routes.index(r) + 1])
                errors.append(f"route {r!r}: {str(e).splitlines()[0]}")
                continue
        exp.seconds = time.time() - t0
        if errors:
            exp.notes.insert(0, "; ".join(errors))
        if branch:
            exp.notes.insert(0, branch)
        return exp
    raise AssertionError("unreachable")


def _host_branch(pkg) -> str:
    """What to tell a user whose package computes a conditioning branch on the host in float (quant/plan.py
    host_conditioning: a diffusion model's noise-level embedding), which the vendor file cannot do: rknn-toolkit2
    compiles the whole graph and quantizes that branch like the rest."""
    from ..analysis.graph_info import analyze
    from ..analysis.perf import host_head

    if not pkg.metadata.get("quantization"):
        return ""
    gi = analyze(onnx.load_from_string(pkg.model_bytes), None)
    layers = [gi.layers[i].name for i in sorted(host_head(gi))]
    if not layers:
        return ""
    return (f"{len(layers)} layer(s) computed in float from small inputs ({', '.join(layers[:4])}"
            f"{', ...' if len(layers) > 4 else ''}) run quantized in the vendor file: rknn-toolkit2 quantizes the "
            "branch openrknn keeps on the host (an int8 Sin or Log input can be several radians or decades a step), "
            "so its outputs may part from openrknn's (validate=... measures how far). To keep it float there, "
            "compute the branch before the model and feed its results (load_onnx(..., inputs=[...]) at the tensors "
            "it hands over)")


@contextlib.contextmanager
def _work_folder(keep: Optional[PathLike], route: str):
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="openrknn-vendor-") as tmp:
            yield tmp
        return
    folder = Path(keep) / route
    if folder.exists() and any(folder.iterdir()):
        raise PackageError(f"keep_work folder {folder} is not empty; give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    yield str(folder)


def calibration_samples(meta: dict, dataset: Optional[PathLike], samples: List[tuple]) -> List[tuple]:
    """Samples for the tensors only the vendor quantizes: `dataset`, else the validation samples, else the package's
    own build dataset when it still exists."""
    if dataset:
        return read_samples([dataset], meta)
    if samples:
        return samples
    build_ds = (meta.get("build") or {}).get("dataset")
    if build_ds and Path(build_ds).is_file():
        return read_samples([build_ds], meta)
    return []


def _extra_ranges(pkg, calib: List[tuple]) -> Optional[dict]:
    from .extra_ranges import compute
    from .prepare import activation_ranges

    if not calib:
        return None
    ours, _ = activation_ranges(onnx.load_from_string(pkg.model_bytes))
    return compute(pkg, calib, skip=list(ours)).ranges


def _wide_layers(vm: VendorModel, layers: List[dict]) -> Dict[str, str]:
    """For each tensor our hybrid kept out of int8: the dtype of the compiled vendor layer that produces it ('' when
    the layer table does not name it). The vendor names a layer after the node it came from, with a suffix when it
    rewrote the node (a SiLU's Mul becomes 'Mul_5_2exswish'); an activation it fused into the conv before it is
    found under that conv's name."""
    g = vm.onnx_model.graph
    prod = {o: n for n in g.node for o in n.output}
    names = [(row["name"].split(":", 1)[1], row["dtype"]) for row in layers if ":" in row["name"]]

    def dtype_of(node: onnx.NodeProto) -> str:
        exact = [d for n, d in names if n == node.name]
        return (exact or [d for n, d in names if n.startswith(node.name + "_")] or [""])[0]

    fused = ("Sigmoid", "Mul", "Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "PRelu")
    out = {}
    for t in vm.wide_tensors:
        dtype, stack, seen = "", [t], set()
        while stack and not dtype:
            n = prod.get(stack.pop())
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            dtype = dtype_of(n)
            if not dtype and n.op_type in fused:
                stack.extend(n.input)
        out[t] = dtype
    return out


def _attempt(pkg, route: str, chip: str, toolkit: str, vp: VendorPython, work: Path, out: Path, samples, validate_out,
             calib: List[tuple], extra: Optional[dict], timeout: float, layers: bool = False) -> VendorExport:
    meta = pkg.metadata
    vm = prepare(pkg, "qdq" if route == "float" else route, extra)
    onnx.save(vm.onnx_model, str(work / "model.onnx"))
    ds = None
    if route == "ranges":
        if not calib:
            raise NotSupportedError("route 'ranges' needs samples for the tensors only the vendor quantizes (e.g. a "
                                    "conv output before its activation): pass --validate or --dataset images")
        # step 1 only has to run: every tensor of its cfg gets a range from us (result["cfg_not_ours"] lists any
        # that does not), so a few samples keep it short
        ds = _write_calibration(calib[:STEP1_SAMPLES], work, bool((meta.get("build") or {}).get("quant_img_RGB2BGR")))
    val_spec = None
    if samples:
        files = []
        for k, (_stem, arrays) in enumerate(samples):
            row = []
            for i, a in enumerate(arrays):
                p = work / f"val_{k}_{i}.npy"
                np.save(p, a)
                row.append(p.name)
            files.append(row)
        val_spec = ValidateSpec(files, [s for s, _ in samples], "vendor_outputs")
    dump = None
    if layers and route == "qdq":  # measured: "The QAT model need set 'target'!"
        vm.notes.append("--layers: rknn-toolkit2's accuracy_analysis simulates a QDQ model (route 'qdq') only on a "
                        "board, so there is no layer-by-layer comparison on this route")
    elif layers:  # accuracy_analysis reads .npy inputs in the model's NCHW layout, as float
        names = []
        for i, a in enumerate(samples[0][1]):
            np.save(work / f"dump_in_{i}.npy", (a.transpose(0, 3, 1, 2) if a.ndim == 4 else a).astype(np.float32))
            names.append(f"dump_in_{i}.npy")
        dump = {"inputs": names, "out_dir": "tensor_dumps"}
    job = VendorJob(toolkit=toolkit, route=route, model="model.onnx", config=_config(vm, meta, toolkit, chip),
                    inputs=vm.input_names, outputs=vm.outputs,
                    input_size_list=[list(s) if toolkit == "rknn-toolkit2" else list(s[1:]) for s in vm.input_shapes],
                    export="vendor.rknn", dataset=ds, ranges={k: list(v) for k, v in vm.ranges.items()},
                    custom_layers=vm.wide_tensors, weight_scales=vm.weight_scales, validate=val_spec,
                    dump_tensors=dump)
    try:
        result = _run_runner(vp, job, work, timeout)
    except VendorToolkitError as e:
        if not vm.unranged:
            raise
        # left float, those inputs become float16 layers the vendor may refuse ("Invalid w_par['dtype'] = float16")
        build_ds = (meta.get("build") or {}).get("dataset")
        raise VendorToolkitError(
            f"{e}\n{vm.unranged} SiLU input(s) (conv outputs before x * sigmoid(x)) have no range: the package does "
            "not quantize them and no calibration samples were given to measure them. Give the build's calibration "
            f"samples with --dataset FILE{f' (this model was built with {build_ds!r})' if build_ds else ''} "
            "(export_vendor(..., dataset=FILE)) or --validate IMAGES") from e
    folded = result.get("custom_folded") or []
    if folded:
        vm.notes.append(f"{len(folded)} tensor(s) our hybrid kept out of int8 are constants the vendor folded away "
                        f"({', '.join(folded[:3])}): no layer computes them")
    kept = set(result.get("custom_layers") or []) | set(folded)
    lost = [t for t in vm.wide_tensors if t not in kept]
    if lost:
        raise NotSupportedError(f"{len(lost)} tensor(s) our hybrid kept out of int8 have no layer of that name in "
                                f"the vendor's .quantization.cfg ({', '.join(lost[:3])}); they would be 8-bit in the "
                                "vendor file")
    wide = _wide_layers(vm, result.get("layers") or []) if vm.wide_tensors else {}
    wide.update({t: "folded" for t in folded})
    narrow = [t for t, d in wide.items() if d and not d.endswith("16") and d != "folded"]
    if narrow:
        raise NotSupportedError(f"{len(narrow)} tensor(s) our hybrid kept out of int8 were compiled into 8-bit vendor "
                                f"layers ({', '.join(f'{t}: {wide[t]}' for t in narrow[:3])})")
    post_path = None
    if vm.post is not None:
        post_path = str(out) + ".post.onnx"
        write_bytes_atomic(post_path, vm.post.SerializeToString())
    else:  # a tail left by an earlier export to the same name would be picked up with this model
        Path(str(out) + ".post.onnx").unlink(missing_ok=True)
    write_bytes_atomic(out, (work / "vendor.rknn").read_bytes())
    exp = VendorExport(str(out), post_path, route, f"{vp.toolkit} {vp.version}", 0.0, result, vm.notes)
    exp.carried = _carried(vm, result, wide)
    if samples:
        exp.validation = _compare(pkg, vm, samples, work / "vendor_outputs", result, Path(validate_out or
                                  out.with_name(out.stem + "_validation")))
        report = {"model": str(out), "route": route, "toolkit": exp.toolkit, "carried": exp.carried,
                  **exp.validation}
        if dump:
            exp.validation["layers"] = _compare_layers(pkg, samples[0][1], work / "tensor_dumps",
                                                       str(out) + ".layers.json")
            report["layers"] = exp.validation["layers"]
        write_text_atomic(str(out) + ".validation.json", json.dumps(report, indent=1))
        exp.validation["json"] = str(out) + ".validation.json"
    return exp


def _carried(vm: VendorModel, result: dict, wide: Dict[str, str]) -> dict:
    """What reached the vendor: the counts a user (and the bench) reads to see what carried over."""
    layers = result.get("layers") or []
    dtypes: Dict[str, int] = {}
    for row in layers:
        dtypes[row["dtype"]] = dtypes.get(row["dtype"], 0) + 1
    out = {"package_ranges": vm.ours, "openrknn_extra_ranges": len(vm.ranges) - vm.ours,
           "preactivations_quantized": vm.preactivations, "layer_dtypes": dtypes, "wide_layers": wide}
    if "cfg_tensors" in result:
        out.update(cfg_tensors=result["cfg_tensors"], cfg_ours=result.get("cfg_edited", 0),
                   cfg_vendor_only=result.get("cfg_not_ours") or [])
    if vm.weight_scales:
        out.update(weights=len(vm.weight_scales), weights_pinned=result.get("weights_pinned", 0))
    return out


def run_post(post: Optional[onnx.ModelProto], names: List[str], arrays: List[np.ndarray]) -> List[np.ndarray]:
    """Vendor outputs -> the package's outputs (the float tail on the host; identity when there is none)."""
    if post is None:
        return list(arrays)
    from ..runtime.simulator import make_session

    sess = make_session(post.SerializeToString())
    return sess.run(None, {n: np.asarray(a, np.float32) for n, a in zip(names, arrays)})


def _compare(pkg, vm: VendorModel, samples, raw_dir: Path, result: dict, out_dir: Path) -> dict:
    from ..runtime.simulator import Simulator

    out_dir.mkdir(parents=True, exist_ok=True)
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    names = [o["name"] for o in pkg.metadata["outputs"]]
    per_output = [[] for _ in names]
    files = []
    try:
        for (stem, arrays), vendor_files in zip(samples, result["outputs"]):
            raw = [np.load(raw_dir / Path(f).name) for f in vendor_files]
            if len(raw) != len(vm.outputs):
                raise VendorToolkitError(f"the vendor simulator returned {len(raw)} outputs for {stem}, the model "
                                         f"has {len(vm.outputs)}")
            final = run_post(vm.post, vm.outputs, raw)
            ours = sim.run(arrays)
            for k, (v, o) in enumerate(zip(final, ours)):
                v = np.asarray(v, np.float32).reshape(np.shape(o))
                per_output[k].append(_cos(v, o))
                path = out_dir / f"{stem}_{k}.npy"
                write_bytes_atomic(path, _npy_bytes(v))
                files.append(str(path))
    finally:
        sim.release()
    outputs = [{"name": n, "cosine_mean": float(np.mean(c)), "cosine_min": float(np.min(c))}
               for n, c in zip(names, per_output)]
    return {"samples": len(samples), "outputs": outputs, "files": files, "out_dir": str(out_dir)}


def _compare_layers(pkg, arrays: List[np.ndarray], dump_dir: Path, json_path: str) -> dict:
    """vendor/layers.py on the sample the vendor's dumps were made from; the full table goes to ``json_path``, its
    summary is returned."""
    from ..runtime.feeds import prepare_feeds
    from .layers import compare_layers, summary

    m = onnx.load_from_string(pkg.model_bytes)
    inits = {t.name for t in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    report = compare_layers(pkg.model_bytes, dict(zip(names, prepare_feeds(arrays, pkg.metadata["inputs"]))),
                            dump_dir)
    write_text_atomic(json_path, json.dumps(report, indent=1))
    return {**summary(report), "json": json_path}


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
