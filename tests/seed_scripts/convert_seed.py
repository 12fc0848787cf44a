"""The source document's conversion flow (its section 3.2), written out again for openrknn.

A user's RKNN-Toolkit script converting a traced YOLOX-nano TorchScript file to .rknn for an RK1808. Compared with the
script the document shows, only three things differ: the import line, the file paths (taken from the command line
here so the test can point them at temporary files) and QUANTIZE_ON, which is False (float model). Everything else is
the same sequence of calls with the same arguments, and the same exit codes: 0 on success, the failing call's return
code otherwise.

usage: python convert_seed.py MODEL.pt OUTPUT.rknn [DATASET.txt]
"""

import os
import sys

from openrknn.api import RKNN

PT_MODEL = sys.argv[1] if len(sys.argv) > 1 else "myself_nano.pt"
RKNN_MODEL = sys.argv[2] if len(sys.argv) > 2 else "myself_nano.rknn"
DATASET = sys.argv[3] if len(sys.argv) > 3 else "dataset.txt"
QUANTIZE_ON = False

if __name__ == "__main__":
    rknn = RKNN(verbose=False)
    if not os.path.exists(PT_MODEL):
        print("model not found:", PT_MODEL)
        exit(-1)
    force_builtin_perm = False

    # Pre-processing as the NPU will do it: OpenCV BGR frames in, the network trained on RGB with ImageNet mean/std.
    print("--> config")
    rknn.config(
        reorder_channel="2 1 0",
        mean_values=[[123.675, 116.28, 103.53]],
        std_values=[[58.395, 57.12, 57.375]],
        optimization_level=3,
        target_platform="rk1808",
        quantize_input_node=QUANTIZE_ON,
        batch_size=200,
        output_optimize=1,
        force_builtin_perm=force_builtin_perm,
    )
    print("done")

    print("--> load TorchScript")
    ret = rknn.load_pytorch(model=PT_MODEL, input_size_list=[[3, 416, 416]])
    if ret != 0:
        print("Load model failed!")
        exit(ret)
    print("done")

    print("--> build")
    ret = rknn.build(do_quantization=QUANTIZE_ON, dataset=DATASET, pre_compile=False)
    if ret != 0:
        print("Build model failed!")
        exit(ret)
    print("done")

    print("--> export")
    ret = rknn.export_rknn(RKNN_MODEL)
    if ret != 0:
        print("Export rknn failed!")
        exit(ret)
    print("done")
    exit(0)
