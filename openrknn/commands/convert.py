"""`openrknn convert config.yml`: convert a model as the YAML file says (config()/load/build keys)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """example config.yml:
  model: yolox_nano.pt             # .pt, .onnx, .tflite, Darknet .cfg, Caffe .prototxt, TensorFlow .pb, a
                                   # TensorFlow.js model.json or a Keras .h5 / .keras; relative to this file
  # weights: yolov3.weights        # Darknet / Caffe: the weights file (default: same name beside the model)
  input_size_list: [[3, 416, 416]]
  # input_initial_val: [null, 16000]  # ONNX: inputs fixed to a value (null: fed at run time), as load_onnx takes it
  # outputs: [mask]                # keep only these outputs (the model is cut there), as load_onnx takes it
  output: yolox_nano.rknn
  config:                          # any config() option
    mean_values: [123.675, 116.28, 103.53]
    std_values: [58.395, 57.12, 57.375]
    reorder_channel: '2 1 0'
    target_platform: rk1808
    # dynamic_input: [[[1, 3, 320, 320]], [[1, 3, 416, 416]]]  # one model for several input sizes (ONNX / .pt)
  build:                           # any build() option
    do_quantization: true          # the default when a dataset is given; false builds float
    dataset: dataset.txt
The vendor's rknn_convert layout (models: name/platform/model_file_path/quantize/dataset/configs; darknet_cfg_path +
darknet_weights_path, prototxt_file_path + caffemodel_file_path) works too."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model (.pt .onnx .tflite .cfg .prototxt .pb .json .h5 .keras) "
                       "to .rknn from YAML",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML conversion file")
    p.add_argument("-o", "--output", help="output .rknn path (overrides the file's 'output')")
    p.add_argument("--auto-hybrid", action="store_true", help="int8 build that keeps the fewest layers in 16-bit "
                   "until every output's cosine reaches config auto_hybrid_cos_thresh (default 0.98)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert.spec import parse_spec, read_yaml_file, run_spec
    from ..package_info import describe_package

    path = Path(args.config)
    spec = parse_spec(read_yaml_file(path, "config"), path.parent, args.output)
    if args.auto_hybrid:
        spec.auto_hybrid = True
    result = run_spec(spec)
    print(describe_package(result.package, str(spec.output)))
    overrides = (result.package.metadata.get("quantization") or {}).get("overrides") or {}
    if spec.auto_hybrid:
        print(f"\nauto hybrid kept {len(overrides)} tensor(s) out of 8-bit: "
              + (", ".join(f"{k} -> {v}" for k, v in sorted(overrides.items())) or "none needed"))
    print(f"\nwrote {spec.output} in {result.timings['total_s']:.2f} s")
    return 0
