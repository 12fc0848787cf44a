"""The page itself, its config form schema, live validation and the session state the page renders from."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from ... import __version__
from ..context import HERE, Ctx, CurrentSession, JsonBody, MaybeSession
from ..forms import check_against_model, config_schema, validate_form
from ..pipeline import BUILD_STAGES
from ..sessions import CALIB_SUFFIXES, IMAGE_SUFFIXES, MODEL_SUFFIXES, SESSION_COOKIE, RequestRefused

router = APIRouter()
_MAX_FORM_BYTES = 256 * 1024  # class names of a big label set fit; anything larger is not a form


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
def validate(data: JsonBody, session: MaybeSession):
    """The config as config() would take it, then against the session's model (input sizes, channel counts)."""
    result = validate_form(data.get("config") or {})
    model = None
    if session is not None:
        with session.lock:
            model = dict(session.model) if session.model else None
    return check_against_model(result, model, data.get("input_size"))


@router.post("/api/form")
def save_form(session: CurrentSession, data: JsonBody):
    """The page's form, kept so a reload shows what the user had (config, toggles, output name, inference options).
    Stored as given: it is only ever sent back to this session's page, which validates it like typed input."""
    form = data.get("form")
    if not isinstance(form, dict):
        raise RequestRefused(400, "the body must be {'form': {...}}")
    if len(json.dumps(form)) > _MAX_FORM_BYTES:
        raise RequestRefused(413, f"the form is over {_MAX_FORM_BYTES // 1024} KB; shorten the class names")
    with session.lock:
        session.form = form
    return {"ok": True}


@router.get("/api/state")
def state(ctx: Ctx, session: CurrentSession):
    return ctx.state_of(session)
