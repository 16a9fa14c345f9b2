"""Attribute values: frozen and hashable.

An attribute is one of: bool, int, float, str, a tuple of those, a DType, or a
`Tensor` (constant data). `AttrDict` is the frozen mapping an op carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .types import DType, TensorType

INLINE_LIMIT = 16  # tensors with at most this many elements are printed inline


def tensor_digest(ttype: TensorType, array: np.ndarray) -> str:
    """Content hash of constant data: sha256 over the type and the little-endian bytes."""
    h = hashlib.sha256(str(ttype).encode())
    h.update(np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C").tobytes())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True, eq=True)
class Tensor:
    """Constant tensor data, identified by its type and content `key`.

    `key` is `sha256:<hex>` for content we hashed, or another stable reference
    (e.g. `ext:<file>:<offset>:<length>` for ONNX external data we must not read
    at compile time). The data itself is not part of equality: it comes from
    `loader` on first use, so weights stay on disk until a program runs.
    """

    type: TensorType
    key: str
    loader: Callable[[], np.ndarray] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def from_array(array, dtype: DType | None = None) -> "Tensor":
        array = np.asarray(array)
        dtype = dtype or DType.from_numpy(array.dtype)
        array = np.array(array, dtype=dtype.numpy, order="C")  # a private copy (ascontiguousarray would make 0-d 1-d)
        array.flags.writeable = False
        ttype = TensorType(array.shape, dtype)
        return Tensor(ttype, tensor_digest(ttype, array), loader=lambda: array)

    @property
    def has_data(self) -> bool:
        return self.loader is not None

    @property
    def array(self) -> np.ndarray:
        from .errors import EvalError

        if self.loader is None:
            raise EvalError(f"constant {self.key} has no data: its blob file (MODEL.blobs.npz beside MODEL.ir) "
                            "is missing or lacks it")
        array = self.loader()
        want = self.type.dtype.numpy
        if self.type.dtype.is_narrow and array.dtype != want and array.dtype.kind in "uV" and array.dtype.itemsize == 1:
            array = array.view(want)  # stored as its bytes: .npy files cannot name ml_dtypes' types
        if tuple(array.shape) != self.type.shape:
            raise EvalError(f"constant {self.key}: data has shape {array.shape}, expected {self.type}")
        return array

    @property
    def inline(self) -> bool:
        return self.type.numel <= INLINE_LIMIT and self.loader is not None


class AttrDict(Mapping):
    """A frozen, hashable str -> attribute mapping, iterated in sorted key order.

    Two AttrDicts are equal when they print the same: `1`, `1.0` and `true` differ
    (as attribute values they do), and so do `0.0` and `-0.0`; a NaN equals itself.

    A scheduled program has an AttrDict per instruction (millions for a large model), so it holds
    just one dict (built in sorted key order) and its hash, once asked: the key that compares as
    the attributes print is made when a comparison needs it, not kept.
    """

    __slots__ = ("_dict", "_hash")

    def __init__(self, items: Mapping[str, Any] | None = None):
        d = _checked(items or {})
        self._dict = {k: d[k] for k in sorted(d)}
        self._hash = None

    @classmethod
    def trusted(cls, d: dict[str, Any]) -> "AttrDict":
        """AttrDict(d), for a dict of str keys whose values are attribute values by construction (the
        parser's, which its grammar makes so): not checked again."""
        new = cls.__new__(cls)
        new._dict = {k: d[k] for k in sorted(d)}
        new._hash = None
        return new

    def updated(self, changes: Mapping[str, Any]) -> "AttrDict":
        """These attributes with `changes` (added or replaced): only the changes are checked, the rest were
        (a pass rewriting millions of ops changes one or two attributes of each)."""
        new = AttrDict()
        d = {**self._dict, **_checked(changes)}
        new._dict = {k: d[k] for k in sorted(d)}
        return new

    @classmethod
    def holding(cls, d: dict[str, Any]) -> "AttrDict":
        """An AttrDict of `d` itself: a dict in sorted key order whose values are attribute values by
        construction (ir.pieces stamps millions of ops, each one's a copy of its template op's with a few values
        set), neither copied nor checked again."""
        new = cls.__new__(cls)
        new._dict = d
        new._hash = None
        return new

    def as_dict(self) -> dict[str, Any]:
        """The dict holding the attributes (in sorted key order), for loops over millions of ops: read it, never
        change it."""
        return self._dict

    def __getitem__(self, key):
        return self._dict[key]

    # Mapping's get and `in` go through __getitem__ and an exception; ops are asked these a lot
    def get(self, key, default=None):
        return self._dict.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self._dict

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)  # (built in sorted key order)

    # Mapping's views go key by key through __getitem__; `dict(attrs)` and `{**attrs}` use keys()
    def keys(self):
        return self._dict.keys()

    def items(self):
        return self._dict.items()

    def values(self):
        return self._dict.values()

    def __len__(self) -> int:
        return len(self._dict)

    def compare_key(self) -> tuple:
        """What equality and the hash go by: the items with values that compare as they print."""
        return tuple((k, compare_value(v)) for k, v in self._dict.items())

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(self.compare_key())
        return self._hash

    def __eq__(self, other):
        if isinstance(other, AttrDict):
            return self is other or (len(self._dict) == len(other._dict) and hash(self) == hash(other)
                                     and self.compare_key() == other.compare_key())
        return NotImplemented

    def __repr__(self):
        return f"AttrDict({self._dict!r})"


def _checked(items: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(items)
    for k, v in d.items():
        if not isinstance(k, str):
            raise TypeError(f"attribute name {k!r} is not a str")
        check_attr_value(k, v)
    return d


def shared(attrs: AttrDict, seen: dict[tuple, AttrDict]) -> AttrDict:
    """`attrs`, or the equal AttrDict in `seen` (a pass's table): a model's repeated layers repeat their
    attributes (70B --layers 4: 115,716 machine ops, 4,662 distinct), so equal ones are one object. Its
    values are then the first's objects: a rewrite that carries them over keeps them (ir.rewrite)."""
    return seen.setdefault(attrs.compare_key(), attrs)


def compare_value(v):
    """A value that compares as the attribute prints (Python has 1 == 1.0 == True)."""
    if isinstance(v, tuple):
        if all(type(x) is int for x in v):  # (the common case, e.g. extents: ints compare as they print)
            return tuple, v
        return tuple, tuple(compare_value(x) for x in v)
    if isinstance(v, float):
        return float, repr(v)
    return type(v), v


_SCALARS = (bool, int, float, str, DType, Tensor)


def _is_attr_list(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, (bool, int, float, str)) or _is_attr_list(v) for v in value)


def check_attr_value(name: str, value: Any) -> None:
    """Reject values that are not frozen attribute values (lists must be tuples)."""
    if isinstance(value, _SCALARS) or _is_attr_list(value):
        return
    raise TypeError(f"attribute {name!r}: {value!r} is not an attribute value "
                    "(bool, int, float, str, DType, Tensor or a (nested) tuple of scalars)")
