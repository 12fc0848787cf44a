"""Runs INSIDE the vendor toolkit's own Python: `python runner.py JOB_DIR/job.json`. Never imported by openrknn.

It must run on every Python the vendor toolkits need (rknn-toolkit 1.7.x: 3.6-3.8; rknn-toolkit2: 3.6-3.12), so it
uses the standard library, numpy and the vendor's `rknn.api` only, and no syntax newer than Python 3.6. It reads the
job (openrknn/vendor/job.py documents the fields), drives the vendor API and always writes the result JSON: ok,
toolkit version, per-step seconds, and on failure the step and the vendor's message.
"""

import glob
import json
import os
import sys
import time
import traceback


class StepFailed(Exception):
    pass


def _call(result, step, fn, *args, **kwargs):
    t = time.time()
    ret = fn(*args, **kwargs)
    result["seconds"][step] = round(time.time() - t, 3)
    if ret is not None and ret != 0 and not isinstance(ret, (list, tuple)):
        raise StepFailed("%s returned %r (the vendor's own messages say why)" % (step, ret))
    return ret


def _toolkit_version():
    try:
        from importlib import metadata  # Python 3.8+
    except ImportError:
        metadata = None
    for dist in ("rknn-toolkit2", "rknn_toolkit2", "rknn-toolkit", "rknn_toolkit"):
        try:
            if metadata is not None:
                return dist.replace("_", "-") + " " + metadata.version(dist)
            import pkg_resources
            return dist.replace("_", "-") + " " + pkg_resources.get_distribution(dist).version
        except Exception:
            continue
    return "unknown"


def _edit_cfg(cfg_path, out_path, ranges, float16_layers, result):
    """Set min/max of every tensor we have a range for; keep the layers we keep wide in 16 bits."""
    try:
        from ruamel.yaml import YAML
        yaml = YAML()
        with open(cfg_path) as f:
            cfg = yaml.load(f)
    except ImportError:  # rknn-toolkit 1.x ships PyYAML
        import yaml as pyyaml
        yaml = None
        with open(cfg_path) as f:
            cfg = pyyaml.safe_load(f)
    params = cfg.get("quantize_parameters") or {}
    edited = 0
    for name, p in params.items():
        if name in ranges and isinstance(p, dict) and "min" in p and "max" in p:
            lo, hi = ranges[name]
            p["min"] = [float(lo)]
            p["max"] = [float(hi)]
            edited += 1
    layers = cfg.get("custom_quantize_layers") or {}
    wide = []
    for name in float16_layers:
        if name in params:
            layers[name] = "float16"
            wide.append(name)
    cfg["custom_quantize_layers"] = layers
    result["cfg_tensors"] = len(params)
    result["cfg_edited"] = edited
    result["cfg_not_ours"] = sorted(n for n in params if n not in ranges)[:200]
    result["float16_layers"] = wide
    with open(out_path, "w") as f:
        if yaml is not None:
            yaml.dump(cfg, f)
        else:
            pyyaml.safe_dump(cfg, f)


def _step1_files(work):
    cfgs = sorted(glob.glob(os.path.join(work, "*.quantization.cfg")))
    if not cfgs:
        raise StepFailed("hybrid_quantization_step1 wrote no .quantization.cfg in %s" % work)
    stem = cfgs[0][: -len(".quantization.cfg")]
    model = next((stem + s for s in (".model", ".json") if os.path.exists(stem + s)), None)
    if model is None or not os.path.exists(stem + ".data"):
        raise StepFailed("hybrid_quantization_step1 did not write %s.model/.json and .data" % stem)
    return cfgs[0], model, stem + ".data"


def run(job, work):
    result = {"ok": False, "python": sys.version.split()[0], "toolkit_version": _toolkit_version(), "seconds": {},
              "step": None, "outputs": []}
    try:
        from rknn.api import RKNN
        v2 = job["toolkit"] == "rknn-toolkit2"
        rknn = RKNN(verbose=bool(os.environ.get("OPENRKNN_VENDOR_VERBOSE")))
        result["step"] = "config"
        _call(result, "config", rknn.config, **job["config"])
        result["step"] = "load_onnx"
        _call(result, "load_onnx", rknn.load_onnx, model=job["model"], inputs=job["inputs"],
              input_size_list=job["input_size_list"], outputs=job["outputs"])
        if job["route"] == "ranges":
            result["step"] = "hybrid_quantization_step1"
            _call(result, "hybrid_quantization_step1", rknn.hybrid_quantization_step1, dataset=job["dataset"])
            cfg, model_file, data_file = _step1_files(work)
            edited = cfg[: -len(".quantization.cfg")] + ".openrknn.quantization.cfg"
            _edit_cfg(cfg, edited, job["ranges"], job["float16_layers"], result)
            # step 2 must start from a fresh object (the vendor refuses a loaded model there)
            rknn.release()
            rknn = RKNN(verbose=bool(os.environ.get("OPENRKNN_VENDOR_VERBOSE")))
            _call(result, "config", rknn.config, **job["config"])
            result["step"] = "hybrid_quantization_step2"
            kwargs = dict(model_input=model_file, data_input=data_file, model_quantization_cfg=edited)
            if not v2:
                kwargs["dataset"] = job["dataset"]
            _call(result, "hybrid_quantization_step2", rknn.hybrid_quantization_step2, **kwargs)
        else:
            result["step"] = "build"
            _call(result, "build", rknn.build, do_quantization=False)
        result["step"] = "export_rknn"
        _call(result, "export_rknn", rknn.export_rknn, job["export"])
        val = job.get("validate")
        if val:
            import numpy as np
            result["step"] = "init_runtime"
            _call(result, "init_runtime", rknn.init_runtime)
            result["step"] = "inference"
            if not os.path.isdir(val["out_dir"]):
                os.makedirs(val["out_dir"])
            t = time.time()
            for files, stem in zip(val["inputs"], val["stems"]):
                arrays = [np.load(p) for p in files]
                outs = rknn.inference(inputs=arrays, data_format="nhwc")
                if outs is None:
                    raise StepFailed("inference returned None for %s" % stem)
                names = []
                for k, a in enumerate(outs):
                    path = os.path.join(val["out_dir"], "%s_%d.npy" % (stem, k))
                    np.save(path, np.asarray(a, dtype=np.float32))
                    names.append(path)
                result["outputs"].append(names)
            result["seconds"]["inference"] = round(time.time() - t, 3)
        rknn.release()
        result["ok"] = True
        result["step"] = None
    except Exception as e:  # reported to openrknn through the result file, which says what failed where
        result["error"] = "%s: %s" % (type(e).__name__, e)
        result["traceback"] = traceback.format_exc()[-4000:]
    return result


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: runner.py JOB.json\n")
        return 2
    job_path = os.path.abspath(argv[1])
    work = os.path.dirname(job_path)
    with open(job_path) as f:
        job = json.load(f)
    os.chdir(work)  # hybrid_quantization_step1 writes into the current folder
    result = run(job, work)
    tmp = os.path.join(work, job["result"] + ".tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, os.path.join(work, job["result"]))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
