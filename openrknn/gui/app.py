"""The FastAPI app: one page, a JSON API (one router per area, routes/), server-sent build events, behind the
guards a local tool needs (guard.py: Host and Origin checks, size limits, a strict content security policy)."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import OpenRKNNError
from . import DEFAULT_HOST, DEFAULT_PORT
from .context import HERE, GuiContext, session_or_none
from .guard import LOOPBACK, GuardMiddleware, GuiSettings
from .listen import listen_socket
from .routes import ROUTERS
from .sessions import RequestRefused

__all__ = ["GuiSettings", "create_app", "serve"]
log = logging.getLogger("openrknn.gui")


def create_app(settings: Optional[GuiSettings] = None) -> FastAPI:
    settings = settings or GuiSettings()
    ctx = GuiContext.create(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        ctx.runner.shutdown()

    app = FastAPI(title="openrknn GUI", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.gui = ctx
    app.state.settings, app.state.store, app.state.runner = settings, ctx.store, ctx.runner
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(GuardMiddleware, settings=settings)

    def message(request: Request, text: str) -> str:
        return ctx.redact(text, session_or_none(request))

    @app.exception_handler(RequestRefused)
    async def _refused(request: Request, exc: RequestRefused):
        return JSONResponse({"error": message(request, str(exc))}, status_code=exc.status)

    @app.exception_handler(OpenRKNNError)
    async def _openrknn_error(request: Request, exc: OpenRKNNError):
        return JSONResponse({"error": message(request, str(exc)), "key": getattr(exc, "key", None)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": message(request, describe_validation(exc))}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        detail = (str(exc).splitlines() or [""])[0][:300]
        return JSONResponse({"error": message(request, f"internal error: {type(exc).__name__}"
                                              f"{': ' + detail if detail else ''} (the GUI's log has the details; "
                                              "please report it)")}, status_code=500)

    for router in ROUTERS:
        app.include_router(router)
    return app


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's parameter errors as a sentence: which parameter, what was given, what is expected."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "the request"
        if err.get("type") == "missing":
            parts.append(f"'{where}' is missing")
        else:
            parts.append(f"'{where}' = {err.get('input')!r}: {err.get('msg', 'not valid')}")
    return "bad request: " + "; ".join(parts)


def _ensure_loopback_warning(host: str) -> None:
    if host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach this address can use the GUI and read files it is given "
                    "paths to", host)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workdir: Optional[str] = None,
          max_upload_mb: int = 512, log_level: str = "warning", sock: Optional[socket.socket] = None) -> int:
    """Run the GUI until interrupted (on `sock` when given, already bound to host:port); prints the URL once the
    port is ours."""
    import uvicorn

    sock = sock or listen_socket(host, port)
    temporary = not workdir
    folder = Path(tempfile.mkdtemp(prefix="openrknn-gui-")) if temporary else Path(workdir).expanduser().resolve()
    settings = GuiSettings(workdir=folder, host=host, port=port, max_upload_bytes=max_upload_mb * 1024 * 1024)
    _ensure_loopback_warning(host)
    root = logging.getLogger("openrknn")
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    keep = "removed when the GUI stops: download what you want to keep" if temporary else "kept"
    print(f"openrknn GUI {__version__}: http://{shown}:{port}/  (session files in {folder}, {keep}; Ctrl+C stops)",
          flush=True)
    try:
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
