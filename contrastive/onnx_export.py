"""The earlier import path of `contrastive.interop.onnx_export`."""

from .interop.onnx_export import IMAGE_FILE, SETTINGS_FILE, TEXT_FILE, OnnxEncoders, export_onnx, with_onnx, write_onnx  # noqa: F401
