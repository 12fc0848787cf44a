"""The job a vendor toolkit process runs: plain JSON, so any Python the vendor needs (3.6-3.12) can read it.

One job = one model compiled by one toolkit. Paths are relative to the job's folder (the runner works there, which is
also where hybrid_quantization_step1 drops its files). The same fields drive rknn-toolkit2 (RKNPU2 chips) and
rknn-toolkit 1.7.x (RKNPU1: rk1808, rv1109, rv1126), whose API has the same method names; where their arguments
differ the job says which toolkit it is for and the runner passes only what that toolkit takes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

JOB_VERSION = 2
TOOLKITS = ("rknn-toolkit2", "rknn-toolkit")
ROUTES = ("qdq", "ranges", "float")


@dataclass
class ValidateSpec:
    inputs: List[List[str]]  # per sample: one .npy per model input (NHWC uint8, as the board feeds)
    stems: List[str]  # per sample: the name its output files start with
    out_dir: str  # the runner writes <stem>_<k>.npy here (vendor output k)


@dataclass
class VendorJob:
    toolkit: str  # one of TOOLKITS
    route: str  # one of ROUTES
    model: str  # the ONNX file to load
    config: Dict[str, object]  # RKNN.config(...) keyword arguments, already in the toolkit's own vocabulary
    inputs: List[str]  # graph input names (load_onnx(inputs=...))
    input_size_list: List[List[int]]  # NCHW (rknn-toolkit2: with the batch dim; rknn-toolkit 1.x: without)
    outputs: List[str]  # graph output names (load_onnx(outputs=...))
    export: str  # the vendor .rknn to write
    result: str = "result.json"
    dataset: Optional[str] = None  # route "ranges": hybrid_quantization_step1's dataset.txt
    ranges: Dict[str, List[float]] = field(default_factory=dict)  # route "ranges": tensor -> [min, max]
    # tensor -> dtype of its producing layer in the vendor's custom_quantize_layers ('int16' | 'float16'): our hybrid
    custom_layers: Dict[str, str] = field(default_factory=dict)
    # route "ranges": weight tensor -> our per-output-channel scales; the runner sets the vendor's weight table so
    # that its grid holds our symmetric integers exactly (rknn-toolkit2 quantizes weights asymmetrically)
    weight_scales: Dict[str, List[float]] = field(default_factory=dict)
    layer_table: bool = True  # capture the compiled layer table (op, dtype) from the vendor's verbose log
    validate: Optional[ValidateSpec] = None
    # accuracy_analysis right after compiling: {"inputs": one .npy per model input (NCHW float, as it reads them),
    # "out_dir": the folder its per-tensor dumps go to}
    dump_tensors: Optional[Dict[str, object]] = None
    version: int = JOB_VERSION

    def __post_init__(self) -> None:
        if self.toolkit not in TOOLKITS:
            raise ValueError(f"toolkit {self.toolkit!r} is not one of {TOOLKITS}")
        if self.route not in ROUTES:
            raise ValueError(f"route {self.route!r} is not one of {ROUTES}")
        if self.route == "ranges" and not self.dataset:
            raise ValueError("route 'ranges' needs a dataset for hybrid_quantization_step1")
        if isinstance(self.validate, dict):
            self.validate = ValidateSpec(**self.validate)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VendorJob":
        data = json.loads(text)
        if data.get("version") != JOB_VERSION:
            raise ValueError(f"vendor job version {data.get('version')!r}; this openrknn writes {JOB_VERSION}")
        return cls(**data)
