"""The config form: one field per BuildConfig option, typed from its default, and the form -> config() kwargs
conversion. Validation is make_config's alone: text that does not parse is passed through unchanged, so the
validator names the key, the value and what is allowed, exactly as RKNN.config() would."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import targets
from ..config import (HOST_SIGMOID_HEADS, PRE_ACTIVATION_POINTS, QUANTIZED_ALGORITHMS, QUANTIZED_METHODS,
                      WEIGHT_ROUNDINGS, BuildConfig, make_config)
from ..errors import ConfigError

# (label, help, section). Keys missing here still get a field (typed from the default) in "Advanced".
FIELD_INFO: Dict[str, Tuple[str, str, str]] = {
    "target_platform": ("Target platform", "The NPU chip; it decides the quantized dtypes available.", "target"),
    "quantized_dtype": ("Quantized dtype", "Leave on default for the generation's usual choice.", "quant"),
    "quantized_algorithm": ("Algorithm", "How activation ranges are picked from the calibration data.", "quant"),
    "quantized_method": ("Method", "One weight scale per tensor (layer) or per output channel.", "quant"),
    "mean_values": ("Mean values", "Model channel order, 0..255 scale, e.g. 123.675 116.28 103.53; '#' between "
                    "inputs.", "pre"),
    "std_values": ("Std values", "Model channel order, e.g. 58.395 57.12 57.375 (1 = no scaling).", "pre"),
    "reorder_channel": ("Reorder channel", "'2 1 0' turns a BGR feed into an RGB model input; empty = keep.", "pre"),
    "quant_img_RGB2BGR": ("Calibration images as BGR", "Decode dataset images in BGR order (Toolkit2's "
                          "quant_img_RGB2BGR).", "pre"),
    "optimization_level": ("Optimization level", "0 = none .. 3 = all graph passes and pre-processing folding.",
                           "advanced"),
    "batch_size": ("Calibration batch size", "Images per calibration step.", "quant"),
    "epochs": ("Calibration epochs", "-1 = one pass over the dataset.", "quant"),
    "quantize_input_node": ("Quantize input node", "Quantize the model input itself.", "advanced"),
    "output_optimize": ("Output optimize", "Vendor option kept for compatibility.", "advanced"),
    "force_builtin_perm": ("Force builtin perm", "Vendor option kept for compatibility.", "advanced"),
    "weight_rounding": ("Weight rounding", "auto = GPTQ: lowers each layer's output error in a second or two; "
                        "nearest = plain rounding; adaround = learned rounding, slower.", "quant"),
    "range_remap": ("Range remap", "Give the channel groups of split depthwise outputs their own levels: more "
                    "accuracy for a few more NPU ops.", "quant"),
    "range_choice": ("Range choice", "With the normal algorithm, also try KL and MSE clipping and keep it where the "
                     "model's outputs on held-out calibration samples clearly gain.", "quant"),
    "log_ranges": ("Log ranges", "Cut the ranges of the tensors on the way into a Log or a square root (a "
                   "log-mel front end's power spectrum, an STFT magnitude) together, by the decades the model's "
                   "outputs prefer.", "quant"),
    "pre_activation_points": ("Pre-activation points", "chip = quantize as the target chip computes; tflite = an "
                              "int8 point after every conv before an activation TFLite cannot fuse (SiLU, Sigmoid, "
                              "HardSwish...), so an exported .tflite keeps those convs int8 for Mesa's Teflon "
                              "delegate.", "quant"),
    "host_sigmoid_heads": ("Score heads' Sigmoid on the host", "auto = compute a score head's Sigmoid (one that "
                           "reaches the outputs only through layout ops) in float on the CPU from the int8 logits "
                           "where that rounds the probabilities closer than the chip's [0, 1] grid (small scores); "
                           "all / none = every head on the host / on the chip.", "quant"),
    "auto_hybrid_cos_thresh": ("Auto hybrid cosine threshold", "Layers below this cosine are candidates to keep in "
                               "higher precision.", "quant"),
    "dynamic_input": ("Input shape sets", "Several input sizes in one model (rknn-toolkit2's dynamic_input), in the "
                      "model's own layout: '1x3x240x320; 1x3x360x640', '+' between the inputs of one set; built at "
                      "the largest. Empty = the one input size.", "pre"),
}
SECTIONS = (("target", "Target"), ("pre", "Pre-processing"), ("quant", "Quantization"), ("advanced", "Advanced"))
_FLOAT_LIST_KEYS = ("mean_values", "std_values")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _kind(name: str, default: Any) -> str:
    if name in ("target_platform", "quantized_dtype", "quantized_algorithm", "quantized_method", "weight_rounding",
                "pre_activation_points", "host_sigmoid_heads"):
        return "select"
    if name in _FLOAT_LIST_KEYS:
        return "floats"
    if name == "dynamic_input":
        return "shape_sets"
    if name == "output_optimize" or isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "text"


def _options(name: str) -> Optional[List[dict]]:
    if name == "target_platform":
        return [{"value": p, "label": p, "group": targets.generation(p).upper()} for p in targets.PLATFORMS]
    if name == "quantized_dtype":
        opts = [{"value": "", "label": "default for the target", "group": ""}]
        for gen, dtypes in targets.QUANTIZED_DTYPES.items():
            opts += [{"value": d, "label": d, "group": gen.upper()} for d in dtypes]
        return opts
    if name == "quantized_algorithm":
        return [{"value": a, "label": a, "group": ""} for a in QUANTIZED_ALGORITHMS]
    if name == "weight_rounding":
        return [{"value": r, "label": r, "group": ""} for r in WEIGHT_ROUNDINGS]
    if name == "pre_activation_points":
        return [{"value": p, "label": p, "group": ""} for p in PRE_ACTIVATION_POINTS]
    if name == "host_sigmoid_heads":
        return [{"value": h, "label": h, "group": ""} for h in HOST_SIGMOID_HEADS]
    if name == "quantized_method":
        return [{"value": "", "label": "default for the dtype", "group": ""}] + [
            {"value": m, "label": m, "group": ""} for m in QUANTIZED_METHODS]
    return None


def _display_default(name: str, value: Any) -> Any:
    if name == "target_platform":
        return value[0]
    if value is None:
        return ""
    if isinstance(value, bool) or name == "output_optimize":
        return "on" if value else "off"
    return value


def config_schema() -> dict:
    """Every config() option with its kind, default, options and help; plus dtypes per NPU generation."""
    defaults = BuildConfig()
    fields = []
    for f in dataclasses.fields(BuildConfig):
        default = getattr(defaults, f.name)
        label, help_text, section = FIELD_INFO.get(f.name, (f.name, "", "advanced"))
        fields.append({"key": f.name, "label": label, "help": help_text, "section": section,
                       "kind": _kind(f.name, default), "default": _display_default(f.name, default),
                       "options": _options(f.name)})
    return {
        "fields": fields,
        "sections": [{"key": k, "label": lbl} for k, lbl in SECTIONS],
        "generations": {p: targets.generation(p) for p in targets.PLATFORMS},
        "dtypes": {gen: list(d) for gen, d in targets.QUANTIZED_DTYPES.items()},
        "default_dtype": dict(targets.DEFAULT_QUANTIZED_DTYPE),
    }


def _floats(text: str) -> Any:
    """'1 2 3' -> [1, 2, 3]; '1,2,3#4' -> [[1, 2, 3], [4]]; anything else stays text for the validator to name."""
    groups = []
    for part in text.split("#"):
        tokens = [t for t in re.split(r"[\s,;]+", part.strip().strip("[]")) if t]
        if not tokens or not all(_NUMBER.match(t) for t in tokens):
            return text
        groups.append([float(t) for t in tokens])
    return groups[0] if len(groups) == 1 else groups


def _shape_sets(text: str) -> Any:
    """'1x3x240x320; 1x3x360x640' (';' between sets, '+' between the inputs of a set, as `openrknn info` writes
    them) or JSON-like [[[1, 3, 240, 320]], ...] -> the list config() takes; anything else stays text."""
    t = text.strip()
    if t.startswith("["):
        import json

        try:
            return json.loads(t)
        except ValueError:
            return text
    sets = []
    for part in t.split(";"):
        shapes = []
        for shape in part.split("+"):
            dims = [d for d in re.split(r"[x,\s]+", shape.strip().lower()) if d]
            if not dims or not all(d.isdigit() for d in dims):
                return text
            shapes.append([int(d) for d in dims])
        sets.append(shapes)
    return sets


def _number(text: str, integer: bool) -> Any:
    t = text.strip()
    if integer and re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    if not integer and _NUMBER.match(t):
        return float(t)
    return t


def form_to_kwargs(form: Mapping[str, Any]) -> dict:
    """Form values (strings, booleans) -> config() keyword arguments. Empty text = option not given (default)."""
    kinds = {f.name: _kind(f.name, getattr(BuildConfig(), f.name)) for f in dataclasses.fields(BuildConfig)}
    kwargs: dict = {}
    for key, raw in form.items():
        kind = kinds.get(key)
        if kind is None:
            kwargs[key] = raw  # unknown key: make_config says so and lists the known ones
            continue
        if kind == "bool":
            value = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "on", "yes")
            kwargs[key] = int(value) if key == "output_optimize" else value
            continue
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        if not isinstance(raw, str):
            kwargs[key] = raw
        elif kind == "floats":
            kwargs[key] = _floats(raw)
        elif kind == "shape_sets":
            kwargs[key] = _shape_sets(raw)
        elif kind in ("int", "float"):
            kwargs[key] = _number(raw, kind == "int")
        else:
            kwargs[key] = raw.strip()
    return kwargs


def validate_form(form: Mapping[str, Any]) -> dict:
    """{'ok': True, 'config': resolved options} or {'ok': False, 'key', 'value', 'message'} from make_config."""
    kwargs = form_to_kwargs(form)
    try:
        cfg = make_config(**kwargs)
    except ConfigError as e:
        return {"ok": False, "key": e.key, "value": repr(e.value), "message": str(e)}
    return {"ok": True, "config": cfg.to_dict(), "kwargs": kwargs}


def _input_channels(model: Mapping[str, Any], sizes: Optional[List[List[int]]]) -> Optional[List[Optional[int]]]:
    """Channel count per model input where mean/std/reorder apply (None for a non-image input), from the input
    sizes the user typed when given, else from the shapes the file records; None when they are not known yet."""
    if sizes is not None:  # C,H,W or N,C,H,W per input; TorchScript inputs are float images when 3-D or 4-D
        recorded = model.get("inputs") or []
        nhwc = [i < len(recorded) and recorded[i].get("layout") == "nhwc" for i in range(len(sizes))]
        return [(s[-1] if nhwc[i] else s[-3]) if len(s) in (3, 4) and (i >= len(recorded)
                                                                    or recorded[i].get("image", True)) else None
                for i, s in enumerate(sizes)]
    inputs = model.get("inputs")
    if not inputs:
        return None
    channels: List[Optional[int]] = []
    for inp in inputs:
        if not inp.get("image"):
            channels.append(None)
            continue
        c = inp.get("channels", (inp.get("shape") or [None, None])[1])  # C of a channel-last input is its last dim
        if not (isinstance(c, int) and c > 0):
            return None  # a dynamic channel count: the build decides
        channels.append(c)
    return channels


def check_against_model(form_result: dict, model: Optional[Mapping[str, Any]], input_size: Any) -> dict:
    """validate_form's result, refined against the loaded model: the input sizes the user typed, and mean/std/reorder
    channel counts (BuildConfig.check_channels, the check the build runs). Same shape as validate_form's result,
    with key 'input_size_list' for the input size field."""
    if not form_result.get("ok") or not model or model.get("framework") == "rknn":
        return form_result
    from .pipeline import parse_input_size

    def refused(key: str, value: Any, message: str) -> dict:
        return {"ok": False, "key": key, "value": repr(value), "message": message}

    try:
        sizes = parse_input_size(input_size)
    except ConfigError as e:
        return refused(e.key, e.value, str(e))
    recorded = model.get("inputs") or []
    if sizes is None:  # dynamic_input: the model loads at its largest set
        sizes = make_config(**form_result["kwargs"]).dynamic_base
    if sizes is None and model.get("needs_input_size"):
        what = "TorchScript files record no input shapes" if model.get("framework") == "pytorch" else \
            "the model's input shapes are not fixed"
        return refused("input_size_list", "", f"{what}: give the input size, C,H,W per input (e.g. 3,224,224), "
                       "'#' between inputs")
    if sizes is not None:
        if any(d <= 0 for s in sizes for d in s):
            return refused("input_size_list", input_size, f"input size {input_size!r} has a 0; every dimension must "
                           "be a positive integer")
        if recorded and len(sizes) != len(recorded):
            return refused("input_size_list", input_size, f"the model has {len(recorded)} input(s) but "
                           f"{len(sizes)} size(s) were given; give one C,H,W per input, '#' between inputs")
    channels = _input_channels(model, sizes)
    if channels is None:
        return form_result
    cfg = make_config(**form_result["kwargs"])
    if all(c is None for c in channels):
        for key in ("mean_values", "std_values", "reorder_channel"):
            if getattr(cfg, key) is not None:
                return refused(key, getattr(cfg, key), f"{key}: the model has no image input (4-D float), so "
                               "mean/std/reorder cannot apply; leave them empty")
        return form_result
    try:
        cfg.check_channels([c if c is not None else 1 for c in channels])
    except ConfigError as e:
        return refused(e.key, e.value, str(e))
    return form_result
