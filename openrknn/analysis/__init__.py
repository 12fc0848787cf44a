"""Board-free analysis: NPU speed estimates and host profiling (perf), memory plans (memory), the NPU design checker
(lint), and charts for the HTML report. Every function takes an onnx.ModelProto and a target name."""
