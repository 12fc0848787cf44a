"""`openrknn detect MODEL SOURCE`: YOLOX detection on an image, a folder, a video file or a camera.

Writes annotated images (or an annotated video), detections.json and COCO-style results into --out. Everything is
written to a staging folder first and moved into place only when the whole source was processed: a corrupt image or
an unreadable video leaves no partial output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="YOLOX detection on an image, folder, video or camera",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=".rknn, or .pt/.onnx converted on the fly (see --config)")
    p.add_argument("source", help="image file, folder of images, video file, or camera index (0, 1, ...)")
    p.add_argument("-o", "--out", default="detections", help="output folder (default: ./detections)")
    p.add_argument("--score", type=float, default=0.3, help="score threshold (objectness x class), default 0.3")
    p.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold, default 0.45")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--letterbox", choices=("center", "topleft", "stretch"), default="center")
    p.add_argument("--pad", type=int, default=114, help="letterbox pad value (seed: 128, official YOLOX: 114)")
    p.add_argument("--rgb", action="store_true", help="feed RGB frames (default: OpenCV's BGR, as a board camera)")
    p.add_argument("--classes", default=None, help="class names: a text file (one per line) or a comma list")
    p.add_argument("--style", choices=("box", "ellipse"), default="box", help="drawing style (seed: ellipse)")
    p.add_argument("--config", default=None, help="YAML with config() options for converting a .pt/.onnx")
    p.add_argument("--size", type=int, default=416, help="input size for a .pt model (default 416)")
    p.add_argument("--max-frames", type=int, default=None, help="stop a video or camera after N frames")
    p.add_argument("--no-draw", action="store_true", help="write only the JSON results")
    p.set_defaults(func=run)


def _class_names(spec):
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [s.strip() for s in spec.split(",")]


def _images(source: Path) -> List[Path]:
    from ..errors import ConfigError

    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError("source", str(source), hint=f"the folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    return [source]


def _read_image(path: Path) -> np.ndarray:
    import cv2

    from ..errors import ConfigError

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ConfigError("source", str(path), hint="the image could not be decoded (corrupt, empty or not an "
                          "image); nothing was written")
    return img


def _frames(capture, max_frames) -> Iterator[Tuple[int, np.ndarray]]:
    i = 0
    while max_frames is None or i < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        yield i, frame
        i += 1


def _overlay_fps(frame: np.ndarray, fps: float, times: dict) -> None:
    import cv2

    text = f"{fps:5.1f} FPS  pre {times['pre']:.1f} / npu {times['inf']:.1f} / post {times['post']:.1f} ms"
    cv2.putText(frame, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(frame, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (80, 255, 80), 1, cv2.LINE_AA)


def run(args: argparse.Namespace) -> int:
    import cv2
    from ..progress import progress_bar

    from ..errors import ConfigError
    from ..vision.detections import COCO80_CATEGORY_IDS
    from ..vision.detector import DetectorOptions, open_detector
    from ..vision.draw import draw_detections

    convert_cfg = None
    if args.config:
        import yaml

        data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        convert_cfg = data.get("config", data)
    opts = DetectorOptions(score_thr=args.score, nms_thr=args.nms, class_agnostic=args.agnostic,
                           letterbox_mode=args.letterbox, pad_value=args.pad, feed_rgb=args.rgb,
                           class_names=_class_names(args.classes))
    is_camera = args.source.isdigit()
    source = Path(args.source)
    if not is_camera and not source.exists():
        raise ConfigError("source", args.source, hint="no such file or folder (a camera is given by its index)")
    is_video = is_camera or source.suffix.lower() in VIDEO_SUFFIXES
    detector = open_detector(args.model, opts, convert_cfg, (args.size, args.size))
    # COCO models report COCO category ids (1..90 with gaps); others their class index
    category_ids = COCO80_CATEGORY_IDS if detector.num_classes == 80 else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    results, coco = [], []
    try:
        if is_video:
            capture = cv2.VideoCapture(int(args.source) if is_camera else str(source))
            if not capture.isOpened():
                raise ConfigError("source", args.source, hint="the video or camera could not be opened (missing "
                                  "codec, corrupt file, or no such camera)")
            fps_in = capture.get(cv2.CAP_PROP_FPS) or 25.0
            total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            if args.max_frames:
                total = min(total or args.max_frames, args.max_frames)
            writer = None
            fps = 0.0
            frames_read = 0
            for i, frame in progress_bar(_frames(capture, args.max_frames), total=total, unit="frame", desc="detect"):
                frames_read += 1
                t = time.perf_counter()
                dets = detector.detect(frame)
                fps = 0.9 * fps + 0.1 / max(time.perf_counter() - t, 1e-6) if i else 1 / max(
                    time.perf_counter() - t, 1e-6)
                results.append({"frame": i, "detections": dets.to_list(detector.class_names)})
                coco += dets.to_coco(i, category_ids)
                if not args.no_draw:
                    drawn = draw_detections(frame, dets, detector.class_names, style=args.style)
                    tm = detector.times
                    _overlay_fps(drawn, fps, {"pre": tm.pre_ms[-1], "inf": tm.infer_ms[-1], "post": tm.post_ms[-1]})
                    if writer is None:
                        h, w = drawn.shape[:2]
                        writer = cv2.VideoWriter(str(staging / "annotated.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                                 fps_in, (w, h))
                    writer.write(drawn)
            capture.release()
            if writer is not None:
                writer.release()
            if frames_read == 0:
                raise ConfigError("source", args.source, hint="no frame could be read from the video or camera")
        else:
            files = _images(source)
            for idx, path in enumerate(progress_bar(files, unit="img", desc="detect", enabled=len(files) > 1)):
                img = _read_image(path)
                dets = detector.detect(img)
                results.append({"image_id": idx, "image": str(path),
                                "detections": dets.to_list(detector.class_names)})
                coco += dets.to_coco(idx, category_ids)
                if not args.no_draw:
                    cv2.imwrite(str(staging / f"{path.stem}.jpg"), draw_detections(img, dets, detector.class_names,
                                                                                    style=args.style))
        summary = detector.times.summary()
        (staging / "detections.json").write_text(json.dumps({"model": str(args.model), "source": args.source,
                                                             "classes": detector.class_names, "timings": summary,
                                                             "results": results}, indent=1))
        (staging / "coco_results.json").write_text(json.dumps(coco))
        out.mkdir(parents=True, exist_ok=True)
        for f in staging.iterdir():
            f.replace(out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        detector.release()
    n = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} {'frames' if is_video else 'images'}, {n} detections; median per frame: pre "
          f"{summary['pre_ms']:.1f} ms, inference {summary['inference_ms']:.1f} ms, post {summary['post_ms']:.1f} ms "
          f"({summary['fps']:.1f} FPS)")
    print("inference: the simulator on this host, after a warm-up run (the host time `openrknn perf` reports)")
    print(f"results in {out.resolve()}")
    return 0
