"""--validate: the exported model on the LiteRT interpreter against openrknn's int8 simulator, per-output cosine."""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np

from ...errors import InferenceInputError
from ...package import RknnPackage


def load_inputs(paths: Sequence[str], pkg: RknnPackage) -> List[List[np.ndarray]]:
    """One sample per path (single-input models): images decoded like the calibration images, or .npy arrays."""
    import cv2

    metas = pkg.metadata["inputs"]
    if len(metas) != 1:
        raise InferenceInputError(f"--validate takes image or .npy paths for single-input models; this one has "
                                  f"{len(metas)} inputs")
    meta = metas[0]
    rgb2bgr = bool(pkg.metadata.get("build", {}).get("quant_img_RGB2BGR"))
    samples = []
    for path in paths:
        path = os.fspath(path)
        if path.endswith(".npy"):
            samples.append([np.load(path, allow_pickle=False)])
            continue
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise InferenceInputError(f"--validate: '{path}' is not a readable image or .npy file")
        h, w = meta["shape"][1:3]
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        samples.append([img if rgb2bgr else np.ascontiguousarray(img[:, :, ::-1])])
    return samples


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na and nb else 0.0


def validate(pkg: RknnPackage, tflite: bytes, samples: List[List[np.ndarray]], threads=None) -> dict:
    from ...runtime.simulator import Simulator
    from ...runtime.tflite_runner import TfliteRunner

    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=threads)
    runner = TfliteRunner(tflite, delegate=None, threads=threads)
    names = [o["name"] for o in pkg.metadata["outputs"]]
    per_image = []
    for sample in samples:
        ours = sim.run(sample)
        theirs = runner.run(sample)
        per_image.append([cosine(a, b) for a, b in zip(ours, theirs)])
    arr = np.asarray(per_image)
    return {"outputs": names, "per_image": per_image, "mean": arr.mean(axis=0).tolist(),
            "min": arr.min(axis=0).tolist()}


def format_validation(res: dict) -> str:
    lines = [f"{'output':<32} {'mean cosine':>12} {'min cosine':>11}   (LiteRT vs openrknn int8 simulator, "
             f"{len(res['per_image'])} inputs)"]
    for name, mean, low in zip(res["outputs"], res["mean"], res["min"]):
        lines.append(f"{name[:32]:<32} {mean:>12.6f} {low:>11.6f}")
    return "\n".join(lines)
