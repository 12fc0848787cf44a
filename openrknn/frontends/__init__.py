"""Frontends turn a user's model file into one ONNX graph (opset OPSET, static shapes, float inputs)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import onnx

# One working opset for everything downstream (16-bit QDQ uses the com.microsoft Quantize/DequantizeLinear, which
# onnxruntime runs at this opset; ONNX's own 16-bit QDQ would need 21).
OPSET = 17


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    framework: str  # "pytorch" | "onnx" | "tflite" | "darknet" | "caffe" | "tensorflow" | "tfjs" | "keras"
    source_file: str
    source_sha256: str
    notes: List[str] = field(default_factory=list)  # what the loader changed, for the log and the report
    # a model quantized elsewhere: {float tensor or weight: convert.qdq_import.SourceQuant}, kept by
    # build(do_quantization=False)
    source_quant: Optional[dict] = None
    # inputs the file takes as integer pixels (a quantized TFLite input): {input name: (mean, std) per channel} that
    # feed those integers as they are; build() uses them when config() gives no mean/std
    input_normalisation: Optional[dict] = None
    # the layout the file states for its 4-D inputs ({input name: 'nhwc' | 'nchw'}: TFLite's are NHWC whatever their
    # dims look like); build() takes it where config(input_layout=...) says nothing
    input_layouts: Optional[dict] = None
    # the same file loaded again at other input sizes (input_size_list -> LoadedModel), where the loader can:
    # config(dynamic_input=...) builds every shape set from it
    reload: Optional[Callable[[list], "LoadedModel"]] = field(default=None, compare=False, repr=False)

    @property
    def input_names(self) -> List[str]:
        return [i.name for i in self.model.graph.input]

    @property
    def input_shapes(self) -> List[List[int]]:
        return [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in self.model.graph.input]

    @property
    def output_names(self) -> List[str]:
        return [o.name for o in self.model.graph.output]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize_size_list(input_size_list, n_inputs: int | None = None,
                        ranks: List[int] | None = None, first_dims: List | None = None) -> List[List[int]]:
    """[[3,416,416]] (Toolkit v1) and [[1,3,416,416]] (Toolkit2) both mean one NCHW input of batch 1.

    With `ranks` (known for ONNX inputs) a shape one shorter than its input's rank gets the batch dim prepended;
    without them (TorchScript) every shape shorter than 4-D is taken as given without the batch dim.
    `first_dims`: each input's own first dim where the model fixes it (None where dynamic); a fixed first dim other
    than 1 is not a batch (an RNN state's [2, batch, 128]). Below 4-D a first dim other than 1 is taken as given
    (a time axis: [T, F] features); a 4-D image input must have batch 1.
    """
    from ..errors import ModelLoadError

    if input_size_list is None:
        return []
    if not isinstance(input_size_list, (list, tuple)) or not input_size_list:
        raise ModelLoadError(f"input_size_list={input_size_list!r} is not a list of shapes; give one shape per input, "
                             "e.g. [[3, 416, 416]] or [[1, 3, 416, 416]]")
    if all(isinstance(v, int) for v in input_size_list):  # a single shape without the outer list
        input_size_list = [input_size_list]
    shapes = []
    for k, s in enumerate(input_size_list):
        rank = ranks[k] if ranks is not None and k < len(ranks) else 4
        if rank == 0 and isinstance(s, (list, tuple)) and len(s) == 0:  # a scalar input (a sample rate, a flag)
            shapes.append([])
            continue
        if isinstance(s, (list, tuple)) and len(s) == 0 and ranks is not None:
            raise ModelLoadError(f"input_size_list entry {k + 1} is [] (a scalar), but input {k + 1} of the model has "
                                 f"{rank} dimensions; check the order of the shapes: one per input, in the model's "
                                 "input order")
        # up to 4 dims, or the input's own rank in full (a streaming model's 5-D caches)
        if (not isinstance(s, (list, tuple)) or (len(s) not in (1, 2, 3, 4) and len(s) != rank)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s)):
            raise ModelLoadError(f"input_size_list entry {s!r} is not a shape of positive integers; give [C, H, W] "
                                 "or [1, C, H, W] per input, or its full shape for an input of more dims ([] for a "
                                 "scalar input)")
        s = list(s)
        has_batch = len(s) == rank
        fixed = first_dims[k] if first_dims is not None and k < len(first_dims) else None
        # an image's first dim is its batch; a sequence's ([T, F] features of time-major RNNs, madmom's) may be time
        if has_batch and s[0] != 1 and s[0] != fixed and len(s) == 4:
            raise ModelLoadError(f"input_size_list entry {s} has batch {s[0]}; give batch 1 (use "
                                 "build(rknn_batch_size=N) for batched inference)")
        shapes.append(s if has_batch else [1] + s)
    if n_inputs is not None and len(shapes) != n_inputs:
        raise ModelLoadError(f"input_size_list has {len(shapes)} shapes but the model has {n_inputs} inputs; give "
                             "one shape per input, in the model's input order")
    return shapes
