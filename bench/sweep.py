"""Sweep speed and memory on YOLOX-nano COCO: 12 configurations over 2 chips, built and evaluated

- "api": the same builds one after another through the RKNN API (config, load_onnx, build, export_rknn), each
  model then evaluated on the same images with the same metric code, in one process (the baseline);
- "sweep-1" / "sweep-2": `openrknn.sweep` on the local process pool with 1 and 2 workers;
- "ray-2": `openrknn.sweep` on a local Ray with 2 CPUs (Ray's start-up included).
Each run is its own process and starts from an empty output folder (no cached result, no cached statistics); the runs
are interleaved (the order rotates each round) and repeated with --repeat, because the machine is shared.

Configurations (the sweep file's union of blocks): rk1808 asymmetric_quantized-u8 {layer, channel} x {normal,
kl_divergence} and dynamic_fixed_point-i8 / -i16; rk3588 w8a8 channel {normal, kl_divergence, mmse}, w8a8 layer
normal, w8a16 and float16: the 8-bit ones differ in accuracy, the 16-bit ones also in estimated NPU time.
Data (../shared/data, the split of bench/quant_accuracy.py): calibration on the even-numbered COCO images (sorted,
letterboxed top-left with pad 114, as PNG), evaluation on the odd-numbered ones plus misc/*.jpg. Metric: mAP@0.5
(pycocotools) against the float model's own detections at score >= 0.3 (the images have no annotations), detections
kept at score >= 0.05, class-agnostic NMS at IoU 0.45.

Usage: python bench/sweep.py [--repeat N] [--modes api,sweep-1,sweep-2,ray-2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

MODES = ("api", "sweep-1", "sweep-2", "ray-2")


def prepare(work: Path) -> Path:
    """Calibration PNGs + dataset.txt, the validation listing and sweep.yml in ``work``; returns sweep.yml."""
    import cv2
    import yaml

    from openrknn.vision.letterbox import letterbox

    coco = sorted((DATA / "images" / "coco").glob("*.jpg"))
    calib = work / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    names = []
    for p in coco[0::2]:
        img, _ = letterbox(cv2.imread(str(p)), 416, "topleft", 114)
        cv2.imwrite(str(calib / f"{p.stem}.png"), img)
        names.append(f"{p.stem}.png")
    (calib / "dataset.txt").write_text("\n".join(names) + "\n")
    val = coco[1::2] + sorted((DATA / "images" / "misc").glob("*.jpg"))
    (work / "val.txt").write_text("\n".join(str(p) for p in val) + "\n")
    doc = {"model": str(DATA / "models" / "yolox_nano_coco.onnx"),
           "config": {"mean_values": [0, 0, 0], "std_values": [1, 1, 1], "quant_img_RGB2BGR": True},
           "build": {"dataset": "calib/dataset.txt"},
           "sweep": [{"target_platform": "rk1808", "quantized_dtype": "asymmetric_quantized-u8",
                      "quantized_method": ["layer", "channel"], "quantized_algorithm": ["normal", "kl_divergence"]},
                     {"target_platform": "rk1808", "quantized_dtype": ["dynamic_fixed_point-i8",
                                                                        "dynamic_fixed_point-i16"]},
                     {"target_platform": "rk3588", "quantized_dtype": "w8a8", "quantized_method": "channel",
                      "quantized_algorithm": ["normal", "kl_divergence", "mmse"]},
                     {"target_platform": "rk3588", "quantized_dtype": "w8a8", "quantized_method": "layer"},
                     {"target_platform": "rk3588", "quantized_dtype": ["w8a16", "float16"]}],
           "evaluation": {"images": "val.txt", "metric": "map50", "labels": "float", "postprocess": "yolox",
                          "input": {"resize": "letterbox", "letterbox": "topleft", "pad": 114,
                                    "channel_order": "bgr"},
                          "score_thr": 0.05, "nms_thr": 0.45, "class_agnostic": True, "gt_score_thr": 0.3,
                          "shard_size": 8}}
    path = work / "sweep.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _peak_rss_mb() -> float:
    from openrknn.sweep.tasks import peak_rss_mb

    return peak_rss_mb()


def child_api(sweep_yml: Path, out: Path) -> dict:
    """The baseline: every configuration through the RKNN API, one after another, then the same evaluation."""
    from openrknn.api import RKNN
    from openrknn.sweep.evaluation import ShardEvaluator, merge_shards, read_items, shard
    from openrknn.sweep.metrics import score
    from openrknn.sweep.spec import load_sweep_file, thaw

    spec = load_sweep_file(sweep_yml)
    ev = spec.evaluation
    t0 = time.perf_counter()
    rows, build_s = [], []
    for k, conf in enumerate(spec.configurations):
        t = time.perf_counter()
        rk = RKNN()
        assert rk.config(**{key: thaw(v) for key, v in conf.config}) == 0
        assert rk.load_onnx(str(spec.convert.model)) == 0
        assert rk.build(do_quantization=True, dataset=str(spec.convert.dataset)) == 0
        path = out / f"api{k}.rknn"
        assert rk.export_rknn(str(path)) == 0
        rk.release()
        build_s.append(time.perf_counter() - t)
        items = read_items(ev.images, ev.limit)
        evaluator = ShardEvaluator(path.read_bytes(), ev, threads=None)
        merged = merge_shards([evaluator.run(s) for s in shard(items, ev.shard_size)])
        rows.append({"label": conf.label, "value": score(merged, ev).value})
    return {"wall_s": time.perf_counter() - t0, "rows": rows, "build_s": build_s,
            "workers": [{"pid": os.getpid(), "peak_rss_mb": _peak_rss_mb()}]}


def child_sweep(sweep_yml: Path, out: Path, workers: int, ray: bool) -> dict:
    import openrknn

    t0 = time.perf_counter()
    r = openrknn.sweep(sweep_yml, out, workers=workers, ray=ray or None, progress=False)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "rows": r.table(measured=False), "build_s": [x["build_s"] for x in r.rows],
            "stats_reused": sum(x["stats_reused"] for x in r.rows), "workers": r.workers,
            "driver_peak_rss_mb": _peak_rss_mb(),
            "recommended": {t: x["label"] for t, x in r.recommended.items()},
            "front": [x["label"] for x in r.front]}


def run_child(mode: str, sweep_yml: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--sweep", str(sweep_yml), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--work", default="/work/cache/sweep/bench")
    ap.add_argument("--child", default="")
    ap.add_argument("--sweep", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.child:
        out = Path(args.out)
        if args.child == "api":
            res = child_api(Path(args.sweep), out)
        else:
            workers = int(args.child.rsplit("-", 1)[1])
            res = child_sweep(Path(args.sweep), out, workers, args.child.startswith("ray"))
        print(json.dumps(res))
        return
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sweep_yml = prepare(work)
    modes = args.modes.split(",")
    runs: dict = {m: [] for m in modes}
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    for rnd in range(args.repeat):
        order = modes[rnd % len(modes):] + modes[:rnd % len(modes)]  # interleaved: the order rotates
        for mode in order:
            out = work / f"out-{mode}-{rnd}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            load = os.getloadavg()[0]
            res = run_child(mode, sweep_yml, out)
            res["load"] = load
            runs[mode].append(res)
            if "error" in res:
                print(f"round {rnd} {mode}: ERROR {res['error']}", flush=True)
                continue
            peak = max(w["peak_rss_mb"] for w in res["workers"])
            print(f"round {rnd} {mode:8s} wall {res['wall_s']:7.1f} s  load avg before {load:4.1f}  "
                  f"workers {len(res['workers'])}  peak RSS per worker {peak:5.0f} MB", flush=True)
            shutil.rmtree(out / "models", ignore_errors=True)
    ok = {m: [r for r in rs if "error" not in r] for m, rs in runs.items()}
    print("\n| run | round | wall s | vs api | vs sweep-1 | vs sweep-2 | peak RSS / worker MB | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for rnd in range(args.repeat):
        base = {m: ok[m][rnd]["wall_s"] for m in ok if len(ok[m]) > rnd}
        for m in modes:
            if len(ok[m]) <= rnd:
                continue
            r = ok[m][rnd]

            def ratio(b: str, r=r, m=m, base=base) -> str:
                return f"{base[b] / r['wall_s']:.2f}x" if b in base and b != m else ""
            peak = max(w["peak_rss_mb"] for w in r["workers"])
            print(f"| {m} | {rnd} | {r['wall_s']:.1f} | {ratio('api')} | {ratio('sweep-1')} | {ratio('sweep-2')} | "
                  f"{peak:.0f} | {r['load']:.1f} |")
    ref = next((ok[m][0] for m in ("sweep-2", "sweep-1", "ray-2") if ok.get(m)), None)
    if ref:
        api_vals = {r["label"]: r["value"] for r in ok["api"][0]["rows"]} if ok.get("api") else {}
        print(f"\nmAP@0.5 vs the float model's detections (same in every sweep run: "
              f"{all(r['rows'] == ref['rows'] for m in ok if m != 'api' for r in ok[m])}; API baseline equal: "
              f"{all(abs(api_vals.get(x['label'], x['value']) - x['value']) < 1e-12 for x in ref['rows'])})")
        print("| configuration | mAP@0.5 | 95% interval | est. NPU ms | memory MiB | Pareto |")
        print("|---|---|---|---|---|---|")
        for x in sorted(ref["rows"], key=lambda x: (x["target"], x["npu_ms"])):
            mark = "recommended" if x["recommended"] else "yes" if x["pareto"] else ""
            print(f"| {x['label']} | {x['value']:.3f} | {x['ci_low']:.3f}..{x['ci_high']:.3f} | {x['npu_ms']:.2f} | "
                  f"{x['memory_mib']:.2f} | {mark} |")
        builds = [b for m in ok if m != "api" for r in ok[m] for b in r["build_s"]]
        print(f"\nbuild seconds in sweep workers: median {sorted(builds)[len(builds) // 2]:.1f}; calibration passes "
              f"reused per sweep: {[r.get('stats_reused') for m in ok if m != 'api' for r in ok[m]]}")
    (work / "runs.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
