"""Element and tensor types: frozen, hashable, checked on construction."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

import numpy as np


class DType(enum.Enum):
    """Element types. The value is the spelling in IR text.

    The narrow types (float8, float4, 4- and 2-bit integers) compute with
    ml_dtypes' numpy types and take one storage byte per element, in SRAM and
    in memory alike (ONNX packs the sub-byte ones; the frontend unpacks them).
    The float8 ones are those of ONNX: e4m3fn / e5m2 (OCP, e5m2 has infinities),
    their `fnuz` variants (no -0, no infinities, NaN is 0x80) and e8m0 (a power
    of two 2^-127..2^127, or NaN); f4e2m1 has neither NaN nor infinities.
    """

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    f8e4m3fn = "f8e4m3fn"
    f8e4m3fnuz = "f8e4m3fnuz"
    f8e5m2 = "f8e5m2"
    f8e5m2fnuz = "f8e5m2fnuz"
    f8e8m0 = "f8e8m0"
    f4e2m1 = "f4e2m1"
    i8 = "i8"
    i16 = "i16"
    i32 = "i32"
    i64 = "i64"
    u8 = "u8"
    u16 = "u16"
    u32 = "u32"
    u64 = "u64"
    i4 = "i4"
    u4 = "u4"
    i2 = "i2"
    u2 = "u2"
    bool = "bool"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.bool

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype used to compute with this type (bf16 computes in f32)."""
        found = _NUMPY.get(self)
        return found if found is not None else _narrow_numpy()[self]

    @property
    def is_narrow(self) -> bool:
        """A float8 / float4 / int4 / int2 type: its numpy type is one of ml_dtypes'."""
        return self in _NARROW

    @property
    def iinfo(self):
        """The range of an integer type (.min, .max), numpy's or ml_dtypes'."""
        if not self.is_narrow:
            return np.iinfo(self.numpy)
        import ml_dtypes

        return ml_dtypes.iinfo(self.numpy)

    @staticmethod
    def from_numpy(dtype) -> "DType":
        dtype = np.dtype(dtype)
        for d, n in _NUMPY.items():
            if n == dtype and d is not DType.bf16:
                return d
        import ml_dtypes

        if dtype == np.dtype(ml_dtypes.bfloat16):  # the bf16 values, computed in f32
            return DType.bf16
        for d, n in _narrow_numpy().items():
            if n == dtype:
                return d
        raise ValueError(f"no lpuc dtype for numpy dtype {dtype}")

    def __repr__(self) -> str:
        return f"DType.{self.name}"


_NARROW = frozenset({DType.f8e4m3fn, DType.f8e4m3fnuz, DType.f8e5m2, DType.f8e5m2fnuz, DType.f8e8m0, DType.f4e2m1,
                     DType.i4, DType.u4, DType.i2, DType.u2})


@functools.cache
def _narrow_numpy() -> dict[DType, np.dtype]:
    """The narrow types' numpy types: ml_dtypes', imported when first asked for (it takes half a second, and most
    programs have no narrow type)."""
    import ml_dtypes

    found = {DType.f8e4m3fn: ml_dtypes.float8_e4m3fn, DType.f8e4m3fnuz: ml_dtypes.float8_e4m3fnuz,
             DType.f8e5m2: ml_dtypes.float8_e5m2, DType.f8e5m2fnuz: ml_dtypes.float8_e5m2fnuz,
             DType.f8e8m0: ml_dtypes.float8_e8m0fnu, DType.f4e2m1: ml_dtypes.float4_e2m1fn,
             DType.i4: ml_dtypes.int4, DType.u4: ml_dtypes.uint4, DType.i2: ml_dtypes.int2, DType.u2: ml_dtypes.uint2}
    return {d: np.dtype(t) for d, t in found.items()}

_FLOATS = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16, DType.f8e4m3fn, DType.f8e4m3fnuz,
                     DType.f8e5m2, DType.f8e5m2fnuz, DType.f8e8m0, DType.f4e2m1})
_ITEMSIZE = {
    DType.f64: 8, DType.f32: 4, DType.f16: 2, DType.bf16: 2,
    DType.i8: 1, DType.i16: 2, DType.i32: 4, DType.i64: 8,
    DType.u8: 1, DType.u16: 2, DType.u32: 4, DType.u64: 8, DType.bool: 1,
    **{d: 1 for d in _NARROW},  # one storage byte per element, sub-byte types too
}
_NUMPY = {
    DType.f64: np.dtype(np.float64), DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16), DType.bf16: np.dtype(np.float32),
    DType.i8: np.dtype(np.int8), DType.i16: np.dtype(np.int16),
    DType.i32: np.dtype(np.int32), DType.i64: np.dtype(np.int64),
    DType.u8: np.dtype(np.uint8), DType.u16: np.dtype(np.uint16),
    DType.u32: np.dtype(np.uint32), DType.u64: np.dtype(np.uint64),
    DType.bool: np.dtype(np.bool_),
}  # (and the narrow types', _narrow_numpy)


@dataclass(frozen=True, slots=True)
class TensorType:
    """A statically shaped tensor type, printed `f32[1,7,96]` (`f32[]` for a scalar)."""

    shape: tuple[int, ...]
    dtype: DType
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)  # (made once: types key the
                                                                                     # caches of millions of ops)

    def __post_init__(self):
        if not isinstance(self.dtype, DType):
            raise TypeError(f"TensorType dtype must be a DType, got {self.dtype!r}")
        shape = tuple(self.shape)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise TypeError(f"TensorType shape must be non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash((self.shape, self.dtype)))
        return self._hash

    def __reduce__(self):  # (made again where it is unpickled: a string's hash differs from process to process)
        return TensorType, (self.shape, self.dtype)

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
