"""`openrknn vendor-export` and `openrknn vendor-setup`: compile an openrknn model into a vendor .rknn."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vendor-export", help="compile an openrknn .rknn into a vendor .rknn with rknn-toolkit2 "
                       "(openrknn's quantization, the vendor's compiler)")
    p.add_argument("model", help="openrknn .rknn (float or quantized)")
    p.add_argument("-o", "--out", required=True, help="vendor .rknn to write")
    p.add_argument("--target", default=None, help="chip (default: the model's target platform)")
    p.add_argument("--validate", nargs="+", default=None, metavar="DATASET_OR_IMAGES",
                   help="a dataset.txt or image/.npy files: run the vendor simulator on them right after compiling "
                   "and compare with openrknn's simulator (writes OUT.validation.json)")
    p.add_argument("--validate-out", default=None, help="folder for <input-stem>_<output-index>.npy vendor outputs "
                   "(default: OUT's stem + _validation)")
    p.add_argument("--route", choices=("auto", "qdq", "ranges"), default="auto",
                   help="ranges: the vendor quantizes our float graph with our ranges, weight integers and 16-bit "
                   "layers; qdq: it compiles our QDQ graph; auto: ranges, then qdq (default; qdq alone without "
                   "calibration samples)")
    p.add_argument("--dataset", default=None, help="calibration samples for the tensors the vendor quantizes and "
                   "the model does not (a conv output before its SiLU...): openrknn chooses their ranges from them "
                   "(default: the --validate samples, else the model's build dataset)")
    p.add_argument("--layers", action="store_true",
                   help="with --validate: run the vendor's accuracy_analysis on the first sample and compare every "
                   "tensor it dumps with openrknn's, each computed from the vendor's own inputs (writes "
                   "OUT.layers.json): where the two simulators compute different integers, and which differences "
                   "are only rounding ties")
    p.add_argument("--keep-work", default=None, help="keep each route's job folder (model, vendor cfg, log) here")
    p.add_argument("--shape-set", default=None, metavar="SET",
                   help="a dynamic_input model's shape set to compile, e.g. 1x3x240x320 (`openrknn info` lists them; "
                        "default: the largest)")
    p.set_defaults(func=run_export)

    s = sub.add_parser("vendor-setup", help="create the vendor toolkit's own virtualenv (rknn-toolkit2) in the "
                       "cache folder")
    s.add_argument("--venv", default=None, help="where (default: $OPENRKNN_CACHE or ~/.cache/openrknn, "
                   "/vendor-venv)")
    s.add_argument("--python", default=None, help="base interpreter for the venv (default: this one)")
    s.add_argument("--no-cpu-torch", action="store_true", help="do not try PyTorch's CPU index first")
    s.add_argument("--full", action="store_true", help="install rknn-toolkit2 with every requirement it declares "
                   "(torch 2.4, several GB; only its own load_pytorch needs it). Default: the toolkit without its "
                   "requirements plus a CPU torch and what its ONNX path needs")
    s.add_argument("--force", action="store_true", help="rebuild the venv if it exists")
    s.set_defaults(func=run_setup)


def run_export(args: argparse.Namespace) -> int:
    from ..runtime.shape_sets import set_argument
    from ..vendor import export_vendor

    res = export_vendor(args.model, args.out, target=args.target, validate=args.validate,
                        validate_out=args.validate_out, route=args.route, dataset=args.dataset,
                        keep_work=args.keep_work, layers=args.layers,
                        shape_set=None if args.shape_set is None else set_argument(args.shape_set))
    print(f"wrote {res.path} ({Path(res.path).stat().st_size / 1e6:.2f} MB) with {res.toolkit}, route "
          f"{res.route!r}, {res.seconds:.1f} s")
    for note in res.notes:
        print(f"  {note}")
    if res.post_path:
        print(f"  host-side tail: {res.post_path} (vendor outputs -> the model's outputs; openrknn serve applies it)")
    c = res.carried
    if c.get("cfg_tensors") is not None:
        print(f"  vendor .quantization.cfg: {c['cfg_ours']} of {c['cfg_tensors']} tensors set to openrknn's ranges "
              f"({c['package_ranges']} from the model, {c['openrknn_extra_ranges']} chosen for the vendor's extra "
              "tensors)")
    if c.get("weights"):
        print(f"  weights on openrknn's integers: {c['weights_pinned']} of {c['weights']}")
    if c.get("preactivations_quantized"):
        print(f"  pre-activations given openrknn's int8 range: {c['preactivations_quantized']}")
    for tensor, dtype in (c.get("wide_layers") or {}).items():
        print(f"  hybrid: {tensor} compiled as {dtype or 'a layer the vendor log does not name'}")
    if c.get("layer_dtypes"):
        print(f"  compiled layers by dtype: {c['layer_dtypes']}")
    if res.validation:
        print(f"validation on {res.validation['samples']} sample(s), vendor simulator vs openrknn simulator:")
        for o in res.validation["outputs"]:
            print(f"  {o['name']}: cosine mean {o['cosine_mean']:.4f}, min {o['cosine_min']:.4f}")
        print(f"  outputs in {res.validation['out_dir']}; report {res.validation['json']}")
        if res.validation.get("layers"):
            from ..vendor.layers import summary_lines

            for line in summary_lines(res.validation["layers"]):
                print(line)
            print(f"  every tensor: {res.validation['layers']['json']}")
        print(json.dumps({o["name"]: round(o["cosine_mean"], 4) for o in res.validation["outputs"]}))
    return 0


def run_setup(args: argparse.Namespace) -> int:
    from ..vendor import setup_venv

    setup_venv(Path(args.venv) if args.venv else None, python=args.python, cpu_torch=not args.no_cpu_torch,
               force=args.force, full=args.full)
    return 0
