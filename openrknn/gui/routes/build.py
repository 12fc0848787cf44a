"""Step 4: build and export in the background, rebuild with layers kept in float, and the job's state and event
stream (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..context import Ctx, CurrentSession, GuiContext, JsonBody
from ..forms import validate_form
from ..jobs import TERMINAL, Job
from ..layers import keepable_layers
from ..pipeline import BUILD_STAGES, BuildRequest, parse_input_size, run_build
from ..sessions import RequestRefused, Session, sanitize_filename

router = APIRouter()
SETTINGS = ("config", "input_size", "do_quantization", "rknn_batch_size", "output_name")  # what a rebuild reuses


def _ready_to_build(ctx: GuiContext, session: Session) -> dict:
    """The session's model, once nothing stands in the way of a build; 409 with the reason otherwise."""
    with session.lock:
        model = dict(session.model) if session.model else None
        uploading = session.uploading
    if model is None:
        raise RequestRefused(409, "pick a model first (upload one or give a path)")
    if model["framework"] == "rknn":
        raise RequestRefused(409, "this is an .rknn model: it is already built; run inference or download it")
    if uploading:
        raise RequestRefused(409, f"{uploading} calibration image(s) are still uploading; build when they are in")
    if ctx.runner.active_job(session.key):
        raise RequestRefused(409, "a build is already running in this session; wait for it to finish")
    return model


def submit_build(ctx: GuiContext, session: Session, model: dict, settings: dict, dataset, keep_float) -> dict:
    """Check the settings, queue the build, and record them with the result so a rebuild can reuse them."""
    checked = validate_form(settings.get("config") or {})
    if not checked["ok"]:
        return JSONResponse({"error": checked["message"], "key": checked["key"]}, status_code=422)
    batch = str(settings.get("rknn_batch_size") or "").strip()
    if batch and not batch.isdigit():
        raise RequestRefused(422, f"rknn_batch_size {batch!r} must be a positive integer (or empty for 1)")
    default_name = Path(model["name"]).stem + ".rknn"
    out_name = sanitize_filename(str(settings.get("output_name") or default_name), (".rknn",))
    req = BuildRequest(model_path=Path(model["path"]), config=checked["kwargs"], output=session.outputs / out_name,
                       input_size_list=parse_input_size(settings.get("input_size")),
                       do_quantization=bool(settings.get("do_quantization")), dataset=dataset,
                       rknn_batch_size=int(batch) if batch else None, keep_float=list(keep_float),
                       calib_dir=session.calib)
    built_with = {**{k: settings.get(k) for k in SETTINGS}, "output_name": out_name, "dataset": dataset,
                  "keep_float": list(keep_float)}

    def on_done(job: Job) -> None:
        with session.lock:
            if job.state == "done":
                session.rknn, session.result, session.built_with = out_name, job.result, built_with
                session.last_feeds = session.inference = None
        ctx.sims.drop(session.key)

    job = ctx.runner.submit(session.key, f"Build {out_name}", BUILD_STAGES, lambda j: run_build(j, req), on_done,
                            redact=session.redact)
    return {"job_id": job.id, "stages": BUILD_STAGES}


@router.post("/api/build")
async def build(ctx: Ctx, session: CurrentSession, data: JsonBody):
    model = _ready_to_build(ctx, session)
    with session.lock:
        dataset = dict(session.dataset) if session.dataset else None
    keep_float = [str(x) for x in (data.get("keep_float") or [])]
    return submit_build(ctx, session, model, data, dataset, keep_float)


@router.post("/api/rebuild")
async def rebuild(ctx: Ctx, session: CurrentSession, data: JsonBody):
    """Build the current model again with the settings it was built with (not the form as it is now: a reload or
    an edit since must not turn an int8 model into another model), with the layers marked to keep in float."""
    model = _ready_to_build(ctx, session)
    with session.lock:
        built = dict(session.built_with) if session.built_with and session.result else None
    if built is None:
        raise RequestRefused(409, "nothing to rebuild: build the model first")
    if not built.get("do_quantization"):
        raise RequestRefused(409, "the current model is float: every layer already runs in float")
    marks = data.get("keep_float")
    if not isinstance(marks, list) or not all(isinstance(x, str) for x in marks):
        raise RequestRefused(400, "keep_float must be a list of layer names")
    if sorted(set(marks)) == sorted(set(built.get("keep_float") or [])):
        raise RequestRefused(409, "no change to rebuild: mark the layers to keep in float (or unmark kept ones) "
                             "first")
    with session.lock:
        rknn = session.rknn_path()
    _, pkg = ctx.sims.get(session.key, rknn)
    keepable = keepable_layers(pkg.float_model_bytes)
    wrong = [m for m in marks if m not in keepable]
    if wrong:
        raise RequestRefused(400, f"{', '.join(repr(m) for m in wrong[:5])} cannot be kept in float: not a layer "
                             "with a quantization of its own in this model; mark layers the table offers")
    return submit_build(ctx, session, model, built, built.get("dataset"), sorted(set(marks), key=marks.index))


def job_of(ctx: GuiContext, session: Session, job_id: str) -> Job:
    job = ctx.runner.get(job_id)
    if job is None or job.session_key != session.key:
        raise RequestRefused(404, f"no job {job_id!r} in this session")
    return job


@router.get("/api/jobs/{job_id}")
def job_state(job_id: str, ctx: Ctx, session: CurrentSession):
    return job_of(ctx, session, job_id).snapshot()


@router.get("/api/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str, ctx: Ctx, session: CurrentSession):
    job = job_of(ctx, session, job_id)
    last = request.headers.get("last-event-id", "")
    start = int(last) + 1 if last.isdigit() else 0

    async def stream():
        index, idle = start, 0.0
        while True:
            events = job.events_since(index)
            for e in events:
                yield f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n"
                index = e["id"] + 1
                if e["type"] == "state" and e["state"] in TERMINAL:
                    return
            if not events:
                if await request.is_disconnected():
                    return
                idle += 0.15
                if idle >= 10:  # keep proxies and the browser from timing the stream out
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.15)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
