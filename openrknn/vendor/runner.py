"""Runs INSIDE the vendor toolkit's own Python: `python runner.py JOB_DIR/job.json`. Never imported by openrknn.

It must run on every Python the vendor toolkits need (rknn-toolkit 1.7.x: 3.6-3.8; rknn-toolkit2: 3.6-3.12), so it
uses the standard library, numpy and the vendor's `rknn.api` only, and no syntax newer than Python 3.6. It reads the
job (openrknn/vendor/job.py documents the fields), drives the vendor API and always writes the result JSON: ok,
toolkit version, per-step seconds, and on failure the step and the vendor's message.
"""

import glob
import json
import os
import re
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


# suffixes the vendor adds to tensors it derives from one of ours (its int8 copy of an output or input, the parts of
# a max-pool it tiles, the 16-bit copy of a hybrid layer's input): such a tensor gets the range of the one it copies
DERIVED_SUFFIXES = ("_int8", "__int8", "__float16", "_mp")
# ... and the copies its layout rewrites make, data movement only: reshapes ('_rs', '-rs'), transposes ('_sw',
# '_tp') and a channel split of a tensor ('_split', '_split_o1'). Without our range such a copy kept the vendor's own
LAYOUT_COPY = re.compile(r"(?:[-_](?:rs|sw|tp))+$|_split(?:_o\d+)?$")
# our range-split parts X__split0, X__split1, ... merged back into one op over all channels ('X__split0-split'):
# their range when the parts share one (else the vendor's own); left to the vendor, the channel reorder after it was
# moved onto that range (its log: "The (min, max) ... were changed") and PP-OCRv4's recognizer differed by a step
MERGED_PARTS = re.compile(r"^(.+__split)\d+-split$")


def _our_name(name, ranges):
    """The tensor of ours a vendor cfg tensor carries: itself, the one it was derived from (DERIVED_SUFFIXES, a
    LAYOUT_COPY suffix and a '#k' copy number stripped, repeatedly), or for MERGED_PARTS the first part."""
    merged = MERGED_PARTS.match(name)
    if merged and name not in ranges:
        parts = []
        while merged.group(1) + str(len(parts)) in ranges:
            parts.append(merged.group(1) + str(len(parts)))
        same = parts and all(list(ranges[p]) == list(ranges[parts[0]]) for p in parts)
        return parts[0] if same else None
    base = name
    while base not in ranges:
        stripped = base.split("#")[0] if "#" in base else base
        for suffix in DERIVED_SUFFIXES:
            if stripped.endswith(suffix):
                stripped = stripped[: -len(suffix)]
                break
        else:
            stripped = LAYOUT_COPY.sub("", stripped)
        if stripped == base or not stripped:
            return None
        base = stripped
    return base


# rknn-toolkit 1.x names the hybrid dtypes differently (RKNPU1 has no float16 hybrid layers)
TOOLKIT1_DTYPES = {"int16": "dynamic_fixed_point-i16", "float16": "float32"}


def _exact_float(representer, value):
    text = repr(float(value))
    if text in ("nan", "inf", "-inf"):
        text = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[text]
    elif "." not in text and "e" not in text:
        text += ".0"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _edit_cfg(cfg_path, out_path, ranges, custom_layers, result, v2=True, table=None, made=None):
    """Set min/max of every tensor we have a range for; give the layers our hybrid kept out of int8 their dtype.

    made: the tensors step 1's graph still computes (None: unknown). A cfg entry outside it names no layer (the
    vendor folded that branch into a constant, e.g. a range-split part whose channels are all zero): step 2 refuses
    it in custom_quantize_layers ("Invalid operands name"), so it is left out and reported with the others.

    table: the step-1 quantization table (the .data pickle), whose 'scale' values are the exact floats step 2
    compares the cfg's with: its own cfg writer rounds some of them in the last digit, which step 2 would then
    refuse as "modified", so they are copied from there."""
    try:
        from ruamel.yaml import YAML
        yaml = YAML()
        # floats written as repr() (exact round trip): step 2 refuses a cfg whose 'scale' differs from its own in
        # the last bit ("not allowed to be modified"), which ruamel's default float format can cause
        yaml.representer.add_representer(float, _exact_float)
        # the floats the vendor wrote load as ScalarFloat, whose own writer rebuilds the text from mantissa and
        # precision and can land one ulp off (5.960464477539063e-08 -> ...062e-08): step 2 then refuses the
        # untouched 'ori_min' as "modified"
        from ruamel.yaml.scalarfloat import ScalarFloat
        yaml.representer.add_representer(ScalarFloat, _exact_float)
        with open(cfg_path) as f:
            cfg = yaml.load(f)
    except ImportError:  # rknn-toolkit 1.x ships PyYAML
        import yaml as pyyaml
        yaml = None
        with open(cfg_path) as f:
            cfg = pyyaml.safe_load(f)
    params = cfg.get("quantize_parameters") or {}
    edited, derived, missing = 0, 0, []
    for name, p in params.items():
        if not (isinstance(p, dict) and "min" in p and "max" in p):
            continue
        exact = (table or {}).get(name)
        if isinstance(exact, dict) and isinstance(exact.get("scale"), (list, tuple)) and p.get("scale"):
            p["scale"] = [float(v) for v in exact["scale"]]
        elif p.get("scale"):
            p["scale"] = [float(v) for v in p["scale"]]
        ours = _our_name(name, ranges)
        if ours is None:
            missing.append(name)
            continue
        lo, hi = ranges[ours]
        p["min"] = [float(lo)]
        p["max"] = [float(hi)]
        edited += 1
        derived += ours != name
    key = "custom_quantize_layers" if "custom_quantize_layers" in cfg or v2 else "customized_quantize_layers"
    layers = cfg.get(key) or {}
    wide = []
    for name, dtype in custom_layers.items():
        if name in params and (made is None or name in made):
            layers[name] = dtype if v2 else TOOLKIT1_DTYPES.get(dtype, dtype)
            wide.append(name)
    cfg[key] = layers
    result["custom_not_in_cfg"] = [n for n in custom_layers if n not in wide]
    result["cfg_tensors"] = len(params)
    result["cfg_edited"] = edited
    result["cfg_derived"] = derived
    result["cfg_not_ours"] = sorted(missing)[:200]
    result["custom_layers"] = wide
    with open(out_path, "w") as f:
        if yaml is not None:
            yaml.dump(cfg, f)
        else:
            pyyaml.safe_dump(cfg, f)


def _produced(model_path):
    """Tensor names step 1's graph still computes (its .model is an ONNX file), or None when it cannot be read."""
    try:
        import onnx
        model = onnx.load(model_path)
    except Exception:
        return None
    return set(o for n in model.graph.node for o in n.output)


def _table(data_path):
    """The step-1 quantization table of rknn-toolkit2's .data file (a pickle it wrote in this folder), or None."""
    import pickle
    try:
        with open(data_path, "rb") as f:
            data = pickle.load(f)
    except Exception:  # another toolkit's format: the cfg alone is used
        return None
    table = data.get("quant_tab") if isinstance(data, dict) else None
    return table if isinstance(table, dict) else None


def _on_grid(entry, scales):
    """Whether the vendor's float weights of this entry are still ours: every channel's recorded min and max are
    integer multiples of our scale inside [-128, 127]. It folds some neighbours into a conv (a constant Mul after it,
    the input's mean/std), and then the weights it quantizes are no longer ours and must not be pinned."""
    lows, highs = entry.get("ori_min") or entry.get("min"), entry.get("ori_max") or entry.get("max")
    if not lows or not highs or len(lows) != len(scales) or len(highs) != len(scales):
        return False
    for lo, hi, s in zip(lows, highs, scales):
        for v in (lo / s, hi / s):
            if abs(v - round(v)) > 1e-3 or not -128.5 < v < 127.5:
                return False
    return True


def _pin_weights(data_path, out_path, weight_scales, result):
    """rknn-toolkit2 quantizes weights per channel asymmetrically from their min/max, which would move our symmetric
    integers to another grid. Its step-1 table (a pickle it wrote itself in this folder) holds each weight's min/max
    per channel; setting them to (-128 s, 127 s) makes its grid exactly ours (scale s, zero point 0)."""
    import pickle
    with open(data_path, "rb") as f:
        data = pickle.load(f)
    table = data.get("quant_tab") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        result["weights_pinned"] = 0
        result["weights_not_pinned"] = sorted(weight_scales)[:50]
        return data_path
    pinned, missing = 0, []
    for name, scales in weight_scales.items():
        entry = table.get(name)
        if not isinstance(entry, dict) or not _on_grid(entry, scales):
            missing.append(name)
            continue
        entry["min"] = [-128.0 * s for s in scales]
        entry["max"] = [127.0 * s for s in scales]
        entry["scale"] = list(scales)
        entry["zero_point"] = [0] * len(scales)
        pinned += 1
    result["weights_pinned"] = pinned
    result["weights_not_pinned"] = sorted(missing)[:50]
    with open(out_path, "wb") as f:
        pickle.dump(data, f)
    return out_path


def _step1_files(work):
    cfgs = sorted(glob.glob(os.path.join(work, "*.quantization.cfg")))
    if not cfgs:
        raise StepFailed("hybrid_quantization_step1 wrote no .quantization.cfg in %s" % work)
    stem = cfgs[0][: -len(".quantization.cfg")]
    model = next((stem + s for s in (".model", ".json") if os.path.exists(stem + s)), None)
    if model is None or not os.path.exists(stem + ".data"):
        raise StepFailed("hybrid_quantization_step1 did not write %s.model/.json and .data" % stem)
    return cfgs[0], model, stem + ".data"


def _rknn(RKNN, job):
    """The object that compiles: verbose when the job wants the layer table (the vendor's compiler prints it, with
    each layer's dtype, on this process's stdout only in verbose mode; openrknn reads it from there)."""
    return RKNN(verbose=bool(job.get("layer_table", True) or os.environ.get("OPENRKNN_VENDOR_VERBOSE")))


def run(job, work):
    result = {"ok": False, "python": sys.version.split()[0], "toolkit_version": _toolkit_version(), "seconds": {},
              "step": None, "outputs": []}
    try:
        from rknn.api import RKNN
        v2 = job["toolkit"] == "rknn-toolkit2"
        # route "ranges" compiles in step 2 on a fresh object; the other routes compile on this one
        rknn = RKNN(verbose=bool(os.environ.get("OPENRKNN_VENDOR_VERBOSE"))) if job["route"] == "ranges" \
            else _rknn(RKNN, job)
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
            made = _produced(model_file) if job.get("custom_layers") else None
            _edit_cfg(cfg, edited, job["ranges"], job.get("custom_layers") or {}, result, v2, _table(data_file),
                      made)
            if result["custom_not_in_cfg"] and made is not None:
                # tensors its graph no longer computes (it folded them into constants)
                result["custom_folded"] = [n for n in result["custom_not_in_cfg"] if n not in made]
            if job.get("weight_scales"):
                data_file = _pin_weights(data_file, data_file[: -len(".data")] + ".openrknn.data",
                                         job["weight_scales"], result)
            # step 2 must start from a fresh object (the vendor refuses a loaded model there)
            rknn.release()
            rknn = _rknn(RKNN, job)
            _call(result, "config", rknn.config, **job["config"])
            result["step"] = "hybrid_quantization_step2"
            kwargs = dict(model_input=model_file, data_input=data_file, model_quantization_cfg=edited)
            if not v2:
                kwargs["dataset"] = job["dataset"]
            _call(result, "hybrid_quantization_step2", rknn.hybrid_quantization_step2, **kwargs)
        else:
            result["step"] = "build"
            _call(result, "build", rknn.build, do_quantization=False)
        dump = job.get("dump_tensors")
        if dump:  # the simulator's value of every tensor, for a layer-by-layer comparison on the host
            result["step"] = "accuracy_analysis"
            _call(result, "accuracy_analysis", rknn.accuracy_analysis, inputs=dump["inputs"],
                  output_dir=dump["out_dir"])
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
