"""The build configuration set by RKNN.config(), validated once with errors that name the key and the allowed values.

Pre-processing contract (docs/preprocessing.md has the long form):
- The deployed model's input is what the board feeds: uint8 (or float) NHWC, channels in the *feed* order.
- `reorder_channel` lists, for each model channel, which fed channel it takes: '2 1 0' turns a BGR feed into RGB.
- `mean_values` / `std_values` are given in the model's channel order (after the reorder), on the 0..255 scale:
  model_input[c] = (fed[reorder[c]] - mean[c]) / std[c].
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from . import targets
from .errors import ConfigError

QUANTIZED_ALGORITHMS = ("normal", "kl_divergence", "mmse")
QUANTIZED_METHODS = ("layer", "channel")
# openrknn's own option (not in the vendor's config): how weights are rounded onto their grid. The same tuple as
# openrknn.quant.WEIGHT_ROUNDINGS (kept apart so config() does not import the quantizer).
WEIGHT_ROUNDINGS = ("auto", "nearest", "gptq", "adaround")
# openrknn: which conv outputs are int8 points of their own before their activation. 'chip': those the target chip
# stores as integers (quant/plan.py); 'tflite': every conv output before an activation TFLite cannot fuse into it
# (SiLU, Sigmoid, HardSwish, LeakyRelu...), as TFLite's int8 ops compute it, so export_tflite writes those convs as
# int8 ops that Teflon can offload (the .rknn's own simulator computes the same; the chip's own graph would apply
# the activation in full precision).
PRE_ACTIVATION_POINTS = ("chip", "tflite")
# openrknn: a score head's Sigmoid (one that reaches the outputs only through layout ops and that the chip fuses
# into its conv) on the host CPU in float from the int8 logits: 'auto' where that rounds the probabilities closer on
# a few calibration samples, 'all', or 'none' (the same tuple as openrknn.quant.HOST_SIGMOID_HEADS)
HOST_SIGMOID_HEADS = ("auto", "all", "none")
ALL_QUANTIZED_DTYPES = tuple(d for gen in ("rknpu1", "rknpu2") for d in targets.QUANTIZED_DTYPES[gen])


@dataclass
class BuildConfig:
    mean_values: Optional[List[List[float]]] = None  # one list per input, model channel order
    std_values: Optional[List[List[float]]] = None
    reorder_channel: Optional[List[List[int]]] = None  # one permutation per input; None = keep the feed order
    target_platform: List[str] = field(default_factory=lambda: ["rk1808"])
    quantized_dtype: str = ""  # "" = the generation's default, filled in by validate()
    quantized_algorithm: str = "normal"
    quantized_method: str = ""  # "" = the generation's default
    optimization_level: int = 3
    batch_size: int = 100
    epochs: int = -1
    quantize_input_node: bool = False
    output_optimize: int = 0
    force_builtin_perm: bool = False
    quant_img_RGB2BGR: bool = False
    auto_hybrid_cos_thresh: float = 0.98
    weight_rounding: str = "auto"  # openrknn: 'auto' = gptq (8-bit weights)
    range_split: bool = True  # openrknn: exact channel range split of depthwise inputs (accuracy for more NPU ops)
    range_remap: bool = True  # openrknn: range split's part remap (more accuracy for a few more NPU ops)
    range_choice: bool = True  # openrknn: a 'normal' build may clip ranges (KL / MSE) where the outputs gain
    log_ranges: bool = True  # openrknn: the ranges into a Log / square root (audio front ends) cut in decades
    pre_activation_points: str = "chip"  # openrknn: PRE_ACTIVATION_POINTS
    host_sigmoid_heads: str = "auto"  # openrknn: HOST_SIGMOID_HEADS
    # openrknn: each image input's own layout, 'nchw' | 'nhwc' (channel-last: TFLite / TensorFlow / Keras exports);
    # None = detected per input (graph/layout.py). The feed is NHWC either way.
    input_layout: Optional[List[str]] = None
    # rknn-toolkit2's option: the input shape sets one model takes, one shape per input in each set, in the model's
    # own layout ([[[1, 3, 240, 320]], [[1, 3, 360, 640]]]); None = the one shape the model was loaded at
    dynamic_input: Optional[List[List[List[int]]]] = None

    @property
    def target(self) -> str:
        return self.target_platform[0]

    @property
    def generation(self) -> str:
        return targets.generation(self.target)

    @property
    def dynamic_base(self) -> Optional[List[List[int]]]:
        """The dynamic_input set the model is built and calibrated at: the largest (rknn-toolkit2's 'MaxShape'; the
        first of equals)."""
        if not self.dynamic_input:
            return None
        return max(self.dynamic_input, key=lambda shapes: sum(_product(s) for s in shapes))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check_channels(self, channels: Sequence[int], layouts: Optional[Sequence[Optional[str]]] = None) -> None:
        """Check per-input pre-processing against the model's input channel counts (known only after load).
        layouts: per input, how its layout was decided (graph/layout.py InputLayout.describe), said on a mismatch."""
        n = len(channels)
        for key in ("mean_values", "std_values", "reorder_channel"):
            per_input = getattr(self, key)
            if per_input is None:
                continue
            if len(per_input) == 1 and n > 1:
                raise ConfigError(key, per_input, hint=f"the model has {n} inputs: give one list per input "
                                  f"(or '#'-joined orders for reorder_channel)")
            if len(per_input) != n:
                raise ConfigError(key, per_input, hint=f"the model has {n} inputs but {len(per_input)} were given")
            for i, (vals, c) in enumerate(zip(per_input, channels)):
                # mean/std may be one value for all channels; a reorder must name every channel
                ok = len(vals) == c or (len(vals) == 1 and key != "reorder_channel")
                if not ok:
                    why = layouts[i] if layouts is not None and i < len(layouts) and layouts[i] else None
                    raise ConfigError(key, vals, hint=f"input {i} has {c} channels but {len(vals)} values were "
                                      "given" + (f" ({why})" if why else "") + f"; give {c} values (one per "
                                      "channel, model channel order)" + ("" if not why else ", or state the "
                                      "input's layout with config(input_layout='nhwc') or 'nchw'"))


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _per_input_floats(key: str, value: Any) -> Optional[List[List[float]]]:
    """Accept [a, b, c] (one input) or [[a, b, c], [d]] (one list per input)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, value, "a list of numbers, or one list of numbers per input", "e.g. [123.675, 116.28, "
                          "103.53] or [[123.675, 116.28, 103.53]]")
    if all(_is_number(v) for v in value):
        groups = [list(value)]
    elif all(isinstance(v, (list, tuple)) for v in value):
        groups = [list(v) for v in value]
    else:
        raise ConfigError(key, value, "a flat list of numbers or a list of lists of numbers",
                          "do not mix numbers and lists")
    for g in groups:
        if not g or not all(_is_number(v) for v in g):
            raise ConfigError(key, value, "numbers only", "each per-input list must hold at least one number")
    if key == "std_values" and any(float(v) == 0.0 for g in groups for v in g):
        raise ConfigError(key, value, hint="a std of 0 would divide by zero; use 1 for 'no scaling'")
    return [[float(v) for v in g] for g in groups]


def _reorder(value: Any) -> Optional[List[List[int]]]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("reorder_channel", value, "a string such as '0 1 2' or '2 1 0' ('#'-joined per input)")
    orders = []
    for part in value.split("#"):
        tokens = part.split()
        try:
            perm = [int(t) for t in tokens]
        except ValueError:
            raise ConfigError("reorder_channel", value, "space-separated channel indices such as '0 1 2' or '2 1 0'",
                              f"'{part.strip()}' has a token that is not an integer") from None
        if sorted(perm) != list(range(len(perm))) or not perm:
            raise ConfigError("reorder_channel", value, "a permutation of 0..C-1 such as '0 1 2' or '2 1 0'",
                              f"'{part.strip()}' is not a permutation")
        orders.append(perm)
    return orders


def _product(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dynamic_input(value: Any) -> Optional[List[List[List[int]]]]:
    """[[shape of input 1, shape of input 2, ...] per set]: every set lists the same inputs at the same ranks."""
    if value is None:
        return None
    example = "e.g. [[[1, 3, 240, 320]], [[1, 3, 360, 640]]]: one list per set, holding one shape per model input"
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("dynamic_input", value, "a list of input shape sets", example)
    sets = []
    for k, shapes in enumerate(value):
        if not isinstance(shapes, (list, tuple)) or not shapes or not all(
                isinstance(s, (list, tuple)) and s for s in shapes):
            raise ConfigError("dynamic_input", value, "a list of input shape sets",
                              f"set {k + 1} ({shapes!r}) is not a list of shapes; {example}")
        for s in shapes:
            if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in s):
                raise ConfigError("dynamic_input", value, hint=f"set {k + 1} has {list(s)!r}, which is not a shape "
                                  "of positive integers")
        sets.append([[int(d) for d in s] for s in shapes])
    ranks = [len(s) for s in sets[0]]
    for k, shapes in enumerate(sets[1:], 2):
        if [len(s) for s in shapes] != ranks:
            raise ConfigError("dynamic_input", value, hint=f"set {k} gives {len(shapes)} shape(s) of rank "
                              f"{[len(s) for s in shapes]}, set 1 {len(ranks)} of rank {ranks}: every set lists "
                              "each model input once, at its rank")
        if shapes in sets[:k - 1]:
            raise ConfigError("dynamic_input", value, hint=f"set {k} repeats an earlier set; list each once")
    return sets


INPUT_LAYOUTS = ("auto", "nchw", "nhwc")


def _input_layout(value: Any) -> Optional[List[str]]:
    """'nhwc', 'nchw#nhwc' ('#'-joined per input, like reorder_channel) or a list; 'auto' = detect."""
    if value is None:
        return None
    parts = value.split("#") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, str) for p in parts):
        raise ConfigError("input_layout", value, INPUT_LAYOUTS, "one layout, '#'-joined per input, or a list")
    out = [p.strip().lower() for p in parts]
    for p in out:
        if p not in INPUT_LAYOUTS:
            raise ConfigError("input_layout", value, INPUT_LAYOUTS, f"'{p}' is not a layout; 'nhwc' = channel-last "
                              "[N, H, W, C] (TFLite / TensorFlow / Keras), 'nchw' = [N, C, H, W]")
    return None if all(p == "auto" for p in out) else out


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise ConfigError(key, value, "True or False")


def _int(key: str, value: Any, lo: int, hi: Optional[int] = None, extra: Sequence[int] = ()) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(key, value, f"an integer {lo}..{hi if hi is not None else ''}".rstrip("."))
    v = int(value)
    if v in extra:
        return v
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        if extra:
            allowed += " or " + ", ".join(str(e) for e in extra)
        raise ConfigError(key, value, allowed)
    return v


def _targets(value: Any) -> List[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("target_platform", value, targets.PLATFORMS, "give a chip name or a list of chip names")
    out = []
    for n in names:
        for part in n.replace(",", " ").split():  # 'rk1808,rk3399pro' as some scripts write it
            low = part.strip().lower()
            if low not in targets.NPU_GENERATION:
                raise ConfigError("target_platform", part, targets.PLATFORMS)
            out.append(low)
    gens = {targets.generation(t) for t in out}
    if len(gens) > 1:
        raise ConfigError("target_platform", value, hint="all targets of one model must share an NPU generation "
                          f"(RKNPU1: {', '.join(t for t in targets.PLATFORMS if targets.generation(t) == 'rknpu1')}; "
                          "RKNPU2: the others); build one model per generation")
    return out


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(BuildConfig))


def make_config(**kwargs: Any) -> BuildConfig:
    """Validate config() keyword arguments into a BuildConfig (unset keys take their defaults)."""
    unknown = [k for k in kwargs if k not in KNOWN_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], KNOWN_KEYS, n=1)
        hint = "unknown config key" + (f"; did you mean '{close[0]}'?" if close else "")
        raise ConfigError(unknown[0], kwargs[unknown[0]], KNOWN_KEYS, hint)
    cfg = BuildConfig()
    if "target_platform" in kwargs and kwargs["target_platform"] is not None:
        cfg.target_platform = _targets(kwargs["target_platform"])
    gen = cfg.generation
    cfg.mean_values = _per_input_floats("mean_values", kwargs.get("mean_values"))
    cfg.std_values = _per_input_floats("std_values", kwargs.get("std_values"))
    cfg.reorder_channel = _reorder(kwargs.get("reorder_channel"))
    cfg.input_layout = _input_layout(kwargs.get("input_layout"))
    cfg.dynamic_input = _dynamic_input(kwargs.get("dynamic_input"))

    dtype = kwargs.get("quantized_dtype")
    if dtype is None:
        cfg.quantized_dtype = targets.DEFAULT_QUANTIZED_DTYPE[gen]
    else:
        allowed = targets.QUANTIZED_DTYPES[gen]
        if dtype not in allowed:
            hint = ""
            if dtype in ALL_QUANTIZED_DTYPES:
                hint = f"'{dtype}' belongs to the other NPU generation; {cfg.target} is {gen.upper()}"
            raise ConfigError("quantized_dtype", dtype, allowed, hint)
        cfg.quantized_dtype = dtype
    algo = kwargs.get("quantized_algorithm", "normal")
    if algo not in QUANTIZED_ALGORITHMS:
        raise ConfigError("quantized_algorithm", algo, QUANTIZED_ALGORITHMS)
    cfg.quantized_algorithm = algo
    method = kwargs.get("quantized_method")
    if method is None:
        # RKNPU1's asymmetric u8 is per-tensor by definition; RKNPU2's w8a8 is per-channel.
        method = "channel" if gen == "rknpu2" else "layer"
    if method not in QUANTIZED_METHODS:
        raise ConfigError("quantized_method", method, QUANTIZED_METHODS)
    cfg.quantized_method = method

    if "optimization_level" in kwargs:
        cfg.optimization_level = _int("optimization_level", kwargs["optimization_level"], 0, 3)
    if "batch_size" in kwargs:
        cfg.batch_size = _int("batch_size", kwargs["batch_size"], 1)
    if "epochs" in kwargs:
        cfg.epochs = _int("epochs", kwargs["epochs"], 1, extra=(-1,))
    for key in ("quantize_input_node", "force_builtin_perm", "quant_img_RGB2BGR", "range_split", "range_remap",
                "range_choice", "log_ranges"):
        if key in kwargs:
            setattr(cfg, key, _bool(key, kwargs[key]))
    if "output_optimize" in kwargs:
        cfg.output_optimize = int(_bool("output_optimize", kwargs["output_optimize"]))
    if "auto_hybrid_cos_thresh" in kwargs:
        v = kwargs["auto_hybrid_cos_thresh"]
        if not _is_number(v) or not 0.0 < float(v) <= 1.0:
            raise ConfigError("auto_hybrid_cos_thresh", v, "a number in (0, 1]")
        cfg.auto_hybrid_cos_thresh = float(v)
    rounding = kwargs.get("weight_rounding", "auto")
    if rounding not in WEIGHT_ROUNDINGS:
        raise ConfigError("weight_rounding", rounding, WEIGHT_ROUNDINGS,
                          "gptq: second-order rounding, a few seconds; adaround: learned rounding, slower")
    cfg.weight_rounding = rounding
    points = kwargs.get("pre_activation_points", "chip")
    if points not in PRE_ACTIVATION_POINTS:
        raise ConfigError("pre_activation_points", points, PRE_ACTIVATION_POINTS,
                          "'tflite' quantizes every conv output before an activation TFLite cannot fuse, for "
                          "export_tflite and Mesa's Teflon delegate; 'chip' keeps what the target chip does")
    if points == "tflite" and gen != "rknpu2":
        raise ConfigError("pre_activation_points", points, ("chip",),
                          f"'tflite' is for w8a8 builds that export_tflite writes; {cfg.target} is an RKNPU1 chip "
                          "(use target_platform='rk3588' with quantized_dtype='w8a8')")
    cfg.pre_activation_points = points
    heads = kwargs.get("host_sigmoid_heads", "auto")
    if heads not in HOST_SIGMOID_HEADS:
        raise ConfigError("host_sigmoid_heads", heads, HOST_SIGMOID_HEADS,
                          "'auto' computes a score head's Sigmoid on the host where that loses less than the chip's "
                          "[0, 1] output grid; 'all' / 'none' decide for every head")
    cfg.host_sigmoid_heads = heads
    return cfg
