"""`openrknn export-tflite MODEL.rknn -o OUT.tflite [--validate IMAGES... [--trace]]`: the open path to the NPU (Mesa
Teflon)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-tflite", help="write a w8a8 .rknn as an int8 .tflite with its scales and integers "
                       "kept (runs on the RK3588 NPU through Mesa's Teflon delegate)")
    p.add_argument("model", help=".rknn file built with quantized_dtype w8a8")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--validate", nargs="+", metavar="IMAGE", default=None,
                   help="images or .npy inputs: print each output's cosine between the LiteRT interpreter and "
                        "openrknn's int8 simulator (needs ai-edge-litert)")
    p.add_argument("--trace", action="store_true",
                   help="with --validate: on the input where the two end furthest apart, compare them at every int8 "
                        "point from the same inputs, to tell values a layer computes otherwise from differences "
                        "carried in from earlier layers")
    p.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8",
                   help="the .tflite input: uint8 image pixels (default, as the .rknn takes them) or float32 for "
                        "inputs that are not whole numbers (audio features, embeddings)")
    p.add_argument("--layers", action="store_true", help="list every layer left in float and every rule change")
    p.add_argument("--shape-set", default=None, metavar="SET",
                   help="a dynamic_input model's shape set to write, e.g. 1x3x240x320 (`openrknn info` lists them; "
                        "default: the largest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.tflite import export_tflite
    from ..package import read_package
    from ..runtime.shape_sets import package_of_set, set_argument

    if args.trace and not args.validate:
        raise SystemExit("openrknn export-tflite: --trace runs on the validation inputs; give them with "
                         "--validate IMAGE... --trace")
    pkg = read_package(args.model)
    if args.shape_set is not None:  # that set's one-shape model, exported and validated
        pkg = package_of_set(pkg, set_argument(args.shape_set))
    report = export_tflite(pkg, args.output, args.input_dtype)
    text = report.summary()
    print(text if args.layers else text.splitlines()[0])
    if not args.layers and (report.float_layers or report.changes):
        print(f"  ({len(report.float_layers)} float layers, {len(report.changes)} rule changes: --layers lists them)")
    print(f"wrote {args.output}")
    if args.validate:
        from ..export.tflite.validate import format_validation, load_inputs, validate

        with open(args.output, "rb") as f:
            data = f.read()
        samples = load_inputs(args.validate, pkg)
        res = validate(pkg, data, samples)
        print(format_validation(res))
        if args.trace:
            from ..export.tflite.trace import trace

            worst = min(range(len(samples)), key=lambda i: min(res["per_image"][i]))
            print(f"trace on {args.validate[worst]}:")
            print(trace(pkg, data, report, samples[worst]).format())
    return 0
