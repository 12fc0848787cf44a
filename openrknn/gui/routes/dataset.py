"""Step 3: calibration data, a dataset.txt or folder on this machine, or images uploaded into the session."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..context import Ctx, CurrentSession, JsonBody
from ..pipeline import describe_dataset
from ..sessions import CALIB_SUFFIXES, RequestRefused, sanitize_filename, save_stream

router = APIRouter()


@router.post("/api/dataset/path")
async def dataset_path(ctx: Ctx, session: CurrentSession, data: JsonBody):
    raw = str(data.get("path") or "").strip()
    if not raw:
        raise RequestRefused(400, "give a dataset.txt or a folder of calibration images")
    info = await run_in_threadpool(describe_dataset, Path(raw).expanduser().resolve())
    with session.lock:
        session.dataset = {**info, "source": "path"}
    return ctx.state_of(session)


@router.post("/api/dataset/upload")
async def dataset_upload(request: Request, filename: str, ctx: Ctx, session: CurrentSession):
    name = sanitize_filename(filename, CALIB_SUFFIXES)
    with session.lock:
        session.uploading += 1
    try:
        await save_stream(request.stream(), session.calib / name, ctx.settings.max_image_bytes)
    finally:
        with session.lock:
            session.uploading -= 1
    info = await run_in_threadpool(describe_dataset, session.calib)
    with session.lock:
        session.dataset = {**info, "source": "upload"}
    return ctx.state_of(session)


@router.post("/api/dataset/clear")
async def dataset_clear(ctx: Ctx, session: CurrentSession):
    with session.lock:
        for p in session.calib.iterdir():
            if p.is_file():
                p.unlink()
        session.dataset = None
    return ctx.state_of(session)
