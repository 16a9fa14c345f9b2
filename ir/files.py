"""Reading and writing IR files and .npz arrays, deterministically and atomically.

An IR file `model.ir` keeps large constants by reference; their data lives
beside it in `model.blobs.npz`, keyed by the constant's key (sha256:...).
Files are written to a temporary name and renamed, so a failure never leaves a
half-written file; zip members carry a fixed timestamp, so the bytes depend on
the content only.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .core import Module
from .errors import LpucError
from .parser import parse_file
from .printer import print_module

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def atomic_write(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LpucError(f"{path}: cannot write: {e.strerror or e}") from None


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz (as numpy.savez) with sorted members and fixed timestamps. Arrays of
    ml_dtypes' types (float8, int4, ...), which .npy cannot name, are stored as their
    bits (unsigned ints of their size); ir.attributes.Tensor views constants back."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            a = np.asarray(arrays[name], order="C")
            if a.dtype.isbuiltin == 2:  # a user-defined numpy type (ml_dtypes'): its bits, same shape
                a = a.view(f"<u{a.dtype.itemsize}")
            np.lib.format.write_array(member, a, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", FIXED_TIME), member.getvalue())
    return buf.getvalue()


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    atomic_write(path, npz_bytes(arrays))


def read_npz(path: str | Path, what: str = "arrays") -> dict[str, np.ndarray]:
    """Load every array of an .npz file (never unpickling), with one-line errors."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # np.load would also take a lone .npy
        raise LpucError(f"{path}: not an .npz file of {what} (expected arrays keyed by name, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise LpucError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise LpucError(f"{path}: not a valid .npz file of {what} ({e})") from None


def blob_path(ir_path: str | Path) -> Path:
    p = Path(ir_path)
    return p.with_name(p.name.removesuffix(".ir") + ".blobs.npz")


def write_module(module: Module, path: str | Path) -> None:
    """Write `module` as IR text, and the data of its large constants beside it."""
    from .attributes import Tensor

    blobs = {}
    for op in module.ops:
        for v in op.attrs.values():
            if isinstance(v, Tensor) and not v.inline and v.has_data:
                blobs[v.key] = v.array
    if blobs:
        write_npz(blob_path(path), blobs)
    atomic_write(path, print_module(module).encode())


def read_module(path: str | Path) -> Module:
    """Parse an IR file; constants by reference load lazily from its .blobs.npz."""
    bp = blob_path(path)
    loaders = {}
    if bp.exists():
        try:
            npz = np.load(bp, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise LpucError(f"{bp}: not a valid blob file ({e})") from None
        loaders = {k: (lambda k=k: npz[k]) for k in npz.files}
    return parse_file(path, loaders)
