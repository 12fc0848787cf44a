"""Step 6: the per-layer table of the current .rknn (one row per layer of the user's model, parts folded in), and
per-layer accuracy measured on the last inference image."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from ...errors import OpenRKNNError
from ..context import Ctx, CurrentSession, GuiContext
from ..layers import accuracy_summary, fold_parts, keepable_layers, layer_rows, measure_accuracy, merge_accuracy
from ..pipeline import jsonable
from ..sessions import RequestRefused, Session

log = logging.getLogger("openrknn.gui")
router = APIRouter()
DEFAULT_COS_THRESHOLD = 0.98  # config(auto_hybrid_cos_thresh=...)'s default, for files that do not record theirs


def _float_ops(float_model_bytes) -> dict:
    import onnx

    return {n.name: n.op_type for n in onnx.load_from_string(float_model_bytes).graph.node} if float_model_bytes \
        else {}


def _hybrid(quantized: bool, rebuildable: bool, keepable: set) -> dict:
    """Whether the page offers keep-float marks, and why not when it does not."""
    if not quantized:
        return {"available": False, "reason": "the model is float: build with quantization to choose layers to keep "
                "in higher precision"}
    if not rebuildable:
        return {"available": False, "reason": "this .rknn was not built here: build it from its .pt or .onnx to "
                "choose layers to keep in float"}
    if not keepable:
        return {"available": False, "reason": "no layer of this model has its own quantization to drop"}
    return {"available": True, "reason": ""}


def layer_report(ctx: GuiContext, session: Session, measure: bool) -> dict:
    with session.lock:
        rknn, feeds = session.rknn_path(), session.last_feeds
        kept = list((session.result or {}).get("keep_float") or [])
        rebuildable = bool(session.built_with and session.result)
    if rknn is None or not rknn.is_file():
        if measure:
            raise RequestRefused(409, "build a model (or pick an .rknn file) first")
        return {"rows": [], "model": None, "quantized": False, "kept_float": [],
                "hybrid": _hybrid(False, False, set()), "cos_threshold": DEFAULT_COS_THRESHOLD,
                "accuracy": {"available": False, "reason": "", "measured": False, "summary": None}}
    _, pkg = ctx.sims.get(session.key, rknn)
    quant = pkg.metadata.get("quantization")
    rows = layer_rows(pkg.model_bytes, quant, pkg.float_model_bytes)
    keepable = keepable_layers(pkg.float_model_bytes) if quant else set()
    reason = "" if quant else "the model is float, so there is nothing to compare; build with quantization"
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
    rows = fold_parts(rows, keepable, _float_ops(pkg.float_model_bytes))
    threshold = (pkg.metadata.get("build") or {}).get("auto_hybrid_cos_thresh") or DEFAULT_COS_THRESHOLD
    return jsonable({"rows": rows, "model": rknn.name, "quantized": bool(quant), "kept_float": kept,
                     "hybrid": _hybrid(bool(quant), rebuildable, keepable), "cos_threshold": threshold,
                     "accuracy": {"available": not reason, "reason": reason, "measured": cached is not None,
                                  "image": (feeds or {}).get("image"),
                                  "summary": accuracy_summary(rows, threshold) if cached else None}})


@router.get("/api/layers")
def layers(ctx: Ctx, session: CurrentSession):
    return layer_report(ctx, session, measure=False)


@router.post("/api/layers/accuracy")
def layers_accuracy(ctx: Ctx, session: CurrentSession):
    """Measure per-layer cosine on the last inference image (writes the analysis files in the session)."""
    return layer_report(ctx, session, measure=True)
