"""Export an openrknn w8a8 package as an int8 TFLite model that keeps our scales, zero points and integers.

The writer is the `tflite` schema package over `flatbuffers` (see README, "Open NPU path"): it writes the
file directly, so every int8 weight, int32 bias, scale and zero point is the container's own; a converter would
re-quantize. Where TFLite's int8 rules differ from our NPU graph's, the rule is applied and logged
(ExportReport.changes); layers our graph computes in float between quantization points (fused activations such as
SiLU) stay float with DEQUANTIZE/QUANTIZE around them (ExportReport.layers).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List

from ...errors import ConfigError, NotSupportedError
from ...package import RknnPackage

log = logging.getLogger("openrknn.export")

TFLITE_DTYPES = ("w8a8",)
INPUT_DTYPES = ("uint8", "float32")


@dataclass
class ExportReport:
    layers: list                    # lower.LayerRecord per ONNX node
    changes: List[str]              # where TFLite's rules changed what ours say
    tflite_ops: List[str] = field(default_factory=list)
    seconds: float = 0.0
    size_bytes: int = 0
    model: object = field(default=None, repr=False)   # the writer.Model (Teflon placement reads it)
    # each quantization point the file holds as an int8 tensor -> (its tensor index, stored N,H,W,C); trace.py
    points: dict = field(default_factory=dict, repr=False)

    @property
    def float_layers(self) -> list:
        return [r for r in self.layers if r.mode == "float"]

    @property
    def int8_layers(self) -> list:
        return [r for r in self.layers if r.mode == "int8"]

    @property
    def fused_convs(self) -> list:
        """Convolutions left float because our graph applies the op after them inside them (an activation, a residual
        Add: no int8 output)."""
        return [r for r in self.float_layers if r.op_type == "Conv" and "pre_activation_points" in r.note]

    def hint(self) -> str:
        """What would put more of the model on Teflon's NPU, or '' when nothing would."""
        n = len(self.fused_convs)
        if not n:
            return ""
        return (f"{n} convolution(s) stay float on the CPU because the op after them (their activation, a residual "
                f"Add) is applied inside them; rebuild with config(pre_activation_points='tflite') to export them as "
                f"int8 convs Teflon offloads")

    def summary(self) -> str:
        lines = [f"{len(self.int8_layers)} layers int8, {len(self.float_layers)} float (our graph computes them in "
                 f"float between quantization points, or TFLite has no faithful int8 form), "
                 f"{len(self.tflite_ops)} TFLite ops, {self.size_bytes:,} bytes"]
        for r in self.float_layers:
            lines.append(f"  float: {r.layer} ({r.op_type}) -> {' + '.join(r.tflite_ops)}: {r.note}")
        for c in self.changes:
            lines.append(f"  changed: {c}")
        return "\n".join(lines)


def check_exportable(pkg: RknnPackage) -> None:
    """Refuse packages TFLite int8 cannot carry, saying what to do."""
    quant = pkg.metadata.get("quantization") or {}
    dtype = quant.get("dtype")
    if dtype in TFLITE_DTYPES:
        return
    what = "a float build" if not dtype else f"quantized_dtype '{dtype}'"
    raise NotSupportedError(
        f"export_tflite needs a w8a8 build, this model is {what}. TFLite int8 carries per-tensor asymmetric int8 "
        f"activations with per-channel (or per-tensor) symmetric int8 weights and int32 biases, which is exactly "
        f"RKNPU2's w8a8; 16-bit activations (w8a16, w16a16i), float16 and RKNPU1's u8/dynamic fixed point schemes "
        f"have no TFLite int8 form. Rebuild with config(target_platform='rk3588', quantized_dtype='w8a8') and "
        f"build(do_quantization=True, dataset=...)")


def export_tflite_bytes(pkg: RknnPackage, input_dtype: str = "uint8") -> "tuple[bytes, ExportReport]":
    """input_dtype: 'uint8', the board's pixel feed (the default, as the .rknn takes it), or 'float32' for inputs
    that are not pixels (audio features, embeddings): their values reach the graph unrounded, as the simulator's
    float feeds do."""
    import onnx

    from .graph import QdqGraph
    from .lower import Lowerer
    from .writer import serialize

    check_exportable(pkg)
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError("export_tflite input_dtype", input_dtype, INPUT_DTYPES,
                          "use 'uint8' for image pixels, 'float32' for features that are not whole numbers")
    try:
        import flatbuffers  # noqa: F401
        import tflite  # noqa: F401
    except ImportError:
        raise NotSupportedError("export_tflite writes the file with the `tflite` schema package and `flatbuffers`: "
                                "pip install 'openrknn[tflite]'") from None
    t0 = time.perf_counter()
    lowerer = Lowerer(QdqGraph(onnx.load_from_string(pkg.model_bytes)), pkg.metadata["inputs"],
                      float_inputs=input_dtype == "float32")
    model = lowerer.run()
    model.description = f"openrknn {pkg.metadata.get('toolkit_version', '')} w8a8 export"
    data = serialize(model)
    report = ExportReport(lowerer.layers, lowerer.changes, [op.builtin for op in model.operators],
                          time.perf_counter() - t0, len(data), model, lowerer.int8_points())
    return data, report


def export_tflite(pkg: RknnPackage, path: str, input_dtype: str = "uint8", shape_set=None) -> ExportReport:
    """Write `path` atomically; log the changes TFLite's rules made and the layers left in float. shape_set: a
    dynamic_input model's set to write (its label such as '1x3x240x320', or its index; default: the base set)."""
    from ...atomic import write_bytes_atomic
    from ...runtime.shape_sets import base_set_only, package_of_set

    note = base_set_only(pkg.metadata, "the .tflite", "shape_set= (--shape-set) writes another") \
        if shape_set is None else None
    if shape_set is not None:
        pkg = package_of_set(pkg, shape_set)
    data, report = export_tflite_bytes(pkg, input_dtype)
    write_bytes_atomic(path, data)
    if note:
        log.warning("export-tflite: %s", note)
    for c in report.changes:
        log.info("export-tflite: %s", c)
    for r in report.float_layers:   # hundreds on a detector: the summary below counts them, --layers lists them
        log.debug("export-tflite: layer %s (%s) stays float: %s", r.layer, r.op_type, r.note)
    log.info("export-tflite: wrote %s (%d int8 layers, %d float, %.2f MB) in %.2f s", path, len(report.int8_layers),
             len(report.float_layers), report.size_bytes / 1e6, report.seconds)
    if report.hint():
        log.info("export-tflite: %s", report.hint())
    return report
