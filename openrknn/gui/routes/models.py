"""Step 1: the model, uploaded or given as a path on this machine."""

from __future__ import annotations

import logging
import os
import secrets
import zipfile
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...errors import OpenRKNNError
from ..context import Ctx, CurrentSession, GuiContext, JsonBody
from ..pipeline import copy_atomic, inspect_model
from ..sessions import (MODEL_SUFFIXES, WEIGHT_SUFFIXES, RequestRefused, Session, framework_of, sanitize_filename,
                        save_stream)

log = logging.getLogger("openrknn.gui")
router = APIRouter()


_KINDS = {"onnx": "an ONNX model", "pytorch": "a TorchScript model", "rknn": "an .rknn model",
          "tflite": "a TFLite model", "darknet": "a Darknet model", "caffe": "a Caffe model",
          "tensorflow": "a TensorFlow frozen graph", "tfjs": "a TensorFlow.js model", "keras": "a Keras model"}
_HOW = {"onnx": "export it again (torch.onnx.export) or pick the .onnx file itself",
        "pytorch": "save it with torch.jit.trace(model, example).save('model.pt')",
        "rknn": "build it again or pick another .rknn file",
        "tflite": "pick the .tflite file the converter wrote",
        "darknet": "upload its .weights file first (or pick the .cfg by path with the .weights beside it)",
        "caffe": "upload its .caffemodel first (or pick the .prototxt by path with the .caffemodel beside it)",
        "tensorflow": "freeze the graph (variables to constants) and pick the .pb",
        "tfjs": "upload its .bin weight files first (or pick the model.json by path with them beside it)",
        "keras": "save the whole model with model.save('model.keras') (or .h5), not only its weights"}


def inspect_or_refuse(path: Path, name: str, framework: str) -> dict:
    """inspect_model, with every way a file can fail to be that kind of model turned into a 400 naming the file
    as the user knows it (never the session folder)."""
    def refused(why: str) -> RequestRefused:
        return RequestRefused(400, f"'{name}' is not {_KINDS[framework]}: {why}; {_HOW[framework]}")

    if framework == "pytorch" and not zipfile.is_zipfile(path):
        raise refused("TorchScript files are zip archives (torch.jit.save writes one) and this one is not")
    weights = None
    if framework in ("darknet", "caffe"):  # its weights file: the same name beside it (uploads land in one folder)
        from ...convert.loaders import WEIGHT_SUFFIXES as BESIDE

        weights = path.parent / f"{Path(name).stem}{BESIDE[framework]}"
        if not weights.is_file():
            raise refused(f"its weights file '{weights.name}' is not there")
    def as_user_knows(text: str) -> str:  # an upload's server folder and temporary name are never shown
        text = text.replace(str(path), name)
        if path.name != name:  # an upload (checked under a temporary name in the session's folder)
            text = text.replace(str(path.parent), "the upload folder").replace(path.name, name)
        return text

    try:
        info = inspect_model(path, framework, weights)
    except OpenRKNNError as e:
        raise refused(as_user_knows(str(e))) from None
    except Exception as e:  # protobuf, zip, unicode...: the parser's words, without a traceback on the page
        log.info("'%s' is not %s", name, _KINDS[framework], exc_info=True)
        detail = as_user_knows((str(e).splitlines() or [""])[0][:200])
        raise refused(f"it could not be parsed ({type(e).__name__}{': ' + detail if detail else ''})") from None
    if framework == "onnx" and not info.get("nodes"):
        raise refused("it holds no graph nodes (a file that only looks like protobuf)")
    if isinstance(info.get("summary"), dict):
        info["summary"]["file"] = name
    return info


def apply_model(ctx: GuiContext, session: Session, path: Path, name: str, source: str, info: dict) -> dict:
    """Make the inspected file the session's model; what was built from the previous one is forgotten."""
    framework = framework_of(name)
    with session.lock:
        session.model = {"name": name, "path": str(path), "framework": framework, "source": source, **info}
        session.result = session.built_with = session.inference = None
        session.last_feeds = None
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
    if Path(name).suffix in WEIGHT_SUFFIXES:  # the second file of a Darknet / Caffe model: kept for its model file
        await save_stream(request.stream(), session.uploads / name, ctx.settings.max_upload_bytes, name=name)
        return ctx.state_of(session)
    framework = framework_of(name)
    # checked before it takes the model's place: a bad file never replaces a good one of the same name
    incoming = session.uploads / f".incoming-{secrets.token_hex(6)}{Path(name).suffix}"
    await save_stream(request.stream(), incoming, ctx.settings.max_upload_bytes, name=name)
    try:
        info = await run_in_threadpool(inspect_or_refuse, incoming, name, framework)
        dest = session.uploads / name
        os.replace(incoming, dest)
    finally:
        incoming.unlink(missing_ok=True)
    return await run_in_threadpool(apply_model, ctx, session, dest, name, "upload", info)


@router.post("/api/model/path")
async def model_path(ctx: Ctx, session: CurrentSession, data: JsonBody):
    raw = str(data.get("path") or "").strip()
    if not raw:
        raise RequestRefused(400, "give the path of a model file on this machine (.onnx, .pt, .tflite, .cfg, "
                             ".prototxt, .pb, model.json or .rknn)")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise RequestRefused(404, f"'{raw}' is not a file on this machine")
    framework = framework_of(path.name)
    info = await run_in_threadpool(inspect_or_refuse, path.resolve(), path.name, framework)
    return await run_in_threadpool(apply_model, ctx, session, path.resolve(), path.name, "path", info)
