"""Rebuild tests/data from the originals in ../shared/data (see README.md here for what each file is).

usage: python tests/data/make_test_data.py [--shared ../shared/data] --upstream PATH_TO_yolox-pytorch_CHECKOUT

--upstream is a checkout of the yolox-pytorch training code (github.com/bubbliiiing/yolox-pytorch, the code the seed
imports; its `nets` package is imported, never copied): the reference outputs for the downscaled iris_test.jpg are
computed with it, after checking that it reproduces the original reference outputs exactly.
Each step checks what it wrote against the original and prints the difference.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import real_data as rd  # noqa: E402

# The COCO photos are stored at the size the detectors' letterbox resizes them to, resized the way it does it (so that
# resize is then the identity and only the JPEG re-encoding differs from the original pipeline's pixels). The ImageNet
# photos stay as they are: MobileNetV2's top-2 margins move on sub-level pixel noise (a quality-95 re-encode turns a
# 0.24 probability lead into 0.01), which changes the quantization tests' top-1 counts.
JPEG_QUALITY = 95
IRIS_SIDE = 624  # the iris image stays larger than 416: the letterbox still downscales it, as it did the original
MISC_AS_IS = ("dog.jpg", "bus.jpg", "messi5.jpg", "zidane.jpg", "1face.png", "3faces.png", "iris_test_eye.jpg")


def detector_size(h: int, w: int, size: int = 416):
    """(width, height) of the top-left letterbox's resized image (bench/quant_accuracy.py's letterbox)."""
    r = min(size / h, size / w)
    return int(w * r), int(h * r)


def write_jpeg(img: np.ndarray, dst: Path) -> None:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, dst
    dst.write_bytes(buf.tobytes())


def images(shared: Path, out: Path) -> None:
    for sub in ("coco", "imagenet", "misc"):
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
    for src in sorted((shared / "images" / "coco").glob("*.jpg")):
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        write_jpeg(cv2.resize(img, detector_size(*img.shape[:2]), interpolation=cv2.INTER_LINEAR),
                   out / "images" / "coco" / src.name)
    for src in sorted((shared / "images" / "imagenet").glob("*.JPEG")):
        shutil.copyfile(src, out / "images" / "imagenet" / src.name)
    for name in MISC_AS_IS:
        shutil.copyfile(shared / "images" / "misc" / name, out / "images" / "misc" / name)
    iris = cv2.imread(str(shared / "images" / "misc" / "iris_test.jpg"), cv2.IMREAD_COLOR)
    write_jpeg(cv2.resize(iris, (IRIS_SIDE, IRIS_SIDE), interpolation=cv2.INTER_AREA),
               out / "images" / "misc" / "iris_test.jpg")
    shutil.copyfile(shared / "coco_80_labels.txt", out / "coco_80_labels.txt")


def models(shared: Path, out: Path) -> None:
    import onnxruntime as ort
    import torch

    (out / "models").mkdir(parents=True, exist_ok=True)
    for name in ("yolox_nano_coco", "nanodet_m_coco", "ultraface_rfb320"):
        n = rd.compact_onnx(shared / "models" / f"{name}.onnx", out / "models" / f"{name}.fp16.onnx")
        restored = out / "models" / f"{name}.restored.onnx"
        rd.restore_onnx(out / "models" / f"{name}.fp16.onnx", restored)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the ultraface export lists its weights as inputs: ORT warns about each
        sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    for p in (shared / "models" / f"{name}.onnx", restored)]
        feed = {}
        for i in sessions[0].get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            feed[i.name] = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        a, b = (s.run(None, feed) for s in sessions)
        print(f"{name}: {n} initializers as float16; max |output difference| on a random input "
              f"{max(float(np.abs(x - y).max()) for x, y in zip(a, b)):.2e}")
        restored.unlink()

    original = torch.jit.load(str(shared / "models" / "mobilenet_v2_imagenet.pt"), map_location="cpu").eval()
    state = original.state_dict()
    mirror = rd.mobilenet_v2()
    mirror.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 4 - 2
    with torch.no_grad():
        same = torch.equal(mirror(x), original(x))
    assert same, "the MobileNetV2 mirror does not reproduce the original TorchScript file"
    rd.compact_state_dict(state, out / "models" / "mobilenet_v2_imagenet.weights.xz")
    mirror.load_state_dict(rd.load_compact_state_dict(out / "models" / "mobilenet_v2_imagenet.weights.xz"))
    with torch.no_grad():
        a, b = original(x), mirror(x)
    print(f"mobilenet_v2: mirror == original with float32 weights; with the compact weights max |logit difference| "
          f"{float((a - b).abs().max()):.2e}, top-1 {'same' if torch.equal(a.argmax(1), b.argmax(1)) else 'DIFFERS'}")


def yolox_reference(shared: Path, out: Path, upstream: Path) -> None:
    import torch

    ref_in, ref_out = shared / "yolox_pytorch_ref", out / "yolox_pytorch_ref"
    ref_out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ref_in / "yolox_pytorch_state_dict_keys.json", ref_out / "yolox_pytorch_state_dict_keys.json")
    original = torch.load(ref_in / "yolox_nano_3cls_seed0.pth", map_location="cpu", weights_only=True)
    assert rd.state_dict_sha256(original) == rd.NANO_REF_SHA256
    state = rd.nano_reference_state_dict()
    assert rd.state_dict_sha256(state) == rd.NANO_REF_SHA256, "regenerated weights differ from the original .pth"
    assert np.array_equal(rd.reference_input(shared / "images" / "misc" / "iris_test.jpg"),
                          np.load(ref_in / "input_nchw_float32.npy")), "the input recipe differs from the original"

    sys.path.insert(0, str(upstream))
    from nets.yolo import YoloBody  # the reference implementation

    model = YoloBody(3, "nano")
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        again = model(torch.from_numpy(np.load(ref_in / "input_nchw_float32.npy")))
        diff = max(float(np.abs(o.numpy() - np.load(ref_in / f"output{k}.npy")).max()) for k, o in enumerate(again))
        assert diff <= 1e-5, f"the upstream code does not reproduce the original outputs (max |difference| {diff})"
        outs = model(torch.from_numpy(rd.reference_input(out / "images" / "misc" / "iris_test.jpg")))
    for k, o in enumerate(outs):
        np.save(ref_out / f"output{k}.npy", o.numpy().astype(np.float32))
    print(f"yolox reference: weights regenerated bit for bit; the upstream code reproduces the original outputs "
          f"(max |difference| {diff:.1e}); outputs written for the downscaled iris_test.jpg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=TESTS.parents[1] / "shared" / "data")
    ap.add_argument("--upstream", type=Path, required=True, help="a yolox-pytorch checkout (has nets/yolo.py)")
    args = ap.parse_args()
    out = rd.DATA
    images(args.shared, out)
    models(args.shared, out)
    yolox_reference(args.shared, out, args.upstream)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix not in (".py", ".md"))
    print(f"test data: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
