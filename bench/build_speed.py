"""Build time of large real models through the public API: this checkout against another (--against DIR, e.g. a git
worktree of an earlier commit), in the same run, rounds interleaved.

Every build runs in a fresh process with PYTHONPATH set to its checkout: `RKNN().config(...)`, `load_onnx`,
`build(dataset=...)`, w8a8 rk3588 (the default algorithm). The models: corpus models as bench/corpus.py builds them
(its manifest's shapes and mean/std, its calibration files: run corpus_fetch.py and corpus.py once first), and
'isnet', IS-Net 'medium' (1024x1024) as bench/arrivals.py's background_removal row builds it, cut to its mask, on
six COCO images. Reported: the median over --rounds of load and build wall seconds, the build's CPU seconds (every
thread), peak RSS, and the ratio of the two checkouts' build times (against / this: above 1, this one is faster).

    python bench/build_speed.py [--models isnet,craft_text,vgg16_tumor,vit_s_focus] [--against DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from corpus import _uses_mean  # noqa: E402
from corpus_fetch import BY_NAME, DEFAULT_CACHE, model_path  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from openrknn.api import RKNN
job = json.loads(sys.argv[1])
r = RKNN(verbose=False)
assert r.config(target_platform="rk3588", quantized_dtype="w8a8", **job["config"]) == 0
t = time.perf_counter()
assert r.load_onnx(job["model"], input_size_list=job["shapes"], outputs=job["outputs"]) == 0, r.last_error
load_s = time.perf_counter() - t
t, c = time.perf_counter(), time.process_time()
assert r.build(do_quantization=True, dataset=job["dataset"]) == 0, r.last_error
print(json.dumps({"load_s": load_s, "build_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "stages": (r._build.quant_report or {}).get("stages", {})}))
"""


def corpus_job(name: str, cache: Path) -> dict:
    entry = BY_NAME[name]
    wd = cache / "work" / name
    if not (wd / "dataset.txt").is_file():
        sys.exit(f"{name}: no calibration files in {wd}; run python bench/corpus.py --only {name} first")
    config = {}
    if _uses_mean(entry):
        config = {"mean_values": [list(entry["mean"])], "std_values": [list(entry["std"])]}
    return {"model": str(model_path(cache, name)), "shapes": [entry["shape"]], "outputs": None, "config": config,
            "dataset": str(wd / "dataset.txt")}


def isnet_job(cache: Path, work: Path) -> dict:
    import arrivals

    package = arrivals.fetch_npm(cache, "@imgly/background-removal-data@1.4.5")
    path = arrivals._assembled(package, "/models/medium", package.parent / "isnet_medium.onnx")
    work.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, p in enumerate(arrivals.images(["coco"], (1024, 1024))[0::2][:6]):
        np.save(work / f"c{k}.npy", p)
        lines.append(f"c{k}.npy")
    (work / "ds.txt").write_text("\n".join(lines) + "\n")
    return {"model": str(path), "shapes": None, "outputs": ["output"], "dataset": str(work / "ds.txt"),
            "config": {"mean_values": [[128] * 3], "std_values": [[256] * 3]}}


def run(tree: Path, job: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True, env=env,
                         cwd=tree)
    if out.returncode:
        sys.exit(f"{job['model']} in {tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="isnet,craft_text,vgg16_tumor,vit_s_focus")
    ap.add_argument("--against", type=Path, help="another openrknn checkout, built in the same run")
    ap.add_argument("--cache", type=Path, default=None, help=f"the corpus cache (default {DEFAULT_CACHE})")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cache = args.cache or DEFAULT_CACHE
    trees = [ROOT] + ([args.against.resolve()] if args.against else [])
    jobs = {m: isnet_job(cache, cache / "work" / "build_speed_isnet") if m == "isnet" else corpus_job(m, cache)
            for m in args.models.split(",") if m}
    got = {(m, t): [] for m in jobs for t in trees}
    for k in range(args.rounds):
        for m, job in jobs.items():
            for tree in trees[k % len(trees):] + trees[:k % len(trees)]:  # alternate which checkout goes first
                got[(m, tree)].append(run(tree, job))
                print(f"  {m} {tree.name}: build {got[(m, tree)][-1]['build_s']:.1f} s", file=sys.stderr, flush=True)

    def med(m, t, key):
        return statistics.median(r[key] for r in got[(m, t)])

    head = "| model | load s | build s | build CPU s | peak MB |"
    if args.against:
        head += f" {args.against.name}: load s | build s | build CPU s | peak MB | build ratio |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for m in jobs:
        cells = [f"{med(m, t, 'load_s'):.1f} | {med(m, t, 'build_s'):.1f} | {med(m, t, 'cpu_s'):.1f} | "
                 f"{med(m, t, 'peak_mb'):.0f}" for t in trees]
        ratio = f" | {med(m, trees[1], 'build_s') / med(m, ROOT, 'build_s'):.2f}x" if args.against else ""
        print(f"| {m} | " + " | ".join(cells) + ratio + " |")
    print("\nstages (median s), this checkout" + (" / against" if args.against else ""))
    for m in jobs:
        keys = sorted(got[(m, ROOT)][0]["stages"], key=lambda s: -got[(m, ROOT)][0]["stages"][s])[:5]
        parts = []
        for s in keys:
            mine = statistics.median(r["stages"].get(s, 0) for r in got[(m, ROOT)])
            other = (" / %.1f" % statistics.median(r["stages"].get(s, 0) for r in got[(m, trees[1])])
                     if args.against else "")
            parts.append(f"{s} {mine:.1f}{other}")
        print(f"  {m}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
