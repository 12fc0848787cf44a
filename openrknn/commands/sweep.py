"""`openrknn sweep config.yml`: build every configuration of a sweep, evaluate each, and write the table, the
accuracy / latency Pareto front per chip and the recommended configuration (YAML + .rknn)."""

from __future__ import annotations

import argparse

EXAMPLE = """example sweep.yml (an `openrknn convert` file plus sweep: and evaluation:):
  model: yolox_nano.onnx
  config: {mean_values: [0, 0, 0], std_values: [1, 1, 1]}
  build: {dataset: calib/dataset.txt}
  sweep:
    target_platform: [rk1808, rk3588]
    quantized_dtype: [asymmetric_quantized-u8, w8a8]   # each kept for the chips that run it
    quantized_algorithm: [normal, kl_divergence, mmse]
    quantized_method: [layer, channel]
  evaluation:
    images: val.txt          # a list of images, a folder, or a .npy
    metric: map50            # cosine (default) | top1 | accuracy | map50
    labels: float            # map50: a COCO JSON, or the float model's detections
    postprocess: yolox
    input: {resize: letterbox, letterbox: topleft, pad: 114, channel_order: bgr}
Outputs in -o DIR: table.csv, table.json, report.html, recommended-<chip>.yml/.rknn; results/ keeps every finished
unit, so running the same command again resumes an interrupted sweep."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="try many quantization settings: table, Pareto front, recommendation",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("-o", "--output", default="sweep-out", help="output folder (default: sweep-out)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run on Ray: a local Ray started here, or the cluster at ADDRESS")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..sweep import load_sweep_file, run_sweep

    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", args.workers, "an integer >= 1")
    spec = load_sweep_file(args.config)
    if spec.skipped:
        print(f"skipped (dtype not run by the chip): {', '.join(spec.skipped)}")
    result = run_sweep(spec, args.output, args.workers, args.ray, not args.no_progress)
    metric = spec.evaluation.metric
    print(f"{'configuration':44s} {metric:>8s} {'interval':>17s} {'NPU ms':>8s} {'mem MiB':>8s}  Pareto")
    for r in sorted(result.rows, key=lambda r: (r["target"], r["npu_ms"] if r["npu_ms"] == r["npu_ms"] else 1e9)):
        if r.get("error"):
            print(f"{r['label']:44s} failed: {r['error']}")
            continue
        mark = "recommended" if r["recommended"] else "yes" if r["pareto"] else ""
        print(f"{r['label']:44s} {r['value']:8.4f} {r['ci_low']:8.4f}..{r['ci_high']:<8.4f} {r['npu_ms']:8.2f} "
              f"{r['memory_mib']:8.2f}  {mark}")
    print(f"\n{len(result.rows)} configurations in {result.wall_s:.1f} s ({result.executor}); wrote "
          f"{result.paths['csv']}, {result.paths['json']}, {result.paths['report']}")
    for target, rec in result.recommended.items():
        print(f"recommended for {target}: {rec['label']} -> {result.paths[f'recommended-{target}']}")
    return 0
