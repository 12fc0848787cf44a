"""Step 1: the model, uploaded or given as a path on this machine."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..context import Ctx, CurrentSession, GuiContext, JsonBody
from ..pipeline import copy_atomic, inspect_model
from ..sessions import MODEL_SUFFIXES, RequestRefused, Session, framework_of, sanitize_filename, save_stream

router = APIRouter()


def set_model(ctx: GuiContext, session: Session, path: Path, name: str, source: str) -> dict:
    framework = framework_of(name)
    info = inspect_model(path, framework)
    with session.lock:
        session.model = {"name": name, "path": str(path), "framework": framework, "source": source, **info}
        session.result = None
        if framework == "rknn":  # already built: it becomes the current model for inference and download
            dest = session.outputs / sanitize_filename(name, (".rknn",))
            if path.resolve() != dest.resolve():
                copy_atomic(path, dest)
            session.rknn = dest.name
        else:
            session.rknn = None
    ctx.sims.drop(session.key)
    return ctx.state_of(session)


@router.post("/api/model/upload")
async def model_upload(request: Request, filename: str, ctx: Ctx, session: CurrentSession):
    name = sanitize_filename(filename, MODEL_SUFFIXES)
    dest = session.uploads / name
    await save_stream(request.stream(), dest, ctx.settings.max_upload_bytes)
    return await run_in_threadpool(set_model, ctx, session, dest, name, "upload")


@router.post("/api/model/path")
async def model_path(ctx: Ctx, session: CurrentSession, data: JsonBody):
    raw = str(data.get("path") or "").strip()
    if not raw:
        raise RequestRefused(400, "give the path of a .pt, .onnx or .rknn file on this machine")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise RequestRefused(404, f"'{raw}' is not a file on this machine")
    framework_of(path.name)
    return await run_in_threadpool(set_model, ctx, session, path.resolve(), path.name, "path")
