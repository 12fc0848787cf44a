"""The source document's image test (its section 4.1, image mode), written out again for openrknn.

Load the converted .rknn, start the simulator (the vendor's Toolkit cannot run a loaded .rknn without a board),
letterbox one OpenCV BGR image (centred, grey 128 padding) to 416x416, run it with inputs_pass_through=[0] (the model
applies reorder/mean/std itself), then post-process properly with openrknn.vision: decode the three raw [1, 8, h, w]
maps, class-aware vectorised NMS, boxes mapped back through the letterbox, and the seed's ellipse drawing.
Instead of a window, the results go to OUT_DIR: input.npy (the letterboxed image fed), output{k}.npy (raw outputs),
detections.json and result.jpg.

Differences from the document's script: the import line, the paths (command line) and the post-processing, which is
the library's (the document's own has bugs: undefined names in draw(), swapped top/left, squeeze() with one box).

usage: python image_seed.py MODEL.rknn IMAGE OUT_DIR [BOX_THRESH]
(BOX_THRESH defaults to the document's 0.7; a test lowers it to exercise post-processing on a randomly initialised
model, whose scores never reach 0.7)
"""

import json
import os
import sys

import cv2
import numpy as np

from openrknn.api import RKNN
from openrknn.vision.draw import draw_detections
from openrknn.vision.letterbox import letterbox
from openrknn.vision.yolox.decode import postprocess_yolox

RKNN_MODEL = sys.argv[1] if len(sys.argv) > 1 else "myself_nano.rknn"
IMG_PATH = sys.argv[2] if len(sys.argv) > 2 else "04245.jpg"
OUT_DIR = sys.argv[3] if len(sys.argv) > 3 else "result"

BOX_THRESH = float(sys.argv[4]) if len(sys.argv) > 4 else 0.7  # objectness * class score
NMS_THRESH = 0.3
INPUT_SIZE = (416, 416)  # width, height
NUM_CLASSES = 3
CLASS_NAMES = ("iris", "pupil", "shut-eye")
PAD_VALUE = 128  # the training code's letterbox fill

if __name__ == "__main__":
    rknn = RKNN(verbose=False)
    force_builtin_perm = False

    ret = rknn.load_rknn(path=RKNN_MODEL)
    if ret != 0:
        print("Load RKNN model failed!")
        exit(ret)

    print("--> init runtime")
    ret = rknn.init_runtime()
    if ret != 0:
        print("Init runtime environment failed!")
        exit(ret)
    print("done")

    img = cv2.imread(IMG_PATH)
    if img is None:
        print("cannot read image:", IMG_PATH)
        exit(-1)
    img_data, transform = letterbox(img, INPUT_SIZE, mode="center", pad_value=PAD_VALUE)

    print("--> inference")
    outputs = rknn.inference(inputs=[img_data], inputs_pass_through=[0 if not force_builtin_perm else 1])
    if outputs is None:
        print("Inference failed!")
        exit(-1)
    print("outputs:", [list(o.shape) for o in outputs])

    detections = postprocess_yolox(outputs, transform, num_classes=NUM_CLASSES, score_thr=BOX_THRESH,
                                   nms_thr=NMS_THRESH)
    print(f"{len(detections)} detections:", detections.to_json(CLASS_NAMES))

    os.makedirs(OUT_DIR, exist_ok=True)
    np.save(os.path.join(OUT_DIR, "input.npy"), img_data)
    for k, out in enumerate(outputs):
        np.save(os.path.join(OUT_DIR, f"output{k}.npy"), out)
    with open(os.path.join(OUT_DIR, "detections.json"), "w", encoding="utf-8") as f:
        json.dump(detections.to_list(CLASS_NAMES), f)
    drawn = draw_detections(img, detections, CLASS_NAMES, style="ellipse")
    cv2.imwrite(os.path.join(OUT_DIR, "result.jpg"), drawn)
    rknn.release()
    exit(0)
