"""The FastAPI app: one page, a JSON API (one router per area, routes/), server-sent build events, behind the
guards a local tool needs (guard.py: Host and Origin checks, size limits, a strict content security policy)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import OpenRKNNError
from . import DEFAULT_HOST, DEFAULT_PORT
from .context import HERE, GuiContext
from .guard import LOOPBACK, GuardMiddleware, GuiSettings
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

    @app.exception_handler(RequestRefused)
    async def _refused(request: Request, exc: RequestRefused):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(OpenRKNNError)
    async def _openrknn_error(request: Request, exc: OpenRKNNError):
        return JSONResponse({"error": str(exc), "key": getattr(exc, "key", None)}, status_code=400)

    for router in ROUTERS:
        app.include_router(router)
    return app


def _ensure_loopback_warning(host: str) -> None:
    if host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach this address can use the GUI and read files it is given "
                    "paths to", host)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workdir: Optional[str] = None,
          max_upload_mb: int = 512, log_level: str = "warning") -> int:
    """Run the GUI until interrupted; prints the URL."""
    import uvicorn

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
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
