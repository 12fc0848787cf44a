"""`openrknn yolox export --weights W.pth --phi nano --num-classes 3 --size 416 -o W.pt`: pth -> traced TorchScript."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("yolox", help="YOLOX tools: export yolox-pytorch .pth weights to a traced .pt")
    tools = p.add_subparsers(dest="yolox_command", metavar="TOOL")
    e = tools.add_parser("export", help="strict-load a yolox-pytorch .pth, trace it, verify it, save the .pt")
    e.add_argument("--weights", required=True, help="state dict saved by the yolox-pytorch training code (.pth)")
    e.add_argument("--phi", required=True, choices=("nano", "tiny", "s", "m", "l", "x"))
    e.add_argument("--num-classes", type=int, required=True)
    e.add_argument("--size", type=int, default=416, help="input size (multiple of 32), default 416")
    e.add_argument("--act", choices=("silu", "relu", "lrelu"), default="silu", help="activation the model was "
                   "trained with (default silu)")
    e.add_argument("-o", "--output", required=True, help="output TorchScript .pt")
    e.set_defaults(func=run_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_export(args: argparse.Namespace) -> int:
    from ..vision.yolox.export import export_torchscript

    info = export_torchscript(args.weights, args.phi, args.num_classes, args.size, args.output, act=args.act)
    print(f"wrote {info['out']}: YOLOX-{info['phi']} ({info['params']:,} parameters), {info['num_classes']} classes, "
          f"input {info['input_shape']}, outputs {info['output_shapes']}")
    print(f"traced model equals the eager model: max |difference| = {info['max_abs_diff']:.2g}")
    return 0
