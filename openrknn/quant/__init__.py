"""Post-training int8/int16/fp16 quantization of a float ONNX model into an NPU-faithful QDQ graph.

Pipeline (each stage a module): normalize the graph (ir) -> plan the quantization points (plan) -> optional
cross-layer equalization (algorithms.equalize) -> streaming calibration pass 1 (calibrate: min/max, per-channel
ranges) -> residual-stream equalization (algorithms.residual_equalize) -> range split of uneven depthwise inputs
(algorithms.split) -> power-of-two range fitting for dynamic_fixed_point-i8 (algorithms.pow2_fit) -> histograms
for kl_divergence / mmse (calibrate pass 2) -> activation ranges (algorithms.activations) -> weights
(algorithms.weights; layer-wise rounding: algorithms.rounding, gptq by default, or adaround) -> bias correction
(algorithms.bias_correction; its means ride the rounding statistics pass) -> opt-in output-aware range search
(algorithms.range_search) -> QDQ graph (qdq).
QuantResult.report holds per-stage seconds, the plan's size, what was split/equalized/corrected, and warnings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import onnx

from ..errors import ConfigError
from .dataset import CalibrationData, InputSpec, read_dataset
from .schemes import SCHEMES, get_scheme

log = logging.getLogger("openrknn.quant")

ALGORITHMS = ("normal", "kl_divergence", "mmse")
METHODS = ("layer", "channel")
WEIGHT_ROUNDINGS = ("auto", "nearest", "gptq", "adaround")
HOST_SIGMOID_HEADS = ("auto", "all", "none")


@dataclass
class QuantOptions:
    """What to quantize to and how.

    dtype: asymmetric_quantized-u8 | dynamic_fixed_point-i8 | dynamic_fixed_point-i16 | w8a8 | w8a16 | w16a16i |
        float16.
    algorithm: activation ranges: 'normal' (min/max, or clipped where the outputs say so: range_choice),
        'kl_divergence' (2048-bin histogram KL), 'mmse' (least squared error clipping); mmse also picks MSE-optimal
        weight clipping.
    range_choice: with 'normal' and 8-bit activations, also build the kl_divergence and mmse ranges (histograms
        of ``range_choice_images`` calibration samples, the even-numbered ones) and keep the set whose outputs on
        ``range_choice_samples`` other calibration samples (odd-numbered) are closest to the float model's, when it
        takes at least a tenth of min/max's output error away (algorithms/range_choice.py); min/max otherwise.
    weight_algorithm: 'minmax' | 'mmse' weight ranges; 'auto' = mmse with algorithm 'mmse', else minmax.
    method: 'layer' (one weight scale per tensor) or 'channel' (one per output channel); None picks the dtype's
        hardware default: 'layer' for the RKNPU1 dtypes (u8, dynamic fixed point), 'channel' for the RKNPU2 ones.
    equalization: cross-layer equalization of conv pairs joined by a scale-equivariant activation (ReLU,
        LeakyReLU, none); 'auto' = only with per-layer weights, where it matters.
    bias_correction: 'empirical' (default: one extra pass measures each layer's own output shift from weight
        rounding and input quantization, and folds it into the bias), 'analytical' (weight rounding only, from
        E[x]; free), or False.
    score_bias_correction: with bias correction on, a conv whose output goes through a Sigmoid to the model's
        outputs (a detector's score maps) also gets its bias shifted so the probabilities' mean error, measured on
        the complete quantized model, is zero where they can change (algorithms/score_bias.py).
    range_split: a conv output read by depthwise convs (and at most by residual Adds besides, which get the parts
        joined back) whose channel ranges span more than ``range_split_ratio`` (4x that with an Add) is cut into
        channel groups with their own scales by an exact graph rewrite (algorithms/split.py); the op count grows a
        little, the function does not change.
    range_remap: where range split cuts a depthwise conv whose output only pointwise-style convs (no padding)
        read, also stretch each part of that output onto the widest part's range (x -> k x + b, folded into the
        part's output quantizer; the readers' weights and biases undo it), so the scale the parts share gives
        each of them all its levels. Proposed where the measured rounding noise it removes from the readers is
        worth >= 0.08% of their signal, made when all proposals together take >= 0.1% of the output power out of
        the model's output error (a quick check on 2 calibration samples); may cut a depthwise conv into finer
        parts (one more op each).
    pow2_fit: dynamic_fixed_point-i8 only: multiply tensors made by a conv (+ ReLU/Clip) and read by convs, and
        residual streams, by a factor in [1, 2) so their ranges fill their power-of-two grids, weighing the weights'
        grids on both sides; an exact rewrite (algorithms/pow2_fit.py).
    residual_equalization: rescale the channels of residual streams (tensors joined by Adds, made by convs and
        read by convs, as in MobileNetV2) so one per-tensor activation scale fits them all; an exact rewrite
        (algorithms/residual_equalize.py) from the per-channel ranges of calibration pass 1.
    weight_rounding: how weights become integers on their grid: 'nearest'; 'gptq' (second-order, each layer's
        rounding errors pushed onto its other weights against the layer's measured input statistics, one sweep);
        'adaround' (learned floor/ceil choices, slower); 'auto' = gptq with every algorithm (1-2 s on
        YOLOX-nano; its statistics pass also measures bias correction's means). 16-bit weights keep nearest (their
        rounding error is negligible). See algorithms/rounding.py.
    log_ranges: the scale groups on the way into a Log (a log-mel front end's amplitudes, power spectrum and mel
        energies) or into a magnitude's square root (an STFT's power) get their ranges cut together by a number of
        decades searched on the outputs of ``log_range_samples`` calibration samples: the shallowest cut with three
        quarters of the best cut's gain, kept on range choice's rule (algorithms/log_ranges.py).
    pre_activation_points: 'chip' (the conv outputs the target chip stores as integers before their activation)
        or 'tflite' (every conv output before an activation TFLite cannot fuse into the conv, for export_tflite).
    range_search: output-aware activation ranges (opt-in): the first ``range_search_groups`` 8-bit scale groups
        in graph order get their range shrunk (x0.5 / 0.7 / 0.85) where that lowers the error of the model's
        outputs on ``range_search_samples`` calibration samples by 5% or more (algorithms/range_search.py).
    overrides: hybrid quantization, {tensor or weight name: 'int8' | 'uint8' | 'int16' | 'float'}; an activation
        override applies to its whole scale group (the widest request wins); unknown names are an error.
    fixed: {tensor or weight name: (scales, zero points)} used as given instead of calibrated (hybrid step 2's
        edited parameters); an activation's applies to its whole scale group.
    pixel_inputs: graph inputs that carry image pixels (an image input of config()): where their calibration
        samples are integers in 0..255, the first quantization point after their pre-processing covers every pixel
        value, not only those calibration saw (pixel_ranges.py).
    keep_mixed_concat_float: a Concat that only feeds graph outputs keeps one scale per input (see plan.py).
        With it, a Sigmoid that reaches the outputs only through layout ops and reads a point (after an Add, a
        Concat) is computed in float on the host from that point (one rounding fewer than the chip's output grid).
    host_sigmoid_heads: such a Sigmoid the chip would fuse into its conv (a score head): 'auto' moves it to the host
        where that rounds the probabilities closer on a few calibration samples (algorithms/host_sigmoids.py),
        'all' moves every one, 'none' keeps them on the chip.
    concat_input_scales: a Concat input that other layers also read and whose calibrated range is at most 1/8 of the
        Concat's keeps its own scale; the Concat requantizes it (algorithms/concat_inputs.py; 8-bit affine only).
    """

    dtype: str = "asymmetric_quantized-u8"
    algorithm: str = "normal"
    method: Optional[str] = None
    weight_algorithm: str = "auto"
    target: str = "rk1808"
    equalization: object = "auto"
    bias_correction: object = "empirical"
    bias_correction_samples: int = 16
    score_bias_correction: bool = True
    range_split: bool = True
    range_remap: bool = True
    pow2_fit: bool = True
    range_split_ratio: float = 8.0
    residual_equalization: bool = True
    weight_rounding: str = "auto"
    adaround_iters: int = 200
    rounding_samples: int = 16         # calibration samples for the rounding statistics (gptq, adaround)
    range_choice: bool = True
    range_choice_images: int = 8
    range_choice_samples: int = 4
    log_ranges: bool = True
    log_range_samples: int = 8
    pre_activation_points: str = "chip"
    range_search: bool = False
    range_search_groups: int = 32
    range_search_samples: int = 8
    keep_mixed_concat_float: bool = True
    host_sigmoid_heads: str = "auto"
    concat_input_scales: bool = True
    overrides: Dict[str, str] = field(default_factory=dict)
    fixed: Dict[str, tuple] = field(default_factory=dict)
    pixel_inputs: Tuple[str, ...] = ()
    histogram_bins: int = 2048
    histogram_samples: int = 0         # values per tensor per image in the histograms; 0 = 2^20 / images, 2^14..2^18
    threads: int = 0                   # onnxruntime intra-op threads for calibration (0 = the idle cores)

    def validate(self) -> None:
        if self.dtype not in SCHEMES or not SCHEMES[self.dtype].simulated:
            raise ConfigError("quantized_dtype", self.dtype, [k for k, v in SCHEMES.items() if v.simulated])
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("quantized_algorithm", self.algorithm, ALGORITHMS)
        if self.method is not None and self.method not in METHODS:
            raise ConfigError("quantized_method", self.method, METHODS)
        if self.weight_algorithm not in ("auto", "minmax", "mmse"):
            raise ConfigError("weight_algorithm", self.weight_algorithm, ("auto", "minmax", "mmse"))
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ConfigError("weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        if self.equalization not in (True, False, "auto"):
            raise ConfigError("equalization", self.equalization, (True, False, "auto"))
        if self.bias_correction not in (True, False, "empirical", "analytical"):
            raise ConfigError("bias_correction", self.bias_correction, (True, False, "empirical", "analytical"))
        if self.residual_equalization not in (True, False):
            raise ConfigError("residual_equalization", self.residual_equalization, (True, False))
        for key in ("pow2_fit", "concat_input_scales"):
            if getattr(self, key) not in (True, False):
                raise ConfigError(key, getattr(self, key), (True, False))
        bad = {k: v for k, v in self.overrides.items() if v not in ("int8", "uint8", "int16", "float")}
        if bad:
            raise ConfigError("overrides", bad, ("int8", "uint8", "int16", "float"))
        if self.host_sigmoid_heads not in HOST_SIGMOID_HEADS:
            raise ConfigError("host_sigmoid_heads", self.host_sigmoid_heads, HOST_SIGMOID_HEADS)
        if self.pre_activation_points not in ("chip", "tflite"):
            raise ConfigError("pre_activation_points", self.pre_activation_points, ("chip", "tflite"))
        for key in ("range_choice", "log_ranges"):
            if getattr(self, key) not in (True, False):
                raise ConfigError(key, getattr(self, key), (True, False))
        for key in ("range_search_groups", "range_search_samples", "range_choice_images", "range_choice_samples",
                    "log_range_samples"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(key, getattr(self, key), "an integer >= 1")
        if self.histogram_bins < 256:
            raise ConfigError("histogram_bins", self.histogram_bins, ">= 256")

    @property
    def resolved_method(self) -> str:
        return self.method or get_scheme(self.dtype).default_method

    @property
    def requantized_pre_activations(self) -> object:
        """Which conv outputs are integers before their activation (plan.py): True where the target chip stores
        some so, plan.ALL_PRE_ACTIVATIONS for pre_activation_points='tflite' (every conv before an activation TFLite
        cannot fuse)."""
        from ..targets.chips import requantizes_pre_activations
        from .plan import ALL_PRE_ACTIVATIONS

        if self.pre_activation_points == "tflite":
            return ALL_PRE_ACTIVATIONS
        return requantizes_pre_activations(self.target, self.dtype)

    @property
    def resolved_rounding(self) -> str:
        return "gptq" if self.weight_rounding == "auto" else self.weight_rounding


@dataclass
class QuantResult:
    model: onnx.ModelProto      # QDQ graph (or fp16 graph); same float inputs and outputs as the float model
    tensors: Dict[str, dict]    # tensor name -> {dtype, scale, zero_point, axis, kind}
    report: Dict = field(default_factory=dict)
    # each quantized weight's and bias's float values after the quantizer's exact rewrites (equalized, split,
    # pre-processing folded), before rounding and bias correction: what "left float" means to auto hybrid
    float_weights: Dict[str, np.ndarray] = field(default_factory=dict)


def quantize(model: onnx.ModelProto, data: CalibrationData, options: QuantOptions,
             progress: bool = True, stats_cache=None) -> QuantResult:
    """Quantize ``model`` (float ONNX, inputs as deployed) with calibration ``data``; see QuantOptions.
    stats_cache: a stats_cache.StatsCache shared between builds: calibration passes already run on the same graph,
    feeds and request are reused (the result is byte-identical)."""
    from threadpoolctl import threadpool_limits

    from .pipeline import run

    options.validate()
    t0 = time.perf_counter()
    # numpy's BLAS on one thread: the pipeline runs onnxruntime's threads beside its numpy work (calibration,
    # rounding statistics), and idle BLAS threads spin on the cores onnxruntime needs (YOLOX-nano on 2 cores:
    # rounding statistics 1.9 -> 1.4 s, range choice 0.95 -> 0.7 s; the same model bytes)
    with threadpool_limits(limits=1, user_api="blas"):
        result = run(model, data, options, progress, stats_cache)
    result.report["seconds"] = round(time.perf_counter() - t0, 3)
    result.report["options"] = asdict(options)
    log.info("quantized to %s (%s, %s) in %.1f s", options.dtype, options.algorithm, options.resolved_method,
             result.report["seconds"])
    return result


__all__ = ["QuantOptions", "QuantResult", "quantize", "read_dataset", "InputSpec", "CalibrationData"]
