"""Step 5: run the current .rknn in the simulator on an uploaded image; YOLOX outputs are decoded and drawn."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..context import Ctx, CurrentSession
from ..infer import InferOptions, decode_image, run_image
from ..pipeline import jsonable
from ..sessions import IMAGE_SUFFIXES, RequestRefused, sanitize_filename, save_stream

router = APIRouter()


@router.post("/api/infer")
async def infer(request: Request, filename: str, ctx: Ctx, session: CurrentSession, feed_order: str = "auto",
                resize: str = "auto", score_thr: float = 0.3, nms_thr: float = 0.45, class_names: str = ""):
    with session.lock:
        rknn = session.rknn_path()
    if rknn is None or not rknn.is_file():
        raise RequestRefused(409, "build a model (or pick an .rknn file) before running inference")
    name = sanitize_filename(filename, IMAGE_SUFFIXES)
    dest = session.uploads / f"infer-{name}"
    await save_stream(request.stream(), dest, ctx.settings.max_image_bytes)
    names = [n.strip() for n in class_names.replace("\n", ",").split(",") if n.strip()]
    opts = InferOptions(feed_order=feed_order, resize=resize, score_thr=score_thr, nms_thr=nms_thr, class_names=names)

    def work() -> dict:
        import cv2

        sim, pkg = ctx.sims.get(session.key, rknn)
        image = decode_image(dest.read_bytes())
        report, drawn, feeds = run_image(sim, pkg.metadata, image, opts)
        report["image"] = {"name": name, "width": int(image.shape[1]), "height": int(image.shape[0])}
        if drawn is not None:
            out = session.outputs / (Path(name).stem + "_detections.png")
            ok, png = cv2.imencode(".png", drawn)
            if ok:
                tmp = out.with_name("." + out.name + ".tmp")
                tmp.write_bytes(png.tobytes())
                tmp.replace(out)
                report["drawn"] = out.name
        with session.lock:
            session.last_feeds = {"inputs": feeds, "image": name}
        return jsonable(report)

    return await run_in_threadpool(work)
