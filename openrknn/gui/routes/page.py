"""The page itself, its config form schema, live validation and the session state the page renders from."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from ... import __version__
from ..context import HERE, Ctx, CurrentSession, JsonBody
from ..forms import config_schema, validate_form
from ..pipeline import BUILD_STAGES
from ..sessions import CALIB_SUFFIXES, IMAGE_SUFFIXES, MODEL_SUFFIXES, SESSION_COOKIE

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def index(request: Request, ctx: Ctx):
    token = request.cookies.get(SESSION_COOKIE)
    new_token = None
    if ctx.store.get(token) is None:
        new_token, _ = ctx.store.create()
    schema = config_schema()
    sections = [{**s, "fields": [f for f in schema["fields"] if f["section"] == s["key"]]} for s in schema["sections"]]
    response = ctx.templates.TemplateResponse(request, "index.html", {
        "version": __version__, "sections": sections, "stages": BUILD_STAGES,
        "image_suffixes": ",".join(IMAGE_SUFFIXES), "model_suffixes": ",".join(MODEL_SUFFIXES),
        "calib_suffixes": ",".join(CALIB_SUFFIXES), "max_upload_mb": ctx.settings.max_upload_bytes // 2**20})
    if new_token:
        response.set_cookie(SESSION_COOKIE, new_token, httponly=True, samesite="strict", path="/")
    return response


@router.get("/favicon.ico")
def favicon():
    return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")


@router.get("/api/schema")
def schema():
    return config_schema()


@router.post("/api/validate")
def validate(data: JsonBody):
    return validate_form(data.get("config") or {})


@router.get("/api/state")
def state(ctx: Ctx, session: CurrentSession):
    return ctx.state_of(session)
