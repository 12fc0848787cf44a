"""Runtime side: runs a .rknn container. Imports only numpy, onnxruntime and the container reader (no onnx, no torch),
so that a board with `pip install numpy onnxruntime` can run models."""
