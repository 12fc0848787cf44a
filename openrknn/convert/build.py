"""build(): LoadedModel + config -> BuildResult holding the in-memory .rknn package.

float graph (float_graph.py) -> quantize (quantize.py; hybrid.py for auto hybrid) -> package (package_meta.py).
The RKNN facade, `openrknn convert`, the GUI and the demo all build through here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx

from ..config import BuildConfig
from ..errors import BuildError, ConfigError
from ..frontends import LoadedModel
from ..package import RknnPackage
from .float_graph import build_float_graph, file_layouts, file_normalisation
from .package_meta import BuildFlags, make_package, source_record
from .quantize import quantize_float_graph

log = logging.getLogger("openrknn.build")


@dataclass(frozen=True)
class BuildOptions:
    """build()'s arguments.

    keep_float: node names of the float graph (what the GUI's layer table lists) to leave unquantized.
    overrides: quantizer overrides, {tensor or weight: 'int8' | 'uint8' | 'int16' | 'float'}.
    auto_hybrid: promote the fewest layers to 16-bit until every output's cosine against the float model reaches
        config(auto_hybrid_cos_thresh=...).
    stats_cache: an openrknn.quant.stats_cache.StatsCache shared by several builds (a sweep): calibration passes
        already run on the same graph and data are reused; the package is byte-identical to an uncached build.
    """

    do_quantization: bool = True
    dataset: Optional[str] = None
    pre_compile: bool = False
    rknn_batch_size: Optional[int] = None
    auto_hybrid: bool = False
    keep_float: Sequence[str] = ()
    overrides: Dict[str, str] = field(default_factory=dict)
    stats_cache: Optional[object] = field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        b = self.rknn_batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise BuildError(f"rknn_batch_size={b!r} must be a positive integer (or None for 1)")
        if (self.auto_hybrid or self.keep_float or self.overrides) and not self.do_quantization:
            what = "auto_hybrid" if self.auto_hybrid else "keep_float" if self.keep_float else "overrides"
            raise ConfigError(what, True if self.auto_hybrid else list(self.keep_float or self.overrides),
                              hint="choosing layers to keep out of int8 needs do_quantization=True and a dataset")


@dataclass
class BuildResult:
    package: RknnPackage
    float_model: onnx.ModelProto  # the float graph with pre-processing, before quantization
    model: onnx.ModelProto  # what the package holds (float or QDQ)
    notes: List[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    quant_report: Optional[dict] = None
    hybrid_report: Optional[dict] = None  # what auto hybrid promoted and what it costs
    float_weights: Dict[str, np.ndarray] = field(default_factory=dict)  # QuantResult.float_weights (int8 builds)


# Vendor options kept for script compatibility; say so rather than silently ignoring them.
_NO_EFFECT = (("force_builtin_perm", False, "inputs are always NHWC with the permute inside the graph"),
              ("quantize_input_node", False, "the input is always quantized by the graph's first quantize step"),
              ("output_optimize", 0, "outputs keep their float layout"))


def build(loaded: LoadedModel, cfg: BuildConfig, opts: BuildOptions = BuildOptions(),
          progress: bool = True) -> BuildResult:
    from threadpoolctl import threadpool_limits

    opts.validate()
    cfg = file_layouts(loaded, file_normalisation(loaded, cfg))
    # numpy's BLAS on one thread for the whole build: its matrices here are small, and its idle threads spin on the
    # cores that onnxruntime and our own worker threads use (auto hybrid's sensitivity ranking on nanodet-m, two
    # units at a time: 16 s with BLAS threads, 10 s without)
    with threadpool_limits(limits=1, user_api="blas"):
        if cfg.dynamic_input:  # one build at the largest shape set, the others as patches of it
            from .dynamic_input import build_shape_sets

            return build_shape_sets(loaded, cfg, lambda at, c: _build_at(at, c, opts, progress), opts)
        return _build_at(loaded, cfg, opts, progress)


def _build_at(loaded: LoadedModel, cfg: BuildConfig, opts: BuildOptions, progress: bool) -> BuildResult:
    if opts.auto_hybrid:
        from .hybrid import auto_hybrid

        return auto_hybrid(loaded, cfg, opts, progress=progress)
    return build_once(loaded, cfg, opts, progress=progress)


def build_once(loaded: LoadedModel, cfg: BuildConfig, opts: BuildOptions, progress: bool = True,
               float_graph: Optional[tuple] = None) -> BuildResult:
    """One build: float graph, then (int8) one calibration and quantization with opts' overrides.
    float_graph: build_float_graph(loaded, cfg) made earlier for the same model and config (auto hybrid's builds
    share one; quantizing copies it, so it is never changed)."""
    t0 = time.perf_counter()
    if opts.pre_compile:
        log.warning("pre_compile=True has no effect with openrknn: the model stays runnable in the simulator and on "
                    "boards running the openrknn runtime server")
    for key, default, why in _NO_EFFECT:
        if getattr(cfg, key) != default:
            log.info("%s=%r is recorded but changes nothing in openrknn: %s", key, getattr(cfg, key), why)
    if not opts.do_quantization and loaded.source_quant:  # quantized elsewhere: keep its scales (qdq_import.py)
        from .qdq_import import build_kept

        model, quantization, quant_report, float_model, metas, notes = build_kept(loaded, cfg, opts.dataset, progress)
        flags = BuildFlags(True, opts.dataset, bool(opts.pre_compile), opts.rknn_batch_size or 1)
        source = source_record(loaded.framework, loaded.source_file, loaded.source_sha256, loaded.notes + notes)
        pkg = make_package(float_model, model, metas, cfg, flags, quantization, source)
        timings = {"total_s": time.perf_counter() - t0}
        return BuildResult(pkg, float_model, model, loaded.notes + notes, timings, quant_report)
    if opts.do_quantization and loaded.source_quant:
        log.info("the model was quantized elsewhere; do_quantization=True re-quantizes it from its float weights "
                 "(build(do_quantization=False) keeps its own scales)")
    float_model, metas, notes = float_graph if float_graph is not None else build_float_graph(loaded, cfg)
    timings = {"float_graph_s": time.perf_counter() - t0}
    model, quantization, quant_report, float_weights = float_model, None, None, {}
    if opts.do_quantization:
        overrides = dict(opts.overrides)
        if opts.keep_float:
            from .hybrid import keep_float_overrides

            overrides = {**keep_float_overrides(float_model, opts.keep_float, cfg),
                         **overrides}
        t1 = time.perf_counter()
        result, quantization = quantize_float_graph(float_model, metas, cfg, opts.dataset, overrides, progress,
                                                    opts.stats_cache)
        model, quant_report, float_weights = result.model, result.report, result.float_weights
        timings["quantize_s"] = time.perf_counter() - t1
    flags = BuildFlags(bool(opts.do_quantization), opts.dataset, bool(opts.pre_compile), opts.rknn_batch_size or 1)
    source = source_record(loaded.framework, loaded.source_file, loaded.source_sha256, loaded.notes + notes)
    pkg = make_package(float_model, model, metas, cfg, flags, quantization, source)
    timings["total_s"] = time.perf_counter() - t0
    log.info("build done in %.2f s (%s)", timings["total_s"], "int8" if opts.do_quantization else "float")
    return BuildResult(pkg, float_model, model, loaded.notes + notes, timings, quant_report,
                       float_weights=float_weights)
