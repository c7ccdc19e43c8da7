"""Recipe ``onnx-int8-qat``: quantization-aware fine-tuning of a sentence encoder, then
int8 with an ``onnx-int8-auto`` candidate, measured against the original model."""
