"""Step 4: build and export in the background, and the job's state and event stream (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..context import Ctx, CurrentSession, GuiContext, JsonBody
from ..forms import validate_form
from ..jobs import TERMINAL, Job
from ..pipeline import BUILD_STAGES, BuildRequest, parse_input_size, run_build
from ..sessions import RequestRefused, Session, sanitize_filename

router = APIRouter()


@router.post("/api/build")
async def build(ctx: Ctx, session: CurrentSession, data: JsonBody):
    with session.lock:
        model = dict(session.model) if session.model else None
        dataset = dict(session.dataset) if session.dataset else None
    if model is None:
        raise RequestRefused(409, "pick a model first (upload one or give a path)")
    if model["framework"] == "rknn":
        raise RequestRefused(409, "this is an .rknn model: it is already built; run inference or download it")
    checked = validate_form(data.get("config") or {})
    if not checked["ok"]:
        return JSONResponse({"error": checked["message"], "key": checked["key"]}, status_code=422)
    batch = str(data.get("rknn_batch_size") or "").strip()
    if batch and not batch.isdigit():
        raise RequestRefused(422, f"rknn_batch_size {batch!r} must be a positive integer (or empty for 1)")
    default_name = Path(model["name"]).stem + ".rknn"
    out_name = sanitize_filename(str(data.get("output_name") or default_name), (".rknn",))
    keep_float = [str(x) for x in (data.get("keep_float") or [])]
    req = BuildRequest(model_path=Path(model["path"]), config=checked["kwargs"], output=session.outputs / out_name,
                       input_size_list=parse_input_size(data.get("input_size")),
                       do_quantization=bool(data.get("do_quantization")), dataset=dataset,
                       rknn_batch_size=int(batch) if batch else None, keep_float=keep_float,
                       calib_dir=session.calib)

    def on_done(job: Job) -> None:
        with session.lock:
            if job.state == "done":
                session.rknn, session.result = out_name, job.result
                session.last_feeds = None
        ctx.sims.drop(session.key)

    job = ctx.runner.submit(session.key, f"Build {out_name}", BUILD_STAGES, lambda j: run_build(j, req), on_done)
    return {"job_id": job.id, "stages": BUILD_STAGES}


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
