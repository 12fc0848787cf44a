"""Graph passes on the ONNX intermediate representation: optimisation and pre-processing fusion."""
