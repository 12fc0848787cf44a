"""--validate: the exported model on the LiteRT interpreter against openrknn's int8 simulator, per-output cosine."""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np

from ...errors import InferenceInputError
from ...package import RknnPackage


def load_inputs(paths: Sequence[str], pkg: RknnPackage) -> List[List[np.ndarray]]:
    """One sample per path (single-input models): images decoded like the calibration images, or .npy arrays."""
    from ...quant.dataset import image_input

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
        try:
            img = image_input(path, meta["shape"], rgb2bgr)  # as the calibration images
        except ValueError as e:
            raise InferenceInputError(f"--validate: input '{meta['name']}': {e}") from None
        if img is None:
            raise InferenceInputError(f"--validate: '{path}' is not a readable image or .npy file")
        samples.append([img])
    return samples


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na and nb else 0.0


def run_time_rows(meta: dict) -> bool:
    """An output whose length is the image's own (an NMS's rows: stored with a 0 or free dim)."""
    return any(not isinstance(d, int) or d <= 0 for d in meta.get("shape") or [])


def agreement(ours: np.ndarray, theirs: np.ndarray, rows: bool) -> float:
    """cosine; ``rows``: an output of selected rows, compared as sets (each side's rows sorted: where two boxes tie
    on score, the NMS order between them is the implementation's), 0 when the counts differ."""
    if not rows:
        return cosine(ours, theirs)
    if np.shape(ours) != np.shape(theirs):
        return 0.0
    def ordered(a):  # noqa: E306
        a = np.asarray(a)
        flat = a.reshape(a.shape[0], int(np.prod(a.shape[1:]))) if a.ndim else a.reshape(1, 1)
        return flat[np.lexsort(flat.T[::-1])] if flat.size else flat
    return cosine(ordered(ours), ordered(theirs))


def validate(pkg: RknnPackage, tflite: bytes, samples: List[List[np.ndarray]], threads=None) -> dict:
    from ...runtime.simulator import Simulator
    from ...runtime.tflite_runner import TfliteRunner

    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=threads)
    runner = TfliteRunner(tflite, delegate=None, threads=threads)
    names = [o["name"] for o in pkg.metadata["outputs"]]
    rows = [run_time_rows(o) for o in pkg.metadata["outputs"]]
    per_image, counts = [], [0] * len(names)
    for sample in samples:
        ours = sim.run(sample)
        theirs = runner.run(sample)
        per_image.append([agreement(a, b, r) for a, b, r in zip(ours, theirs, rows)])
        counts = [n + (np.shape(a) != np.shape(b)) for n, a, b in zip(counts, ours, theirs)]
    arr = np.asarray(per_image)
    return {"outputs": names, "per_image": per_image, "mean": arr.mean(axis=0).tolist(),
            "min": arr.min(axis=0).tolist(), "rows": rows, "counts_differ": counts}


def format_validation(res: dict) -> str:
    lines = [f"{'output':<32} {'mean cosine':>12} {'min cosine':>11}   (LiteRT vs openrknn int8 simulator, "
             f"{len(res['per_image'])} inputs)"]
    for k, (name, mean, low) in enumerate(zip(res["outputs"], res["mean"], res["min"])):
        line = f"{name[:32]:<32} {mean:>12.6f} {low:>11.6f}"
        if res.get("rows", [False] * (k + 1))[k]:
            line += (f"   rows as sets; the two keep a different number of rows on {res['counts_differ'][k]} of "
                     f"{len(res['per_image'])} inputs (0 there)")
        lines.append(line)
    return "\n".join(lines)
