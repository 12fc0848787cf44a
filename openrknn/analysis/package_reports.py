"""Reports on a built or loaded package (eval_perf, eval_memory, check, accuracy_analysis): which model, target,
dtype and inputs each analysis uses."""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np
import onnx

from ..package import RknnPackage

log = logging.getLogger("openrknn.analysis")


def model_facts(pkg: RknnPackage, target: Optional[str] = None):
    """(model proto, target chip, quantized dtype or None) for a built or loaded package."""
    meta = pkg.metadata
    quant = meta.get("quantization") or None
    return onnx.load_from_string(pkg.model_bytes), (target or meta["target_platform"][0]), (quant or {}).get("dtype")


def sample_inputs(metas: List[dict], seed: int = 0) -> List[np.ndarray]:
    """Random inputs of the deployed shapes (speed and memory do not depend on the values)."""
    rng = np.random.default_rng(seed)
    out = []
    for m in metas:
        if m["layout"] == "nhwc":
            out.append(rng.integers(0, 256, m["shape"], dtype=np.uint8))
        else:
            out.append(rng.standard_normal(m["shape"]).astype(np.dtype(m["dtype"])))
    return out


def _feeds(pkg: RknnPackage, inputs) -> dict:
    from ..runtime.feeds import prepare_feeds

    metas = pkg.metadata["inputs"]
    arrays = prepare_feeds(inputs if inputs is not None else sample_inputs(metas), metas)
    batch = int(pkg.metadata.get("build", {}).get("rknn_batch_size") or 1)
    # the graph runs one frame of an rknn_batch_size=N model at a time; analyse that frame
    return {m["name"]: np.split(a, batch)[0] for m, a in zip(metas, arrays)}


def host_rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _base_set_note(pkg: RknnPackage, what: str, then: str) -> None:
    from ..runtime.shape_sets import base_set_only

    note = base_set_only(pkg.metadata, what, then)
    if note:
        log.info("%s", note)


def eval_perf(pkg: RknnPackage, runtime, inputs, perf_debug: bool, is_print: bool, target: Optional[str] = None,
              runs: int = 10, show_parts: bool = False) -> dict:
    """eval_perf's report. With perf_debug, "layers" (the built graph's nodes, each with its user "layer") and
    "user_layers" (the user's layers, parts folded in: what the table prints; show_parts lists the parts too).
    runtime None: the estimate alone (no host measurement)."""
    from .layer_names import package_layer_names
    from .perf import eval_perf_report, format_perf_report, user_layer_rows

    sets_of = pkg
    if inputs is not None:  # a dynamic_input model measured at the set its inputs have
        from ..runtime.shape_sets import package_at

        pkg = package_at(pkg, inputs)
    model, chip, qd = model_facts(pkg, target)
    if pkg is sets_of:
        _base_set_note(pkg, "the per-layer NPU estimate", "every set's total follows the table")
    remote_perf = getattr(runtime, "perf", None)
    if runtime is None or remote_perf is not None:  # a board measures there; the estimate is made here
        report = eval_perf_report(model, None, chip, qd, None, True, is_print=False)
        if remote_perf is not None:
            report["host_measured"] = remote_perf(_feeds(pkg, inputs))
    else:
        # per-layer host times from onnxruntime's profiler; the total as every command reports an inference time:
        # the user's own runtime, warm, median (openrknn.timing; the profiler's overhead left out)
        report = eval_perf_report(model, pkg.model_bytes, chip, qd, _feeds(pkg, inputs), True, False, runs=runs)
        profiled = report["host_measured"]
        report["host_measured"] = {**profiled, "profiled_total_us": profiled["total_us"],
                                   **inference_time(pkg, runtime, inputs, runs)}
    if perf_debug:
        names = package_layer_names(pkg)
        for row in report["layers"]:
            row["layer"] = names.of(row["name"])
        report["user_layers"] = user_layer_rows(report["layers"], names.of, names.op_types)
    else:
        report.pop("layers", None)
    report["shape_sets"] = _shape_set_estimates(sets_of, chip, qd, report["npu_estimate"] if pkg is sets_of else None)
    if is_print:
        print(format_perf_report(report, show_parts))
        for e in report["shape_sets"] or ():
            print(f"  shape set {e['set']}: NPU estimate {e['total_us'] / 1e3:.2f} ms ({e['fps']:.1f} FPS, "
                  f"{e['gmacs']:.3f} GMAC)")
    return report


def _shape_set_estimates(pkg: RknnPackage, chip: str, qd, base_estimate: Optional[dict]) -> Optional[list]:
    """config(dynamic_input=...): the NPU estimate of every shape set (each set's own graph), else None.
    base_estimate: the base set's, already made by the caller."""
    from ..runtime.shape_sets import apply_patch, set_label, shape_sets
    from .perf import eval_perf_report

    sets = shape_sets(pkg.metadata)
    if not sets:
        return None
    out = []
    for k, e in enumerate(sets):
        if k == pkg.metadata["dynamic_input"]["base"] and base_estimate is not None:
            est = base_estimate
        else:
            model = onnx.load_from_string(apply_patch(pkg.model_bytes, e["patch"]))
            est = eval_perf_report(model, None, chip, qd, None, False, is_print=False)["npu_estimate"]
        out.append({"set": set_label(e["shapes"]), "total_us": est["total_us"], "fps": est["fps"],
                    "gmacs": est.get("gmacs", 0.0)})
    return out


def inference_time(pkg: RknnPackage, runtime, inputs, runs: int) -> dict:
    """The host time of one inference through `runtime` (a Simulator), as openrknn.timing defines it: what
    `openrknn detect` reports per frame. Returns {"total_us", "fps", "runs", "warmup", "what"}."""
    from ..timing import WARMUP_RUNS, median_ms, time_runs

    frame = inputs if inputs is not None else sample_inputs(pkg.metadata["inputs"])
    samples = time_runs(lambda: runtime.run(frame), runs)
    ms = median_ms(samples)
    return {"total_us": round(ms * 1e3, 1), "fps": round(1e3 / ms, 2) if ms > 0 else float("inf"), "runs": runs,
            "warmup": WARMUP_RUNS, "what": "simulator inference of one frame (input conversion included), warm, "
            "median"}


def eval_memory(pkg: RknnPackage, runtime, is_print: bool, target: Optional[str] = None) -> dict:
    """eval_memory's report: the NPU-side figures of the package (its inputs as deployed: the NPU reads the fed
    frame) and, apart, the measured memory of the process running it (this host's, or the board's through the
    runtime server). runtime None: no measurement."""
    from .layer_names import package_layer_names
    from .memory import eval_memory_report

    model, chip, qd = model_facts(pkg, target)
    _base_set_note(pkg, "the memory estimate", "the largest, whose buffers serve every set")
    remote_memory = getattr(runtime, "memory", None)
    rss = (remote_memory().get("rss_bytes") if remote_memory is not None else
           host_rss_bytes() if runtime is not None else None)
    report = eval_memory_report(model, chip, qd, False, host_rss_bytes=rss, input_metas=pkg.metadata.get("inputs"))
    report["internal"]["peak_layer"] = package_layer_names(pkg).of(report["internal"]["peak_layer"])
    quant = pkg.metadata.get("quantization")
    if isinstance(quant, dict):  # the record's count, the one `openrknn info` shows
        from ..package_info import quant_counts

        report["weight"]["per_channel_tensors"] = quant_counts(quant.get("tensors") or {})["per_channel_tensors"]
    if is_print:
        from .memory import format_memory_report

        print(format_memory_report(report))
    return report


def check(pkg: RknnPackage, target: Optional[str] = None, calib_count: Optional[int] = None,
          first_layer_cosine: Optional[float] = None, quant_dtype: Optional[str] = None):
    """The design checker on a package, its findings in the user's layer names. quant_dtype: check for another
    dtype than the one built (the .rknn's own by default)."""
    from .layer_names import package_layer_names
    from .lint import check_model

    model, chip, qd = model_facts(pkg, target)
    pre = [(m.get("preprocess") or {}) for m in pkg.metadata["inputs"]]
    means = [p["mean"] for p in pre if p] or None
    stds = [p["std"] for p in pre if p] or None
    return check_model(model, chip, quant_dtype or qd, calib_count=calib_count,
                       first_layer_cosine=first_layer_cosine, mean_values=means, std_values=stds,
                       names=package_layer_names(pkg))


def accuracy_analysis(pkg: RknnPackage, inputs, output_dir: str) -> dict:
    from ..runtime.shape_sets import package_at
    from .accuracy import accuracy_analysis as run_analysis

    if not pkg.metadata.get("quantization"):
        log.warning("accuracy_analysis: the model is not quantized; float vs float will match exactly")
    sample = _one_sample(inputs, pkg)
    pkg = package_at(pkg, sample)  # a dynamic_input model: the graphs of the set the sample has
    float_bytes = pkg.float_model_bytes or pkg.model_bytes
    feeds = [_feeds(pkg, sample)]
    return run_analysis(onnx.load_from_string(float_bytes), onnx.load_from_string(pkg.model_bytes), feeds, output_dir)


def _one_sample(inputs, pkg: RknnPackage) -> list:
    """accuracy_analysis(inputs=...) takes, as the vendor, one entry per model input: an image path, a .npy path or
    an array. Images are decoded like the calibration images (RGB unless built with quant_img_RGB2BGR)."""
    from ..errors import InferenceInputError
    from ..quant.dataset import image_input, nhwc_from_nchw
    from ..runtime.shape_sets import image_sizes

    if isinstance(inputs, (str, os.PathLike)) or isinstance(inputs, np.ndarray):
        inputs = [inputs]
    metas = pkg.metadata["inputs"]
    rgb2bgr = bool(pkg.metadata.get("build", {}).get("quant_img_RGB2BGR"))
    if len(inputs) != len(metas):
        raise InferenceInputError(f"accuracy_analysis: the model has {len(metas)} input(s) but {len(inputs)} were "
                                  "given; pass one image path, .npy path or array per input")
    samples = []
    for j, (item, meta) in enumerate(zip(inputs, metas)):
        if isinstance(item, (str, os.PathLike)):
            path = str(item)
            if path.endswith(".npy"):
                arr = np.load(path, allow_pickle=False)
                nhwc = nhwc_from_nchw(arr, meta["shape"]) if meta.get("layout") == "nhwc" else None
                if nhwc is not None:  # the NCHW .npy rknn-toolkit2's accuracy_analysis asks for
                    log.info("accuracy_analysis: '%s' holds an NCHW %s array; read as such", path, list(arr.shape))
                samples.append(arr if nhwc is None else nhwc)
                continue
            try:  # as the calibration images
                img = image_input(path, meta["shape"], rgb2bgr, image_sizes(pkg.metadata, j))
            except ValueError as e:
                raise InferenceInputError(f"accuracy_analysis: input '{meta['name']}': {e}") from None
            if img is None:
                raise InferenceInputError(f"accuracy_analysis: '{path}' is not a readable image")
            samples.append(img)
        else:
            samples.append(item)
    return samples
