"""HTML reports: one self-contained file (images embedded) that a person can open, mail or attach to a ticket.

A report is a list of sections; each section is a title plus HTML (tables, text) and images. `model_report` builds
the standard sections for a .rknn package (model card, design findings, NPU time and memory with charts).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from .. import __version__
from ..atomic import write_text_atomic
from ..units import format_bytes

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1c2430}
header{background:#17324d;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8}main{max-width:1180px;margin:0 auto;padding:20px 32px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);margin:0 0 18px;padding:16px 20px}
h2{font-size:17px;margin:0 0 10px;color:#17324d}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e6e9ee;vertical-align:top}
th{background:#f0f3f7;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #e6e9ee;border-radius:4px;margin:6px 0}
.sev-error{color:#b42318;font-weight:600}.sev-warning{color:#b54708;font-weight:600}.sev-info{color:#475467}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.kv td:first-child{width:220px;color:#475467}.muted{color:#667085}code{background:#f0f3f7;padding:1px 4px}
details summary{cursor:pointer;color:#475467}details ul{margin:4px 0 0;padding-left:18px}
"""


@dataclass
class Section:
    title: str
    html: str = ""
    images: List[str] = field(default_factory=list)  # paths to PNG/SVG/JPG files, embedded inline


def esc(value) -> str:
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = ()) -> str:
    """An HTML table; columns listed in `numeric` are right-aligned."""
    head = "".join(f"<th class='num'>{esc(h)}</th>" if i in numeric else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f"<td class='num'>{esc(c)}</td>" if i in numeric else f"<td>{c if _is_html(c) else esc(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class RawHTML(str):
    """A table cell that is already HTML (e.g. a coloured severity)."""


def _is_html(value) -> bool:
    return isinstance(value, RawHTML)


def key_values(pairs: Iterable[Sequence]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in pairs) + "</table>"


def _embed(path: str) -> str:
    p = Path(path)
    data = p.read_bytes()
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        p.suffix.lower(), "application/octet-stream")
    return f"<img alt='{esc(p.name)}' src='data:{mime};base64,{base64.b64encode(data).decode()}'>"


def render(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>"]
    for s in sections:
        imgs = "".join(_embed(i) for i in s.images)
        if len(s.images) > 1:  # several pictures read better side by side than as one long column
            imgs = f"<div class='grid'>{imgs}</div>"
        parts.append(f"<section><h2>{esc(s.title)}</h2>{s.html}{imgs}</section>")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<p class='muted'>openrknn {esc(__version__)} · {esc(stamp)}</p></main></body></html>")
    return "".join(parts)


def write_report(path: str | Path, title: str, subtitle: str, sections: Sequence[Section]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render(title, subtitle, sections))
    return path


# ---- standard sections for a model ------------------------------------------------------------------------------

def model_section(pkg, path: Optional[str] = None) -> Section:
    from ..package_info import first_point_text, package_summary

    s = package_summary(pkg, path)
    q = s["quantization"]
    rows = [("file", s["file"] or "(in memory)"), ("size", format_bytes(s["size_bytes"])),
            ("target", ", ".join(s["target_platform"])),
            ("quantization", "float" if not q else
             f"{q['dtype']} / {q['algorithm']} / {q['method']} / {q['weight_rounding']} rounding "
             f"({q['quantized_tensors']} tensors: {q['activations']} activations, {q['weights']} weights "
             f"({q['per_channel_tensors']} per-channel), {q['biases']} biases)"),
            ("source", f"{(s['source'] or {}).get('framework', '?')} {(s['source'] or {}).get('file', '')}")]
    for i in s["inputs"]:
        # where the input is first quantized: the pixels' range kept whole or not
        first = f"; {first_point_text(i['first_point'], ', ')}" if i.get("first_point") else ""
        rows.append((f"input {i['name']}", f"{i['shape']} {i['dtype']} {i['layout']}; reorder "
                     f"{i['reorder_channel'] or 'none'}, mean {i['mean']}, std {i['std']}{first}"))
    for o in s["outputs"]:
        rows.append((f"output {o['name']}", f"{o['shape']} {o['dtype']}"))
    html_text = key_values(rows)
    if s["shape_sets"]:  # config(dynamic_input=...): the inputs and outputs above are the base set's
        set_rows = [(" + ".join("x".join(map(str, x)) for x in e["shapes"]),
                     " + ".join(map(str, e["inputs"])), " + ".join(map(str, e["outputs"])),
                     "built and calibrated here" if e["base"] else
                     f"{e['patched_constants']} constants, {e['patched_attributes']} attributes differ",
                     "" if not e["clipped"] else f"{len(e['clipped'])}, worst {e['clipped'][0]['tensor']} "
                     f"x{e['clipped'][0]['factor']:g}")
                    for e in s["shape_sets"]]
        html_text += ("<h3>Input shape sets (dynamic_input)</h3>" +
                      table(["set", "deployed inputs", "outputs", "how", "tensors past their quantized range"],
                            set_rows))
    return Section("Model", html_text)


def findings_section(findings) -> Section:
    """One row per finding, in the user's layer names; findings that say the same thing about several layers share
    a row that lists them (expandable), and a layer the quantizer cut into parts lists those under its name."""
    from .lint import findings_summary

    if not findings:
        return Section("NPU design check", "<p>No findings: the model fits the target's rules.</p>")
    groups: dict = {}
    for f in findings:
        groups.setdefault((f.severity, f.rule, f.why, f.what_to_do), []).append(f)
    rows = [(RawHTML(f"<span class='sev-{esc(sev)}'>{esc(sev)}</span>"), rule, RawHTML(_layers_cell(same)), why,
             todo) for (sev, rule, why, todo), same in groups.items()]
    summary = f"<p>{esc(findings_summary(findings))}" + (
        f" ({len(rows)} distinct)" if len(rows) < len(findings) else "") + ".</p>"
    return Section("NPU design check", summary + table(["severity", "rule", "layer", "why", "what to do"], rows))


def _layers_cell(findings) -> str:
    def name(f) -> str:
        text = esc(f"{f.layer} ({f.op_type})" if f.op_type and f.layer else f.layer or "(model)")
        if f.parts:
            text += (f"<details><summary>{len(f.parts)} part{'s' if len(f.parts) != 1 else ''} in the built model"
                     f"</summary><ul>{''.join(f'<li><code>{esc(p)}</code></li>' for p in f.parts)}</ul></details>")
        return text

    if len(findings) == 1:
        return name(findings[0])
    shown = ", ".join(esc(f.layer) for f in findings[:3])
    return (f"{shown}{', ...' if len(findings) > 3 else ''}<details><summary>{len(findings)} layers</summary><ul>"
            + "".join(f"<li>{name(f)}</li>" for f in findings) + "</ul></details>")


def perf_section(perf: dict, chart: Optional[str]) -> Section:
    est, host = perf["npu_estimate"], perf.get("host_measured")
    base = next((e["set"] for e in perf.get("shape_sets") or () if e["total_us"] == est["total_us"]), None)
    rows = [("NPU estimate (board-free)" + (f", set {base}" if base else ""),
             f"{est['total_us'] / 1e3:.2f} ms, {est['fps']:.1f} FPS, "
             f"{est['gmacs']:.3f} GMAC on {perf['target']} ({perf.get('quantized_dtype') or 'float'})")]
    if est.get("tail_layers"):
        rows.append(("then on the board's CPU (float tail)",
                     f"{est['tail_us'] / 1e3:.3f} ms, {est['tail_layers']} layer(s) after the last int8 outputs"))
    if host:
        rows.append(("measured on this host", f"{host['total_us'] / 1e3:.2f} ms, {host['fps']:.1f} FPS"))
    top = table(["op type", "NPU time (us)", "share"],
                [(t["op_type"], f"{t['time_us']:.1f}", f"{t['share'] * 100:.1f}%") for t in perf["top_op_types"]],
                numeric=(1, 2))
    sets = ""
    if perf.get("shape_sets"):  # the table and chart are the base set's; every set's total here
        sets = "<h3>Every input shape set</h3>" + table(
            ["set", "NPU estimate (ms)", "FPS", "GMAC"],
            [(e["set"], f"{e['total_us'] / 1e3:.2f}", f"{e['fps']:.1f}", f"{e['gmacs']:.3f}")
             for e in perf["shape_sets"]], numeric=(1, 2, 3))
    return Section("Speed (eval_perf)", key_values(rows) + sets + "<h3>Top op types</h3>" + top,
                   [chart] if chart else [])


def memory_section(mem: dict, chart: Optional[str]) -> Section:
    rows = [("weights", format_bytes(mem["weight"]["total"] + mem["weight"]["quant_param_bytes"])),
            ("internal (activations, planned)", format_bytes(mem["internal"]["total"])),
            ("input buffers", format_bytes(mem["input"]["total"])),
            ("output buffers", format_bytes(mem["output"]["total"])),
            ("total on the NPU side", format_bytes(mem["total"]))]
    html_text = key_values(rows)
    if mem.get("host_rss"):  # the process on this machine, not the board: apart from the NPU figures
        html_text += (f"<p class='muted'>Measured apart from the board estimate: the process that ran the model used "
                      f"{esc(format_bytes(mem['host_rss']))} (resident set).</p>")
    return Section("Memory (eval_memory)", html_text, [chart] if chart else [])


def hybrid_sections(pkg) -> List[Section]:
    """The layers hybrid quantization kept out of the model's main dtype (none for plain builds)."""
    quant = pkg.metadata.get("quantization") or {}
    overrides = quant.get("overrides") or {}
    if not overrides:
        return []
    rows = sorted(overrides.items())
    text = (f"<p>{len(rows)} tensor(s) kept out of {esc(quant.get('dtype'))}; every other quantized tensor uses it."
            "</p>")
    auto = quant.get("auto_hybrid") or {}
    if auto.get("layers"):
        text += (f"<p>Chosen automatically: {len(auto['layers'])} layer(s) ({esc(', '.join(auto['layers']))}), picked "
                 f"in {esc(auto.get('selection', 'sensitivity'))} order, lift the worst output cosine from "
                 f"{min(auto['cosine_before']):.4f} to {min(auto['cosine_after']):.4f} (threshold "
                 f"{auto['threshold']}).</p>")
        if auto.get("trials"):  # the real builds that confirmed the estimate's choice, in the order made
            made = "; ".join(f"{t['layers']} layer(s): {t['worst_cosine']:.5f}" + (" (met)" if t["met"] else "")
                             for t in auto["trials"])
            text += f"<p>Real builds tried, worst output cosine on the calibration samples: {esc(made)}.</p>"
    return [Section("Hybrid quantization", text + table(["tensor or weight", "stored as"], rows))]


def model_report(pkg, out_path: str | Path, model_path: Optional[str] = None, extra: Sequence[Section] = (),
                 title: str = "openrknn model report", calib_count: Optional[int] = None) -> Path:
    """Model card, design check, speed and memory (with charts), then any extra sections."""
    from .charts import memory_chart, perf_chart
    from .graph_info import analyze
    from .layer_names import package_layer_names
    from .memory import plan_memory
    from .package_reports import check, eval_memory, eval_perf, model_facts

    model, chip, qd = model_facts(pkg)
    # the same functions as `openrknn perf` and RKNN.eval_perf / eval_memory (no runtime: the estimates alone)
    perf = eval_perf(pkg, None, None, perf_debug=True, is_print=False)
    mem = eval_memory(pkg, None, is_print=False)
    names = package_layer_names(pkg)
    gi = analyze(model, qd)
    with tempfile.TemporaryDirectory() as tmp:
        perf_png = perf_chart(perf, Path(tmp) / "perf.png")
        mem_png = memory_chart(plan_memory(model, qd, info=gi), Path(tmp) / "memory.png",
                               [names.of(layer.name) for layer in gi.layers])
        sections = [model_section(pkg, model_path), *hybrid_sections(pkg), *extra, perf_section(perf, perf_png),
                    memory_section(mem, mem_png), findings_section(check(pkg, calib_count=calib_count))]
        return write_report(out_path, title, f"{Path(model_path).name if model_path else 'model'} on {chip}",
                            sections)


# ---- sweep -------------------------------------------------------------------------------------------------------

def sweep_section(rows: Sequence[dict], chart: Optional[str], metric: str, recommended_files: Sequence[str] = ()
                  ) -> Section:
    """A sweep's table (every configuration: metric with its interval, estimated NPU time and memory, build time),
    Pareto points and the recommendation marked, with the accuracy / latency chart."""
    def fmt(v, spec: str) -> str:
        return "-" if v is None or v != v else format(v, spec)

    body = []
    for r in sorted(rows, key=lambda r: (r["target"], -(r["value"] if r["value"] == r["value"] else -1e9))):
        mark = "recommended" if r["recommended"] else "front" if r["pareto"] else ""
        body.append((r["target"], r["label"], RawHTML(f"<b>{esc(mark)}</b>") if mark else "",
                     fmt(r["value"], ".4f"), f"{fmt(r['ci_low'], '.4f')} .. {fmt(r['ci_high'], '.4f')}",
                     fmt(r["npu_ms"], ".2f"), fmt(r["memory_mib"], ".2f"), fmt(r["build_s"], ".1f"),
                     r.get("error") or ""))
    text = (f"<p>{len(rows)} configurations; metric <code>{esc(metric)}</code> on the validation set (interval: "
            "bootstrap over images). NPU time and memory are the board-free estimates for each chip.</p>")
    if recommended_files:
        text += "<p>Recommended, ready to rebuild: " + ", ".join(f"<code>{esc(f)}</code>"
                                                                  for f in recommended_files) + "</p>"
    headers = ["chip", "configuration", "Pareto", metric, "interval", "NPU ms (est.)", "memory MiB", "build s",
               "error"]
    return Section("Quantization sweep", text + table(headers, body, numeric=(3, 5, 6, 7)), [chart] if chart else [])
