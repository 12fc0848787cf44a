"""The corpus bench's TFLite column: every corpus model's w8a8 rk3588 build exported as int8 .tflite, on LiteRT.

Reuses bench/corpus.py's corpus, feeds, reference outputs and metric (its work folders must exist: run
`python bench/corpus.py` first, or this script prepares a model the same way). For each model, in its own process:
build w8a8 rk3588 'normal' through the public API (as corpus.py's w8a8-rk3588-normal row), export_tflite, run the
.tflite on the LiteRT interpreter (CPU, default XNNPACK kernels) on the held-out feeds. Columns: cosine to the float
reference (worst output, mean over inputs; top-1 / step / mask agreement in parentheses, as in corpus.py), the same
for openrknn's int8 simulator on the same build, the cosine between LiteRT and the simulator (mean, and the worst
input's worst output), the same cosine between the simulator and its own graph run with onnxruntime's fusions off
(the model's sensitivity to float rounding order: the floor under LiteRT's agreement, whose float layers round in
yet another order), LiteRT's XNNPACK kernels against its builtin ones (the runtime's own spread), the layers LiteRT
computes in float (export report) and the TFLite ops Mesa's Teflon would offload (openrknn.export.teflon_support).
A model TFLite cannot express (an op without a TFLite form, dynamic shapes) is a recorded failure with the
exporter's message. Results are cached per model in <cache>/results/<model>/tflite-w8a8.json; --rerun recomputes.

`--method layer`: the same with per-tensor weights (results in tflite-w8a8-layer.json), the build today's rocket
driver can run convolutions of on the NPU. `--points tflite`: built with config(pre_activation_points='tflite'), so
a conv before a SiLU or Sigmoid has an int8 output and exports as an int8 conv (results in
tflite-w8a8[-layer]-points.json). With both, the open path's build: "convs on NPU" is what Teflon would offload.

Usage: python bench/corpus_tflite.py [--cache DIR] [--only NAME,...] [--rerun] [--table-only] [--method channel|layer]
       [--points chip|tflite]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import corpus  # noqa: E402  (the corpus bench: feeds, references, metric)
from corpus_fetch import BY_NAME, DEFAULT_CACHE, MANIFEST  # noqa: E402

ROWS = {"channel": "tflite-w8a8", "layer": "tflite-w8a8-layer"}   # weights per channel (default) / per tensor


def row_name(method: str, points: str) -> str:
    return ROWS[method] + ("-points" if points == "tflite" else "")


def run_worker(name: str, cache: Path, method: str = "channel", points: str = "chip") -> None:
    from openrknn.api import RKNN
    from openrknn.export.teflon_support import CONV_OPS, teflon_placement
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.runtime.tflite_runner import TfliteRunner

    entry = BY_NAME[name]
    wd = corpus.work_dir(cache, name)
    info = json.loads(next(wd.glob("prepared_n*.json")).read_text())
    row = row_name(method, points)
    res: Dict = {"row": row, "model": name}
    t0 = time.time()
    try:
        rknn = RKNN(verbose=False)
        cfg = {"target_platform": "rk3588", "quantized_dtype": "w8a8", "quantized_algorithm": "normal",
               "quantized_method": method, "pre_activation_points": points}
        if corpus._uses_mean(entry):
            cfg.update(mean_values=[list(entry["mean"])], std_values=[list(entry["std"])])
        for step, rc in (("config", lambda: rknn.config(**cfg)),
                         ("load_onnx", lambda: rknn.load_onnx(str(corpus.model_path(cache, name)),
                                                              input_size_list=[entry["shape"]])),
                         ("build", lambda: rknn.build(do_quantization=True, dataset=str(wd / "dataset.txt"))),
                         ("init_runtime", lambda: rknn.init_runtime())):
            if rc() != 0:
                raise RuntimeError(f"fails in {step}: {rknn.last_error}")
        feeds = [np.load(wd / f"eval_{i:02d}.npy") for i in range(info["eval"])]
        sim_outs = [[np.asarray(x) for x in rknn.inference(inputs=[x])] for x in feeds]
        floor_outs = unfused_outputs(rknn._package, feeds)
        t = time.time()
        try:
            # feeds that are not whole numbers (audio features) need a float input, as a user would export it
            fractional = any(np.issubdtype(x.dtype, np.floating) and not np.array_equal(x, np.round(x))
                             for x in feeds)
            rknn_pkg = rknn._package
            data, report = export_tflite_bytes(rknn_pkg, "float32" if fractional else "uint8")
        except Exception as e:
            raise RuntimeError(f"fails in export_tflite: {e}") from None
        res["export_s"] = time.time() - t
        rknn.release()
        try:
            runner = TfliteRunner(data, delegate=None, threads=2)
        except Exception as e:
            raise RuntimeError(f"fails in LiteRT load: {e}") from None
        lite_outs = []
        for x in feeds:
            try:
                lite_outs.append([np.asarray(o) for o in runner.run([x])])
            except Exception as e:
                raise RuntimeError(f"fails in LiteRT run: {e}") from None
        kernels_outs = [[np.asarray(o) for o in builtin_kernels(runner, data).run([x])] for x in feeds]
        refs = corpus.load_outputs(wd / "reference.npz", info["eval"])
        lite = corpus.score(entry, refs, lite_outs)
        sim = corpus.score(entry, refs, sim_outs)
        vs = corpus.score(entry, sim_outs, lite_outs)
        floor = corpus.score(entry, sim_outs, floor_outs)
        kernels = corpus.score(entry, lite_outs, kernels_outs)
        if "error" in lite:
            raise RuntimeError("fails in comparison: " + lite["error"])
        places = teflon_placement(report.model)
        res["point_trace"] = point_trace(rknn_pkg, data, report, feeds, sim_outs, lite_outs)
        res.update(lite)
        res.update(sim_cos=sim.get("cos"), sim_agree=sim.get("agree"), vs_sim=vs.get("cos"),
                   vs_sim_min=vs.get("cos_min"), floor=floor.get("cos"), floor_min=floor.get("cos_min"),
                   kernels=kernels.get("cos"), kernels_min=kernels.get("cos_min"),
                   float_layers=len(report.float_layers),
                   layers=len(report.float_layers) + len(report.int8_layers),
                   float_ops=sorted({r.op_type for r in report.float_layers}),
                   npu_ops=sum(p.unit == "NPU" for p in places), ops=len(places), tflite_bytes=len(data),
                   npu_convs=sum(p.unit == "NPU" for p in places if p.builtin in CONV_OPS),
                   convs=sum(p.builtin in CONV_OPS for p in places))
    except Exception as e:
        msg = str(e)
        res["error"] = (msg if msg.startswith("fails in") else f"fails in {row}: {type(e).__name__}: {msg}")[:600]
        res["trace"] = traceback.format_exc()[-3000:]
    res["total_s"] = time.time() - t0
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def point_trace(pkg, data: bytes, report, feeds, sim_outs, lite_outs) -> Dict:
    """export.tflite.trace on the input where LiteRT and the simulator end furthest apart: per mode (int8 / float
    layers) [points, values, values made otherwise from the same inputs, values that differ in the whole run], the
    points not compared, and the three points with the highest rate of values made otherwise."""
    from openrknn.export.tflite.trace import trace
    from openrknn.export.tflite.validate import cosine

    worst = int(np.argmin([min(cosine(a, b) for a, b in zip(s, t)) for s, t in zip(sim_outs, lite_outs)]))
    t = time.time()
    rep = trace(pkg, data, report, [feeds[worst]], threads=2)
    top = sorted((p for p in rep.points if p.made), key=lambda p: -p.made / p.size)[:3]
    return {"input": worst, "int8": list(rep.totals("int8")), "float": list(rep.totals("float")),
            "skipped": rep.skipped, "seconds": time.time() - t,
            "top": [[p.point, p.ops, p.mode, p.made, p.size, p.made_max] for p in top]}


def unfused_outputs(pkg, feeds):
    """The simulator's own graph with onnxruntime's fusions off (float convs between DequantizeLinear and
    QuantizeLinear instead of integer QLinearConv): the same quantized model computed in another order. How far this
    lands from the simulator is the model's own sensitivity to float rounding, the floor under LiteRT's agreement."""
    import onnxruntime as ort

    from openrknn.runtime.feeds import prepare_feeds

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(pkg.model_bytes, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [[np.asarray(o) for o in sess.run(None, dict(zip(names, prepare_feeds([x], pkg.metadata["inputs"]))))]
            for x in feeds]


def builtin_kernels(runner, data: bytes):
    """The same .tflite on LiteRT's builtin kernels instead of XNNPACK: another float summation order and its own
    int8 requantization rounding. How far the two land apart is the runtime's own spread on this model."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=data, num_threads=2,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    runner.interpreter = it   # same tensor indices: the same file
    return runner


def run_model(entry, cache: Path, rerun: bool, method: str = "channel", points: str = "chip") -> Dict:
    rfile = cache / "results" / entry["name"] / f"{row_name(method, points)}.json"
    if rfile.is_file() and not rerun:
        return json.loads(rfile.read_text())
    corpus.prepare(entry, cache, 10)
    rfile.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cache", str(cache), "--method", method,
                        "--points", points, "--worker", entry["name"]], capture_output=True, text=True, env=env,
                       timeout=7200)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    res = json.loads(lines[-1][len("RESULT "):]) if lines else {
        "error": f"fails in worker process (rc={p.returncode}): {p.stderr.strip()[-400:]}"}
    res["row"] = row_name(method, points)
    tmp = rfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(rfile)
    return res


def _c(x: Optional[float], agree: Optional[float] = None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" + (f" ({agree:.2f})" if agree is not None else "")


def row_text(name: str, r: Dict) -> str:
    if r.get("error"):
        return f"| {name} | {BY_NAME[name]['kind']} | FAIL | | | | | | | | {r['error'][:200]} | | |"
    convs = f"{r['npu_convs']}/{r['convs']}" if "convs" in r else "-"   # results from before the column: -
    return (f"| {name} | {BY_NAME[name]['kind']} | {_c(r['cos'], r.get('agree'))} | "
            f"{_c(r['sim_cos'], r.get('sim_agree'))} | {_c(r['vs_sim'])} ({r['vs_sim_min']:.4f}) | "
            f"{_c(r.get('floor'))} ({_c(r.get('floor_min'))}) | {_c(r.get('kernels'))} ({_c(r.get('kernels_min'))}) | "
            f"{r['float_layers']}/{r['layers']} | {r['npu_ops']}/{r['ops']} | {convs} | "
            f"{', '.join(r['float_ops']) if r['float_ops'] else ''} | {_made(r.get('point_trace'), 'int8')} | "
            f"{_made(r.get('point_trace'), 'float')} |")


def _made(tr: Optional[Dict], mode: str) -> str:
    """'values made otherwise / values (rate)' of one mode's points in the point trace."""
    if not tr or not tr[mode][0]:
        return "-"
    _, size, made, _ = tr[mode]
    return f"{made:,} / {size:,} ({made / size:.0e})" if made else f"0 / {size:,}"


HEADER = ("| model | kind | LiteRT vs float | simulator vs float | LiteRT vs simulator (worst) | "
          "simulator vs itself, fusions off (worst) | LiteRT XNNPACK vs builtin kernels (worst) | float layers | "
          "Teflon NPU ops | convs on NPU | computed in float | made otherwise, int8 layers | made otherwise, float "
          "layers |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", default="")
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--method", default="channel", choices=tuple(ROWS),
                    help="weights per channel (the default build) or per tensor (what today's rocket driver runs "
                         "convolutions of on the NPU)")
    ap.add_argument("--points", default="chip", choices=("chip", "tflite"),
                    help="config(pre_activation_points=...): 'tflite' gives each conv before a SiLU / Sigmoid an "
                         "int8 output, so it exports as an int8 conv")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.cache, args.method, args.points)
        return 0
    names = [n for n in args.only.split(",") if n] or [e["name"] for e in MANIFEST]
    print("machine shared, timings noisy; LiteRT on the CPU (XNNPACK)", flush=True)
    print(HEADER, flush=True)
    for n in names:
        rfile = args.cache / "results" / n / f"{row_name(args.method, args.points)}.json"
        if args.table_only:
            if rfile.is_file():
                print(row_text(n, json.loads(rfile.read_text())), flush=True)
            continue
        print(row_text(n, run_model(BY_NAME[n], args.cache, args.rerun, args.method, args.points)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
