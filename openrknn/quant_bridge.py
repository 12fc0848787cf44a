"""The seam between build() and the quantizer: config() options -> QuantOptions, dataset.txt -> calibration data."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import onnx

from .config import BuildConfig
from .errors import DatasetError

log = logging.getLogger("openrknn.build")


def quantize_for_build(float_model: onnx.ModelProto, metas: List[dict], cfg: BuildConfig, dataset: Optional[str],
                       overrides: Optional[Dict[str, str]] = None):
    """overrides: hybrid quantization, {tensor or weight name: 'int8' | 'uint8' | 'int16' | 'float'}."""
    from .quant import QuantOptions, quantize
    from .quant.dataset import InputSpec, read_dataset

    if not dataset:
        raise DatasetError("build(do_quantization=True) needs dataset='dataset.txt': a text file listing one "
                           "calibration image (or .npy) per line; or build with do_quantization=False for a float "
                           "model")
    specs = [InputSpec(m["name"], list(m["shape"])) for m in metas]
    data = read_dataset(dataset, specs, rgb2bgr=cfg.quant_img_RGB2BGR, batch_size=cfg.batch_size, epochs=cfg.epochs)
    opts = QuantOptions(dtype=cfg.quantized_dtype, algorithm=cfg.quantized_algorithm, method=cfg.quantized_method,
                        target=cfg.target, weight_rounding=cfg.weight_rounding, range_remap=cfg.range_remap,
                        overrides=dict(overrides or {}))
    result = quantize(float_model, data, opts)
    meta = {"dtype": cfg.quantized_dtype, "algorithm": cfg.quantized_algorithm, "method": cfg.quantized_method,
            "weight_rounding": result.report.get("weight_rounding", {}).get("method", "nearest"),
            "calibration_samples": len(data), "tensors": result.tensors, "overrides": dict(overrides or {})}
    return result.model, meta, result.report
