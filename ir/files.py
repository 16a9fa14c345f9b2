"""Reading and writing IR files and .npz arrays, deterministically and atomically.

An IR file `model.ir` keeps large constants by reference; their data lives
beside it in `model.blobs.npz`, keyed by the constant's key (sha256:...).
Files are written to a temporary name and renamed, so a failure never leaves a
half-written file; zip members carry a fixed timestamp, so the bytes depend on
the content only.

Every file lpuc reads is opened by `open_regular`, which refuses at once
anything but a regular file (reading /dev/zero never ends, a FIFO waits
forever for a writer). An .npz file's array headers are all checked before
any array is allocated.
"""

from __future__ import annotations

import io
import math
import os
import stat
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from .core import Module
from .errors import LpucError
from .printer import print_module

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
T = TypeVar("T")


def open_regular(path: str | Path, error: type[LpucError] = LpucError) -> BinaryIO:
    """`path` opened for binary reading, if it is a regular file (after symlinks); anything else is
    refused before a byte is read, as one `error` line."""
    try:  # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (then fstat refuses it)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
            raise error(f"{path}: not a regular file ({kind}); lpuc reads regular files only")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | Path) -> None:
    """Refuse `path` unless it is a regular file, for readers that open it by name themselves (onnx.load)."""
    open_regular(path).close()


def read_bytes(path: str | Path, error: type[LpucError] = LpucError, offset: int = 0,
               size: int | None = None) -> bytes:
    """The bytes of the regular file `path` (see open_regular), or its `size` bytes from `offset`:
    a file too short for them is refused by its length, before anything is allocated."""
    with open_regular(path, error) as f:
        try:
            if size is not None and os.fstat(f.fileno()).st_size < offset + size:
                raise error(f"{path}: too short (it has no {size:,} bytes at offset {offset:,})")
            f.seek(offset)
            return f.read(size)
        except OSError as e:
            raise error(f"{path}: cannot read: {e.strerror or e}") from None


def atomic_write(path: str | Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | Path, write: Callable[[BinaryIO], T]) -> T:
    """Write `path` by `write(file)` atomically (a large file is written piece by piece, never held whole):
    to a temporary name, renamed when complete; nothing is left when anything fails. -> what `write` returns."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            result = write(f)
        os.replace(tmp, path)
        return result
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise LpucError(f"{path}: cannot write: {e.strerror or e}") from None
        raise


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


def read_npz(path: str | Path, what: str = "arrays", inputs_of: Module | None = None) -> dict[str, np.ndarray]:
    """Load every array of an .npz file (never unpickling), with one-line errors. An array named after
    an input of `inputs_of` larger than that input is refused on its header: a small deflated file
    cannot make lpuc allocate gigabytes for an input that could never fit. (Smaller mismatches are
    the evaluator's check_inputs' to name.)"""
    arrays = npz_arrays(path, what)
    expected = {v.name: v.type for v in inputs_of.inputs} if inputs_of is not None else {}
    for name, a in arrays.items():
        t, size = expected.get(name), math.prod(a.shape) * a.dtype.itemsize
        if t is not None and size > t.numel * t.dtype.numpy.itemsize:  # (as numpy holds it: bf16 in float32)
            raise LpucError(f"{path}: array {name!r} holds {a.dtype}{list(a.shape)}, {size:,} bytes, more than "
                            f"input {name} ({t}, as {t.dtype.numpy} {t.numel * t.dtype.numpy.itemsize:,} bytes)")
    return {name: a.load() for name, a in arrays.items()}


@dataclass(frozen=True)
class NpzArray:
    """An array of an .npz file: its header, read and checked, and a loader of its data."""
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]


def npz_loaders(path: str | Path, what: str = "arrays") -> dict[str, Callable[[], np.ndarray]]:
    """A loader per array of an .npz file, by name (see npz_arrays)."""
    return {name: a.load for name, a in npz_arrays(path, what).items()}


def npz_arrays(path: str | Path, what: str = "arrays") -> dict[str, NpzArray]:
    """The arrays of an .npz file, by name. Every member's .npy header is read and checked first (no
    pickled objects; the declared shape and dtype take exactly the member's bytes), so a forged
    header is refused in one line naming the array before anything is allocated."""
    bad = f"{path}: not a valid .npz file of {what}"
    with open_regular(path) as f:
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
            raise LpucError(f"{path}: not an .npz file of {what} (expected arrays keyed by name, as numpy.savez "
                            "writes)") from None
        members = {}
        with zf:
            try:
                for info in zf.infolist():
                    name = info.filename.removesuffix(".npy")
                    if name == info.filename or name in members:
                        raise LpucError(f"{bad} (member {info.filename!r} is not an .npy array of its own)")
                    with zf.open(info) as member:
                        members[name] = info, _check_npy_header(member, info.file_size, f"{bad} (array {name!r}")
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
                    ValueError) as e:
                raise LpucError(f"{bad} ({_one_line(e)})") from None

    def loader(info: zipfile.ZipInfo) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            with open_regular(path) as f, zipfile.ZipFile(f) as zf, zf.open(info) as member:
                try:
                    return np.lib.format.read_array(member, allow_pickle=False)
                except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as e:
                    raise LpucError(f"{bad} (array {info.filename.removesuffix('.npy')!r}: {_one_line(e)})") \
                        from None
        return load

    return {name: NpzArray(shape, dtype, loader(info)) for name, (info, (shape, dtype)) in members.items()}


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_npy_header(member, size: int, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Read an .npy header from `member` (`size` bytes long), check it describes exactly its data:
    the shape and dtype it declares."""
    try:
        version = np.lib.format.read_magic(member)
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = read_header(member)
    except (ValueError, EOFError, SyntaxError, RecursionError) as e:  # (numpy evaluates the header as a literal)
        raise LpucError(f"{where}: bad .npy header: {_one_line(e)})") from None
    if dtype.hasobject:
        raise LpucError(f"{where} holds Python objects, which lpuc never unpickles)")
    declared = math.prod(shape) * dtype.itemsize
    if member.tell() + declared != size:
        raise LpucError(f"{where}: its header declares {dtype}{list(shape)}, {declared:,} bytes, but the "
                        f"member holds {size - member.tell():,})")
    return tuple(shape), dtype


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
    from .parser import parse_file  # (the parser reads its files with open_regular)

    bp = blob_path(path)
    loaders = npz_loaders(bp, "constants") if bp.exists() else {}
    return parse_file(path, loaders)
