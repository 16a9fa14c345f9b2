"""Element and tensor types: frozen, hashable, checked on construction."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class DType(enum.Enum):
    """Element types. The value is the spelling in IR text."""

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i8 = "i8"
    i16 = "i16"
    i32 = "i32"
    i64 = "i64"
    u8 = "u8"
    u16 = "u16"
    u32 = "u32"
    u64 = "u64"
    bool = "bool"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.f64, DType.f32, DType.f16, DType.bf16)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.bool

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype used to compute with this type (bf16 computes in f32)."""
        return _NUMPY[self]

    @staticmethod
    def from_numpy(dtype) -> "DType":
        dtype = np.dtype(dtype)
        for d, n in _NUMPY.items():
            if n == dtype and d is not DType.bf16:
                return d
        raise ValueError(f"no lpuc dtype for numpy dtype {dtype}")

    def __repr__(self) -> str:
        return f"DType.{self.name}"


_ITEMSIZE = {
    DType.f64: 8, DType.f32: 4, DType.f16: 2, DType.bf16: 2,
    DType.i8: 1, DType.i16: 2, DType.i32: 4, DType.i64: 8,
    DType.u8: 1, DType.u16: 2, DType.u32: 4, DType.u64: 8, DType.bool: 1,
}
_NUMPY = {
    DType.f64: np.dtype(np.float64), DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16), DType.bf16: np.dtype(np.float32),
    DType.i8: np.dtype(np.int8), DType.i16: np.dtype(np.int16),
    DType.i32: np.dtype(np.int32), DType.i64: np.dtype(np.int64),
    DType.u8: np.dtype(np.uint8), DType.u16: np.dtype(np.uint16),
    DType.u32: np.dtype(np.uint32), DType.u64: np.dtype(np.uint64),
    DType.bool: np.dtype(np.bool_),
}


@dataclass(frozen=True, slots=True)
class TensorType:
    """A statically shaped tensor type, printed `f32[1,7,96]` (`f32[]` for a scalar)."""

    shape: tuple[int, ...]
    dtype: DType

    def __post_init__(self):
        if not isinstance(self.dtype, DType):
            raise TypeError(f"TensorType dtype must be a DType, got {self.dtype!r}")
        shape = tuple(self.shape)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise TypeError(f"TensorType shape must be non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(map(str, self.shape))}]"
