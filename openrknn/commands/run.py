"""`openrknn run model.rknn img.jpg ... --out dir`: run a model in the simulator and save its outputs as .npy."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import List

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a .rknn model on images or .npy files and save the outputs as .npy")
    p.add_argument("model", help=".rknn file")
    p.add_argument("samples", nargs="+", help="image or .npy per sample; for several inputs join them with commas "
                   "(a.jpg,b.npy)")
    p.add_argument("-o", "--out", default="outputs", help="folder for <sample>_out<k>.npy files (default: outputs)")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--rgb", action="store_true", help="decode images as RGB (default: as the model was "
                       "calibrated: RGB unless it was built with quant_img_RGB2BGR)")
    order.add_argument("--bgr", action="store_true", help="feed images in OpenCV's BGR order")
    p.add_argument("--resize", choices=("stretch", "letterbox", "none"), default="stretch",
                   help="how to fit images to the model input (default: stretch; a dynamic_input model takes "
                   "an image of any of its shape sets as it is)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    p.set_defaults(func=run)


def _read_image(path: Path, shape, bgr: bool, resize: str, sizes=()) -> np.ndarray:
    """The image at ``path`` as an input of NHWC ``shape`` takes it (gray, RGB or RGBA by its channels, decoded as
    the calibration images are). sizes: the other (h, w) the input takes (a dynamic_input model's shape sets): an
    image of one of them is fed as it is; any other is resized to the shape's."""
    from ..errors import InferenceInputError
    from ..quant.dataset import read_image, resize_image

    try:
        img = read_image(path, shape[3], bgr)
    except ValueError as e:
        raise InferenceInputError(f"'{path}': {e}") from None
    if img is None:
        raise InferenceInputError(f"'{path}' could not be decoded as an image (missing, empty or corrupt)")
    h, w = shape[1:3]
    if img.shape[:2] != (h, w) and tuple(img.shape[:2]) not in sizes:
        if resize == "none":
            raise InferenceInputError(f"'{path}' is {img.shape[1]}x{img.shape[0]} but the model takes {w}x{h}; use "
                                      "--resize stretch or letterbox")
        if resize == "stretch":
            img = resize_image(img, h, w)
        else:
            from ..vision.letterbox import letterbox

            img, _ = letterbox(img, (w, h))
            img = img.reshape(h, w, shape[3])
    return img


def _load_sample(spec: str, metadata: dict, bgr: bool, resize: str) -> List[np.ndarray]:
    from ..errors import InferenceInputError
    from ..quant.dataset import nhwc_from_nchw
    from ..runtime.shape_sets import image_sizes

    metas = metadata["inputs"]

    parts = [Path(p) for p in spec.split(",")]
    if len(parts) != len(metas):
        raise InferenceInputError(f"sample '{spec}' gives {len(parts)} file(s) but the model has {len(metas)} inputs; "
                                  "join one file per input with commas")
    arrays = []
    for j, (p, meta) in enumerate(zip(parts, metas)):
        sizes = image_sizes(metadata, j)
        if not p.is_file():
            raise InferenceInputError(f"sample file not found: '{p}'")
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
            # an image input's NCHW array (rknn-toolkit2's layout for .npy files), as build and accuracy_analysis
            # read them
            nhwc = nhwc_from_nchw(arr, meta["shape"]) if meta["layout"] == "nhwc" else None
            arrays.append(arr if nhwc is None else nhwc)
        elif p.suffix.lower() in IMAGE_SUFFIXES and meta["layout"] == "nhwc":
            arrays.append(_read_image(p, meta["shape"], bgr, resize, sizes))
        elif meta["layout"] != "nhwc":
            raise InferenceInputError(f"'{p}': input '{meta['name']}' is not an image (shape {list(meta['shape'])}, "
                                      f"{meta.get('dtype', 'float32')}); give a .npy file holding that array")
        else:
            raise InferenceInputError(f"'{p}': give an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy file for "
                                      f"input '{meta['name']}'")
    return arrays


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    from ..atomic import write_bytes_atomic

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    from ..package import read_package
    from ..runtime.simulator import Simulator
    from ..timing import WARMUP_RUNS

    pkg = read_package(args.model)
    metas = pkg.metadata["inputs"]
    bgr = args.bgr or (not args.rgb and bool(pkg.metadata.get("build", {}).get("quant_img_RGB2BGR")))
    samples = [_load_sample(s, pkg.metadata, bgr, args.resize) for s in args.samples]  # all read before any write
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=args.threads)
    for _ in range(WARMUP_RUNS):  # the times printed are warm ones, as detect and perf report them (timing.py)
        sim.run(samples[0])
    times: List[float] = []
    t = time.perf_counter()
    outputs = sim.run_many(samples, times_ms=times)  # concurrently, one sample per core
    wall = time.perf_counter() - t
    results = list(zip(args.samples, outputs, times))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'sample':40s} {'ms':>8s}  outputs")
    for spec, outs, ms in results:
        stem = "+".join(Path(p).stem for p in spec.split(","))
        for k, o in enumerate(outs):
            _save_npy(out_dir / f"{stem}_out{k}.npy", o)
        print(f"{spec[-40:]:40s} {ms:8.2f}  " + ", ".join(f"{list(o.shape)} {o.dtype}" for o in outs))
    print(f"{len(samples)} sample(s) in {wall:.2f} s on {sim.workers if len(samples) > 1 else 1} core(s): "
          f"{len(samples) / wall:.1f} samples/s")
    colour = [m for m in metas if m["layout"] == "nhwc" and len(m["shape"]) == 4 and m["shape"][3] != 1]
    gray = any(m["layout"] == "nhwc" and len(m["shape"]) == 4 and m["shape"][3] == 1 for m in metas)
    order = f"channel order fed: {'BGR' if bgr else 'RGB'}; " if colour else "images fed gray; " if gray else ""
    print(f"{order}outputs saved in {out_dir}/")
    reorders = [m["preprocess"]["reorder_channel"] for m in metas if m.get("preprocess")]
    if not (args.rgb or args.bgr) and any(r and r != sorted(r) for r in reorders):
        logging.getLogger("openrknn").warning(
            "this model reorders channels (%s) and images are decoded %s, as its calibration images were; if the board "
            "feeds OpenCV %s frames, pass --%s", reorders[0], "BGR" if bgr else "RGB", "RGB" if bgr else "BGR",
            "rgb" if bgr else "bgr")
    return 0
