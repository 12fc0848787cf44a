"""rknn-toolkit2 side of bench/corpus.py: runs INSIDE the vendor's virtualenv, never imports openrknn.

Reads one JSON job (argv[1]), builds the model with rknn-toolkit2 through its public API, runs its simulator on the
evaluation feeds (one .npy each, or a list of them for a model of several inputs: job["input_names"] and
job["shapes"]) and writes the outputs to job["out"] (.npz, one array per feed and output: f{i}_o{k}) plus a JSON
status next to it. Each failing step is recorded as "fails in <step>: <message>", not raised.
"""

import json
import resource
import sys
import time
import traceback

import numpy as np


def _setting(value) -> np.ndarray:
    """A fixed input's value as the vendor checks it: int64 for integers (an image size), float32 otherwise."""
    a = np.asarray(value)
    return a.astype(np.int64 if a.dtype.kind in "iu" else np.float32)


def main(job_path):
    job = json.load(open(job_path))
    status = {"ok": False}
    t0 = time.time()
    try:
        from rknn.api import RKNN

        rknn = RKNN(verbose=False)
        cfg = dict(target_platform=job["platform"], quantized_dtype=job["dtype"],
                   quantized_algorithm=job["algorithm"])
        if job.get("mean") is not None:
            cfg.update(mean_values=[job["mean"]], std_values=[job["std"]])
        elif job.get("means") is not None:  # one list per input, for a model of several inputs
            cfg.update(mean_values=job["means"], std_values=job["stds"])
        if job.get("disable_rules"):
            cfg.update(disable_rules=job["disable_rules"])
        if job.get("dynamic_input"):  # its shape sets; the model is then loaded without input_size_list
            cfg.update(dynamic_input=job["dynamic_input"])
        step = "config"
        rc = rknn.config(**cfg)
        if rc not in (0, None):
            raise RuntimeError(f"fails in config: rc={rc}")
        if job.get("loader") == "tflite":  # a .tflite; one quantized in the file is built without requantizing
            step = "load_tflite"
            rc = rknn.load_tflite(job["model"])
        elif job.get("loader") == "pytorch":  # a traced .pt at job["shape"] (with dynamic_input: the largest set)
            step = "load_pytorch"
            rc = rknn.load_pytorch(job["model"], input_size_list=[job["shape"]])
        elif job.get("loader") == "caffe":  # a .prototxt with its .caffemodel as job["blobs"]
            step = "load_caffe"
            rc = rknn.load_caffe(job["model"], blobs=job["blobs"])
        else:
            step = "load_onnx"
            # one input (input_name, shape) or several (input_names, shapes; each feed then a list of .npy files)
            names = job.get("input_names") or [job.get("input_name")]
            shapes = job.get("shapes") or [job.get("shape")]
            fixed = job.get("input_initial_val")  # settings fixed to constants: a list of values or nulls
            if job.get("dynamic_input"):  # loaded as it is; the sets give the shapes
                names = shapes = None
            rc = rknn.load_onnx(job["model"], inputs=names, input_size_list=shapes,
                                **({"outputs": job["outputs"]} if job.get("outputs") else {}),
                                **({"input_initial_val": [None if v is None else _setting(v) for v in fixed]}
                                   if fixed else {}))
        if rc != 0:
            raise RuntimeError(f"fails in {step}: rc={rc}")
        step = "build"
        tb = time.time()
        rc = rknn.build(do_quantization=job.get("do_quantization", True), dataset=job["dataset"])
        status["build_s"] = time.time() - tb
        if rc != 0:
            raise RuntimeError(f"fails in build: rc={rc}")
        step = "init_runtime"
        if rknn.init_runtime() != 0:
            raise RuntimeError("fails in init_runtime")
        step = "inference"
        arrays = {}
        for i, feed in enumerate(job["feeds"]):
            files = feed if isinstance(feed, list) else [feed]
            outs = rknn.inference(inputs=[np.load(f) for f in files], data_format=job.get("data_format", "nhwc"))
            if outs is None:
                raise RuntimeError("fails in inference: returned None")
            for k, o in enumerate(outs):
                arrays[f"f{i}_o{k}"] = np.asarray(o)
        np.savez(job["out"], **arrays)
        status["ok"] = True
        rknn.release()
    except Exception as e:  # recorded, not raised: the bench table shows it
        msg = str(e)
        if not msg.startswith("fails in"):
            msg = f"fails in {locals().get('step', 'import')}: {type(e).__name__}: {msg}"
        status["error"] = msg[:400]
        status["trace"] = traceback.format_exc()[-2000:]
    status["total_s"] = time.time() - t0
    status["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(status, open(job["out"] + ".json", "w"))


if __name__ == "__main__":
    main(sys.argv[1])
