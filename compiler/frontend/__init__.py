"""The ONNX frontend: ONNX model -> graph-level IR module."""

__all__ = ["SupportReport", "import_onnx", "load_onnx", "support_report"]


def __getattr__(name: str):
    """The frontend's functions, imported when first used: onnx (and ml_dtypes with it) takes half a second, which
    the commands that read no ONNX model (`lpuc viz`, `run`, `diff` of a .lpu) need not wait."""
    if name in __all__:
        from . import onnx_import

        return getattr(onnx_import, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
