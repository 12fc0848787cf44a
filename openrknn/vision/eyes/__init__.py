"""The built-in default model's data: procedural synthetic eye images (iris, pupil, shut-eye) with boxes."""

from __future__ import annotations

from pathlib import Path

from openrknn.errors import ModelLoadError
from openrknn.vision.eyes.synth import CLASS_NAMES, generate_sample, read_dataset, sample_at, write_dataset

# The trained default: a yolox-pytorch style state dict for YoloBody(3, "nano"); see openrknn/models/MODEL_CARD.md.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "eye_yolox_nano.pth"
DEFAULT_PHI = "nano"
DEFAULT_INPUT_SIZE = 416
# the pre-processing it was trained with (centred letterbox, pad 128, RGB, ImageNet mean / std on 0..255 pixels)
DEFAULT_MEAN_RGB = (123.675, 116.28, 103.53)
DEFAULT_STD_RGB = (58.395, 57.12, 57.375)
DEFAULT_PAD_VALUE = 128


def default_weights() -> Path:
    """Path of the shipped eye-detector weights; a clear error when the install lacks them."""
    if not DEFAULT_WEIGHTS.is_file():
        raise ModelLoadError(f"default eye detector weights not found at {DEFAULT_WEIGHTS}; reinstall openrknn or "
                             "train them with `python -m openrknn.vision.yolox.train --out <path>`")
    return DEFAULT_WEIGHTS


__all__ = ["CLASS_NAMES", "DEFAULT_INPUT_SIZE", "DEFAULT_MEAN_RGB", "DEFAULT_PAD_VALUE", "DEFAULT_PHI",
           "DEFAULT_STD_RGB", "DEFAULT_WEIGHTS", "default_weights", "generate_sample", "read_dataset", "sample_at",
           "write_dataset"]
