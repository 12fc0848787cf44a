"""The YOLOX deployment app built on the public API: model definitions, letterbox, decoding, NMS, drawing."""
