"""The one conversion core: a model file and a config become an in-memory .rknn package.

loaders (file -> LoadedModel) -> float_graph (optimise, pre-processing inside) -> quantize (the one place a config
becomes quantizer options and dataset.txt becomes calibration data) -> package_meta (the one place package metadata
is assembled). build.build runs that chain: plain, with layers kept in float, or with auto hybrid (hybrid.py, which
also has hybrid_quantization_step1/2). spec.py reads `openrknn convert` YAML files. The RKNN facade, the CLI, the GUI
and the demo all build through build.build.
"""

from .build import BuildOptions, BuildResult, build
from .float_graph import build_float_graph
from .loaders import load_model, load_onnx, load_pytorch, model_kind

__all__ = ["BuildOptions", "BuildResult", "build", "build_float_graph", "load_model", "load_onnx", "load_pytorch",
           "model_kind"]
