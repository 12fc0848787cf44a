"""`openrknn check MODEL --target rk1808`: the NPU design checker (unsupported ops, kernel limits, fusion, int8)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a model against a target NPU's rules and the design advice")
    p.add_argument("model", help=".rknn, .onnx, .pt (TorchScript; needs --input-size), .pt2 (torch.export), "
                   ".tflite, a Darknet .cfg, a Caffe .prototxt or a TensorFlow .pb")
    p.add_argument("--target", default=None, help="chip (default: the .rknn's target, else rk1808)")
    p.add_argument("--dtype", default=None, help="quantized dtype to check for (default: the .rknn's; float for "
                   ".onnx/.pt)")
    p.add_argument("--input-size", default=None, help="the input's shape (C,H,W or N,C,H,W) for a TorchScript "
                   "model or an ONNX model with dynamic dimensions, e.g. 3,416,416")
    p.add_argument("--calib-count", type=int, default=None, help="number of calibration images you plan to use")
    p.add_argument("--format", choices=("rknn", "tflite"), default="rknn",
                   help="tflite: check the int8 TFLite export instead: which layers Mesa's Teflon delegate runs on "
                        "the NPU (rocket driver) and which fall back to the CPU, with the estimate counting them")
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.lint import check_model, findings_json, findings_table

    if args.format == "tflite":
        return _run_tflite(args)

    if args.model.lower().endswith(".rknn"):
        from ..analysis.package_reports import check
        from ..package import read_package

        pkg = read_package(args.model)
        findings = check(pkg, target=args.target, calib_count=args.calib_count, quant_dtype=args.dtype)
    else:
        from ..convert import load_model
        from ..errors import ModelLoadError

        size = [[int(v) for v in args.input_size.split(",")]] if args.input_size else None
        try:
            loaded = load_model(args.model, size)
        except ModelLoadError as e:
            if size is None and "dynamic dimension" in str(e):  # the API's words; say the option to use here
                raise ModelLoadError(f"{e}. With openrknn check: --input-size N,C,H,W (that shape with its "
                                     "dynamic dimensions filled in)") from e
            raise
        findings = check_model(as_built(loaded.model), args.target or "rk1808", args.dtype,
                               calib_count=args.calib_count)
    if args.json:
        print(json.dumps(findings_json(findings), indent=2))
    else:
        print(findings_table(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0


def as_built(model):
    """The loaded graph with the rewrites every build makes whatever the optimization level (an Einsum that is a
    matrix product becomes a MatMul the NPU runs), so the check speaks of the ops the build will place."""
    import onnx

    from ..graph.fold import einsum_as_matmul

    out = onnx.ModelProto()
    out.CopyFrom(model)
    einsum_as_matmul(out)
    return out


def _run_tflite(args: argparse.Namespace) -> int:
    import onnx

    from ..errors import ConfigError
    from ..export.teflon_support import estimate_with_fallbacks, placement_table, teflon_placement
    from ..export.tflite import export_tflite_bytes
    from ..package import read_package

    if not args.model.lower().endswith(".rknn"):
        raise ConfigError("model", args.model, hint="--format tflite checks a w8a8 .rknn file (build one first)")
    target = (args.target or "rk3588").lower()
    if target != "rk3588":
        raise ConfigError("target", target, ["rk3588"], "Mesa's rocket driver supports the RK3588 NPU only")
    pkg = read_package(args.model)
    _, report = export_tflite_bytes(pkg)
    places = teflon_placement(report.model)
    est = estimate_with_fallbacks(onnx.load_from_string(pkg.model_bytes), report, places, target)
    if args.json:
        print(json.dumps({"placement": [p.__dict__ for p in places], "estimate": est}, indent=2))
        return 0
    print(placement_table(places))
    print(f"estimated time on {target} (one NPU core): {est['total_us'] / 1000:.2f} ms with {est['cpu_layers']} "
          f"layers and {est['extra_cpu_ops']} conversion ops on the CPU; {est['npu_only_us'] / 1000:.2f} ms if all "
          f"ran on the NPU")
    return 0
