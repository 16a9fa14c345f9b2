"""The ONNX frontend: ONNX model -> graph-level IR module."""

from .onnx_import import SupportReport, import_onnx, load_onnx, support_report

__all__ = ["SupportReport", "import_onnx", "load_onnx", "support_report"]
