"""Charts for the HTML report: per-layer time (NPU estimate vs host) and the activation memory plan.

matplotlib's object API with the Agg canvas: no pyplot, no global backend switch, safe in servers and threads.
The format follows the file extension (.png or .svg); files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import write_atomic
from ..errors import NotSupportedError
from ..units import format_bytes
from .memory import MemoryPlan

PathLike = Union[str, os.PathLike]
_FORMATS = (".png", ".svg")


def _save(fig: Figure, path: PathLike) -> str:
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise NotSupportedError(f"chart file {str(path)!r}: use a .png or .svg name")
    FigureCanvasAgg(fig)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=110, bbox_inches="tight"))
    return str(path)


def perf_chart(report: dict, path: PathLike, top: int = 25) -> str:
    """Bar charts from an eval_perf report: the slowest layers (NPU estimate, and host time when measured) and the
    time per op type. Needs the report made with perf_debug=True for the per-layer panel; layers are the user's
    ("user_layers": split parts added up) when the report has them."""
    layers = [r for r in report.get("user_layers") or report.get("layers", []) if r["unit"] in ("NPU", "CPU")]
    layers = sorted(layers, key=lambda r: -r["npu_us"])[:top][::-1]
    fig = Figure(figsize=(11, 3 + 0.28 * max(len(layers), 6)))
    gs = fig.add_gridspec(1, 2, width_ratios=[3, 1.3])
    ax = fig.add_subplot(gs[0])
    if layers:
        ys = range(len(layers))
        has_host = any(r.get("host_us") is not None for r in layers)
        h = 0.4 if has_host else 0.8
        ax.barh([y + (h / 2 if has_host else 0) for y in ys], [r["npu_us"] for r in layers], height=h,
                color=["#d9534f" if r["unit"] == "CPU" else "#337ab7" for r in layers],
                label=f"{report['target']} NPU (estimated)")
        if has_host:
            ax.barh([y - h / 2 for y in ys], [r.get("host_us") or 0 for r in layers], height=h, color="#999999",
                    label="this host (measured)")
        ax.set_yticks(list(ys))
        ax.set_yticklabels([f"{r['name'][-28:]} ({r['op_type']})" for r in layers], fontsize=7)
        ax.set_xlabel("time per layer (us)")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "per-layer times need perf_debug=True", ha="center", va="center")
        ax.set_axis_off()
    est = report["npu_estimate"]
    ax.set_title(f"Slowest layers: {report['target']} total {est['total_us'] / 1e3:.2f} ms ({est['fps']:.1f} FPS)",
                 fontsize=10)
    ax2 = fig.add_subplot(gs[1])
    ops = report.get("top_op_types", [])[::-1]
    ax2.barh([o["op_type"] for o in ops], [o["time_us"] / 1e3 for o in ops], color="#5cb85c")
    ax2.set_xlabel("ms (NPU estimate)")
    ax2.set_title("Time by op type", fontsize=10)
    ax2.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def memory_chart(plan: MemoryPlan, path: PathLike, layer_names: Optional[list[str]] = None) -> str:
    """Two panels: bytes alive at each layer (with the arena size) and where each buffer sits in the arena over
    time (the plan itself: x = layer, y = offset)."""
    fig = Figure(figsize=(11, 7))
    ax = fig.add_subplot(2, 1, 1)
    steps = list(range(len(plan.live_bytes)))
    mb = 1e6  # decimal units, as every size openrknn prints (units.format_bytes)
    ax.fill_between(steps, [b / mb for b in plan.live_bytes], step="mid", color="#337ab7", alpha=0.6,
                    label="activations alive")
    ax.axhline(plan.arena_bytes / mb, color="#d9534f", linestyle="--",
               label=f"arena (internal memory) {format_bytes(plan.arena_bytes)}")
    ax.set_ylabel("MB")
    ax.set_xlim(-0.5, max(len(steps) - 0.5, 0.5))
    peak = plan.peak_layer if layer_names is None else layer_names[plan.peak_step]
    ax.set_title(f"Activation memory per layer (peak {format_bytes(plan.peak_live_bytes)} at {peak})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
    for i, b in enumerate(plan.buffers):
        ax2.broken_barh([(b.start - 0.4, b.end - b.start + 0.8)], (b.offset / mb, b.size / mb),
                        facecolors=f"C{i % 10}", edgecolor="black", linewidth=0.2)
    ax2.set_ylim(0, max(plan.arena_bytes / mb, 1e-6))
    ax2.set_xlabel("layer (execution order)")
    ax2.set_ylabel("offset (MB)")
    ax2.set_title(f"Buffer plan: {len(plan.buffers)} buffers ({plan.strategy} placement)", fontsize=10)
    return _save(fig, path)


def pareto_chart(rows: list, path: PathLike, metric: str = "metric") -> str:
    """Accuracy vs estimated NPU time, one panel per chip: every configuration a dot, the Pareto front joined and
    ringed, the recommended point starred. ``rows``: sweep table rows (target, npu_ms, value, pareto, recommended,
    label)."""
    targets = sorted({r["target"] for r in rows if r.get("error") is None})
    fig = Figure(figsize=(5.5 * max(1, len(targets)), 4.4))
    for k, target in enumerate(targets or ["(none)"]):
        ax = fig.add_subplot(1, max(1, len(targets)), k + 1)
        pts = [r for r in rows if r["target"] == target and r.get("error") is None]
        ax.scatter([r["npu_ms"] for r in pts], [r["value"] for r in pts], s=28, color="#8aa1b9",
                   label="configuration")
        front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["npu_ms"])
        if front:
            ax.plot([r["npu_ms"] for r in front], [r["value"] for r in front], "-o", color="#17324d", mfc="none",
                    ms=9, label="Pareto front")
        for r in pts:
            if r["recommended"]:
                ax.scatter([r["npu_ms"]], [r["value"]], marker="*", s=260, color="#d9534f", zorder=5,
                           label="recommended")
                ax.annotate(r["label"].split(" ", 1)[-1], (r["npu_ms"], r["value"]), fontsize=7,
                            textcoords="offset points", xytext=(6, -12))
        ax.set_xlabel(f"estimated NPU time on {target} (ms)")
        ax.set_ylabel(metric)
        ax.set_title(f"{target}: {len(pts)} configurations", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
