"""Reference outputs for the loaders from an independent implementation: OpenCV's dnn readers.

OpenCV 5 reads only ONNX and TFLite; the Darknet, Caffe and TensorFlow readers are in 4.x, so this script runs in its
own venv and imports nothing of openrknn (numpy + cv2 only):

    python3 -m venv /work/cache/cv4-venv && /work/cache/cv4-venv/bin/pip install 'opencv-python-headless<5' numpy
    /work/cache/cv4-venv/bin/python bench/loader_refs.py MANIFEST.json OUT_DIR

MANIFEST.json lists {name, format: darknet|caffe|tensorflow, files: [...], input: x.npy, outputs: [layer names]
or null (the net's unconnected outputs), nhwc: true when the input .npy is NHWC (TensorFlow)}. Each entry's outputs
go to OUT_DIR/<name>.npz (keys out0, out1, ...), float32. bench/loaders.py writes the manifest for the real and
generated models; tests/data/loaders/*.npz come from this script on the tests' generated models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def run(entry: dict) -> list:
    import cv2

    fmt, files = entry["format"], entry["files"]
    if fmt == "darknet":
        net = cv2.dnn.readNetFromDarknet(files[0], files[1])
    elif fmt == "caffe":
        net = cv2.dnn.readNetFromCaffe(files[0], files[1])
    elif fmt == "tensorflow":
        net = cv2.dnn.readNetFromTensorflow(files[0])
    else:
        raise SystemExit(f"unknown format {fmt}")
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    x = np.load(entry["input"]).astype(np.float32)
    if entry.get("nhwc"):  # OpenCV's TensorFlow reader takes NCHW blobs and permutes them itself
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    net.setInput(x)
    names = entry.get("outputs") or list(net.getUnconnectedOutLayersNames())
    if fmt == "darknet" and not entry.get("outputs"):
        # the raw maps the [yolo] layers read: the convolution three layers before each (conv, bn, activation)
        layer_names = net.getLayerNames()
        names = [layer_names[net.getLayerId(n) - 3] for n in names]
    outs = net.forward(names)
    return [np.asarray(o, np.float32) for o in outs], names


def main() -> None:
    manifest, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    import cv2

    for entry in json.loads(manifest.read_text()):
        outs, names = run(entry)
        np.savez_compressed(out_dir / f"{entry['name']}.npz", **{f"out{i}": o for i, o in enumerate(outs)},
                            layers=np.array(names), opencv=np.array(cv2.__version__))
        print(f"{entry['name']}: opencv {cv2.__version__}, outputs {names} {[o.shape for o in outs]}")


if __name__ == "__main__":
    main()
