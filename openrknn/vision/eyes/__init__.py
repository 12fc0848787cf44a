"""The built-in default model's data: procedural synthetic eye images (iris, pupil, shut-eye) with boxes."""

from openrknn.vision.eyes.synth import CLASS_NAMES, generate_sample, read_dataset, sample_at, write_dataset

__all__ = ["CLASS_NAMES", "generate_sample", "read_dataset", "sample_at", "write_dataset"]
