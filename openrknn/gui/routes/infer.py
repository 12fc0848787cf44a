"""Step 5: run the current .rknn in the simulator on an uploaded image; YOLOX outputs are decoded and drawn."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...errors import InferenceInputError
from ..context import Ctx, CurrentSession
from ..infer import InferOptions, decode_image, run_image
from ..pipeline import jsonable
from ..sessions import IMAGE_SUFFIXES, RequestRefused, sanitize_filename, save_stream

router = APIRouter()


def _threshold(label: str, text: str) -> float:
    """A threshold as typed on the page; the message says what was typed and what is allowed."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise InferenceInputError(f"{label} {text!r} is not a number; give a value from 0 to 1, e.g. 0.3") from None
    if not 0.0 <= value <= 1.0:
        raise InferenceInputError(f"{label} {text!r} is not between 0 and 1; e.g. 0.3")
    return value


@router.post("/api/infer")
async def infer(request: Request, filename: str, ctx: Ctx, session: CurrentSession, feed_order: str = "auto",
                resize: str = "auto", score_thr: str = "0.3", nms_thr: str = "0.45", class_names: str = ""):
    with session.lock:
        rknn = session.rknn_path()
    if rknn is None or not rknn.is_file():
        raise RequestRefused(409, "build a model (or pick an .rknn file) before running inference")
    opts = InferOptions(feed_order=feed_order, resize=resize, score_thr=_threshold("score threshold", score_thr),
                        nms_thr=_threshold("NMS IoU threshold", nms_thr),
                        class_names=[n.strip() for n in class_names.replace("\n", ",").split(",") if n.strip()])
    opts.check()
    name = sanitize_filename(filename, IMAGE_SUFFIXES)
    dest = session.uploads / f"infer-{name}"
    await save_stream(request.stream(), dest, ctx.settings.max_image_bytes, name=name)

    def work() -> dict:
        import cv2

        sim, pkg = ctx.sims.get(session.key, rknn)
        data = dest.read_bytes()
        image = decode_image(data)
        report, drawn, feeds = run_image(sim, pkg.metadata, image, opts, data)
        report["image"] = {"name": name, "width": int(image.shape[1]), "height": int(image.shape[0])}
        if drawn is not None:
            out = session.outputs / (Path(name).stem + "_detections.png")
            ok, png = cv2.imencode(".png", drawn)
            if ok:
                tmp = out.with_name("." + out.name + ".tmp")
                tmp.write_bytes(png.tobytes())
                tmp.replace(out)
                report["drawn"] = out.name
        report = jsonable(report)
        with session.lock:
            if session.rknn_path() == rknn:  # a build that finished meanwhile made this result stale
                session.last_feeds = {"inputs": feeds, "image": name}
                session.inference = report
        return report

    return await run_in_threadpool(work)
