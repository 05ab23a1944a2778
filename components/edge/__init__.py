"""Edge exports: TFLite (float16, int8) and ONNX models of a served classifier, with parity."""
