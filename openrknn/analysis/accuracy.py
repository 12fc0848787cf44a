"""Per-layer accuracy analysis of a quantized model against its float model (vendor-style error_analysis.txt).

Layers are the tensors both graphs compute under the same name: in a QDQ model from openrknn.quant every
quantization point keeps its float name (the DequantizeLinear output), so each point is one row, named by the user's
layer that produces it. A tensor range split cut into parts exists in the quantized graph only as those parts (the
split point feeds the next split layer directly): its row puts the parts' channels back together, as the quantizer
recorded them (quant.qdq.channel_parts).
- "entire": both models run end to end; the quantized layer sees quantized inputs (errors accumulate).
- "single": every quantization point of the quantized model is re-fed from the float model's value of that tensor
  (quantized with its own scale), so each row shows that layer's own error: its weights, its output scale.
Metrics per row, averaged over the inputs: cosine similarity and euclidean distance ||float - quant||_2.

Files written to ``output_dir``:
- ``error_analysis.txt``: the table, worst layers first flagged with '*' (cosine < 0.98 in single mode);
- ``cosine_by_layer.png``: cosine of every layer in both modes (matplotlib, Agg backend);
- ``dumps/``: ``<layer>.float.npy`` and ``<layer>.quant.npy`` of the *first* input only, in layer order, until
  ``dump_limit_mb`` (default 64 MB) is reached; the rest is listed as skipped. Quantized values are given in the
  float model's channel order and scale (undoing equalization's per-channel factors and range split's channel
  grouping, which the quantized model records in its metadata). (The vendor writes every tensor of
  every input, 569 MB for a YOLOX-nano.)
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import onnx

from ..atomic import write_atomic
from ..metrics import cosine, euclidean
from ..quant.calibrate import make_session
from ..quant.qdq import (channel_offsets, channel_orders, channel_parts, channel_scales, node_outputs,
                         quant_points, single_layer_model, with_outputs)
from .graph_info import node_names

log = logging.getLogger("openrknn.analysis.accuracy")

def _save_npy(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def _unpermute(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    out[:, order] = x
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]


def accuracy_analysis(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, feeds: List[Dict[str, np.ndarray]],
                      output_dir: Union[str, os.PathLike], dump_limit_mb: float = 64.0,
                      progress: bool = True) -> Dict:
    """Compare ``quant_model`` with ``float_model`` layer by layer on ``feeds``; write the report files and return
    {"layers": [...], "outputs": {...}, "files": [...]} (see the module docstring)."""
    from ..progress import progress_bar

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not feeds:
        from ..errors import DatasetError

        raise DatasetError("accuracy_analysis: no inputs given; pass at least one input (image or array)")
    float_types = node_outputs(float_model)
    quant_types = node_outputs(quant_model)
    all_points = quant_points(quant_model)
    # float tensors the quantized graph holds only as range split's parts: {tensor: [(part, its channels)]}
    pieces: Dict[str, List[tuple]] = {}
    for part, (t, channels) in channel_parts(quant_model).items():
        if part in all_points and t in float_types and t not in quant_types:
            pieces.setdefault(t, []).append((part, channels))
    pieces = {t: ps for t, ps in pieces.items()  # every channel once, or no row
              if sorted(np.concatenate([c for _, c in ps]).tolist()) == list(range(sum(len(c) for _, c in ps)))}
    piece_of = {part: t for t, ps in pieces.items() for part, _ in ps}
    # points the float model also computes, and the parts that stand for one
    points = {t: v for t, v in all_points.items() if t in float_types or t in piece_of}
    graph_inputs = [i.name for i in quant_model.graph.input]
    outputs = [o.name for o in float_model.graph.output]
    # rows: tensors computed by both (or put together from parts), in the float model's order: the quantization
    # points and the layers the plan keeps in float (the float tail), not the tensors inside a fused layer
    kept_float = _float_tail(float_model) if points else set()
    layers = [t for t in float_types if (t in quant_types or t in pieces)
              and (t in points or t in pieces or t in outputs or t in kept_float or not points)]
    computed = [t for t in layers if t not in pieces]
    part_names = list(piece_of)
    producer = {t: name for name, n in zip(node_names(float_model), float_model.graph.node) for t in n.output}

    f_sess = make_session(with_outputs(float_model, layers + [t for t in points if t in float_types]))
    f_names = [o.name for o in f_sess.get_outputs()]
    q_sess = make_session(with_outputs(quant_model, computed + part_names))
    q_names = [o.name for o in q_sess.get_outputs()]
    single_ok = bool(points)
    if single_ok:
        s_model, s_feeds, s_outs = single_layer_model(quant_model, points, graph_inputs)
        s_sess = make_session(with_outputs(s_model, [s_outs.get(t, t) for t in computed + part_names]))
        s_names = [o.name for o in s_sess.get_outputs()]

    # tensors rescaled per channel by cross-layer equalization: quant value * factor is comparable to float
    factor = {t: f.reshape(1, -1, *([1] * 2)) for t, f in channel_scales(quant_model).items()}
    # tensors range split remapped per part (float = quant * factor + offset)
    offset = {t: f.reshape(1, -1, *([1] * 2)) for t, f in channel_offsets(quant_model).items()}
    # tensors range split left in group order (quant[:, j] = float[:, order[j]]): put back in order to compare
    order = channel_orders(quant_model)
    acc = {t: np.zeros(4) for t in layers}
    out_cos: Dict[str, List[float]] = {o: [] for o in outputs}
    dumped, skipped, budget = [], [], dump_limit_mb * 1024 * 1024
    dump_dir = out_dir / "dumps"
    for k, feed in enumerate(progress_bar(feeds, desc="accuracy analysis", enabled=progress, leave=False)):
        fv = dict(zip(f_names, f_sess.run(None, feed)))
        qv = dict(zip(q_names, q_sess.run(None, feed)))
        sv = {}
        if single_ok:
            sfeed = dict(feed)
            for t, name in s_feeds.items():
                src = piece_of.get(t, t)
                if src in fv:
                    v = fv[src] - offset[src] if src in offset else fv[src]
                    v = v / factor[src] if src in factor else v
                    v = v[:, order[src]] if src in order else v
                    sfeed[name] = (v[:, dict(pieces[src])[t]] if t in piece_of else v).astype(np.float32)
            sv = dict(zip(s_names, s_sess.run(None, sfeed)))
        for t in pieces:  # the split tensor, its channels taken from its parts
            qv[t] = _assemble(fv[t], [(qv[p], ch) for p, ch in pieces[t]])
            if single_ok:
                sv[t] = _assemble(fv[t], [(sv[s_outs[p]], ch) for p, ch in pieces[t]])
        for t in layers:
            a = np.asarray(fv[t], np.float32)
            b = np.asarray(qv[t], np.float32)
            c = np.asarray(sv.get(t if t in pieces else s_outs.get(t, t), b), np.float32) if single_ok else b
            if t in order:
                b, c = _unpermute(b, order[t]), _unpermute(c, order[t])
            if t in factor:
                b, c = b * factor[t], c * factor[t]
            if t in offset:
                b, c = b + offset[t], c + offset[t]
            acc[t] += [cosine(a, b), euclidean(a, b), cosine(a, c), euclidean(a, c)]
            if k == 0:
                if a.nbytes + b.nbytes <= budget:
                    dump_dir.mkdir(exist_ok=True)
                    for suffix, arr in (("float", a), ("quant", b)):
                        p = dump_dir / f"{_safe(t)}.{suffix}.npy"
                        write_atomic(p, lambda tmp, arr=arr: _save_npy(tmp, arr))
                    budget -= a.nbytes + b.nbytes
                    dumped.append(t)
                else:
                    skipped.append(t)
        for o in outputs:
            out_cos[o].append(cosine(np.asarray(fv[o], np.float32), np.asarray(qv[o], np.float32)))
    n = len(feeds)
    rows = []
    for t in layers:
        e_cos, e_euc, s_cos, s_euc = acc[t] / n
        rows.append({"name": t, "layer": producer.get(t, t), "op": float_types.get(t, "Input"),
                     "entire_cos": e_cos, "entire_euc": e_euc, "single_cos": s_cos if single_ok else None,
                     "single_euc": s_euc if single_ok else None, "parts": [p for p, _ in pieces.get(t, [])]})

    txt = out_dir / "error_analysis.txt"
    lines = [f"# openrknn accuracy analysis: float vs quantized model, {n} input(s), {len(rows)} layers",
             "# entire: quantized model run end to end; single: each layer fed the float model's inputs",
             "# cos = cosine similarity (1 = identical), euc = euclidean distance ||float - quant||_2, input mean",
             "# '*' marks a layer whose own (single) cosine is below 0.98; a first layer below 0.98 usually means",
             "#   a mean/std/channel-order mismatch between calibration data and the model",
             "# layer_name: the layer of your model; tensor: its output (dumps/<tensor>.*.npy)",
             f"{'layer_name':44s} {'op':14s} {'entire_cos':>10s} {'entire_euc':>12s} {'single_cos':>10s} "
             f"{'single_euc':>12s}  tensor"]
    for r in rows:
        sc = f"{r['single_cos']:10.5f}" if r["single_cos"] is not None else f"{'-':>10s}"
        se = f"{r['single_euc']:12.5g}" if r["single_euc"] is not None else f"{'-':>12s}"
        flag = "*" if r["single_cos"] is not None and r["single_cos"] < 0.98 else " "
        lines.append(f"{r['layer'][:44]:44s} {r['op'][:14]:14s} {r['entire_cos']:10.5f} {r['entire_euc']:12.5g} "
                     f"{sc} {se}{flag} {r['name']}")
    lines.append(f"# dumps: first input only, {len(dumped)} layers in dumps/ (float + quant .npy)"
                 + (f"; {len(skipped)} skipped over the {dump_limit_mb:g} MB limit: {', '.join(skipped[:20])}"
                    + (" ..." if len(skipped) > 20 else "") if skipped else ""))
    write_atomic(txt, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))

    png = out_dir / "cosine_by_layer.png"
    _plot(rows, png)
    result = {"layers": rows, "outputs": {o: float(np.mean(v)) for o, v in out_cos.items()},
              "files": [str(txt), str(png)] + [str(p) for p in sorted(dump_dir.glob("*.npy"))] if dumped else
              [str(txt), str(png)], "dumped": dumped, "skipped_dumps": skipped}
    worst = min(rows, key=lambda r: r["single_cos"] if r["single_cos"] is not None else r["entire_cos"],
                default=None)
    if worst is not None:
        result["worst_layer"] = worst["name"]
    return result


def _float_tail(float_model: onnx.ModelProto) -> set:
    """Tensors the quantizer's plan keeps in float after the last quantization points (a detector head's concat of
    boxes and scores, the layout ops after it): layers of their own, with no point."""
    from ..quant.ir import GraphInfo, normalize
    from ..quant.plan import build_plan

    return set(build_plan(GraphInfo(normalize(float_model))).float_tail)


def _assemble(like: np.ndarray, parts: List[tuple]) -> np.ndarray:
    """A tensor shaped like ``like`` whose channels (axis 1) come from (values, channel indices) parts."""
    out = np.zeros(np.shape(like), np.float32)
    for values, channels in parts:
        out[:, channels] = values
    return out


def _plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, len(rows) * 0.12)), 4.0))
    x = np.arange(len(rows))
    ax.plot(x, [r["entire_cos"] for r in rows], label="entire", marker=".", lw=1)
    if rows and rows[0]["single_cos"] is not None:
        ax.plot(x, [r["single_cos"] for r in rows], label="single", marker=".", lw=1)
    ax.set_xlabel("layer (topological order)")
    ax.set_ylabel("cosine similarity float vs quantized")
    lo = min([r["entire_cos"] for r in rows] + [r["single_cos"] or 1.0 for r in rows] + [0.9])
    ax.set_ylim(max(lo - 0.01, -1.0), 1.002)
    ax.axhline(0.98, color="grey", ls=":", lw=1)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def load_model(model: Union[onnx.ModelProto, str, os.PathLike]) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


__all__ = ["accuracy_analysis", "load_model"]
