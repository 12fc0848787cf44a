"""The FastAPI app: one page, a JSON API, server-sent build events, and the guards a local tool needs (Host and
Origin checks, size-limited uploads, downloads confined to the session folder, a strict content security policy)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import OpenRKNNError
from . import DEFAULT_HOST, DEFAULT_PORT
from .forms import config_schema, validate_form
from .infer import InferOptions, SimulatorCache, decode_image, run_image, yolox_layout
from .jobs import TERMINAL, JobRunner
from .layers import accuracy_provider, layer_rows, measure_accuracy, merge_accuracy
from .pipeline import (BUILD_STAGES, BuildRequest, copy_atomic, describe_dataset, inspect_model,
                       jsonable, parse_input_size, run_build)
from .sessions import (CALIB_SUFFIXES, IMAGE_SUFFIXES, MODEL_SUFFIXES, SESSION_COOKIE, RequestRefused, Session,
                       SessionStore, contained_path, framework_of, sanitize_filename, save_stream)

log = logging.getLogger("openrknn.gui")
HERE = Path(__file__).resolve().parent
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass
class GuiSettings:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="openrknn-gui-")))
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_upload_bytes: int = 512 * 1024 * 1024  # models; a path on this machine has no limit
    max_image_bytes: int = 32 * 1024 * 1024  # inference and calibration images

    def allowed_hostnames(self) -> Optional[set]:
        """Host header names accepted (DNS-rebinding guard); None when bound to every interface on request."""
        if self.host in ("0.0.0.0", "::", ""):
            return None
        return _LOOPBACK | {self.host}


def _split_host(value: str) -> Tuple[str, str]:
    parts = urlsplit(f"//{value}")
    return (parts.hostname or ""), (str(parts.port) if parts.port else "")


class GuardMiddleware:
    """Host check on every request; Origin check on state-changing ones; early 413 on oversized bodies; security
    headers on every response. Pure ASGI so streamed uploads are not buffered."""

    def __init__(self, app, settings: GuiSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope["method"], headers)
        if refusal is not None:
            status, message = refusal
            log.warning("refused %s %s: %s", scope["method"], scope.get("path"), message)
            return await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"), (b"content-security-policy", _CSP.encode()),
                         (b"cross-origin-resource-policy", b"same-origin")]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    def _refusal(self, method: str, headers: dict) -> Optional[Tuple[int, str]]:
        host = headers.get("host", "")
        hostname, _ = _split_host(host)
        allowed = self.settings.allowed_hostnames()
        if allowed is not None and hostname not in allowed:
            return 421, (f"Host '{host}' is not this GUI's address; open http://{self.settings.host}:"
                         f"{self.settings.port}/ (or start the GUI with --host to listen elsewhere)")
        if method in _UNSAFE:
            origin = headers.get("origin")
            if not origin or origin == "null":
                return 403, ("request without an Origin header refused: state-changing requests must come from the "
                             "GUI page itself")
            o = urlsplit(origin)
            if o.scheme != "http" or o.netloc.lower() != host.lower():
                return 403, f"cross-site request refused: Origin '{origin}' is not this GUI ({host})"
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.settings.max_upload_bytes:
                return 413, (f"request body of {int(length) / 1e6:.0f} MB is over the "
                             f"{self.settings.max_upload_bytes / 1e6:.0f} MB upload limit; give a path on this "
                             "machine instead")
        return None


def create_app(settings: Optional[GuiSettings] = None) -> FastAPI:
    settings = settings or GuiSettings()
    store = SessionStore(settings.workdir)
    runner = JobRunner()
    sims = SimulatorCache()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        runner.shutdown()

    app = FastAPI(title="openrknn GUI", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.settings, app.state.store, app.state.runner = settings, store, runner
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(GuardMiddleware, settings=settings)

    @app.exception_handler(RequestRefused)
    async def _refused(request: Request, exc: RequestRefused):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(OpenRKNNError)
    async def _openrknn_error(request: Request, exc: OpenRKNNError):
        return JSONResponse({"error": str(exc), "key": getattr(exc, "key", None)}, status_code=400)

    def session_of(request: Request) -> Session:
        session = store.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise RequestRefused(401, "no GUI session (the server restarted or cookies are off); reload the page")
        return session

    async def body_json(request: Request) -> dict:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestRefused(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise RequestRefused(400, "the request body must be a JSON object")
        return data

    # ------------------------------------------------------------ page

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        token = request.cookies.get(SESSION_COOKIE)
        new_token = None
        if store.get(token) is None:
            new_token, _ = store.create()
        schema = config_schema()
        sections = [{**s, "fields": [f for f in schema["fields"] if f["section"] == s["key"]]}
                    for s in schema["sections"]]
        response = templates.TemplateResponse(request, "index.html", {
            "version": __version__, "sections": sections, "stages": BUILD_STAGES,
            "image_suffixes": ",".join(IMAGE_SUFFIXES), "model_suffixes": ",".join(MODEL_SUFFIXES),
            "calib_suffixes": ",".join(CALIB_SUFFIXES), "max_upload_mb": settings.max_upload_bytes // 2**20})
        if new_token:
            response.set_cookie(SESSION_COOKIE, new_token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/favicon.ico")
    def favicon():
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    # ------------------------------------------------------------ config

    @app.get("/api/schema")
    def schema():
        return config_schema()

    @app.post("/api/validate")
    async def validate(request: Request):
        data = await body_json(request)
        return validate_form(data.get("config") or {})

    # ------------------------------------------------------------ model

    def _set_model(session: Session, path: Path, name: str, source: str) -> dict:
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
        sims.drop(session.key)
        return state_of(session)

    @app.post("/api/model/upload")
    async def model_upload(request: Request, filename: str):
        session = session_of(request)
        name = sanitize_filename(filename, MODEL_SUFFIXES)
        dest = session.uploads / name
        await save_stream(request.stream(), dest, settings.max_upload_bytes)
        return await run_in_threadpool(_set_model, session, dest, name, "upload")

    @app.post("/api/model/path")
    async def model_path(request: Request):
        session = session_of(request)
        raw = str((await body_json(request)).get("path") or "").strip()
        if not raw:
            raise RequestRefused(400, "give the path of a .pt, .onnx or .rknn file on this machine")
        path = Path(raw).expanduser()
        if not path.is_file():
            raise RequestRefused(404, f"'{raw}' is not a file on this machine")
        framework_of(path.name)
        return await run_in_threadpool(_set_model, session, path.resolve(), path.name, "path")

    # ------------------------------------------------------------ calibration data

    @app.post("/api/dataset/path")
    async def dataset_path(request: Request):
        session = session_of(request)
        raw = str((await body_json(request)).get("path") or "").strip()
        if not raw:
            raise RequestRefused(400, "give a dataset.txt or a folder of calibration images")
        info = await run_in_threadpool(describe_dataset, Path(raw).expanduser().resolve())
        with session.lock:
            session.dataset = {**info, "source": "path"}
        return state_of(session)

    @app.post("/api/dataset/upload")
    async def dataset_upload(request: Request, filename: str):
        session = session_of(request)
        name = sanitize_filename(filename, CALIB_SUFFIXES)
        await save_stream(request.stream(), session.calib / name, settings.max_image_bytes)
        info = await run_in_threadpool(describe_dataset, session.calib)
        with session.lock:
            session.dataset = {**info, "source": "upload"}
        return state_of(session)

    @app.post("/api/dataset/clear")
    async def dataset_clear(request: Request):
        session = session_of(request)
        with session.lock:
            for p in session.calib.iterdir():
                if p.is_file():
                    p.unlink()
            session.dataset = None
        return state_of(session)

    # ------------------------------------------------------------ build

    @app.post("/api/build")
    async def build(request: Request):
        session = session_of(request)
        data = await body_json(request)
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

        def on_done(job) -> None:
            with session.lock:
                if job.state == "done":
                    session.rknn, session.result = out_name, job.result
                    session.last_feeds = None
            sims.drop(session.key)

        job = runner.submit(session.key, f"Build {out_name}", BUILD_STAGES, lambda j: run_build(j, req), on_done)
        return {"job_id": job.id, "stages": BUILD_STAGES}

    def job_of(request: Request, job_id: str):
        session = session_of(request)
        job = runner.get(job_id)
        if job is None or job.session_key != session.key:
            raise RequestRefused(404, f"no job {job_id!r} in this session")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_state(request: Request, job_id: str):
        return job_of(request, job_id).snapshot()

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str):
        job = job_of(request, job_id)
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

    # ------------------------------------------------------------ download

    @app.get("/api/download/{name:path}")
    def download(request: Request, name: str):
        session = session_of(request)
        path = contained_path(session.outputs, name)
        if not path.is_file():
            raise RequestRefused(404, f"'{name}' does not exist in this session; build or export it first")
        media = "image/png" if path.suffix.lower() == ".png" else "application/octet-stream"
        inline = request.query_params.get("inline") == "1" and media.startswith("image/")
        return FileResponse(path, media_type=media, filename=path.name,
                            content_disposition_type="inline" if inline else "attachment")

    # ------------------------------------------------------------ inference

    @app.post("/api/infer")
    async def infer(request: Request, filename: str, feed_order: str = "auto", resize: str = "auto",
                    score_thr: float = 0.3, nms_thr: float = 0.45, class_names: str = ""):
        session = session_of(request)
        with session.lock:
            rknn = session.rknn_path()
        if rknn is None or not rknn.is_file():
            raise RequestRefused(409, "build a model (or pick an .rknn file) before running inference")
        name = sanitize_filename(filename, IMAGE_SUFFIXES)
        dest = session.uploads / f"infer-{name}"
        await save_stream(request.stream(), dest, settings.max_image_bytes)
        names = [n.strip() for n in class_names.replace("\n", ",").split(",") if n.strip()]
        opts = InferOptions(feed_order=feed_order, resize=resize, score_thr=score_thr, nms_thr=nms_thr,
                            class_names=names)

        def work() -> dict:
            import cv2

            sim, pkg = sims.get(session.key, rknn)
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

    # ------------------------------------------------------------ per-layer table

    def layer_report(session: Session, measure: bool) -> dict:
        with session.lock:
            rknn, feeds = session.rknn_path(), session.last_feeds
            kept = list((session.result or {}).get("keep_float") or [])
        hybrid = {"available": True, "reason": ""}  # a quantized model: any quantized layer can stay float
        fn, reason = accuracy_provider()
        if rknn is None or not rknn.is_file():
            if measure:
                raise RequestRefused(409, "build a model (or pick an .rknn file) first")
            return {"rows": [], "model": None, "quantized": False, "kept_float": [], "hybrid": hybrid,
                    "accuracy": {"available": False, "reason": "", "measured": False}}
        _, pkg = sims.get(session.key, rknn)
        quant = pkg.metadata.get("quantization")
        rows = layer_rows(pkg.model_bytes, quant)
        if not quant:
            fn, reason = None, "the model is float, so there is nothing to compare; build with quantization"
            hybrid = {"available": False, "reason": "the model is float: build with quantization to choose layers "
                      "to keep in higher precision"}
        cache_key = (rknn.name, rknn.stat().st_mtime_ns)
        if measure:
            if fn is None:
                raise RequestRefused(409, f"accuracy cannot be measured: {reason}")
            if feeds is None:
                raise RequestRefused(409, "run inference on an image first: accuracy is measured on that image")
            try:
                measured = measure_accuracy(fn, pkg, feeds["inputs"], session.root / "accuracy")
            except OpenRKNNError:
                raise
            except Exception as e:  # the analysis failed on this model: say so on the page, keep the trace in the log
                log.warning("accuracy analysis failed", exc_info=True)
                raise RequestRefused(500, f"accuracy analysis failed on this model: {type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:300]}") from None
            with session.lock:
                session.accuracy = (cache_key, measured)
        with session.lock:
            cached = session.accuracy if session.accuracy and session.accuracy[0] == cache_key else None
        if cached:
            merge_accuracy(rows, cached[1])
        build = pkg.metadata.get("build") or {}
        return jsonable({"rows": rows, "model": rknn.name, "quantized": bool(quant), "kept_float": kept,
                         "hybrid": hybrid, "cos_threshold": build.get("auto_hybrid_cos_thresh"),
                         "accuracy": {"available": fn is not None, "reason": reason, "measured": cached is not None,
                                      "image": (feeds or {}).get("image")}})

    @app.get("/api/layers")
    def layers(request: Request):
        return layer_report(session_of(request), measure=False)

    @app.post("/api/layers/accuracy")
    def layers_accuracy(request: Request):
        """Measure per-layer cosine on the last inference image (writes the analysis files in the session)."""
        return layer_report(session_of(request), measure=True)

    # ------------------------------------------------------------ state

    def state_of(session: Session) -> dict:
        with session.lock:
            model = dict(session.model) if session.model else None
            if model and model.get("source") == "upload":
                model.pop("path", None)  # the page does not need to know where the session folder is
            rknn = session.rknn
            meta = None
            if rknn and session.model and session.model.get("framework") == "rknn":
                meta = (session.model.get("summary") or {})
            elif session.result:
                meta = session.result.get("summary")
            yolox = yolox_layout(meta.get("inputs") or [], meta.get("outputs") or []) if meta else None
            return jsonable({"model": model, "dataset": session.dataset, "rknn": rknn, "result": session.result,
                             "yolox": yolox, "busy": runner.busy()})

    @app.get("/api/state")
    def state(request: Request):
        return state_of(session_of(request))

    return app


def _ensure_loopback_warning(host: str) -> None:
    if host not in _LOOPBACK:
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
