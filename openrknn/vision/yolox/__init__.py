"""YOLOX: model definitions compatible with yolox-pytorch checkpoints, TorchScript export, post-processing.

torch-backed names are resolved lazily so that importing this package (e.g. for decoding on a board that has
only numpy + onnxruntime) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "YoloBody": "openrknn.vision.yolox.model",
    "PHI_MULTIPLIERS": "openrknn.vision.yolox.model",
    "export_torchscript": "openrknn.vision.yolox.export",
    "build_random_yolox": "openrknn.vision.yolox.export",
    "load_yolox": "openrknn.vision.yolox.export",
    "describe_state_dict": "openrknn.vision.yolox.export",
    "decode_yolox": "openrknn.vision.yolox.decode",
    "postprocess_yolox": "openrknn.vision.yolox.decode",
    "YoloxDecoded": "openrknn.vision.yolox.decode",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
