"""The stages behind the CLI, callable from Python: load a model (ONNX or IR)
into a verified graph-level module, evaluate it."""

from __future__ import annotations

from pathlib import Path

from ir import LpucError, Module, VerifyError
from ir.files import read_module
from ir.verifier import verify

from .frontend import SupportReport, import_onnx


def load_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None
               ) -> tuple[Module, SupportReport | None]:
    """An ONNX model (imported) or an IR file (parsed), verified."""
    path = Path(path)
    if not path.exists():
        raise LpucError(f"{path}: no such file")
    if path.suffix == ".ir":
        if input_shapes:
            raise LpucError("--shape applies to ONNX models; an IR file has static shapes already")
        return read_ir(path), None
    module, report = import_onnx(path, input_shapes)
    return verify(module), report


def read_ir(path: str | Path) -> Module:
    """Parse and verify an IR file; a verifier error names the file too."""
    module = read_module(path)
    try:
        return verify(module)
    except VerifyError as e:
        raise VerifyError(f"{path}: {e}") from None
