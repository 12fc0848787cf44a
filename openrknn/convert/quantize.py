"""The seam between config() and the quantizer: the one place a BuildConfig becomes QuantOptions, and dataset.txt
becomes calibration data."""

from __future__ import annotations

from typing import Dict, List, Optional

import onnx

from ..config import BuildConfig
from ..errors import DatasetError


def quant_options(cfg: BuildConfig, overrides: Optional[Dict[str, str]] = None,
                  fixed: Optional[Dict[str, tuple]] = None, metas: Optional[List[dict]] = None):
    """QuantOptions for ``cfg``. overrides: {tensor or weight: 'int8' | 'uint8' | 'int16' | 'float'} (hybrid);
    fixed: {tensor or weight: (scales, zero points)} used as given (edited hybrid parameters); metas: the deployed
    inputs (their image inputs' first points cover every pixel value)."""
    from ..quant import QuantOptions

    return QuantOptions(dtype=cfg.quantized_dtype, algorithm=cfg.quantized_algorithm, method=cfg.quantized_method,
                        target=cfg.target, weight_rounding=cfg.weight_rounding, range_split=cfg.range_split,
                        range_remap=cfg.range_remap, range_choice=cfg.range_choice, log_ranges=cfg.log_ranges,
                        pre_activation_points=cfg.pre_activation_points,
                        host_sigmoid_heads=cfg.host_sigmoid_heads, overrides=dict(overrides or {}),
                        fixed=dict(fixed or {}), pixel_inputs=pixel_inputs(metas or []))


def pixel_inputs(metas: List[dict]) -> tuple:
    """The inputs fed image pixels: those config() pre-processes (an 8-bit NHWC feed)."""
    return tuple(m["name"] for m in metas if m.get("preprocess") is not None and m.get("dtype") == "uint8")


def calibration_data(dataset: Optional[str], metas: List[dict], cfg: BuildConfig):
    """Read dataset.txt for the deployed inputs ``metas`` as the quantizer consumes it (streamed)."""
    from ..quant.dataset import InputSpec, read_dataset
    from ..runtime.feeds import graph_dtype

    if not dataset:
        raise DatasetError("quantization needs dataset='dataset.txt': a text file listing one calibration image (or "
                           ".npy) per line; or build with do_quantization=False for a float model")
    specs = [InputSpec(m["name"], list(m["shape"]), graph_dtype(m)) for m in metas]
    return read_dataset(dataset, specs, rgb2bgr=cfg.quant_img_RGB2BGR, batch_size=cfg.batch_size, epochs=cfg.epochs)


def quantization_record(cfg: BuildConfig, result, samples: int, overrides: Optional[Dict[str, str]] = None,
                        **extra) -> dict:
    """The container's 'quantization' entry for a QuantResult: settings, what was actually done, every tensor."""
    record = {"dtype": cfg.quantized_dtype, "algorithm": cfg.quantized_algorithm, "method": cfg.quantized_method,
              "weight_rounding": result.report.get("weight_rounding", {}).get("method", "nearest"),
              "range_split": bool(cfg.range_split), "range_remap": bool(cfg.range_remap),
              "range_choice": bool(cfg.range_choice), "log_ranges": bool(cfg.log_ranges),
              "pre_activation_points": cfg.pre_activation_points, "host_sigmoid_heads": cfg.host_sigmoid_heads,
              "calibration_samples": samples,
              "tensors": result.tensors,
              "overrides": dict(overrides or {}), "ranges": ranges_decided(result.report)}
    record.update(extra)
    return record


def ranges_decided(report: dict) -> dict:
    """What the output-judged range stages decided: range choice's set ('normal' = min/max, 'kl_divergence',
    'mmse'), the decades the ranges into a Log were cut by, the output Sigmoids the host computes, the conditioning
    branch it computes before the NPU (absent where a stage did not run or decided nothing)."""
    out = {}
    if report.get("range_choice"):
        out["chosen"] = report["range_choice"].get("chosen")
    if report.get("log_ranges"):
        out["log_cut_decades"] = float(report["log_ranges"].get("decades", 0.0))
    if report.get("host_sigmoids", {}).get("on_host"):
        out["host_sigmoids"] = list(report["host_sigmoids"]["on_host"])
    if (report.get("plan") or {}).get("host_branch"):
        out["host_branch"] = dict(report["plan"]["host_branch"])
    return out


def quantize_float_graph(float_model: onnx.ModelProto, metas: List[dict], cfg: BuildConfig, dataset: Optional[str],
                         overrides: Optional[Dict[str, str]] = None, progress: bool = True, stats_cache=None):
    """Calibrate and quantize; returns (QuantResult, quantization record). stats_cache: see
    openrknn.quant.stats_cache (calibration statistics shared between builds)."""
    from ..quant import quantize

    data = calibration_data(dataset, metas, cfg)
    result = quantize(float_model, data, quant_options(cfg, overrides, metas=metas), progress, stats_cache)
    return result, quantization_record(cfg, result, len(data), overrides)
