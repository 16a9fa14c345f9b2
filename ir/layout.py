"""How a tensor lies in SRAM: words of `lanes` bytes, vector-column major.

The vector width `lanes` is the machine's (`Machine.lanes`; 320 on tsp-v1): a
vector has that many lanes and an SRAM word holds one byte of each. A tensor is
viewed as 2-D, rows x cols, cols being its last dim (a scalar is 1 x 1). Each
row is cut into vectors of `lanes` elements ("vector columns", the last one
zero-padded). A vector of a dtype with itemsize b spans b words, one byte-plane
each (fp32: 4 words). Words are ordered vector column, then row, then byte
plane, so column tile j — what one lanes x lanes MXM tile reads or writes — is
a contiguous run of rows * itemsize words.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import numpy as np

from .types import DType, TensorType


def rows_cols(t: TensorType) -> tuple[int, int]:
    if t.rank == 0:
        return 1, 1
    cols = t.shape[-1]
    return (t.numel // cols if cols else 0), cols


def vector_cols(t: TensorType, lanes: int) -> int:
    return -(-rows_cols(t)[1] // lanes)


def vectors(t: TensorType, lanes: int) -> int:
    """How many vectors the tensor spans (all byte-planes count once)."""
    return rows_cols(t)[0] * vector_cols(t, lanes)


def words(t: TensorType, lanes: int) -> int:
    """SRAM words the tensor occupies."""
    return vectors(t, lanes) * t.dtype.itemsize


def _storage_dtype(dtype: DType) -> np.dtype:
    return np.dtype(np.uint16) if dtype is DType.bf16 else dtype.numpy.newbyteorder("<")


def to_words(array: np.ndarray, t: TensorType, lanes: int) -> np.ndarray:
    """The tensor's bytes as a (words(t, lanes), lanes) uint8 array."""
    rows, cols = rows_cols(t)
    a = np.asarray(array, dtype=t.dtype.numpy).reshape(rows, cols)
    if t.dtype is DType.bf16:  # the upper half of an f32 (values are bf16-exact)
        a = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    a = a.astype(_storage_dtype(t.dtype))
    vc = vector_cols(t, lanes)
    padded = np.zeros((rows, vc * lanes), a.dtype)
    padded[:, :cols] = a
    b = padded.reshape(rows, vc, lanes).transpose(1, 0, 2)  # vector column, row, lane
    planes = np.ascontiguousarray(b).view(np.uint8).reshape(vc, rows, lanes, t.dtype.itemsize)
    return np.ascontiguousarray(planes.transpose(0, 1, 3, 2)).reshape(-1, lanes)


def from_words(data: np.ndarray, t: TensorType, lanes: int) -> np.ndarray:
    """Inverse of to_words: a (words(t, lanes), lanes) uint8 array back to the tensor."""
    rows, cols = rows_cols(t)
    vc, size = vector_cols(t, lanes), t.dtype.itemsize
    planes = np.ascontiguousarray(data, np.uint8).reshape(vc, rows, size, lanes).transpose(0, 1, 3, 2)
    b = np.ascontiguousarray(planes).view(_storage_dtype(t.dtype)).reshape(vc, rows, lanes)
    a = b.transpose(1, 0, 2).reshape(rows, vc * lanes)[:, :cols]
    if t.dtype is DType.bf16:
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(t.dtype.numpy).reshape(t.shape)


# --- extents ----------------------------------------------------------------

Extent = tuple[int, int, int]  # (slice, first word, words)


def extent_starts(extents) -> list[int]:
    """The position in the word sequence where each extent begins."""
    return list(accumulate((e[2] for e in extents), initial=0))[:-1]


def sub_extents(extents, offset: int, count: int, starts: list[int] | None = None) -> tuple[Extent, ...]:
    """Words [offset, offset+count) of the word sequence that `extents` (a sequence) spell. Given their
    `starts` (extent_starts), it finds the first by bisection: cutting many runs of one long sequence
    takes time in the extents returned, not in all of them each time. Extents may carry more after
    (slice, first word, words), e.g. the value owning the words: each piece keeps it."""
    if starts is None:
        starts = extent_starts(extents)
    out, end = [], offset + count
    for k in range(max(bisect_right(starts, offset) - 1, 0), len(extents)):
        pos = starts[k]
        if pos >= end:
            break
        e = extents[k]
        lo, hi = max(offset, pos), min(end, pos + e[2])
        if lo < hi:
            out.append((e[0], e[1] + lo - pos, hi - lo) + e[3:])
    return tuple(out)


def column_extents(t: TensorType, extents, start: int, size: int, lanes: int,
                   starts: list[int] | None = None) -> tuple[Extent, ...]:
    """The words of columns [start, start+size) of t's last axis (whole vector columns, the last may be
    partial), from t's extents (and their `starts`, if known): one run of its vector columns."""
    per_column = rows_cols(t)[0] * t.dtype.itemsize
    first, ncols = start // lanes, -(-size // lanes)
    return sub_extents(extents, first * per_column, ncols * per_column, starts)


def row_extents(t: TensorType, extents, start: int, size: int, lanes: int,
                starts: list[int] | None = None) -> tuple[Extent, ...]:
    """The words of rows [start, start+size) of t's second-to-last axis, from t's extents (and their
    `starts`, if known): per vector column, per batch (leading dims), a run of whole rows."""
    rows_per_batch, itemsize = t.shape[-2], t.dtype.itemsize
    batches = rows_cols(t)[0] // rows_per_batch if rows_per_batch else 0
    starts, out = (starts if starts is not None else extent_starts(extents)), []
    for run in range(vector_cols(t, lanes) * batches):
        out += sub_extents(extents, (run * rows_per_batch + start) * itemsize, size * itemsize, starts)
    return tuple(out)


def transpose_extents(t: TensorType, extents, perm, lanes: int, starts: list[int] | None = None) \
        -> tuple[Extent, ...]:
    """The words of t transposed by `perm` keeping its last axis, from t's extents: per vector column, each
    row of the result is a row of t (whole words), in the result's order; neighbouring runs merge."""
    itemsize, lead = t.dtype.itemsize, t.shape[:-1]
    order = np.arange(rows_cols(t)[0]).reshape(lead).transpose(perm[:-1]).ravel() if lead else np.zeros(1, int)
    starts, out = (starts if starts is not None else extent_starts(extents)), []
    for col in range(vector_cols(t, lanes)):
        base = col * len(order)
        for row in order.tolist():
            for e in sub_extents(extents, (base + row) * itemsize, itemsize, starts):
                last = out[-1] if out else None
                if last and last[0] == e[0] and last[1] + last[2] == e[1] and last[3:] == e[3:]:
                    out[-1] = (last[0], last[1], last[2] + e[2]) + last[3:]
                else:
                    out.append(e)
    return tuple(out)


def row_join_extents(types, extents, lanes: int) -> tuple[Extent, ...]:
    """The words of [rows, cols] parts (of equal cols) joined along their rows, from the parts' extents: per
    vector column, each part's run of rows in that column (one vector column: the parts' words in turn)."""
    columns = vector_cols(types[0], lanes)
    if columns == 1:
        return tuple(e for part in extents for e in part)
    per_column = [t.shape[0] * t.dtype.itemsize for t in types]
    starts = [extent_starts(part) for part in extents]
    return tuple(e for c in range(columns) for part, n, first in zip(extents, per_column, starts)
                 for e in sub_extents(part, c * n, n, first))


def window_extents(t: TensorType, extents, start: tuple[int, int], size: tuple[int, int], lanes: int,
                   starts: list[int] | None = None) -> tuple:
    """The words of the window rows [k0, k0+ks) x columns [n0, n0+ns) of t's last two axes (an
    `mxm.install`'s tile), from t's extents: per vector column of the window, per leading index, a run of
    whole rows (the words a row slice of a column slice names). Given the extents' `starts`, it takes time
    in the window's words, not in all of t's."""
    if starts is None:
        starts = extent_starts(extents)
    (k0, n0), (ks, ns) = start, size
    rows, per_batch, itemsize = rows_cols(t)[0], t.shape[-2], t.dtype.itemsize
    first, out = n0 // lanes, []
    for col in range(first, first + -(-ns // lanes)):
        for row in range(col * rows + k0, (col + 1) * rows, per_batch):
            out += sub_extents(extents, row * itemsize, ks * itemsize, starts)
    return tuple(out)


def view_extents(op_name: str, attrs, operand_types, operand_extents, lanes: int,
                 operand_starts=None) -> tuple[Extent, ...]:
    """The words a view op's result names, from its operands' extents. Given the first operand's
    `operand_starts` (extent_starts of its extents, kept by a caller that views one value many times), a
    slice finds its words by bisection alone."""
    if op_name == "mem.reshape_view":
        return tuple(operand_extents[0])
    if op_name == "mem.join":  # (parts of whole vector columns: their columns follow on)
        return tuple(e for extents in operand_extents for e in extents)
    if op_name == "mem.row_join":  # per vector column, each part's rows of it in turn
        return row_join_extents(operand_types, operand_extents, lanes)
    if op_name == "mem.column_slice":
        return column_extents(operand_types[0], operand_extents[0], attrs["start"], attrs["size"], lanes,
                              operand_starts)
    if op_name == "mem.transpose_view":
        return transpose_extents(operand_types[0], operand_extents[0], tuple(attrs["perm"]), lanes, operand_starts)
    if op_name == "mem.row_slice":
        return row_extents(operand_types[0], operand_extents[0], attrs["start"], attrs["size"], lanes, operand_starts)
    raise ValueError(f"{op_name} is not a view")
