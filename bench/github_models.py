"""Real models from public GitHub repositories (committed files at a pinned commit, sha256-checked), through the
public API as a user would run them: float and w8a8 builds against onnxruntime on the file, beside rknn-toolkit2
2.5.0 where bench/corpus.py's vendor virtualenv exists.

    python bench/github_models.py [--cache DIR] [--only ROWS]

Each file is downloaded once from raw.githubusercontent.com into <cache>/github/<owner>/<repo>/; where GitHub is not
reachable, put the file there yourself (the error names the path). The models, all from Kazuhito00's sample
repositories (Apache-2.0 or MIT, as each says):
- nms_inside: a YOLOX-nano hand-sign detector exported "with post" (its decode written with ScatterND, scores =
  sqrt(objectness x class), NonMaxSuppression, the kept rows gathered: one [K, 7] output whose length depends on
  the image; NARUTO-HandSignDetection). The metric: the float model's detections (score >= 0.3) found again with
  the same class and IoU >= 0.5, and the extra ones.
- end2end: not a download: the shared COCO YOLOX-nano with the "end2end" tail yolov7-style exporters write for
  onnxruntime (boxes to corners by a 4x4 MatMul, the best class per box, class-offset boxes into one NMS, the kept
  rows read back by advanced indexing), made with torch (openrknn.testing.yolov7_end2end); the same metric.
  end2end_per_class: the variant other forks write (one NMS over every class's scores, the rows unbound).
- ssd_pets, ssd_pets_b: two quantized SSD MobileNet pet detectors (37 breeds) as TensorFlow's object detection API
  exports them for TFLite (uint8 300x300 in; TFLite_Detection_PostProcess: the anchor decode and NMS as one custom
  op; mmmwembe/pet-ai-detector, gmikels/cloud-cmle-mobilenet); against LiteRT on the file, the same metric.
- person_detector: a one-class YOLOX (192x192, raw head output; MOT-Tracking-by-Detection-Pipeline), decoded as
  openrknn's YOLOX path decodes; the same metric.
- edges: LDC, a dense edge detector (640x360, five side outputs and their fusion, ConvTranspose, an InstanceNorm
  at the input; LDC-ONNX-Sample); each output's cosine and the F1 of the fused edge map (sigmoid > 0.5) against
  the float model's.
- keypoints: XFeat (320x224; descriptors, keypoint logits over 65 bins, reliability; XFeat-Image-Matching-ONNX-
  Sample); each output's cosine.
- segmentation: a PAN with a MobileNetV3-small encoder (hard-swish, squeeze-excite; skin, clothes and hair masks
  at 512x512; Skin-Clothes-Hair-Segmentation-using-SMP), fed the repository's own photos and COCO; the masks' IoU
  (sigmoid > 0.5) against the float model's.
- reid: OpenVINO's person-reidentification-retail-0288 converted through TF (NHWC [1, 256, 128, 3] input, an
  OSNet with instance norms spelled out as ReduceMean / Sqrt / Div; MOT-Tracking-by-Detection-Pipeline), fed
  vertical crops of the shared images as a tracker crops people; the embedding's cosine and the crops whose
  nearest neighbour (cosine of embeddings) is the float model's.
- faces: SCRFD-2.5G, insightface's face detector with five landmarks (640x640; per stride a score, box-distance and
  landmark-distance output: nine; hpc203/scrfd-opencv), on the portraits and group selfies of two repositories and
  the shared images, letterboxed; decoded as the repository's demo decodes (score 0.5, NMS 0.4). The metric: the
  float model's faces found again (IoU >= 0.5) and the landmarks' mean error in face widths. Calibrated as a user
  of a face detector would (crops of the group selfie and two portraits) and, to show what a calibration set
  without faces does, on the shared COCO and misc images.
- fastest: Yolo-FastestV2 (352x352, COCO; one [605, 95] output of raw grid predictions with the objectness and class
  sigmoids inside; hpc203/yolo-fastestv2-opencv); the (cell, anchor, class) entries whose objectness x class score
  passes 0.3, against the float model's.
- line_segments: M-LSD tiny (512x512 NHWC RGB plus a channel of ones; its line centres found inside the model: a
  sigmoid heat map, a 3x3 MaxPool equal to it marks the peaks, TopK keeps 200; hpc203/M-LSD-onnxrun-cpp-py), on
  the repository's indoor photos and the shared images; the metric: the float model's centres (score > 0.1) with an
  int8 centre within one pixel, and the int8 centres with no float one there.
Later rounds (each row's docstring says how it is fed and judged): gfl_detector (NanoDet-m), lanes (LSTR), pose
(MoveNet's int8 TFLite), light_faces (Ultra-Light RFB-640), yunet, gestures (two TFLite MLPs), caffe_faces (three
Caffe files), enhancement (PairLIE, LYT-Net, CSRNet: image to image, judged by PSNR), v8_faces (YOLOv8-lite-t faces),
face_quality (a face-quality regressor fed v8_faces' crops), micro_lstm (TensorFlow Lite Micro's MNIST LSTM, float and
int8), pytorch_int8_tflite (a PyTorch QAT MobileNetV2 as an int8 TFLite with an NCHW input) and int16_layers
(TensorFlow Lite Micro's 16x8 SEANet layer tests against their golden outputs), plates (a plate detector and
LPRNet, chained), converted (PINTO's conversions of two low-light enhancers and two segmenters), detr (DEIMv2, a
DETR-family detector with its query selection and postprocessor inside), speech_enhancement (GTCRN, streamed),
super_resolution (ESPCN x2, a webcam upscaler from SCUMBAG0LEE/ESPCN-Realtime-Webcam-Upscaler, and its float16 file)
and rtmdet (an RTMDet-nano people detector from a repository that deploys it to RK3588 with rknn-toolkit2).
Calibration on the even-numbered inputs, evaluation on the odd-numbered ones, unless a row says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import urllib.request
from pathlib import Path

import numpy as np

from arrivals import _vendor, build, cosine, images, print_rows  # also puts the repository root on sys.path

REPOS = {
    "naruto": ("Kazuhito00/NARUTO-HandSignDetection", "07f4d3231f43f97cbd37653c793825f1dbc94d0e"),
    "mot": ("Kazuhito00/MOT-Tracking-by-Detection-Pipeline", "e50a76b8b430b778276e7fd04fd4cafd5d45eab2"),
    "ldc": ("Kazuhito00/LDC-ONNX-Sample", "7556b4e80d5af66af13104efb5b0fbbde05cc8ba"),
    "xfeat": ("Kazuhito00/XFeat-Image-Matching-ONNX-Sample", "6eb24aad8997243881f275a5963acc5d19f7c332"),
    "smp": ("Kazuhito00/Skin-Clothes-Hair-Segmentation-using-SMP", "043fc08bf0ed845b36485a115085104c6459cbc4"),
    "scrfd": ("hpc203/scrfd-opencv", "eee7bf1ee0dbe9615d8d8caaa53702e0d2dca001"),
    "gaze": ("hpc203/gaze-estimation-opencv-dnn", "5181ebe24711932c5d1f2be40fe06ce7370d5f90"),
    "fastest": ("hpc203/yolo-fastestv2-opencv", "f865b7c18780c5e5f699e5fcb66074fad0ba3497"),
    "mlsd": ("hpc203/M-LSD-onnxrun-cpp-py", "cbe65521b99c32ce9458d2bdbc0a19f63bb4d85a"),
    "lstr": ("hpc203/LSTR-lane-detect-onnxrun-cpp-py", "8d82a8a273dc71e73e03d7060a7479820a8e54eb"),
    "movenet": ("Kazuhito00/MoveNet-Python-Example", "515743a113e49b4f31677b1f6252c0041f237e30"),
    "ultralight": ("Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB", "dffdddda9794a50607cba8f318507a28c1c27cab"),
    "yunet": ("ShiqiYu/libfacedetection.train", "0047ac24afb1a50a0c6105001c89d1b5b805dbf1"),
    "gesture": ("Kazuhito00/hand-gesture-recognition-using-mediapipe", "19311a68b16b42d3ee89e505e3f185693dbd7147"),
    "yoloface": ("hpc203/yoloface-landmark106", "2fe96d7147326216a695bed8c109f4505b93efee"),
    "facemask": ("hpc203/FaceMaskDetection-dnn", "61b21d324298002748c010420b334dc95d74bda2"),
    "lowlight": ("hpc203/low-light-image-enhancement-opencv-dnn", "c4c98f7a76f19596225bc0dbeef1cbd3f3677742"),
    "retouch": ("hpc203/image-retouching-opencv-dnn", "6c5e92dc11dbd0131efa4fad7850fd744d10dec1"),
    "rtmdet": ("morgan322/rknn_yolox_nano-rtmpose", "b0b88d0df80206ffc2d2b7023ed121521877d785"),
    "v8face": ("hpc203/yolov8-face-landmarks-opencv-dnn", "1f91851f7d8d9475e5b4f0c1d6e5e385aa9bf0f4"),
    "lyt": ("hpc203/Low-Light-Image-Enhancement-onnxrun", "c05d3e1aa3d2fc80b0ca8506bb17dfbf99684b51"),
    "tflm": ("tensorflow/tflite-micro", "90b983c2b3f1480642e040bbd2ddb37b998f3424"),
    "plate": ("hpc203/license-plate-detect-recoginition-opencv", "db1d1e40dc79a7658b2fc97fe532cf9d26ad85de"),
    "plate_photos": ("hpc203/yolov5-detect-car_plate_corner", "06674273526a48405dab812050051d479299af84"),
    "ipne": ("Kazuhito00/Image-Processing-Node-Editor", "46979d5b8eacb181abe970e4dd18e8f4cf0e750b"),
    "purego": ("Kazuhito00/onnx-purego-interpreter", "7681e2537da1e608969cb054b2b4e4c004002d68"),
    "apne": ("Kazuhito00/Audio-Processing-Node-Editor", "f82bafe9d3e0050d9ca3d9b4ab0e5f9e70eaf01b"),
    "espcn": ("SCUMBAG0LEE/ESPCN-Realtime-Webcam-Upscaler", "901e83e1b3a25165293849627011628d8f3100ec"),
    "pets_a": ("mmmwembe/pet-ai-detector", "9e71790244a4ea7c2b3d7cabcff51635b1de4d24"),
    "pets_b": ("gmikels/cloud-cmle-mobilenet", "bda23a9bd89fab08a874797b957b6e8f029c3f56"),
}
CAFFE = (  # name, repo key, prototxt, caffemodel, their sha256 prefixes, input side, scale, RGB, what it is
    ("yoloface-50k", "yoloface", "caffemodel/yoloface-50k.prototxt", "caffemodel/yoloface-50k.caffemodel",
     ("ed1c8e6bb68ea0e4", "2eea6eaafe072975"), 56, 1 / 256, True,
     "a 50k-parameter YOLO face detector (Darknet through Caffe)"),
    ("landmark106", "yoloface", "caffemodel/landmark106.prototxt", "caffemodel/landmark106.caffemodel",
     ("462bdd80f8f21778", "e114822b48810876"), 112, 1 / 255, False, "a PFLD 106-point face landmark regressor"),
    ("face_mask_detection", "facemask", "models/face_mask_detection.prototxt",
     "models/face_mask_detection.caffemodel", ("8de363802d3557f3", "3c2e89cffdc9459a"), 260, 1 / 255, True,
     "an SSD face / mask detector, two concatenated heads"),
)
FILES = {  # (repo key, path in the repository, sha256 prefix)
    "nms_inside": ("naruto", "model/yolox/yolox_nano_with_post.onnx", "da1310c497cb165b"),
    "person": ("mot", "Detector/light_person_detector/model/model.onnx", "4bf5f704cd3bd900"),
    "rtmdet": ("rtmdet", "examples/aeke_pose_deploy/model/det/rtmdetnp.onnx", "661254d12badb765"),
    "ldc": ("ldc", "model/LDC_640x360.onnx", "1895fa66262c9caa"),
    "xfeat": ("xfeat", "onnx_model/xfeat_320x224.onnx", "4eb3d29927367b64"),
    "pan": ("smp", "02.model/_old/PAN(timm-mobilenetv3_small_100)_452_1.02M_0.8028/best_model_simplifier.onnx",
            "324a22a1c2e3a433"),
    "reid": ("mot", "Tracker/person_reid/model/person-reidentification-retail-0288.onnx", "f3966d905e723202"),
    "scrfd": ("scrfd", "weights/scrfd_2.5g_kps.onnx", "32d20c77b9e2dc1d"),
    "fastest": ("fastest", "model.onnx", "27c34bbd0d054cf7"),
    "mlsd": ("mlsd", "weights/model_512x512_tiny.onnx", "d6b4aadb8ff3d756"),
    "nanodet": ("mot", "Detector/nanodet/model/nanodet_m_320.onnx", "88e9fb97a54bb003"),
    "lstr": ("lstr", "lstr_360x640.onnx", "a36f5368c53ff01e"),
    "movenet": ("movenet", "tflite/lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite", "cd7cc22fa946e5d1"),
    "ssd_pets_a": ("pets_a", "detect.tflite", "c6f9425c06358457"),
    "ssd_pets_b": ("pets_b", "detect.tflite", "7e60c3c2ea49233b"),
    "rfb": ("ultralight", "models/onnx/version-RFB-640.onnx", "8f4c659275977e7a"),
    "yunet": ("yunet", "onnx/yunet_s_640_640.onnx", "8f2383e4dd3cfbb4"),
    "pairlie": ("lowlight", "weights/pairlie_240x320.onnx", "0413bbe9a7010414"),
    "csrnet": ("retouch", "weights/csrnet_240x320.onnx", "36c7a337d0e925b0"),
    "lyt_net": ("lyt", "weights/lyt_net_lolv1_320x240.onnx", "33e4e15e5a202c58"),
    "v8face": ("v8face", "weights/yolov8-lite-t.onnx", "caa9eb121eee8fbf"),
    "face_quality": ("v8face", "weights/face-quality-assessment.onnx", "4d0e02b72f987989"),
    "plate_detector": ("plate", "mnet_plate.onnx", "b4a208f937ad01d7"),
    "lprnet": ("plate", "Final_LPRNet_model.onnx", "63753cfed58d4c9d"),
    "tbefn": ("ipne", "node/deep_learning_node/low_light_image_enhancement/TBEFN/saved_model_180x320/"
              "model_float32.onnx", "f979014a3a422c31"),
    "agllnet": ("ipne", "node/deep_learning_node/low_light_image_enhancement/AGLLNet/saved_model_256x384/"
                "model_float32.onnx", "87408a428310c0ea"),
    "deeplab": ("ipne", "node/deep_learning_node/semantic_segmentation/deeplab_v3/model/deeplab_v3_1_default_1.onnx",
                "48a46b346ca7e2e9"),
    "road": ("ipne", "node/deep_learning_node/semantic_segmentation/road_segmentation_adas_0001/saved_model/"
             "model_float32.onnx", "931f80db4faa9eb3"),
    "deimv2": ("purego", "examples/DEIMv2/deimv2_hgnetv2_atto_coco.onnx", "b114aa6610ac7c2b"),
    "gtcrn": ("apne", "node/audio_enhance_node/model/gtcrn_simple.onnx", "b4718df6228e7bdf"),
    "espcn_quality": ("espcn", "Models/quality_espcn_x2.onnx", "bd067f96bbeb14d0"),
    "espcn_quality_fp16": ("espcn", "Models/quality_espcn_x2_fp16.onnx", "23f8caf1b7e0029c"),
    "espcn_performance_pth": ("espcn", "Models/performance_espcn_x2.pth", "2b7425f98a1aa683"),
}
LOWLIGHT_PHOTOS = [f"testimgs/{n}" for n in ("1.png", "1_1.JPG", "22.png", "23.png", "3_1.JPG", "4_1.JPG", "Cave.png",
                                             "Farmhouse.png", "Madison.png")]
RETOUCH_PHOTOS = [f"testimgs/{n}.jpg" for n in ("0014", "0020", "0034", "0065", "0084")]
V8FACE_PHOTOS = ["images/1.jpg", "images/2.jpg", "images/3.jpg", "images/4.png", "images/test.jpg"]
GROUP_PHOTOS = [f"imgs/{k}.jpg" for k in (1, 2, 3, 5, 6, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
                                          25, 26, 27)]
MLSD_PHOTOS = [f"images/{n}" for n in ("1.jpg", "IMG_2383.JPG", "IMG_2496.JPG", "IMG_2502.JPG", "cam_image11.jpg",
                                       "test1.jpg", "IMG_20170314_192719.jpg")]
FACE_PHOTOS = [("gaze", f"images/{n}.jpg") for n in ("liuyifei", "vintage-635244", "woman-2003647")] + \
    [("scrfd", "selfie.jpg"), ("scrfd", "s_l.jpg")]
SMP_PHOTOS = ["01.dataset/image/0.png"] + [f"01.dataset/image/{n}.png" for n in
                                           ("000335", "000340", "000342", "000343", "000344", "000345")] + \
    [f"XX.image/0{k}.png" for k in (1, 2, 3)]


def fetch_github(cache: Path, key: str, path: str, sha_prefix: str = "") -> Path:
    """``path`` of the repository ``key`` at its pinned commit, under <cache>/github/<owner>/<repo>/<path>."""
    repo, commit = REPOS[key]
    out = cache / "github" / repo / path
    if not out.is_file():
        url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
        try:
            data = urllib.request.urlopen(url.replace(" ", "%20").replace("(", "%28").replace(")", "%29"),
                                          timeout=60).read()
        except OSError as e:
            raise RuntimeError(f"put the file at {out}: it could not be downloaded from {url} ({e})") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(out)
    got = hashlib.sha256(out.read_bytes()).hexdigest()
    if sha_prefix and not got.startswith(sha_prefix):
        raise RuntimeError(f"{out} has sha256 {got[:16]}..., not the pinned file's {sha_prefix}...")
    return out


def model(cache: Path, name: str) -> Path:
    key, path, sha = FILES[name]
    return fetch_github(cache, key, path, sha)


def _letterbox(rgb: np.ndarray, side: int) -> np.ndarray:
    """YOLOX's feed: BGR, scaled to fit, at the top left of a 114-gray square (openrknn's own letterbox)."""
    from openrknn.vision.letterbox import letterbox

    return letterbox(np.ascontiguousarray(rgb[:, :, ::-1]), side, mode="topleft", pad_value=114)[0]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter + 1e-9)


def _kept_cell(refs: list, outs: list) -> str:
    """refs, outs: per image [(class, xyxy)]; the float model's boxes found again (same class, IoU >= 0.5)."""
    kept = extra = total = 0
    for ref, got in zip(refs, outs):
        total += len(ref)
        used = set()
        boxes = np.array([b for _, b in got]).reshape(-1, 4)
        for c, box in ref:
            ious = _iou(box, boxes) if len(boxes) else np.zeros(0)
            for j in np.argsort(-ious):
                if j not in used and ious[j] >= 0.5 and got[j][0] == c:
                    used.add(j)
                    kept += 1
                    break
        extra += len(got) - len(used)
    return f"detections kept {kept}/{total}, {extra} extra"


def _detector_row(path: Path, what: str, side: int, dets, work: Path, litert_by_detections: bool = False) -> list:
    """A YOLOX-fed detector (BGR letterboxed with 114, x as is; input 'images') on the shared images: float and w8a8
    builds beside rknn-toolkit2 and LiteRT, scored by ``dets`` (an output -> [(class, xyxy)]).
    ``litert_by_detections``: LiteRT's detections against the simulator's (an NMS inside: its rows are the image's
    own number, so a cosine of the two outputs says little), on every held-out image."""
    import onnxruntime as ort

    pics = [_letterbox(p, side) for p in images(["coco", "misc", "imagenet"], None)]
    calib, held = pics[0::2][:16], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [dets(sess.run(None, {"images": p.transpose(2, 0, 1)[None].astype(np.float32)})[0]) for p in held]
    cells = [f"{what}; {len(held)} images)"]
    cfg = {"mean_values": [[0] * 3], "std_values": [[1] * 3]}
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p] for p in calib], cfg, work)
        cells.append(_kept_cell(refs, [dets(r.inference(inputs=[p])[0]) for p in held]))
        if dtype:
            job = {"input_name": "images", "shape": [1, 3, side, side], "mean": [0] * 3, "std": [1] * 3}
            said, outs = _vendor(path, job, [p.transpose(2, 0, 1)[None] for p in calib], held, work)
            cells[-1] += "; " + said + ("" if outs is None else ": " + _kept_cell(refs, [dets(o[0]) for o in outs]))
            cells.append(_litert_detections(r, held, dets, work) if litert_by_detections else
                         _litert(r, held[:4], work))
        r.release()
    return cells


def _litert_detections(r, held: list, dets, work: Path) -> str:
    from openrknn.runtime.tflite_runner import TfliteRunner

    out = work / "arrival.tflite"
    if r.export_tflite(str(out)) != 0:
        return f"export refused: {str(r.last_error)[:100]}"
    runner = TfliteRunner(str(out), delegate=None)
    sim = [dets(r.inference(inputs=[p])[0]) for p in held]
    return "LiteRT against the simulator's: " + _kept_cell(sim, [dets(runner.run([p])[0]) for p in held])


def nms_inside(cache: Path, work: Path) -> list:
    def dets(out):  # rows: batch, class, score, x1, y1, x2, y2
        return [(int(r[1]), r[3:]) for r in np.asarray(out).reshape(-1, 7) if r[2] >= 0.3]

    return _detector_row(model(cache, "nms_inside"), "YOLOX-nano hand signs with its decode and NMS inside (416, "
                         "[K, 7] out", 416, dets, work, litert_by_detections=True)


def end2end(cache: Path, work: Path) -> list:
    """The shared COCO YOLOX-nano with the end2end tail yolov7-style exporters write for onnxruntime (class-offset
    boxes, one NMS, the kept rows read back by advanced indexing; openrknn.testing.yolov7_end2end)."""
    from arrivals import SHARED

    from openrknn.testing import yolov7_end2end

    path = yolov7_end2end(SHARED.parent / "models" / "yolox_nano_coco.onnx", work / "end2end.onnx")

    def dets(out):  # rows: batch, x1, y1, x2, y2, class, score
        return [(int(r[5]), r[1:5]) for r in np.asarray(out).reshape(-1, 7) if r[6] >= 0.3]

    return _detector_row(path, "COCO YOLOX-nano with a yolov7-style end2end tail (416; class-offset boxes, one NMS, "
                         "advanced-indexing Gathers; [K, 7] out", 416, dets, work, litert_by_detections=True)


def end2end_per_class(cache: Path, work: Path) -> list:
    """The same with the per-class variant of that tail (an NMS over all 80 classes' scores, unbind)."""
    from arrivals import SHARED

    from openrknn.testing import yolov7_end2end

    path = yolov7_end2end(SHARED.parent / "models" / "yolox_nano_coco.onnx", work / "end2end_pc.onnx",
                          per_class=True)

    def dets(out):  # rows: batch, x1, y1, x2, y2, class, score
        return [(int(r[5]), r[1:5]) for r in np.asarray(out).reshape(-1, 7) if r[6] >= 0.3]

    return _detector_row(path, "the same with the per-class variant of that tail (an NMS over [1, 80, N] scores, "
                         "its rows unbound, each score read at (batch, class, box); [K, 7] out", 416, dets, work,
                         litert_by_detections=True)


def person_detector(cache: Path, work: Path) -> list:
    from openrknn.vision.letterbox import LetterboxTransform
    from openrknn.vision.yolox.decode import postprocess_yolox

    identity = LetterboxTransform.identity(192, 192)

    def dets(out):  # openrknn's YOLOX decode: grids, strides, exp, objectness x class, NMS
        d = postprocess_yolox([np.asarray(out).reshape(1, -1, 6)], identity, 1, 0.3, 0.45, False, "flat")
        return [(int(c), b) for c, b in zip(d.class_ids, d.boxes)]

    return _detector_row(model(cache, "person"), "one-class YOLOX person detector (192, raw head output", 192, dets,
                         work)


def _rtmdet_people(outs, side: int = 640, conf: float = 0.3, iou: float = 0.6) -> list:
    """RTMDet's decode as the repository's demo writes it: per stride 8 / 16 / 32 a class logit map (one class) and
    the box's four distances in pixels from the cell's corner; sigmoid >= conf, NMS."""
    import cv2

    boxes, scores = [], []
    for k, stride in enumerate((8, 16, 32)):
        logit, dist = np.asarray(outs[k])[0, 0], np.asarray(outs[3 + k])[0]
        ys, xs = np.nonzero(1 / (1 + np.exp(-logit)) >= conf)
        d = dist[:, ys, xs]
        px, py = xs * stride, ys * stride
        boxes += list(np.stack([px - d[0], py - d[1], px + d[2], py + d[3]], 1))
        scores += list(1 / (1 + np.exp(-logit[ys, xs])))
    if not boxes:
        return []
    b = np.array(boxes)
    kept = cv2.dnn.NMSBoxes(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist(), scores, conf, iou)
    return [(0, b[i]) for i in np.ravel(kept)]


def rtmdet(cache: Path, work: Path) -> list:
    """RTMDet-nano people detector (mmdet's CSPNeXt: SiLU, 5x5 depthwise convs, channel attention with a HardSigmoid;
    its two heads cut before the decode) as a user of rknn-toolkit2 deploys it to RK3588 (the file the repository
    builds its rknn model from; its script feeds a 640x640 BGR resize, and the model needs mmdet's mean and std).
    The metric: the float model's people (score >= 0.3) found again."""
    import cv2
    import onnxruntime as ort

    path = model(cache, "rtmdet")
    mean, std = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]
    pics = [cv2.resize(p[:, :, ::-1], (640, 640)) for p in images(["coco", "misc"], None)]
    calib, held = pics[0::2], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [_rtmdet_people(sess.run(None, {"input": ((p - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
                                           .astype(np.float32)})) for p in held]
    job = {"input_name": "input", "shape": [1, 3, 640, 640], "mean": mean, "std": std}
    return [f"RTMDet-nano people (640, cut heads: 3 class logit maps, 3 box-distance maps; {len(held)} images)"
            ] + _scored_builds(path, calib, held, {"mean_values": [mean], "std_values": [std]}, job,
                               lambda outs: _kept_cell(refs, [_rtmdet_people(o) for o in outs]), 6, work)


def _litert(r, feeds: list, work: Path) -> str:
    from arrivals import litert

    return litert(r, [[f] for f in feeds], work)


def _cosines(outs: list, refs: list) -> str:
    n = len(refs[0])
    per = [np.mean([cosine(o[k], w[k]) for o, w in zip(outs, refs)]) for k in range(n)]
    worst = [min(cosine(o[k], w[k]) for o, w in zip(outs, refs)) for k in range(n)]
    return "cosine per output " + ", ".join(f"{m:.5f}" for m in per) + f" (worst input {min(worst):.4f})"


def _dense_row(path: Path, what: str, pics: list, cfg: dict, feed, job: dict, work: Path, task=None) -> list:
    """Float and w8a8 builds of a dense model on ``pics`` (RGB HWC), each output's cosine to onnxruntime on
    ``feed(pic)``, and ``task(outs, refs)`` (outs: per image the list of outputs)."""
    import onnxruntime as ort

    calib, held = pics[0::2][:12], pics[1::2][:12]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {sess.get_inputs()[0].name: feed(p)}) for p in held]
    cells = [what + f" ({len(held)} images)"]
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p] for p in calib], cfg, work)
        got = [[np.asarray(o).reshape(w.shape) for o, w in zip(r.inference(inputs=[p]), ref)]
               for p, ref in zip(held, refs)]
        cells.append(_cosines(got, refs) + (f"; {task(got, refs)}" if task else ""))
        if dtype:
            vcal = [c.transpose(2, 0, 1)[None] if job["shape"][1] == 3 else c[None] for c in calib]
            said, outs = _vendor(path, job, vcal, [p[None] for p in held], work)
            if outs is not None:
                outs = [[o[k].reshape(w.shape) for k, w in enumerate(ref)] for o, ref in zip(outs, refs)]
                said += ": " + _cosines(outs, refs) + (f"; {task(outs, refs)}" if task else "")
            cells[-1] += "; " + said
            cells.append(_litert(r, held[:3], work))
        r.release()
    return cells


def edges(cache: Path, work: Path) -> list:
    def f1(outs, refs):
        scores = []
        for o, w in zip(outs, refs):
            a, b = o[-1] > 0, w[-1] > 0  # sigmoid > 0.5
            scores.append(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
        return f"fused edge map F1 {np.mean(scores):.4f}"

    return _dense_row(model(cache, "ldc"), "LDC edge detector (640x360, 5 maps)", images(["coco", "misc"], (360, 640)),
                      {"mean_values": [[0] * 3], "std_values": [[1] * 3]},
                      lambda x: x.astype(np.float32).transpose(2, 0, 1)[None],
                      {"input_name": "input_image", "shape": [1, 3, 360, 640], "mean": [0] * 3, "std": [1] * 3},
                      work, f1)


def keypoints(cache: Path, work: Path) -> list:
    # the model takes BGR / 255: every build is fed the BGR images
    pics = images(["coco", "misc"], (224, 320))
    return _dense_row(model(cache, "xfeat"), "XFeat keypoints and descriptors (320x224, 3 outputs)",
                      [p[:, :, ::-1].copy() for p in pics], {"mean_values": [[0] * 3], "std_values": [[255] * 3]},
                      lambda x: (x.astype(np.float32) / 255).transpose(2, 0, 1)[None],
                      {"input_name": "input", "shape": [1, 3, 224, 320], "mean": [0] * 3, "std": [255] * 3}, work)


def segmentation(cache: Path, work: Path) -> list:
    import cv2

    photos = [cv2.resize(cv2.imread(str(fetch_github(cache, "smp", p)))[:, :, ::-1], (512, 512)) for p in SMP_PHOTOS]
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255

    def masks(outs, refs):
        ious = []
        for o, w in zip(outs, refs):
            for c in range(3):
                a, b = o[0][0, c] > 0.5, w[0][0, c] > 0.5
                if b.sum() > 500:  # a part the photo shows
                    ious.append((a & b).sum() / (a | b).sum())
        return f"masks' IoU {np.mean(ious):.4f} (worst {np.min(ious):.4f}, {len(ious)} masks)"

    return _dense_row(model(cache, "pan"), "PAN MobileNetV3-small skin / clothes / hair segmenter (512x512)",
                      photos + images(["coco"], (512, 512)),
                      {"mean_values": [mean.tolist()], "std_values": [std.tolist()]},
                      lambda x: ((x - mean) / std).astype(np.float32).transpose(2, 0, 1)[None],
                      {"input_name": "x.1", "shape": [1, 3, 512, 512], "mean": mean.tolist(), "std": std.tolist()},
                      work, masks)


def reid(cache: Path, work: Path) -> list:
    import cv2

    crops = []
    for p in images(["coco", "misc"], None):
        w = p.shape[1]
        for k in range(2):  # two upright crops per image, BGR, as the tracker cuts detected people
            x0 = int(w * (0.15 + 0.4 * k))
            crops.append(cv2.resize(p[:, x0:x0 + w // 3, ::-1], (128, 256)))

    def neighbours(outs, refs):
        def nn(embs):
            e = np.stack([x[0].ravel() / np.linalg.norm(x[0]) for x in embs])
            sim = e @ e.T
            np.fill_diagonal(sim, -2)
            return sim.argmax(1)

        return f"nearest neighbour the float model's {int((nn(outs) == nn(refs)).sum())}/{len(refs)}"

    return _dense_row(model(cache, "reid"), "person re-ID retail-0288 (NHWC 256x128 crops, OSNet instance norms)",
                      crops, {"mean_values": [[0] * 3], "std_values": [[1] * 3]},
                      lambda x: x[None].astype(np.float32),
                      {"input_name": "inputs:0", "shape": [1, 256, 128, 3], "mean": [0] * 3, "std": [1] * 3},
                      work, neighbours)


def _face_letterbox(bgr: np.ndarray, side: int = 640) -> np.ndarray:
    """SCRFD's demo feed: scaled to fit (INTER_AREA), at the top left of a black square; RGB out."""
    import cv2

    from openrknn.vision.letterbox import letterbox

    boxed = letterbox(bgr, side, mode="topleft", pad_value=0, interpolation=cv2.INTER_AREA)[0]
    return np.ascontiguousarray(boxed[:, :, ::-1])


def _faces(outs, side: int = 640) -> list:
    """SCRFD's decode: per stride 8 / 16 / 32 and 2 anchors per cell, score >= 0.5, box and landmarks as distances
    from the cell's corner times the stride, NMS at IoU 0.4. [(0, xyxy, landmarks[10])]."""
    boxes, scores, marks = [], [], []
    for i, s in enumerate((8, 16, 32)):
        sc, bb, kp = (np.asarray(outs[i + 3 * k]).reshape(-1, (1, 4, 10)[k]) for k in range(3))
        n = side // s
        corner = np.repeat((np.stack(np.mgrid[:n, :n][::-1], -1).reshape(-1, 2) * s).astype(np.float32), 2, axis=0)
        keep = sc[:, 0] >= 0.5
        boxes.append(np.concatenate([corner - bb[:, :2] * s, corner + bb[:, 2:] * s], 1)[keep])
        scores.append(sc[keep, 0])
        marks.append((np.tile(corner, 5) + kp * s)[keep])
    b, sc, kp = np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)
    order, out = np.argsort(-sc), []
    while len(order):
        i, rest = order[0], order[1:]
        out.append((0, b[i], kp[i]))
        order = rest[_iou(b[i], b[rest]) <= 0.4]
    return out


def _faces_cell(refs: list, outs: list, things: str = "faces", error: str = "landmark error", of: str = "face") -> str:
    """The float model's objects found again (``refs``, ``outs``: per image [(class, xyxy, points)]) and the points'
    mean error in the object's width."""
    kept = _kept_cell([[(c, b) for c, b, _ in r] for r in refs], [[(c, b) for c, b, _ in g] for g in outs])
    errors = []
    for ref, got in zip(refs, outs):
        boxes = np.array([b for _, b, _ in got]).reshape(-1, 4)
        for _, box, marks in ref:
            ious = _iou(box, boxes) if len(boxes) else np.zeros(0)
            if len(ious) and ious.max() >= 0.5:
                errors.append(np.abs(got[int(ious.argmax())][2] - marks).mean() / max(box[2] - box[0], 1.0))
    return f"{things} {kept.split(' ', 2)[2]}; {error} {100 * np.mean(errors):.2f}% of the {of} width"


def faces(cache: Path, work: Path) -> list:
    import cv2
    import onnxruntime as ort

    path = model(cache, "scrfd")
    photos = [cv2.imread(str(fetch_github(cache, k, p))) for k, p in FACE_PHOTOS]
    shared = [_face_letterbox(p[:, :, ::-1]) for p in images(["coco", "misc"], None)]
    pics = [_face_letterbox(p) for p in photos] + shared
    held = pics[1::2]
    selfie = photos[3]
    h, w = selfie.shape[:2]
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(10):  # a face detector's calibration: the group selfie cropped at several scales and places
        s = rng.uniform(0.4, 0.9)
        ch, cw = int(h * s), int(w * s)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(_face_letterbox(selfie[y:y + ch, x:x + cw]))
    on_faces = crops + [_face_letterbox(p) for p in photos[:2]]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = (lambda x: ((x.astype(np.float32) - 127.5) / 128).transpose(2, 0, 1)[None])
    refs = [_faces(sess.run(None, {"images": feed(p)})) for p in held]
    cfg = {"mean_values": [[127.5] * 3], "std_values": [[128] * 3]}
    job = {"input_name": "images", "shape": [1, 3, 640, 640], "mean": [127.5] * 3, "std": [128] * 3}
    cells = [f"SCRFD-2.5G faces and landmarks (640, 9 outputs; {sum(map(len, refs))} faces in {len(held)} images)"]
    r = build(path, None, None, [[p] for p in on_faces], cfg, work)
    cells.append(_faces_cell(refs, [_faces(r.inference(inputs=[p])) for p in held]))
    r.release()
    parts = []
    for what, calib in (("calibrated on faces", on_faces), ("calibrated on the shared images", shared[0::2][:14])):
        r = build(path, None, "w8a8", [[p] for p in calib], cfg, work)
        cell = f"{what}: " + _faces_cell(refs, [_faces(r.inference(inputs=[p])) for p in held])
        said, outs = _vendor(path, job, [p.transpose(2, 0, 1)[None] for p in calib], held, work)
        cell += f"; {said}" + ("" if outs is None else ": " + _faces_cell(refs, [_faces([o[k] for k in range(9)])
                                                                                  for o in outs]))
        parts.append(cell)
        if what == "calibrated on faces":
            tflite = _litert(r, held[:3], work)
        r.release()
    return cells + ["; ".join(parts), tflite]


def fastest(cache: Path, work: Path) -> list:
    import onnxruntime as ort

    path = model(cache, "fastest")
    pics = [p[:, :, ::-1].copy() for p in images(["coco", "misc"], (352, 352))]  # BGR, stretched, x / 255
    calib, held = pics[0::2][:12], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"input.1": (p.astype(np.float32) / 255).transpose(2, 0, 1)[None]})[0] for p in held]

    def hits(o):  # per cell: 4 box values x 3 anchors, 3 objectness, 80 class scores
        o = np.asarray(o).reshape(-1, 95)
        return set(zip(*np.where(o[:, 12:15, None] * o[:, None, 15:] > 0.3)))

    def cell(outs):
        kept = sum(len(hits(o) & hits(r)) for o, r in zip(outs, refs))
        extra = sum(len(hits(o) - hits(r)) for o, r in zip(outs, refs))
        return (f"cosine {np.mean([cosine(o, r) for o, r in zip(outs, refs)]):.5f}; (cell, anchor, class) over 0.3 "
                f"kept {kept}/{sum(len(hits(r)) for r in refs)}, {extra} extra")

    cells = ["Yolo-FastestV2 COCO (352, raw grid output)"]
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p] for p in calib], {"mean_values": [[0] * 3], "std_values": [[255] * 3]}, work)
        cells.append(cell([r.inference(inputs=[p])[0] for p in held]))
        if dtype:
            job = {"input_name": "input.1", "shape": [1, 3, 352, 352], "mean": [0] * 3, "std": [255] * 3}
            said, outs = _vendor(path, job, [p.transpose(2, 0, 1)[None] for p in calib], held, work)
            cells[-1] += f"; {said}" + ("" if outs is None else ": " + cell([o[0] for o in outs]))
            cells.append(_litert(r, held[:3], work))
        r.release()
    return cells


def line_segments(cache: Path, work: Path) -> list:
    import cv2
    import onnxruntime as ort

    path = model(cache, "mlsd")
    photos = [cv2.imread(str(fetch_github(cache, "mlsd", p)))[:, :, ::-1] for p in MLSD_PHOTOS]
    pics = [cv2.resize(p, (512, 512), interpolation=cv2.INTER_AREA) for p in photos] + images(["coco", "misc"],
                                                                                             (512, 512))
    pics = [np.concatenate([p.astype(np.float32), np.ones((512, 512, 1), np.float32)], -1) for p in pics]
    calib, held = pics[0::2][:12], pics[1::2][:12]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"input_image_with_alpha:0": p[None]}) for p in held]

    def centres(out):
        pts, scores = np.asarray(out[0]).reshape(-1, 2).astype(int), np.ravel(out[1])
        return np.array([p for p, s in zip(pts, scores) if s > 0.1]).reshape(-1, 2)

    def near(a, b):  # points of a with a point of b within one pixel
        return sum(1 for p in a if len(b) and np.abs(b - p).max(1).min() <= 1)

    def cell(outs):
        pairs = [(centres(o), centres(r)) for o, r in zip(outs, refs)]
        return (f"centres kept {sum(near(r, o) for o, r in pairs)}/{sum(len(r) for _, r in pairs)}, "
                f"{sum(len(o) - near(o, r) for o, r in pairs)} extra")

    cells = [f"M-LSD tiny line segments (512, NHWC 4 channels, heat-map peaks and TopK inside; {len(held)} images)"]
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p] for p in calib], {"mean_values": [[0] * 4], "std_values": [[1] * 4]}, work)
        cells.append(cell([r.inference(inputs=[p]) for p in held]))
        if dtype:
            job = {"input_name": "input_image_with_alpha:0", "shape": [1, 512, 512, 4], "mean": [0] * 4,
                   "std": [1] * 4}
            said, outs = _vendor(path, job, [p[None] for p in calib], [p[None] for p in held], work)
            cells[-1] += f"; {said}" + ("" if outs is None else ": " + cell([[o[k] for k in range(3)] for o in outs]))
            cells.append(_litert_centres(r, held, work, centres, near))
        r.release()
    return cells


def _litert_centres(r, held: list, work: Path, centres, near) -> str:
    """The export on LiteRT against the simulator, by the line centres each finds (the k best peaks' order and
    coordinates are a selection: compared as sets, within one pixel)."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    if r.export_tflite(str(work / "lines.tflite"), input_dtype="float32") != 0:
        return f"export refused: {str(r.last_error)[:100]}"
    runner = TfliteRunner(str(work / "lines.tflite"), delegate=None)
    pairs = [(centres(r.inference(inputs=[p])), centres(runner.run([p[None]]))) for p in held]
    return (f"centres the simulator finds found on LiteRT {sum(near(s, t) for s, t in pairs)}/"
            f"{sum(len(s) for s, _ in pairs)}, {sum(len(t) - near(t, s) for s, t in pairs)} extra")


def _centred(bgr: np.ndarray, side: int) -> np.ndarray:
    """NanoDet's demo feed: scaled to fit (INTER_AREA), centred on a black square."""
    import cv2

    h, w = bgr.shape[:2]
    s = side / max(h, w)
    small = cv2.resize(bgr, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    out = np.zeros((side, side, 3), np.uint8)
    top, left = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return out


def _scored_builds(path: Path, calib: list, held: list, cfg: dict, job: dict, score, n_out: int, work: Path) -> list:
    """The float and w8a8 cells of an image model fed CHW by the vendor: each build's outputs on ``held`` scored by
    ``score`` (per image, the list of outputs -> a cell), rknn-toolkit2 beside the w8a8 one, then LiteRT's cell."""
    cells = []
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p] for p in calib], cfg, work)
        cells.append(score([r.inference(inputs=[p]) for p in held]))
        if dtype:
            said, outs = _vendor(path, job, [p.transpose(2, 0, 1)[None] for p in calib], held, work)
            cells[-1] += f"; {said}" + ("" if outs is None else ": " + score([[o[k] for k in range(n_out)]
                                                                                 for o in outs]))
            cells.append(_litert(r, held[:3], work))
        r.release()
    return cells


def _gfl_boxes(outs, side: int = 320, conf: float = 0.35, iou: float = 0.6) -> list:
    """NanoDet's decode: per stride 8 / 16 / 32 a sigmoid class map and, per side of the box, a distribution over 8
    distances (softmax, its expectation in strides from the cell's centre); per-class NMS."""
    import cv2

    found = []
    for k, stride in enumerate((8, 16, 32)):
        cls, dist = np.asarray(outs[k]).reshape(-1, 80), np.asarray(outs[3 + k]).reshape(-1, 4, 8)
        n = side // stride
        ys, xs = np.divmod(np.arange(n * n), n)
        cx, cy = xs * stride + (stride - 1) / 2, ys * stride + (stride - 1) / 2
        e = np.exp(dist - dist.max(-1, keepdims=True))
        d = (e / e.sum(-1, keepdims=True) * np.arange(8)).sum(-1) * stride
        score, label = cls.max(1), cls.argmax(1)
        keep = score >= conf
        boxes = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)[keep]
        found += list(zip(label[keep], score[keep], boxes))
    if not found:
        return []
    labels, scores, boxes = np.array([f[0] for f in found]), np.array([f[1] for f in found]), np.array(
        [f[2] for f in found])
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), labels.tolist(), conf, iou)
    return [(int(labels[i]), boxes[i]) for i in np.ravel(kept)]


def gfl_detector(cache: Path, work: Path) -> list:
    """NanoDet-m: a ShuffleNetV2 GFL detector whose file lists its weights as graph inputs (an old exporter's
    habit); BGR feed with the demo's per-channel mean and std."""
    import onnxruntime as ort

    path = model(cache, "nanodet")
    mean, std = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]
    pics = [_centred(p[:, :, ::-1], 320) for p in images(["coco", "misc"], None)]
    calib, held = pics[0::2][:16], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    refs = [_gfl_boxes(sess.run(None, {feed: ((p - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
                                       .astype(np.float32)})) for p in held]
    job = {"input_name": feed, "shape": [1, 3, 320, 320], "mean": mean, "std": std}
    return [f"NanoDet-m COCO (320, GFL head: 3 sigmoid class maps, 3 box-distance distributions; {len(held)} images)"
            ] + _scored_builds(path, calib, held, {"mean_values": [mean], "std_values": [std]}, job,
                               lambda outs: _kept_cell(refs, [_gfl_boxes(o) for o in outs]), 6, work)


def lanes(cache: Path, work: Path) -> list:
    """LSTR: a lane-shape transformer (ResNet-18 stem, sine position encoding from a CumSum of the padding mask,
    attention as MatMul / Softmax) with two inputs, the image and a padding mask of zeros; fed as the repository's
    demo feeds it (its BGR frames normalised with ImageNet's RGB mean and std). The metric: the lanes (of 7
    queries) whose class is 'lane', as the float model says, and their curve parameters' largest difference."""
    import cv2
    import onnxruntime as ort

    path = model(cache, "lstr")
    mean, std = [0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]
    roads = [cv2.resize(cv2.imread(str(fetch_github(cache, "lstr", f"images/{k}.jpg"))), (640, 360)) for k in range(4)]
    pics = roads + [p[:, :, ::-1].copy() for p in images(["coco"], (360, 640))[:8]]
    calib, held = pics[1::2], pics[0::2]  # two roads each side; COCO photos as the scenes without lanes
    mask = np.zeros((360, 640, 1), np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    refs = [sess.run(None, {names[0]: ((p - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
                            .astype(np.float32), names[1]: mask.transpose(2, 0, 1)[None]}) for p in held]

    def cell(outs):
        is_lane = [(np.asarray(o[0]).reshape(7, 2).argmax(1) == 1) for o in outs]
        want = [np.asarray(r[0]).reshape(7, 2).argmax(1) == 1 for r in refs]
        same = sum(int((a == b).all()) for a, b in zip(is_lane, want))
        curve = max(float(np.abs(np.asarray(o[1]).reshape(7, 8) - r[1].reshape(7, 8))[w].max(initial=0))
                    for o, r, w in zip(outs, refs, want))
        return (f"cosine {np.mean([min(cosine(o[k], r[k]) for k in range(4)) for o, r in zip(outs, refs)]):.5f}; "
                f"lane / no-lane of the 7 queries as the float model on {same}/{len(refs)} images "
                f"({sum(int(w.sum()) for w in want)} lanes), curve parameters within {curve:.3f}")

    cells = [f"LSTR lane transformer (360x640 image + padding mask, 2 inputs; {len(held)} images, 2 roads)"]
    cfg = {"mean_values": [mean, [0]], "std_values": [std, [1]]}
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p, mask] for p in calib], cfg, work)
        cells.append(cell([r.inference(inputs=[p, mask]) for p in held]))
        if dtype:
            job = {"input_names": names, "shapes": [[1, 3, 360, 640], [1, 1, 360, 640]], "mean": None}
            said, outs = _vendor(path, job, [[((p - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
                                              .astype(np.float32), mask.transpose(2, 0, 1)[None]] for p in calib],
                                 [[((p - np.float32(mean)) / np.float32(std))[None].astype(np.float32), mask[None]]
                                  for p in held], work)
            cells[-1] += f"; {said}" + ("" if outs is None else ": " + cell([[o[k] for k in range(5)] for o in outs]))
            cells.append(_litert_two(r, held[:3], mask, work))
        r.release()
    return cells


def _litert_two(r, held: list, mask: np.ndarray, work: Path) -> str:
    from arrivals import litert

    return litert(r, [[p, mask] for p in held], work, input_dtype="float32")


def _litert_first_output(path: Path, feeds: list, **interpreter_options) -> list:
    """A .tflite file's first output on each feed, on the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), **interpreter_options)
    it.allocate_tensors()
    feed, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    got = []
    for x in feeds:
        it.set_tensor(feed, x)
        it.invoke()
        got.append(it.get_tensor(out).copy())
    return got


def _movenet_points(out) -> np.ndarray:
    return np.asarray(out).reshape(17, 3)


def pose(cache: Path, work: Path) -> list:
    """MoveNet SinglePose Lightning int8 (TF Hub's fully quantized TFLite; uint8 192x192 RGB in, 17 keypoints as
    [y, x, score] out, its decode inside: centre heat map, ARG_MAX, GATHER_ND of the regressions, a distance-weighted
    keypoint heat map, ARG_MAX, GATHER_ND of the offsets). load_tflite keeps the file's int8 scales, so the
    reference is LiteRT on the file. The metric: the keypoints LiteRT is sure of (score > 0.3) found within 4
    pixels (one heat-map cell) of 192, and the median distance; LiteRT's own reference kernels against its XNNPACK
    kernels are the floor (they round some requantizations differently, and the argmax decode turns one step into
    a cell)."""
    from ai_edge_litert.interpreter import OpResolverType

    path = model(cache, "movenet")
    pics = [_letterbox(p[:, :, ::-1], 192)[:, :, ::-1].copy() for p in images(["coco"], None)]
    calib, held = pics[0::2][:12], pics[1::2]

    def litert_run(**kw):
        return [_movenet_points(o) for o in _litert_first_output(path, [p[None] for p in held], **kw)]

    refs = litert_run()

    def cell(outs):
        d = np.concatenate([np.hypot(*(o[:, :2] - w[:, :2]).T)[w[:, 2] > 0.3] * 192 for o, w in zip(outs, refs)])
        return (f"keypoints within 4 px {int((d <= 4).sum())}/{d.size}, median {np.median(d):.1f} px; score "
                f"difference {np.mean([np.abs(o[:, 2] - w[:, 2]).mean() for o, w in zip(outs, refs)]):.3f}")

    cells = [f"MoveNet Lightning int8 TFLite (192, decode inside; {len(held)} images; the float column is "
             "build(do_quantization=False), which keeps the file's int8 scales, the w8a8 column openrknn's own "
             "requantization; against LiteRT on the file. LiteRT's reference kernels against its XNNPACK ones: "
             f"{cell(litert_run(experimental_op_resolver_type=OpResolverType.BUILTIN_REF))})"]
    for quantize in (False, True):
        from openrknn.api import RKNN

        lines = []
        for k, p in enumerate(calib):
            np.save(work / f"m{k}.npy", p)
            lines.append(f"m{k}.npy")
        (work / "ds.txt").write_text("\n".join(lines) + "\n")
        r = RKNN(verbose=False)
        assert r.config(target_platform="rk3588", mean_values=[[0] * 3], std_values=[[1] * 3]) == 0
        assert r.load_tflite(str(path)) == 0, r.last_error
        assert r.build(do_quantization=quantize, dataset=str(work / "ds.txt")) == 0, r.last_error
        assert r.init_runtime() == 0
        cells.append(cell([_movenet_points(r.inference(inputs=[p])[0]) for p in held]))
        if quantize:
            job = {"loader": "tflite", "do_quantization": False, "mean": [0] * 3, "std": [1] * 3}
            said, outs = _vendor(path, job, [p[None] for p in calib], [p[None] for p in held], work)
            cells[-1] += f"; {said}" + ("" if outs is None else ": " + cell([_movenet_points(o[0]) for o in outs]))
            cells.append(_litert(r, held[:4], work))
        r.release()
    return cells


def _ssd_row(path: Path, what: str, work: Path) -> list:
    """A quantized SSD from TensorFlow's object detection API (uint8 300x300 in, TFLite_Detection_PostProcess out:
    boxes, classes, scores, count), fed the shared images resized as its pipeline resizes them. The reference is
    LiteRT on the file; the float column keeps the file's scales (build(do_quantization=False)), the w8a8 column
    is openrknn's own requantization. The metric: LiteRT's detections at score >= 0.5 found again (same class,
    IoU >= 0.5), and the extra ones."""
    from openrknn.api import RKNN

    pics = [np.ascontiguousarray(p) for p in images(["coco", "imagenet", "misc"], (300, 300))]
    calib, held = pics[0::2][:16], pics[1::2]

    def found(outs, thr=0.5):  # boxes [1, D, 4] ymin xmin ymax xmax, classes, scores, count
        boxes, cls, score, n = (np.asarray(o) for o in outs)
        return [(int(cls.ravel()[k]), boxes.reshape(-1, 4)[k][[1, 0, 3, 2]]) for k in range(int(n.ravel()[0]))
                if score.ravel()[k] >= thr]

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    feed, outs = it.get_input_details()[0]["index"], [o["index"] for o in it.get_output_details()]
    refs = []
    for p in held:
        it.set_tensor(feed, p[None])
        it.invoke()
        refs.append(found([it.get_tensor(o) for o in outs]))
    for k, p in enumerate(calib):
        np.save(work / f"ssd{k}.npy", p)
    (work / "ds.txt").write_text("".join(f"ssd{k}.npy\n" for k in range(len(calib))))
    cells = [f"{what}; {len(held)} images, {sum(map(len, refs))} detections of LiteRT on the file at 0.5)"]
    for quantize in (False, True):
        r = RKNN(verbose=False)
        assert r.config(target_platform="rk3588") == 0
        assert r.load_tflite(str(path)) == 0, r.last_error
        assert r.build(do_quantization=quantize, dataset=str(work / "ds.txt")) == 0, r.last_error
        assert r.init_runtime() == 0
        ours = [found(r.inference(inputs=[p])) for p in held]
        cells.append(_kept_cell(refs, ours))
        if quantize:
            job = {"loader": "tflite", "do_quantization": False, "mean": [128] * 3, "std": [128] * 3}
            said, vouts = _vendor(path, job, [p[None] for p in calib], [p[None] for p in held], work)
            cells[-1] += "; " + said + ("" if vouts is None else ": " + _kept_cell(
                refs, [found([o[k] for k in range(4)]) for o in vouts]))
            out = work / "ssd.tflite"
            if r.export_tflite(str(out)) != 0:
                cells.append(f"export refused: {str(r.last_error)[:100]}")
            else:
                from openrknn.runtime.tflite_runner import TfliteRunner

                runner = TfliteRunner(str(out), delegate=None)
                cells.append("LiteRT against the simulator's: " + _kept_cell(
                    ours, [found(runner.run([p])) for p in held]))
        r.release()
    return cells


def ssd_pets(cache: Path, work: Path) -> list:
    return _ssd_row(model(cache, "ssd_pets_a"), "SSD MobileNet pet detector, quantized TFLite with "
                    "TFLite_Detection_PostProcess (300, 37 breeds, its decode and NMS inside; pet-ai-detector", work)


def ssd_pets_b(cache: Path, work: Path) -> list:
    return _ssd_row(model(cache, "ssd_pets_b"), "another SSD MobileNet pet detector, trained on a Cloud TPU (300, 37 "
                    "breeds; cloud-cmle-mobilenet", work)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list:
    order, kept = list(np.argsort(-scores)), []
    while order:
        i, order = order[0], order[1:]
        kept.append(i)
        order = [j for j in order if _iou(boxes[i], boxes[j:j + 1])[0] <= iou]
    return kept


def _rfb_faces(outs, w: int = 640, h: int = 480) -> list:
    """Ultra-Light's decode: its face probability (softmax inside) over 0.7, the boxes (decoded inside, corners
    relative to the image) scaled, hard NMS at IoU 0.3."""
    scores, boxes = np.asarray(outs[0]).reshape(-1, 2)[:, 1], np.asarray(outs[1]).reshape(-1, 4) * [w, h, w, h]
    keep = scores > 0.7
    boxes, scores = boxes[keep], scores[keep]
    return [(0, boxes[i]) for i in _nms(boxes, scores, 0.3)]


def _yunet_faces(outs, side: int = 640) -> list:
    """YuNet's decode (OpenCV's FaceDetectorYN): per stride 8 / 16 / 32 a class and an objectness sigmoid (score the
    square root of their product, over 0.6), the box centre as an offset within the cell and its size as the log of
    strides, five landmarks as cell offsets; NMS at IoU 0.3. [(0, xyxy, landmarks[10])]."""
    boxes, scores, marks = [], [], []
    for i, s in enumerate((8, 16, 32)):
        cls, obj, bb, kp = (np.asarray(outs[i + 3 * k]).reshape(-1, (1, 1, 4, 10)[k]) for k in range(4))
        n = side // s
        cell = np.stack(np.mgrid[:n, :n][::-1], -1).reshape(-1, 2).astype(np.float32)
        score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
        keep = score > 0.6
        centre, size = (cell + bb[:, :2]) * s, np.exp(bb[:, 2:]) * s
        boxes.append(np.concatenate([centre - size / 2, centre + size / 2], 1)[keep])
        scores.append(score[keep])
        marks.append(((np.tile(cell, 5) + kp) * s)[keep])
    b, sc, kp = np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)
    return [(0, b[i], kp[i]) for i in _nms(b, sc, 0.3)]


def light_faces(cache: Path, work: Path) -> list:
    """Ultra-Light-Fast-Generic-Face-Detector RFB-640 (an SSD of 17,640 priors, its softmax and box decode inside, its
    weights listed as graph inputs), fed as its demo feeds it: RGB stretched to 640x480, (x - 127) / 128; on the
    repository's own photos of people."""
    import cv2
    import onnxruntime as ort

    path = model(cache, "rfb")
    pics = [cv2.resize(cv2.imread(str(fetch_github(cache, "ultralight", p)))[:, :, ::-1], (640, 480))
            for p in GROUP_PHOTOS]
    calib, held = pics[0::2], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    refs = [_rfb_faces(sess.run(None, {feed: ((p - np.float32(127)) / 128).transpose(2, 0, 1)[None]
                                       .astype(np.float32)})) for p in held]
    job = {"input_name": feed, "shape": [1, 3, 480, 640], "mean": [127] * 3, "std": [128] * 3}
    return [f"Ultra-Light face detector RFB-640 (640x480, SSD with its decode inside; {sum(map(len, refs))} faces "
            f"in {len(held)} photos)"] + _scored_builds(
        path, calib, held, {"mean_values": [[127] * 3], "std_values": [[128] * 3]}, job,
        lambda outs: _kept_cell(refs, [_rfb_faces(o) for o in outs]).replace("detections", "faces"), 2, work)


def yunet(cache: Path, work: Path) -> list:
    """YuNet-s (libfacedetection, OpenCV's FaceDetectorYN model: 12 outputs, class / objectness / box / landmarks per
    stride), fed BGR pixels as they are, letterboxed at the top left of a black 640 square; on the Ultra-Light
    repository's photos of people."""
    import cv2
    import onnxruntime as ort

    from openrknn.vision.letterbox import letterbox

    path = model(cache, "yunet")
    pics = [letterbox(cv2.imread(str(fetch_github(cache, "ultralight", p))), 640, mode="topleft", pad_value=0)[0]
            for p in GROUP_PHOTOS]
    calib, held = pics[0::2], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [_yunet_faces(sess.run(None, {"input": p.transpose(2, 0, 1)[None].astype(np.float32)})) for p in held]
    job = {"input_name": "input", "shape": [1, 3, 640, 640], "mean": [0] * 3, "std": [1] * 3}
    return [f"YuNet-s faces and landmarks (640, 12 outputs; {sum(map(len, refs))} faces in {len(held)} photos)"
            ] + _scored_builds(path, calib, held, {"mean_values": [[0] * 3], "std_values": [[1] * 3]}, job,
                               lambda outs: _faces_cell(refs, [_yunet_faces(o) for o in outs]), 12, work)


def _tflite_builds(path: Path, dataset: Path, feeds: list, cell, vendor: tuple, work: Path, litert_feeds: int,
                   input_dtype: str = "uint8", **config) -> list:
    """The float and w8a8 cells of a .tflite file built through load_tflite: each build's first output on ``feeds``
    scored by ``cell`` (the list of outputs -> a cell), rknn-toolkit2 beside the w8a8 one (``vendor``: its job and
    its calibration arrays), then LiteRT's cell on the w8a8 export over the first ``litert_feeds`` feeds."""
    from openrknn.api import RKNN

    from arrivals import litert

    cells = []
    for quantize in (False, True):
        r = RKNN(verbose=False)
        assert r.config(target_platform="rk3588", **config) == 0
        assert r.load_tflite(str(path)) == 0, r.last_error
        assert r.build(do_quantization=quantize, dataset=str(dataset)) == 0, r.last_error
        assert r.init_runtime() == 0
        cells.append(cell([r.inference(inputs=[x])[0] for x in feeds]))
        if quantize:
            said, vout = _vendor(path, vendor[0], vendor[1], feeds, work)
            cells[-1] += f"; {said}" + ("" if vout is None else ": " + cell([o[0] for o in vout]))
            cells.append(litert(r, [[x] for x in feeds[:litert_feeds]], work, input_dtype=input_dtype))
        r.release()
    return cells


def gestures(cache: Path, work: Path) -> list:
    """The two gesture classifiers of hand-gesture-recognition-using-mediapipe (Keras MLPs as float TFLite: 21 hand
    keypoints, or a 16-step fingertip history, as relative coordinates in; the gesture's probabilities out), on the
    repository's own labelled recordings (keypoint.csv, point_history.csv): one row in ten calibrates, the rest
    evaluate. The metric: accuracy against the recorded labels and agreement with the float model's choice."""
    rows = []
    for name, size, shas in (("keypoint_classifier", 42, ("de646612f7294152", "2684890313fd6e6e")),
                              ("point_history_classifier", 32, ("b726eb7c146d5213", "13a9881cd5e047bd"))):
        folder = "model/" + name + "/"
        path = fetch_github(cache, "gesture", folder + name + ".tflite", shas[0])
        csv = fetch_github(cache, "gesture", folder + ("keypoint.csv" if size == 42 else "point_history.csv"),
                           shas[1])
        data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        labels, x = data[:, 0].astype(int), data[:, 1:size + 1]
        calib, held, truth = x[0::10], np.delete(x, np.s_[0::10], 0), np.delete(labels, np.s_[0::10])
        ref = np.array([int(o.argmax()) for o in _litert_first_output(path, [v[None] for v in held])])

        def cell(outs):
            choice = np.array([int(np.argmax(o)) for o in outs])
            return (f"accuracy {np.mean(choice == truth):.4f}, the float model's choice on "
                    f"{int(np.sum(choice == ref))}/{len(ref)}")

        cells = [f"{name} (float TFLite MLP, {size} inputs; {len(held)} recorded samples, float accuracy "
                 f"{np.mean(ref == truth):.4f})"]
        for k, v in enumerate(calib):
            np.save(work / f"g{k}.npy", v[None])
        (work / "ds.txt").write_text("".join(f"g{k}.npy\n" for k in range(len(calib))))
        cells += _tflite_builds(path, work / "ds.txt", [v[None] for v in held], cell,
                                ({"loader": "tflite", "mean": None}, [v[None] for v in calib]), work, 50,
                                input_dtype="float32")
        rows.append(cells)
    return rows


def caffe_faces(cache: Path, work: Path) -> list:
    """Three Caffe models from hpc203's repositories, through load_caffe, on the Ultra-Light and gaze repositories'
    photos (resized to each input, scaled as each demo scales it). The reference is OpenCV 4.x's Caffe reader in its
    own virtualenv (bench/loader_refs.py; OpenCV 5 reads no Caffe), rknn-toolkit2's load_caffe beside ours. The
    metric: each output's cosine to OpenCV's."""
    import cv2
    from loaders import CV4_PY, _opencv_refs

    from openrknn.api import RKNN

    if not CV4_PY.is_file():
        return [["caffe_faces", f"needs OpenCV 4 at {CV4_PY} (see bench/loader_refs.py)", "", ""]]
    photos = [cv2.imread(str(fetch_github(cache, "ultralight", p))) for p in GROUP_PHOTOS] + \
        [cv2.imread(str(fetch_github(cache, k, p))) for k, p in FACE_PHOTOS[:3]]
    rows = []
    for name, key, proto, weights, shas, side, scale, rgb, what in CAFFE:
        files = [fetch_github(cache, key, proto, shas[0]), fetch_github(cache, key, weights, shas[1])]
        pics = [cv2.resize(b, (side, side)) for b in photos]
        pics = [np.ascontiguousarray(p[:, :, ::-1]) if rgb else p for p in pics]
        calib, held = pics[0::2], pics[1::2]
        spec = {"name": name, "fmt": "caffe", "files": files, "mean": [0.0] * 3, "std": [1 / scale] * 3}
        refs = _opencv_refs(spec, held, work)

        def cell(outs):
            return _cosines([[np.ravel(o) for o in out] for out in outs], [[np.ravel(r) for r in ref] for ref in refs])

        cells = [f"{name}: {what} (Caffe, {side}x{side}; {len(held)} photos)"]
        for k, p in enumerate(calib):
            np.save(work / f"f{k}.npy", p)
        (work / "ds.txt").write_text("".join(f"f{k}.npy\n" for k in range(len(calib))))
        for quantize in (False, True):
            r = RKNN(verbose=False)
            assert r.config(target_platform="rk3588", mean_values=[[0] * 3], std_values=[[1 / scale] * 3]) == 0
            assert r.load_caffe(model=str(files[0]), blobs=str(files[1])) == 0, r.last_error
            assert r.build(do_quantization=quantize, dataset=str(work / "ds.txt")) == 0, r.last_error
            assert r.init_runtime() == 0
            cells.append(cell([r.inference(inputs=[p]) for p in held]))
            if quantize:
                job = {"loader": "caffe", "model": str(files[0]), "blobs": str(files[1]), "mean": [0] * 3,
                       "std": [1 / scale] * 3}
                said, outs = _vendor(files[0], job, [p.transpose(2, 0, 1)[None] for p in calib], held, work)
                cells[-1] += f"; {said}" + ("" if outs is None else ": " + cell(
                    [[o[k] for k in range(len(refs[0]))] for o in outs]))
                cells.append(_litert(r, held[:3], work))
            r.release()
        rows.append(cells)
    return rows


def _psnr(out, ref, low: float = 0.0) -> float:
    """The demo's 8-bit picture of ``out`` ([low, 1] stretched to 0..255, clipped, truncated) against that of
    ``ref``, in dB."""
    a, b = (np.clip((np.asarray(x, np.float32) - low) * (255 / (1 - low)), 0, 255).astype(np.uint8)
            .astype(np.float64) for x in (out, ref))
    return float(10 * np.log10(255 ** 2 / max(np.mean((a - b) ** 2), 1e-10)))


def _picture_cell(outs: list, refs: list, low: float) -> str:
    psnr = [_psnr(o, w, low) for o, w in zip(outs, refs)]
    return (f"PSNR {np.mean(psnr):.1f} dB (worst {min(psnr):.1f}), cosine "
            f"{np.mean([cosine(o, w) for o, w in zip(outs, refs)]):.5f}")


# name, repository key, photos, the shared COCO photos darkened (else as they are), what it is, fed BGR, NHWC input,
# mean and std of the feed, the output's low end, the second input (name, value) or None
ENHANCERS = (
    ("pairlie", "lowlight", LOWLIGHT_PHOTOS, True, "PairLIE low-light enhancer (320x240 and an exposure input; Pow "
     "with a computed exponent", False, False, 0.0, 255.0, 0.0, ("exposure", 0.5)),
    ("lyt_net", "lyt", LOWLIGHT_PHOTOS, True, "LYT-Net low-light enhancer (TF export, NHWC, opset 16: YUV split, "
     "channel attention with Softmax, Tanh out", True, True, 127.5, 127.5, -1.0, None),
    ("csrnet", "retouch", RETOUCH_PHOTOS, False, "CSRNet photo retoucher (320x240; a global-average condition branch "
     "scales each layer", False, False, 0.0, 255.0, 0.0, None),
)


def enhancement(cache: Path, work: Path) -> list:
    """Three image-to-image models of hpc203's at 320x240, fed as their demos feed them: PairLIE, a low-light
    enhancer with a second input, the exposure (0.5 as the demo sets it; a Pow takes it as its exponent), RGB, x /
    255; LYT-Net, a low-light transformer exported from TensorFlow (NHWC), BGR, x / 127.5 - 1; both on the
    repository's dark photos and the shared COCO photos darkened (x 0.35, gamma 2); CSRNet, a photo retoucher whose
    condition branch (a global average) scales every layer, RGB, x / 255, on the repository's photos and the shared
    COCO ones. The metric: the PSNR of the demo's 8-bit picture against the float model's, and the cosine."""
    import cv2
    import onnxruntime as ort

    from arrivals import litert

    coco = images(["coco"], None)
    dark = [np.clip(255 * 0.35 * (p / 255.0) ** 2, 0, 255).astype(np.uint8) for p in coco]
    rows = []
    for name, key, photos, darkened, what, bgr, nhwc, mean, std, low, extra in ENHANCERS:
        path = model(cache, name)
        pics = [cv2.resize(cv2.imread(str(fetch_github(cache, key, p)))[:, :, ::-1], (320, 240)) for p in photos]
        pics += [cv2.resize(p, (320, 240), interpolation=cv2.INTER_AREA) for p in (dark if darkened else coco)]
        pics = [np.ascontiguousarray(p[:, :, ::-1]) if bgr else p for p in pics]
        calib, held = pics[0::2], pics[1::2]
        second = [np.array([extra[1]], np.float32)] if extra else []
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def feed(p):
            x = (p - np.float32(mean)) / np.float32(std)
            return dict(zip(names, [x[None] if nhwc else x.transpose(2, 0, 1)[None]] + second))

        refs = [sess.run(None, feed(p))[0] for p in held]
        cfg = {"mean_values": [[mean] * 3] + [[0]] * len(second), "std_values": [[std] * 3] + [[1]] * len(second)}
        cells = [f"{what}; {len(held)} images)"]
        for dtype in (None, "w8a8"):
            r = build(path, [[1, 240, 320, 3]] if nhwc else None, dtype, [[p] + second for p in calib], cfg, work)
            cells.append(_picture_cell([r.inference(inputs=[p] + second)[0].reshape(w.shape)
                                        for p, w in zip(held, refs)], refs, low))
            if dtype:
                job = {"input_names": names, "shapes": [[1, 240, 320, 3] if nhwc else [1, 3, 240, 320]] +
                       [[1]] * len(second), "means": cfg["mean_values"], "stds": cfg["std_values"]}
                said, outs = _vendor(path, job, [[p[None] if nhwc else p.transpose(2, 0, 1)[None]] + second
                                                 for p in calib], [[p[None]] + second for p in held], work)
                cells[-1] += f"; {said}" + ("" if outs is None else ": " + _picture_cell(
                    [o[0].reshape(w.shape) for o, w in zip(outs, refs)], refs, low))
                cells.append(litert(r, [[p[None]] + second for p in held[:3]], work))
            r.release()
        rows.append(cells)
    return rows


def _v8_faces(outs, side: int = 640, conf: float = 0.45) -> list:
    """The YOLOv8-face demo's decode: per stride 8 / 16 / 32 an [80, h, w] map: four 16-bin box-distance
    distributions (softmax, expectation), a class logit (sigmoid over ``conf``), five landmarks (x, y, visibility)
    as offsets from the cell centre times two; NMS at IoU 0.5. [(0, xyxy, landmarks[10])]."""
    boxes, scores, marks = [], [], []
    for out, s in zip(outs, (8, 16, 32)):
        pred = np.asarray(out, np.float64).reshape(80, -1).T
        n = side // s
        centre = np.stack(np.mgrid[:n, :n][::-1], -1).reshape(-1, 2) + 0.5
        bins = np.exp(pred[:, :64].reshape(-1, 4, 16) - pred[:, :64].reshape(-1, 4, 16).max(-1, keepdims=True))
        dist = (bins / bins.sum(-1, keepdims=True)) @ np.arange(16)
        score = 1 / (1 + np.exp(-pred[:, 64]))
        keep = score > conf
        xy = np.clip(np.concatenate([centre - dist[:, :2], centre + dist[:, 2:]], 1) * s, 0, side)
        kp = pred[:, 65:].reshape(-1, 5, 3)[:, :, :2] * 2 + (centre - 0.5)[:, None]
        boxes.append(xy[keep])
        scores.append(score[keep])
        marks.append((kp * s).reshape(-1, 10)[keep])
    b, sc, kp = np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)
    return [(0, b[i], kp[i]) for i in _nms(b, sc, 0.5)]


def _v8_photos(cache: Path) -> list:
    """(BGR photo, its 640 feed as the demo makes it: scaled to fit with INTER_AREA, centred on black, RGB)."""
    import cv2

    bgrs = [cv2.imread(str(fetch_github(cache, "ultralight", p))) for p in GROUP_PHOTOS]
    bgrs += [cv2.imread(str(fetch_github(cache, "v8face", p))) for p in V8FACE_PHOTOS]
    return [(b, np.ascontiguousarray(_centred(b, 640)[:, :, ::-1])) for b in bgrs]


def v8_faces(cache: Path, work: Path) -> list:
    """YOLOv8-lite-t faces with five landmarks (hpc203/yolov8-face-landmarks-opencv-dnn; 640, three [80, h, w]
    outputs: DFL box distributions, a class logit, landmarks), fed as its demo feeds it (RGB, x / 255, centred on
    black), on the Ultra-Light repository's photos of people and its own."""
    import onnxruntime as ort

    path = model(cache, "v8face")
    pics = [p for _, p in _v8_photos(cache)]
    calib, held = pics[0::2], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [_v8_faces(sess.run(None, {"images": (p / np.float32(255)).transpose(2, 0, 1)[None]})) for p in held]
    job = {"input_name": "images", "shape": [1, 3, 640, 640], "mean": [0] * 3, "std": [255] * 3}
    return [f"YOLOv8-lite-t faces and landmarks (640, three outputs of 80 channels; {sum(map(len, refs))} faces in "
            f"{len(held)} photos)"] + _scored_builds(
        path, calib, held, {"mean_values": [[0] * 3], "std_values": [[255] * 3]}, job,
        lambda outs: _faces_cell(refs, [_v8_faces(o) for o in outs]), 3, work)


def face_quality(cache: Path, work: Path) -> list:
    """The face-quality regressor of the same repository (112x112, PReLU; ten sigmoid scores, the demo shows their
    mean), fed as its demo feeds it: each face YOLOv8-lite-t finds (float, in onnxruntime), cropped from the photo,
    RGB stretched to 112, (x / 255 - 0.5) / 0.5. Calibrated on the faces of the even-numbered photos. The metric: the
    mean score's error against the float model's, and the cosine of the ten scores."""
    import cv2
    import onnxruntime as ort

    det = ort.InferenceSession(str(model(cache, "v8face")), providers=["CPUExecutionProvider"])
    crops = []
    for k, (bgr, feed) in enumerate(_v8_photos(cache)):
        s = 640 / max(bgr.shape[:2])
        offset = (np.array([640, 640]) - np.array(bgr.shape[1::-1]) * s).astype(int) // 2
        for _, box, _ in _v8_faces(det.run(None, {"images": (feed / np.float32(255)).transpose(2, 0, 1)[None]})):
            x1, y1, x2, y2 = np.round(np.concatenate([box[:2] - offset, box[2:] - offset]) / s).astype(int)
            face = bgr[max(y1, 0):y2, max(x1, 0):x2]
            if face.size:
                crops.append((k % 2, np.ascontiguousarray(cv2.resize(face, (112, 112))[:, :, ::-1])))
    calib, held = [c for k, c in crops if k == 0], [c for k, c in crops if k == 1]
    path = model(cache, "face_quality")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"input": ((c / np.float32(127.5)) - 1).transpose(2, 0, 1)[None]})[0].ravel()
            for c in held]

    def cell(outs):
        err = np.abs([np.mean(o) - np.mean(w) for o, w in zip(outs, refs)])
        return (f"mean score error {err.mean():.4f} (largest {err.max():.4f}), cosine "
                f"{np.mean([cosine(o, w) for o, w in zip(outs, refs)]):.6f}")

    job = {"input_name": "input", "shape": [1, 3, 112, 112], "mean": [127.5] * 3, "std": [127.5] * 3}
    cells = [f"face-quality regressor (112, PReLU, ten sigmoid scores; {len(held)} faces found by the float "
             f"YOLOv8-lite-t, float scores {np.min([r.mean() for r in refs]):.2f} to "
             f"{np.max([r.mean() for r in refs]):.2f})"]
    cells += _scored_builds(path, calib, held, {"mean_values": [[127.5] * 3], "std_values": [[127.5] * 3]}, job,
                            lambda outs: cell([np.ravel(o[0]) for o in outs]), 1, work)
    return cells


def _litert_sequences(path: Path, feeds: list) -> list:
    """A .tflite file's first output on each float feed, on the LiteRT interpreter, its variables (an LSTM's
    states) reset before each: every feed is a whole sequence. An int8 input or output goes through its scale."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    feed, out = it.get_input_details()[0], it.get_output_details()[0]
    got = []
    for x in feeds:
        it.reset_all_variables()
        if feed["dtype"] == np.int8:
            scale, zero = feed["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(feed["index"], x)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        got.append(y)
    return got


def micro_lstm(cache: Path, work: Path) -> list:
    """TensorFlow Lite Micro's MNIST LSTM (examples/mnist_lstm: an image read as 28 steps of 28 pixels by a
    UNIDIRECTIONAL_SEQUENCE_LSTM of 20 units, then a classifier), as the float file and as its int8 file (int8
    weights, int16 cell state), on the ten digit samples the example ships, each also shifted by a pixel or two in
    four directions: the even digits' calibrate, the odd digits' judge. Reference: LiteRT on the same file, its
    states reset for each image. The metric: the digit read and the probabilities' largest difference."""
    import cv2

    folder = "tensorflow/lite/micro/examples/mnist_lstm/"
    digits = [cv2.imread(str(fetch_github(cache, "tflm", f"{folder}samples/sample{k}.png")), cv2.IMREAD_GRAYSCALE)
              for k in range(10)]
    moves = [(0, 0), (1, 0), (-1, 0), (0, 2), (0, -2)]
    samples = [(k, (np.roll(d, m, axis=(0, 1)) / np.float32(255))[None]) for k, d in enumerate(digits) for m in moves]
    calib = [x for k, x in samples if k % 2 == 0]
    held, truth = [x for k, x in samples if k % 2], np.array([k for k, _ in samples if k % 2])
    for k, x in enumerate(calib):
        np.save(work / f"m{k}.npy", x)
    (work / "ds.txt").write_text("".join(f"m{k}.npy\n" for k in range(len(calib))))
    rows = []
    for name, sha in (("trained_lstm.tflite", "479430996e6d6fce"), ("trained_lstm_int8.tflite", "a44e4d8a6c051db5")):
        path = fetch_github(cache, "tflm", folder + name, sha)
        refs = _litert_sequences(path, held)

        def cell(outs):
            read = np.array([int(np.argmax(o)) for o in outs])
            diff = max(float(np.abs(np.ravel(o) - np.ravel(w)).max()) for o, w in zip(outs, refs))
            return f"digits read {int(np.sum(read == truth))}/{len(truth)}, probabilities within {diff:.4f}"

        cells = [f"MNIST LSTM, {name} (28 steps x 28 pixels, 20 units; {len(held)} images; LiteRT reads "
                 f"{int(np.sum(np.array([int(np.argmax(w)) for w in refs]) == truth))}/{len(truth)})"]
        cells += _tflite_builds(path, work / "ds.txt", held, cell, ({"loader": "tflite", "mean": None}, calib), work,
                                10, input_dtype="float32")
        rows.append(cells)
    return rows


def _imagenet_crops() -> list:
    """The shared ImageNet photos as torchvision's eval transform crops them: RGB, short side to 256, centre 224."""
    import cv2

    out = []
    for im in images(["imagenet"], None):
        h, w = im.shape[:2]
        s = 256 / min(h, w)
        im = cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
        top, left = (im.shape[0] - 224) // 2, (im.shape[1] - 224) // 2
        out.append(np.ascontiguousarray(im[top:top + 224, left:left + 224]))
    return out


def pytorch_int8_tflite(cache: Path, work: Path) -> list:
    """A MobileNetV2 quantization-aware-trained in PyTorch and written as an int8 TFLite file with its NCHW input
    kept ([1, 3, 224, 224]; TRANSPOSE ops inside; TensorFlow Lite Micro's third_party/xtensa/examples/
    pytorch_to_tflite), fed ImageNet-normalised crops of the shared photos (mean / std given to config(), the file
    quantizes them with its own input scale). Reference: LiteRT on the file. The metric: its top-1 class kept, on
    the odd-numbered photos (the even ones calibrate the requantized build)."""

    path = fetch_github(cache, "tflm", "third_party/xtensa/examples/pytorch_to_tflite/"
                        "mobilenet_v2_quantized_1x3x224x224.tflite", "2778683128d56fe4")
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    crops = _imagenet_crops()
    calib, held = crops[0::2], crops[1::2]
    refs = _litert_sequences(path, [((c - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
                                    for c in held])
    for k, c in enumerate(calib):
        np.save(work / f"i{k}.npy", c[None])
    (work / "ds.txt").write_text("".join(f"i{k}.npy\n" for k in range(len(calib))))

    def cell(outs):
        return f"top-1 kept {sum(int(np.argmax(o) == np.argmax(w)) for o, w in zip(outs, refs))}/{len(refs)}"

    cells = [f"MobileNetV2 int8 TFLite from PyTorch QAT (NCHW input kept, TRANSPOSE inside; {len(held)} ImageNet "
             "photos, against LiteRT on the file)"]
    vendor = ({"loader": "tflite", "mean": mean, "std": std}, [c.transpose(2, 0, 1)[None] for c in calib])
    cells += _tflite_builds(path, work / "ds.txt", [c[None] for c in held], cell, vendor, work, 4,
                            mean_values=[mean], std_values=[std])
    cells[1] += " (the file's own scales)"
    return cells


PLATE_CHARS = 31 + 10 + 26  # province characters, digits, letters; the last of LPRNet's 68 classes is the blank


def _plate_priors(side: int = 640) -> np.ndarray:
    """RetinaFace's anchors as the plate demo makes them: per stride 8 / 16 / 32 two square sizes per cell, centre and
    size relative to the image."""
    out = []
    for step, sizes in ((8, (24, 48)), (16, (96, 192)), (32, (384, 768))):
        n = -(-side // step)
        for i in range(n):
            for j in range(n):
                for size in sizes:
                    out.append(((j + 0.5) * step / side, (i + 0.5) * step / side, size / side, size / side))
    return np.array(out)


def _plates(outs, side: int = 640, conf: float = 0.6) -> list:
    """The plate demo's decode: softmax plate score over ``conf``, box and four corners from the anchors (variances
    0.1 / 0.2), NMS at IoU 0.4. [(0, xyxy, corners[8])] in the 640 square's pixels."""
    loc, score, marks = (np.asarray(o, np.float64).reshape(-1, k) for o, k in zip(outs, (4, 2, 8)))
    pri = _plate_priors(side)
    centre = pri[:, :2] + loc[:, :2] * 0.1 * pri[:, 2:]
    size = pri[:, 2:] * np.exp(loc[:, 2:] * 0.2)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) * side
    corners = (np.tile(pri[:, :2], 4) + marks * 0.1 * np.tile(pri[:, 2:], 4)) * side
    keep = score[:, 1] > conf
    b, sc, kp = boxes[keep], score[keep, 1], corners[keep]
    return [(0, b[i], kp[i]) for i in _nms(b, sc, 0.4)]


def _plate_crop(square: np.ndarray, box, corners) -> np.ndarray:
    """The demo's 94x24 plate: the box's crop warped so its four corners (in its order) fill the rectangle."""
    import cv2

    x1, y1 = int(box[0]), int(box[1])
    pts = np.float32(corners).reshape(4, 2)[[2, 3, 1, 0]] - np.float32([x1, y1])
    warp = cv2.getPerspectiveTransform(pts, np.float32([[0, 0], [94, 0], [0, 24], [94, 24]]))
    return cv2.warpPerspective(square[max(y1, 0):int(box[3]), max(x1, 0):int(box[2])], warp, (94, 24))


def _plate_text(logits) -> str:
    """LPRNet's greedy CTC reading: the best class per position, repeats and blanks dropped (class indices)."""
    best = np.asarray(logits).reshape(68, 18).argmax(0)
    out, prev = [], -1
    for c in best:
        if c != prev and c != PLATE_CHARS:
            out.append(str(int(c)))
        prev = c
    return ",".join(out)


def plates(cache: Path, work: Path) -> list:
    """hpc203's license-plate pipeline (license-plate-detect-recoginition-opencv): a RetinaFace-style plate detector
    (640; boxes, scores and four corners over 16,800 anchors; BGR - (104, 117, 123)) and LPRNet (94x24, (x - 127.5) /
    128; 68 classes x 18 positions, read by greedy CTC), on the 20 car photos of the same author's plate-corner
    repository, letterboxed as the demo does (scaled to fit, centred on black). The detector's row: the float
    model's plates found again and the corners' mean error in plate widths. LPRNet's row: the plate read (its class
    sequence) as the float model reads it, on the crops the float detector gives (the even photos' crops
    calibrate); then end to end, both int8 models chained, against the float chain."""
    import cv2
    import onnxruntime as ort

    det_path, rec_path = model(cache, "plate_detector"), model(cache, "lprnet")
    squares = [_centred(cv2.imread(str(fetch_github(cache, "plate_photos", f"onnxruntime/imgs/{k}.jpg"))), 640)
               for k in range(1, 21)]
    calib, held = squares[0::2], squares[1::2]
    det = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(rec_path), providers=["CPUExecutionProvider"])

    def float_plates(sq):
        return _plates(det.run(None, {"input.1": (sq - np.float32([104, 117, 123])).transpose(2, 0, 1)[None]}))

    def crops(sq, found):
        return [_plate_crop(sq, b, c) for _, b, c in found]

    refs = [float_plates(sq) for sq in held]
    calib_crops = [c for sq in calib for c in crops(sq, float_plates(sq))]
    held_crops = [c for sq, found in zip(held, refs) for c in crops(sq, found)]

    def read_float(crop):
        return _plate_text(rec.run(None, {"input.1": ((crop - np.float32(127.5)) / 128).transpose(2, 0, 1)[None]
                                          .astype(np.float32)})[0])

    texts = [read_float(c) for c in held_crops]

    def corner_cell(outs):
        return _faces_cell(refs, [_plates(o) for o in outs], "plates", "corners", "plate")

    job = {"input_name": "input.1", "shape": [1, 3, 640, 640], "mean": [104, 117, 123], "std": [1] * 3}
    det_cells = [f"plate detector, RetinaFace-style (640; 3 outputs over 16,800 anchors; {sum(map(len, refs))} "
                 f"plates in {len(held)} photos)"] + _scored_builds(
        det_path, calib, held, {"mean_values": [[104, 117, 123]], "std_values": [[1] * 3]}, job, corner_cell, 3, work)

    def read_cell(outs):
        return f"plates read as the float model reads them {sum(_plate_text(o[0]) == t for o, t in zip(outs, texts))}" \
               f"/{len(texts)}"

    job = {"input_name": "input.1", "shape": [1, 3, 24, 94], "mean": [127.5] * 3, "std": [128] * 3}
    cfg = {"mean_values": [[127.5] * 3], "std_values": [[128] * 3]}
    rec_cells = [f"LPRNet (94x24, 68 classes x 18 positions, greedy CTC; the {len(texts)} plates the float detector "
                 "finds)"] + _scored_builds(rec_path, calib_crops, held_crops, cfg, job, read_cell, 1, work)
    # end to end: the int8 detector's plates, warped, read by the int8 LPRNet, against the float chain's reading
    r_det = build(det_path, None, "w8a8", [[p] for p in calib], {"mean_values": [[104, 117, 123]],
                                                                 "std_values": [[1] * 3]}, work)
    found = [_plates(r_det.inference(inputs=[sq])) for sq in held]
    r_det.release()
    r_rec = build(rec_path, None, "w8a8", [[c] for c in calib_crops], cfg, work)
    chained = [[_plate_text(r_rec.inference(inputs=[c])[0]) for c in crops(sq, f)] for sq, f in zip(held, found)]
    r_rec.release()
    by_photo, k = [], 0
    for ref in refs:
        by_photo.append(texts[k:k + len(ref)])
        k += len(ref)
    same = sum(sorted(a) == sorted(b) for a, b in zip(chained, by_photo))
    rec_cells[2] += f"; end to end (both int8): each photo's plates read as the float chain reads them {same}/" \
                    f"{len(held)}"
    return [det_cells, rec_cells]


# TensorFlow Lite Micro's SEANet layer tests: (folder, how many)
SEANET = (("add", 17), ("conv", 22), ("leaky_relu", 23), ("pad", 19), ("strided_slice", 34), ("sub", 5),
          ("transpose_conv", 5), ("quantize", 2))


def int16_layers(cache: Path, work: Path) -> list:
    """TensorFlow Lite Micro's integration tests of SEANet's layers (tensorflow/lite/micro/integration_tests/seanet:
    16x8 TFLite files, int16 activations and int8 weights, each with the int16 input and the golden output of its
    reference kernels), through load_tflite and onnxruntime on the loaded graph: the largest difference from the
    golden output in int16 steps, over the values the file's kernels did not saturate (a float graph does not clamp
    at int16's ends). Files whose runtime inputs include what the loader takes as constants are skipped."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from openrknn.frontends.tflite import load_tflite

    folder = "tensorflow/lite/micro/integration_tests/seanet/"
    worst, within, tried, failed = {}, 0, 0, []
    for op, count in SEANET:
        for k in range(count):
            path = fetch_github(cache, "tflm", f"{folder}{op}/{op}{k}.tflite")
            it = Interpreter(model_path=str(path))
            dets, od = it.get_input_details(), it.get_output_details()[0]
            # the csv files beside it (fetched with it): inputs and golden output, named by their integer type
            arrs = [np.loadtxt(f, delimiter=",", dtype=np.int64).ravel()
                    for f in sorted(path.parent.glob(f"{op}{k}_input*.csv"))]
            if sorted(a.size for a in arrs) != sorted(int(np.prod(d["shape"])) for d in dets):
                continue
            feeds = []
            for d in dets:  # the csv files in the order of the inputs of their sizes
                q = arrs.pop(next(j for j, a in enumerate(arrs) if a.size == int(np.prod(d["shape"]))))
                feeds.append(((q.reshape(d["shape"]) - d["quantization"][1]) * d["quantization"][0]).astype(np.float32))
            gold = np.loadtxt(next(path.parent.glob(f"{op}{k}_golden_*.csv")), delimiter=",",
                              dtype=np.int64).reshape(od["shape"])
            scale, zero = od["quantization"]
            info = np.iinfo(od["dtype"])
            keep = (gold > info.min) & (gold < info.max)
            tried += 1
            try:
                sess = ort.InferenceSession(load_tflite(path).model.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
                got = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), feeds)})[0].reshape(gold.shape)
            except Exception as e:  # the table shows it
                failed.append(f"{op}{k} ({str(e).split(';')[0][-40:]})")
                continue
            err = float(np.abs(got / scale + zero - gold)[keep].max()) if keep.any() else 0.0
            worst[op] = max(worst.get(op, 0.0), err)
            within += err <= 2.5
    return [f"SEANet's 16x8 layers from TensorFlow Lite Micro's integration tests ({tried} files, {len(SEANET)} op "
            "kinds; golden int16 outputs of its reference kernels)",
            f"{within}/{tried} within 2.5 int16 steps of the golden output; largest per op: " +
            ", ".join(f"{op} {v:.1f}" for op, v in worst.items()) + (f"; refused: {', '.join(failed)}" if failed
                                                                       else ""),
            "(not built: a w8a8 build quantizes these activations to 8 bits)", ""]


# name, input (height, width), its layout is NHWC, mean, std, fed BGR, what it is; PINTO's conversions (OpenVINO or
# TFLite through TensorFlow to ONNX) that Image-Processing-Node-Editor runs
CONVERTED = (
    ("tbefn", (180, 320), False, 0.0, 255.0, False, "TBEFN low-light enhancer (NCHW in, NHWC out, 109 nodes)"),
    ("agllnet", (256, 384), False, 0.0, 255.0, False, "AGLLNet low-light enhancer (NCHW in, NHWC out: ten channels, "
     "the picture in 4..6; dense decoder: its attention map joins ten tensors in seven Concats)"),
    ("deeplab", (257, 257), True, 127.5, 127.5, False, "DeepLabV3 MobileNetV2, PASCAL VOC (TFLite to ONNX: opset 9, "
     "NHWC in, the logits upsampled 33 -> 257 by an Upsample-9)"),
    ("road", (512, 896), True, 0.0, 1.0, True, "road-segmentation-adas-0001 (OpenVINO to ONNX: NHWC BGR pixels in, "
     "four classes)"),
)


def converted(cache: Path, work: Path) -> list:
    """Four models of PINTO's model zoo as Kazuhito00's Image-Processing-Node-Editor ships and feeds them: two
    low-light enhancers (RGB, x / 255) on hpc203's dark photos and the shared COCO photos darkened, judged as the
    enhancement row judges (PSNR of the 8-bit picture against the float model's); two segmenters on the shared COCO
    photos, judged by the pixels whose class (argmax) is the float model's. rknn-toolkit2 reads an NHWC input's dim 1
    as its channels, so for the two NHWC models it gets normalised float feeds and no mean / std (as a user of it
    must), and the cell says so."""
    import cv2
    import onnxruntime as ort

    from arrivals import litert

    coco = images(["coco"], None)
    dark = [np.clip(255 * 0.35 * (p / 255.0) ** 2, 0, 255).astype(np.uint8) for p in coco]
    lows = [cv2.imread(str(fetch_github(cache, "lowlight", p)))[:, :, ::-1] for p in LOWLIGHT_PHOTOS]
    rows = []
    for name, (h, w), nhwc, mean, std, bgr, what in CONVERTED:
        path = model(cache, name)
        enhancer = name in ("tbefn", "agllnet")
        pics = [np.ascontiguousarray(cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA))
                for p in ((lows + dark) if enhancer else coco)][:16]
        pics = [np.ascontiguousarray(p[:, :, ::-1]) if bgr else p for p in pics]
        calib, held = pics[0::2], pics[1::2]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name

        def feed(p):
            x = ((p - np.float32(mean)) / np.float32(std)).astype(np.float32)
            return x[None] if nhwc else x.transpose(2, 0, 1)[None]

        refs = [sess.run(None, {iname: feed(p)})[0] for p in held]

        def cell(outs):
            outs = [np.asarray(o).reshape(r.shape) for o, r in zip(outs, refs)]
            if name == "agllnet":
                return _picture_cell([o[..., 4:7] for o in outs], [r[..., 4:7] for r in refs], 0.0)
            if enhancer:
                return _picture_cell(outs, refs, 0.0)
            agree = [float((o.argmax(-1) == r.argmax(-1)).mean()) for o, r in zip(outs, refs)]
            return (f"{100 * np.mean(agree):.2f}% of the pixels in the float model's class (worst "
                    f"{100 * min(agree):.2f}%), cosine {np.mean([cosine(o, r) for o, r in zip(outs, refs)]):.5f}")

        cells = [f"{what}; {len(held)} {'dark photos' if enhancer else 'photos'}"]
        cfg = {"mean_values": [[mean] * 3], "std_values": [[std] * 3]}
        for dtype in (None, "w8a8"):
            r = build(path, None, dtype, [[p] for p in calib], cfg, work)
            cells.append(cell([r.inference(inputs=[p])[0] for p in held]))
            if dtype:
                shape = list(sess.get_inputs()[0].shape)
                if nhwc:
                    job = {"input_name": iname, "shape": shape, "data_format": "nchw"}
                    said, outs = _vendor(path, job, [feed(p) for p in calib], [feed(p) for p in held], work)
                    said += " (fed normalised floats, no mean / std)"
                else:
                    job = {"input_name": iname, "shape": shape, "mean": [mean] * 3, "std": [std] * 3}
                    said, outs = _vendor(path, job, [p.transpose(2, 0, 1)[None] for p in calib],
                                         [p[None] for p in held], work)
                cells[-1] += f"; {said}" + ("" if outs is None else ": " + cell([o[0] for o in outs]))
                cells.append(litert(r, [[p[None]] for p in held[:2]], work))
            r.release()
        rows.append(cells)
    return rows


HYBRID_SCORES = 0.995  # DEIMv2's sorted scores: 0.993 plain; 0.995 promotes 13% of the layers, 0.999 about 38%


def detr(cache: Path, work: Path) -> list:
    """DEIMv2 (HGNetV2-Atto, COCO, 320x320) as Kazuhito00/onnx-purego-interpreter ships it: a DETR-family detector
    (a CNN encoder, a deformable decoder sampling with GridSample, D-FINE's bin integral, TopK query selection and a
    TopK postprocessor inside; two inputs, the image (RGB / 255, stretched to 320 as the sample does) and its
    original size (int64 [1, 2], here 320 x 320 so boxes stay in the fed pixels); labels, boxes and scores out). The
    metric is the float model's detections at score 0.5 found again (same class, IoU >= 0.5); auto hybrid is the
    public build(auto_hybrid=True) with auto_hybrid_cos_thresh=HYBRID_SCORES (it measures the TopK's sorted
    scores), timed beside the plain build."""
    import time

    import cv2
    import onnxruntime as ort

    from openrknn.runtime.tflite_runner import TfliteRunner

    path = model(cache, "deimv2")
    sample = cv2.imread(str(fetch_github(cache, "purego", "examples/DEIMv2/sample.jpg", "e1b872d255bebdb8")))
    pics = [np.ascontiguousarray(cv2.resize(p, (320, 320), interpolation=cv2.INTER_LINEAR))
            for p in images(["coco", "misc", "imagenet"], None) + [sample[:, :, ::-1]]]
    calib, held = pics[0::2][:16], pics[1::2]
    size = np.array([[320, 320]], np.int64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def dets(outs):
        labels, boxes, scores = (np.asarray(o) for o in outs[:3])
        keep = scores.reshape(-1) > 0.5
        return [(int(c), b) for c, b in zip(labels.reshape(-1)[keep], boxes.reshape(-1, 4)[keep])]

    refs = [dets(sess.run(None, {"images": (p / np.float32(255)).transpose(2, 0, 1)[None], "orig_target_sizes": size}))
            for p in held]
    cells = [f"DEIMv2 atto COCO (DETR: TopK queries, GridSample, 2 inputs); {len(held)} images, "
             f"{sum(map(len, refs))} float detections"]
    cfg = {"mean_values": [[0] * 3, [0, 0]], "std_values": [[255] * 3, [1, 1]]}
    shapes = [[1, 3, 320, 320], [1, 2]]
    for dtype in (None, "w8a8"):
        t = time.perf_counter()
        r = build(path, shapes, dtype, [[p[None], size] for p in calib], cfg, work)
        took = time.perf_counter() - t
        cells.append(_kept_cell(refs, [dets(r.inference(inputs=[p[None], size])) for p in held]))
        if dtype:
            plain = took  # the hybrid below is timed against it (build() wrote ds.txt for it too)
            cells[-1] += f" (build {took:.1f} s)"
            job = {"input_names": ["images", "orig_target_sizes"], "shapes": shapes, "means": cfg["mean_values"],
                   "stds": cfg["std_values"]}
            said, outs = _vendor(path, job, [[p.transpose(2, 0, 1)[None], size] for p in calib],
                                 [[p[None], size] for p in held], work)
            cells[-1] += "; " + said + ("" if outs is None else ": " + _kept_cell(refs, [dets([o[0], o[1], o[2]])
                                                                                        for o in outs]))
            out = work / "detr.tflite"
            if r.export_tflite(str(out)) != 0:
                cells.append(f"export refused: {str(r.last_error)[:100]}")
            else:
                runner = TfliteRunner(str(out), delegate=None)
                cells.append("LiteRT " + _kept_cell(refs, [dets(runner.run([p[None], size])) for p in held]))
        r.release()
    from openrknn.api import RKNN

    h = RKNN(verbose=False)
    assert h.config(target_platform="rk3588", quantized_dtype="w8a8", auto_hybrid_cos_thresh=HYBRID_SCORES, **cfg) == 0
    assert h.load_onnx(str(path), input_size_list=shapes) == 0
    t = time.perf_counter()
    assert h.build(dataset=str(work / "ds.txt"), auto_hybrid=True) == 0, h.last_error
    took = time.perf_counter() - t
    h.init_runtime()
    rep = h.hybrid_report
    cells[2] += (f"; auto hybrid: {_kept_cell(refs, [dets(h.inference(inputs=[p[None], size])) for p in held])}, "
                 f"{len(rep['layers'])} of {rep['units_total']} layers in int16 (sorted scores' cosine "
                 f"{min(rep['cosine_before']):.4f} -> {min(rep['cosine_after']):.4f}), build {took:.0f} s "
                 f"({took / plain:.1f}x the plain build)")
    h.release()
    return [cells]


SPEECH = ["the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background",
          "it is easy to tell the depth of a well", "these days a chicken leg is a rare dish",
          "rice is often served in round bowls", "the juice of lemons makes fine punch"]


def _noisy_speech(work: Path) -> list:
    """(clean, noisy) 16 kHz float pairs: each sentence spoken by espeak-ng in two voices, with white noise at
    5 dB SNR over the whole clip (0.3 s of it alone before the speech)."""
    import subprocess
    import wave

    rng = np.random.default_rng(5)
    out = []
    for k, text in enumerate(SPEECH):
        for voice in ("en-us", "en+f3"):
            wav = work / f"speech{k}_{voice.replace('+', '_')}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True,
                           capture_output=True)
            with wave.open(str(wav)) as w:
                rate, a = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0
            clean = np.concatenate([np.zeros(4800), np.interp(np.arange(0, len(a) / rate, 1 / 16000),
                                                              np.arange(len(a)) / rate, a)])
            noise = rng.standard_normal(len(clean))
            noise *= np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2) / 10 ** 0.5)
            out.append((clean, clean + noise))
    return out


def _enhance(run, noisy: np.ndarray, shapes) -> tuple:
    """gtcrn streamed as the node editor streams it: 512-sample frames every 256, a sqrt-Hann window, one rfft frame
    [1, 257, 1, 2] per step with the three caches carried; overlap-added back. ``run`` (feeds -> outputs).
    Returns (enhanced waveform, the feeds it was given)."""
    window = np.sqrt(np.hanning(512))
    caches = [np.zeros(s, np.float32) for s in shapes[1:]]
    out, norm, feeds = np.zeros(len(noisy) + 512), np.zeros(len(noisy) + 512), []
    for start in range(0, len(noisy) - 512, 256):
        spec = np.fft.rfft(noisy[start:start + 512] * window)
        feed = [np.stack([spec.real, spec.imag], -1)[None, :, None, :].astype(np.float32)] + caches
        feeds.append(feed)
        enh, *caches = [np.asarray(o, np.float32) for o in run(feed)]
        enh = enh.reshape(257, 2)
        out[start:start + 512] += np.fft.irfft(enh[:, 0] + 1j * enh[:, 1], n=512) * window
        norm[start:start + 512] += window ** 2
    return out[:len(noisy)] / np.maximum(norm[:len(noisy)], 1e-3), feeds


def _snr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((x - ref) ** 2), 1e-20)))


def speech_enhancement(cache: Path, work: Path) -> list:
    """GTCRN (a streaming speech enhancer: grouped RNNs (14 GRUs), ConvTranspose, PReLU, ScatterND; a noisy STFT
    frame and three caches in, two of them 5-D) as Kazuhito00's Audio-Processing-Node-Editor ships and streams it,
    on espeak-ng sentences in white noise at 5 dB. Calibration: every fourth frame of the even clips, with the caches
    onnxruntime carried to it; evaluation on the odd clips, each build streaming its own caches. The metrics: the
    SNR of the enhanced waveform against onnxruntime's (how faithful), and the SNR against the clean speech (what the
    enhancement is worth: the noisy input's and onnxruntime's beside it). rknn-toolkit2 is fed the frames with
    onnxruntime's caches (it runs one frame at a time); its enhanced frames' cosine to onnxruntime's."""
    import onnxruntime as ort

    from arrivals import litert

    path = model(cache, "gtcrn")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    shapes = [list(i.shape) for i in sess.get_inputs()]
    ort_run = lambda feed: sess.run(None, dict(zip(names, feed)))  # noqa: E731
    clips = _noisy_speech(work)
    runs = [_enhance(ort_run, noisy, shapes) for _, noisy in clips]
    calib = [f for (_, feeds) in runs[0::2] for f in feeds[::4]]
    held = list(zip(clips[1::2], runs[1::2]))
    noisy_snr = np.mean([_snr(noisy, clean) for (clean, noisy), _ in held])
    ort_snr = np.mean([_snr(enh, clean) for (clean, _), (enh, _) in held])
    cells = [f"GTCRN speech enhancer (14 GRUs, 5-D caches, streamed 16 ms frames); {len(held)} noisy clips "
             f"({noisy_snr:.1f} dB, onnxruntime's output {ort_snr:.1f} dB against the clean speech)"]
    cfg = {"input_layout": "nhwc#nchw#nchw#nhwc"}  # the 4-D frame and cache as the model takes them
    for dtype in (None, "w8a8", "w8a16"):
        r = build(path, shapes, dtype, calib, cfg, work)
        ours = [_enhance(lambda feed: r.inference(inputs=feed), noisy, shapes)[0] for (_, noisy), _ in held]
        said = (f"{np.mean([_snr(o, e) for o, (_, (e, _)) in zip(ours, held)]):.1f} dB to onnxruntime's output, "
                f"{np.mean([_snr(o, c) for o, ((c, _), _) in zip(ours, held)]):.1f} dB to the clean speech")
        if dtype == "w8a16":  # int16 activations, as the chip runs them: the precision this model needs
            cells[2] += "; w8a16: " + said
            r.release()
            continue
        cells.append(said)
        if dtype:
            frames = [f for _, (_, feeds) in held[:2] for f in feeds[::6]]
            job = {"input_names": names, "shapes": shapes, "data_format": "nchw"}
            said, outs = _vendor(path, job, calib, frames, work)
            if outs is not None:
                refs = [ort_run(f)[0] for f in frames]
                ours_f = [np.asarray(r.inference(inputs=f)[0]).reshape(x.shape) for f, x in zip(frames, refs)]
                said += (f": enhanced frames' cosine {np.mean([cosine(o[0], x) for o, x in zip(outs, refs)]):.5f}, "
                         f"openrknn's on the same frames {np.mean([cosine(o, x) for o, x in zip(ours_f, refs)]):.5f}")
            cells[-1] += "; " + said
            cells.append(litert(r, frames[:6], work, input_dtype="float32"))
        r.release()
    return [cells]


def sr_frames(size_hw, photos: list) -> tuple:
    """Low-resolution frames of ``size_hw`` and their real high-resolution originals (twice the size, cut from the
    middle of each photo, portraits turned), the low one made as the model was trained: PIL's bicubic downscale."""
    from PIL import Image

    h, w = size_hw
    lows, highs = [], []
    for p in photos:
        p = np.ascontiguousarray(p.transpose(1, 0, 2)) if p.shape[0] > p.shape[1] else p
        if p.shape[0] < 2 * h or p.shape[1] < 2 * w:
            continue
        y, x = (p.shape[0] - 2 * h) // 2, (p.shape[1] - 2 * w) // 2
        high = np.ascontiguousarray(p[y:y + 2 * h, x:x + 2 * w])
        lows.append(np.asarray(Image.fromarray(high).resize((w, h), Image.BICUBIC)))
        highs.append(high)
    return lows, highs


def sr_picture(out) -> np.ndarray:
    """The demo's 8-bit RGB picture of an ESPCN output [1, 3, H, W] in 0..1."""
    return np.clip(np.asarray(out, np.float32)[0].transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)


def _picture_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / max(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2), 1e-10)))


def _sr_cell(outs: list, refs: list, highs: list) -> str:
    pics = [sr_picture(o) for o in outs]
    return (f"PSNR {np.mean([_picture_psnr(p, sr_picture(r)) for p, r in zip(pics, refs)]):.1f} dB to the float "
            f"model's picture, {np.mean([_picture_psnr(p, h) for p, h in zip(pics, highs)]):.2f} dB to the real "
            "high-resolution photo")


def super_resolution(cache: Path, work: Path) -> list:
    """ESPCN x2 (SCUMBAG0LEE/ESPCN-Realtime-Webcam-Upscaler, a real-time webcam upscaler: three convs and a
    DepthToSpace; ONNX opset 20 with dynamic height and width, and its float16 twin), fed as its batch tool feeds it:
    RGB, x / 255, at 208x320, the low-resolution frame made from the middle 416x640 of each shared COCO photo that
    large (25 of 30) by PIL's bicubic downscale (as the model was trained). The metrics: PSNR of the 8-bit picture
    against the float model's, and against the real high-resolution photo (the upscaler's worth: bicubic upscaling's
    and the float model's beside it). rknn-toolkit2 refuses opset 20 and is given the file converted to opset 19 by
    onnx's version converter, as its error leads a user to do."""
    import onnx
    import onnxruntime as ort
    from onnx import version_converter
    from PIL import Image

    lows, highs = sr_frames((208, 320), images(["coco"], None))
    calib, held, held_high = lows[0::2], lows[1::2], highs[1::2]
    path = model(cache, "espcn_quality")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"input": (p / np.float32(255)).transpose(2, 0, 1)[None]})[0] for p in held]
    bicubic = np.mean([_picture_psnr(np.asarray(Image.fromarray(p).resize((640, 416), Image.BICUBIC)), h)
                       for p, h in zip(held, held_high)])
    ort_psnr = np.mean([_picture_psnr(sr_picture(r), h) for r, h in zip(refs, held_high)])
    cells = [f"ESPCN x2 super-resolution (opset 20, DepthToSpace, dynamic H and W; 208x320 -> 416x640); {len(held)} "
             f"frames (bicubic upscaling {bicubic:.2f} dB, onnxruntime's float model {ort_psnr:.2f} dB to the real "
             "photo)"]
    cfg = {"mean_values": [[0] * 3], "std_values": [[255] * 3]}
    for dtype in (None, "w8a8", "w8a16"):
        r = build(path, [[1, 3, 208, 320]], dtype, [[p] for p in calib], cfg, work)
        said = _sr_cell([r.inference(inputs=[p])[0] for p in held], refs, held_high)
        if dtype == "w8a16":
            cells[2] += f"; w8a16: {said}"
            r.release()
            continue
        cells.append(said)
        if dtype is None:  # the float16 twin of the file (float16 input and weights) loads and builds too
            half = model(cache, "espcn_quality_fp16")
            sess16 = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
            refs16 = [sess16.run(None, {"input": (p / np.float32(255)).transpose(2, 0, 1)[None].astype(np.float16)})[0]
                      .astype(np.float32) for p in held]
            r16 = build(half, [[1, 3, 208, 320]], None, [], cfg, work)
            cells[-1] += "; its float16 file: " + _sr_cell([r16.inference(inputs=[p])[0] for p in held], refs16,
                                                          held_high).replace("float model", "float16 model")
            r16.release()
        else:
            opset19 = work / "espcn_opset19.onnx"
            onnx.save(version_converter.convert_version(onnx.load(str(path)), 19), str(opset19))
            job = {"input_name": "input", "shape": [1, 3, 208, 320], "mean": [0] * 3, "std": [255] * 3}
            said, outs = _vendor(opset19, job, [p.transpose(2, 0, 1)[None] for p in calib], [p[None] for p in held],
                                 work)
            if outs is not None:
                said += " on the opset-19 file: " + _sr_cell([o[0] for o in outs], refs, held_high)
            cells[-1] += "; " + said
            cells.append(_litert(r, held[:3], work))
        r.release()
    return cells


ROWS = (nms_inside, end2end, end2end_per_class, ssd_pets, ssd_pets_b, person_detector, edges, keypoints,
        segmentation, reid, faces, fastest, line_segments, gfl_detector, lanes, pose, light_faces, yunet, gestures,
        caffe_faces, enhancement, v8_faces, face_quality, micro_lstm, pytorch_int8_tflite, int16_layers, plates,
        converted, detr, speech_enhancement, super_resolution, rtmdet)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/corpus"))
    ap.add_argument("--only", default="", help="comma-separated rows, e.g. nms_inside,edges")
    args = ap.parse_args()
    runs = [r for r in ROWS if not args.only or r.__name__ in args.only.split(",")]
    print_rows(runs, args.cache, "w8a8 vs onnxruntime; rknn-toolkit2 w8a8")


if __name__ == "__main__":
    main()
