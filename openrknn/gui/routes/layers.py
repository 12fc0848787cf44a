"""Step 6: the per-layer table of the current .rknn, and per-layer accuracy measured on the last inference image."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from ...errors import OpenRKNNError
from ..context import Ctx, CurrentSession, GuiContext
from ..layers import layer_rows, measure_accuracy, merge_accuracy
from ..pipeline import hybrid_support, jsonable
from ..sessions import RequestRefused, Session

log = logging.getLogger("openrknn.gui")
router = APIRouter()


def layer_report(ctx: GuiContext, session: Session, measure: bool) -> dict:
    with session.lock:
        rknn, feeds = session.rknn_path(), session.last_feeds
        kept = list((session.result or {}).get("keep_float") or [])
    hybrid = hybrid_support()
    if rknn is None or not rknn.is_file():
        if measure:
            raise RequestRefused(409, "build a model (or pick an .rknn file) first")
        return {"rows": [], "model": None, "quantized": False, "kept_float": [], "hybrid": hybrid,
                "accuracy": {"available": False, "reason": "", "measured": False}}
    _, pkg = ctx.sims.get(session.key, rknn)
    quant = pkg.metadata.get("quantization")
    rows = layer_rows(pkg.model_bytes, quant)
    reason = "" if quant else "the model is float, so there is nothing to compare; build with quantization"
    if not quant:
        hybrid = {"available": False, "reason": "the model is float: build with quantization to choose layers "
                  "to keep in higher precision"}
    cache_key = (rknn.name, rknn.stat().st_mtime_ns)
    if measure:
        if reason:
            raise RequestRefused(409, f"accuracy cannot be measured: {reason}")
        if feeds is None:
            raise RequestRefused(409, "run inference on an image first: accuracy is measured on that image")
        try:
            measured = measure_accuracy(pkg, feeds["inputs"], session.root / "accuracy")
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
                     "accuracy": {"available": not reason, "reason": reason, "measured": cached is not None,
                                  "image": (feeds or {}).get("image")}})


@router.get("/api/layers")
def layers(ctx: Ctx, session: CurrentSession):
    return layer_report(ctx, session, measure=False)


@router.post("/api/layers/accuracy")
def layers_accuracy(ctx: Ctx, session: CurrentSession):
    """Measure per-layer cosine on the last inference image (writes the analysis files in the session)."""
    return layer_report(ctx, session, measure=True)
